"""The work dir (unionfs/workdir.py): leftovers cleaned at mount, the in-use lock."""

from __future__ import annotations

import os
import stat

import pytest

from tests.unionfs.helpers import (
    Layers,
    UnionFactory,
    put,
)
from unionfs.errors import UsageError


@pytest.mark.root
async def test_interrupted_copy_up_leftovers_are_cleaned_at_start(
    union: UnionFactory, layers: Layers
) -> None:
    tmp = layers.tmp
    tmp.mkdir(parents=True)
    put(tmp / "123-1", b"half a copy")
    put(tmp / "123-2" / "deep" / "file", b"x")
    os.chmod(tmp / "123-2" / "deep", 0)
    os.mknod(tmp / "123-3", stat.S_IFCHR, os.makedev(0, 0))
    os.symlink("/etc/passwd", tmp / "123-4")
    (tmp / "123-5").mkdir()
    os.symlink("/etc", tmp / "123-5" / "escape")
    union()
    assert os.listdir(tmp) == []
    assert os.stat("/etc/passwd")


async def test_second_union_on_the_same_work_dir_is_refused(union: UnionFactory) -> None:
    first = union()
    with pytest.raises(UsageError, match="in use"):
        union()
    union.close(first)
    union()  # free again once the first is closed
