"""Attributes and ownership (unionfs/attrs.py): new objects owned by the caller, setgid directories."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.unionfs.helpers import (
    USER,
    Layers,
    UnionFactory,
    create,
    mkdir,
)
from unionfs.inodes import ROOT


@pytest.mark.root
async def test_new_objects_are_owned_by_the_caller(union: UnionFactory, upper: Path) -> None:
    fs = union()
    a = await create(fs, "f", mode=0o640, caller=USER)
    assert (a.uid, a.gid, stat.S_IMODE(a.mode)) == (1000, 1000, 0o640)
    await mkdir(fs, "d", 0o750, caller=USER)
    await fs.symlink(ROOT, b"s", b"f", USER)
    await fs.mknod(ROOT, b"p", stat.S_IFIFO | 0o600, 0, USER)
    for name, mode in (("f", 0o640), ("d", 0o750), ("p", 0o600)):
        st = os.lstat(upper / name)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, mode), name
    st = os.lstat(upper / "s")
    assert (st.st_uid, st.st_gid) == (1000, 1000)


@pytest.mark.root
@pytest.mark.parametrize("where", ["upper", "lower"])
async def test_setgid_directory_passes_its_group(
    union: UnionFactory, layers: Layers, upper: Path, where: str
) -> None:
    sg = (upper if where == "upper" else layers.lowers[0]) / "sg"
    sg.mkdir()
    os.chown(sg, 0, 2000)
    os.chmod(sg, 0o2775)
    fs = union()
    f = await create(fs, "sg/f", caller=USER)
    d = await mkdir(fs, "sg/d", 0o755, caller=USER)
    assert (f.uid, f.gid) == (1000, 2000)
    assert (d.uid, d.gid) == (1000, 2000)
    assert d.mode & stat.S_ISGID
    assert not f.mode & stat.S_ISGID
    st = os.lstat(upper / "sg" / "d")
    assert (st.st_gid, bool(st.st_mode & stat.S_ISGID)) == (2000, True)
    assert os.lstat(upper / "sg" / "f").st_gid == 2000
