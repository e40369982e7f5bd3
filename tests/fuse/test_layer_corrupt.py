"""A corrupt layer makes the mount read-only (s3ql's failsafe; unionfs.errors.LayerCorruptError).

A marker strata could not have written (here a forged origin, or a metacopy marker whose data is
gone) is answered with EIO for that object; the daemon logs one error line naming the layer and
the problem, every later change through the mount fails with EROFS, and the healthy files stay
readable.
"""

from __future__ import annotations

import errno
import os
import re
import struct
from pathlib import Path

import pytest

from tests.helpers.mounts import StrataMountFactory, UnionDirs, skip_unless_root

pytestmark = [pytest.mark.fuse, pytest.mark.root]

CORRUPT_LINE = re.compile(r"ERROR.*corrupt layer (\S+): (.*); the union is read-only from now on")


@pytest.fixture
def dirs(tmp_path: Path) -> UnionDirs:
    skip_unless_root()
    d = UnionDirs.create(tmp_path, nlowers=1)
    (d.lowers[0] / "plain").write_bytes(b"plain\n")
    (d.lowers[0] / "dir").mkdir()
    (d.lowers[0] / "dir/inside").write_bytes(b"inside\n")
    return d


def assert_read_only_but_readable(mnt: Path) -> None:
    for change in (
        lambda: (mnt / "new").write_bytes(b"x"),
        lambda: (mnt / "plain").write_bytes(b"x"),
        lambda: os.mkdir(mnt / "newdir"),
        lambda: os.unlink(mnt / "plain"),
        lambda: os.rename(mnt / "plain", mnt / "moved"),
        lambda: os.chmod(mnt / "plain", 0o600),
        lambda: os.setxattr(mnt / "plain", "user.x", b"1"),
    ):
        with pytest.raises(OSError, match="Read-only file system") as err:
            change()
        assert err.value.errno == errno.EROFS
    assert (mnt / "plain").read_bytes() == b"plain\n"
    assert (mnt / "dir/inside").read_bytes() == b"inside\n"


def test_a_forged_origin_makes_the_mount_read_only_with_one_error_line(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    assert dirs.upper is not None
    with union_mount(dirs) as m:
        (m.mnt / "forged").write_bytes(b"forged\n")
    os.setxattr(dirs.upper / "forged", "trusted.strata.origin", struct.pack("<Q", 12345))
    with union_mount(dirs, allowed_log_errors=["corrupt layer"]) as m:
        assert (m.mnt / "plain").read_bytes() == b"plain\n"
        (m.mnt / "fine").write_bytes(b"written before\n")  # writable until the corruption is seen
        for _ in range(2):
            with pytest.raises(OSError, match="Input/output error") as err:
                os.stat(m.mnt / "forged")
            assert err.value.errno == errno.EIO
        assert_read_only_but_readable(m.mnt)
        assert (m.mnt / "fine").read_bytes() == b"written before\n"
        log = m.log_text()
    lines = CORRUPT_LINE.findall(log)
    assert len(lines) == 1, log
    assert lines[0][0] == str(dirs.upper)
    assert "bad origin marker" in lines[0][1]
    assert sorted(os.listdir(dirs.upper)) == ["fine", "forged"]


def test_a_metacopy_file_whose_data_is_gone_makes_the_mount_read_only(
    union_mount: StrataMountFactory, dirs: UnionDirs, tmp_path: Path
) -> None:
    """A layer with a metacopy file over a stack that lacks its data (made here by mounting the
    upper of a metacopy union over a lower without the file): reading it is EIO, and the layer
    holding the marker is named."""
    assert dirs.upper is not None
    (dirs.lowers[0] / "big").write_bytes(b"big data\n" * 1000)
    with union_mount(dirs) as m:
        os.chmod(m.mnt / "big", 0o600)  # a metadata-only copy-up
    assert os.getxattr(dirs.upper / "big", "trusted.strata.metacopy") == b"big"
    (dirs.lowers[0] / "big").unlink()  # the data is gone from below (not while mounted)
    with union_mount(dirs, allowed_log_errors=["corrupt layer"]) as m:
        with pytest.raises(OSError, match="Input/output error") as err:
            (m.mnt / "big").read_bytes()
        assert err.value.errno == errno.EIO
        assert_read_only_but_readable(m.mnt)
        log = m.log_text()
    lines = CORRUPT_LINE.findall(log)
    assert len(lines) == 1, log
    assert lines[0][0] == str(dirs.upper)
    assert "metacopy data" in lines[0][1]
