"""A full upper filesystem during copy-up (issue 12, finding 5): the writer gets ENOSPC, the
partial copy is removed at once (it stayed in the work dir until the next mount, keeping the
filesystem full for every writer), and the mount keeps working.

The upper and work directories are on a small tmpfs of the test's own, unmounted afterwards.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.mounts import StrataMountFactory, UnionDirs, append_bytes, skip_unless_root

pytestmark = [pytest.mark.fuse, pytest.mark.root]

MiB = 1 << 20


@pytest.fixture
def small_upper(tmp_path: Path) -> Iterator[UnionDirs]:
    """A union whose upper and work dirs are on an 8 MiB tmpfs; the lower has a 16 MiB file."""
    skip_unless_root()
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        lower = tmp_path / "lower"
        lower.mkdir()
        (lower / "big").write_bytes(os.urandom(16 * MiB))
        (lower / "small").write_bytes(b"small\n")
        dirs = UnionDirs(
            lowers=[lower], upper=disk / "upper", work=disk / "work", mnt=tmp_path / "mnt"
        )
        for d in (disk / "upper", disk / "work", dirs.mnt):
            d.mkdir()
        yield dirs
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_enospc_during_copy_up_removes_the_partial_copy(
    union_mount: StrataMountFactory, small_upper: UnionDirs
) -> None:
    dirs = small_upper
    assert dirs.upper is not None
    assert dirs.work is not None
    free = os.statvfs(dirs.upper).f_bavail
    with union_mount(dirs) as m:
        with pytest.raises(OSError, match="No space left") as err:
            append_bytes(m.mnt / "big", b"more")
        assert err.value.errno == errno.ENOSPC
        assert os.listdir(dirs.work / "strata" / "tmp") == []  # not kept until the next mount
        assert os.statvfs(dirs.upper).f_bavail >= free - 8  # the space is back
        # the mount works on: the file is unchanged, and a small copy-up fits
        assert os.path.getsize(m.mnt / "big") == 16 * MiB
        append_bytes(m.mnt / "small", b"more\n")
        assert (m.mnt / "small").read_bytes() == b"small\nmore\n"
    assert not (dirs.upper / "big").exists()
