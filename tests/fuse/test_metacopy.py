"""Metadata-only copy-up through a real mount: reads of every kind served from the data below,
the marker read back after a re-mount, and a crash during the later data copy-up.

The crash test needs the daemon to be in the middle of the data copy-up when it is killed: as in
tests/fuse/test_posix.py, the lower file is 1 GiB with 4 KiB of data every 16 KiB, whose copy
takes a few hundred milliseconds; the test polls the work dir until the half-built copy appears.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import stat
from pathlib import Path

import pytest

from tests.helpers.mounts import (
    CRASH_STRIDE,
    StrataMountFactory,
    UnionDirs,
    file_hash,
    make_strided_file,
    skip_unless_root,
)

pytestmark = [pytest.mark.fuse, pytest.mark.root]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
MARKER = "trusted.strata.metacopy"


@pytest.fixture
def dirs(tmp_path: Path) -> UnionDirs:
    skip_unless_root()  # trusted.* xattrs
    return UnionDirs.create(tmp_path, nlowers=2)


def marker_of(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, MARKER, follow_symlinks=False)
    except OSError:
        return None


def test_chmod_copies_metadata_only_and_every_read_sees_the_lower_data(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    data = os.urandom(MiB) * 8 + b"tail"
    lower = dirs.lowers[1] / "d" / "big"
    lower.parent.mkdir()
    lower.write_bytes(data)
    lower_st = os.stat(lower)
    assert dirs.upper is not None
    with union_mount(dirs) as m:
        f = m.mnt / "d" / "big"
        os.chmod(f, 0o600)
        up = dirs.upper / "d" / "big"
        assert marker_of(up) == b"d/big"
        assert os.stat(up).st_blocks * 512 < 64 * KiB, "the data was copied"
        st = os.stat(f)
        assert (stat.S_IMODE(st.st_mode), st.st_size) == (0o600, len(data))
        assert st.st_blocks == lower_st.st_blocks  # the data's, as overlayfs reports
        assert file_hash(f) == file_hash(lower)
        fd = os.open(f, os.O_RDONLY)
        try:
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as mapped:
                assert mapped[MiB : MiB + 4096] == data[MiB : MiB + 4096]
                assert mapped[-4:] == b"tail"
            assert os.lseek(fd, 0, os.SEEK_DATA) == 0
            assert os.lseek(fd, 0, os.SEEK_HOLE) == len(data)
            out = os.open(m.mnt / "copy", os.O_WRONLY | os.O_CREAT, 0o600)  # same fs
            try:
                copied = 0
                while copied < len(data):
                    n = os.copy_file_range(fd, out, len(data) - copied, copied, copied)
                    assert n > 0
                    copied += n
            finally:
                os.close(out)
        finally:
            os.close(fd)
        assert (m.mnt / "copy").read_bytes() == data
    with union_mount(dirs) as m:  # the marker is read back
        f = m.mnt / "d" / "big"
        assert file_hash(f) == file_hash(lower)
        with open(f, "ab") as out_f:  # the first write moves the data up
            out_f.write(b"!")
        assert marker_of(up) is None
        assert up.read_bytes() == data + b"!"
        assert stat.S_IMODE(os.stat(up).st_mode) == 0o600


def test_kill_during_data_copy_up_of_a_metacopy_file_leaves_no_torn_file(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    big = dirs.lowers[0] / "big"
    make_strided_file(big, GiB)
    assert dirs.upper is not None
    assert dirs.work is not None
    up = dirs.upper / "big"
    tmp = dirs.work / "strata" / "tmp"
    try:
        with union_mount(dirs) as m:
            os.chmod(m.mnt / "big", 0o640)  # metadata only: instant
            assert marker_of(up) == b"big"
            m.kill_daemon_mid_copy_up("big", GiB, tmp)
            assert os.listdir(tmp), "the daemon finished the copy-up before it was killed"
            # still the whole metacopy file: its marker, size and the mode changed before
            assert marker_of(up) == b"big"
            st = os.stat(up)
            assert (st.st_size, stat.S_IMODE(st.st_mode)) == (GiB, 0o640)
        with union_mount(dirs) as m:
            assert os.listdir(tmp) == [], "leftovers of the copy-up were not cleaned"
            fd = os.open(m.mnt / "big", os.O_RDONLY)
            try:
                for off in (0, CRASH_STRIDE * 1000, GiB - CRASH_STRIDE, GiB // 2 + 4096):
                    expected = b"L" * 4096 if off % CRASH_STRIDE == 0 else bytes(4096)
                    assert os.pread(fd, 4096, off) == expected, off
            finally:
                os.close(fd)
            fd = os.open(m.mnt / "big", os.O_WRONLY)
            try:
                os.pwrite(fd, b"W" * 4096, 4096)
            finally:
                os.close(fd)
        assert marker_of(up) is None
        assert stat.S_IMODE(os.stat(up).st_mode) == 0o640
        with open(up, "rb") as f:
            assert f.read(8192) == b"L" * 4096 + b"W" * 4096
    finally:
        for path in (big, up):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
