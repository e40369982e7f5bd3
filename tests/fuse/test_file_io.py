"""File I/O by inode through a real mount (unionfs/fileio.py `io_fd`, FUSE's no-open mode).

The daemon keeps one fd per file node rather than one per open (with the patched pyfuse3 the
kernel sends no OPEN/RELEASE at all), so these tests pin down what that must not change: O_TRUNC,
O_APPEND and mmap writes to lower files copy up; a reader opened before a copy-up sees the new
data; files whose last name went while open stay readable (and writable if they were upper
files); more files open than the fd cache holds all read correctly; and the daemon's fds go back
down once files are removed.
"""

from __future__ import annotations

import mmap
import os
import time
from pathlib import Path

import pytest

from tests.helpers.mounts import StrataMount, StrataMountFactory, UnionDirs
from unionfs.fileio import FD_CACHE
from unionfs.mount import passthrough_unavailable
from unionfs.ops import FEATURES

pytestmark = [pytest.mark.fuse]


@pytest.fixture(params=["no-open", "open", "passthrough"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The three ways the kernel may talk to us: without OPEN/RELEASE (patched pyfuse3), with
    them (stock pyfuse3, or STRATA_FUSE_OPEN=1), where the handle is the inode, and with them
    and a backing file per open (FUSE passthrough: the patched pyfuse3 as root)."""
    monkeypatch.setenv("STRATA_PASSTHROUGH", "off")
    if request.param == "open":
        monkeypatch.setenv("STRATA_FUSE_OPEN", "1")
    elif request.param == "passthrough":
        why = passthrough_unavailable()
        if why is not None:
            pytest.skip(why)
        monkeypatch.setenv("STRATA_PASSTHROUGH", "on")
    elif not FEATURES.no_open:
        pytest.skip("stock pyfuse3: no no-open mode (FEATURES.no_open, scripts/pyfuse3)")
    else:
        monkeypatch.delenv("STRATA_FUSE_OPEN", raising=False)
    return str(request.param)


@pytest.fixture
def dirs(tmp_path: Path, mode: str) -> UnionDirs:
    return UnionDirs.create(tmp_path, nlowers=1)


def daemon_fds(m: StrataMount) -> int:
    assert m.proc is not None
    return len(os.listdir(f"/proc/{m.proc.pid}/fd"))


def test_o_trunc_and_o_append_of_lower_files_copy_up(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    lower = dirs.lowers[0]
    for name in ("t", "t0", "a"):
        (lower / name).write_bytes(b"lower data")
    assert dirs.upper is not None
    with union_mount(dirs) as m:
        with open(m.mnt / "t", "wb") as f:
            f.write(b"new")
        fd = os.open(m.mnt / "t0", os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        with open(m.mnt / "a", "ab") as f:
            f.write(b"+more")
        assert (m.mnt / "t").read_bytes() == b"new"
        assert (m.mnt / "t0").read_bytes() == b""
        assert (m.mnt / "a").read_bytes() == b"lower data+more"
    assert (dirs.upper / "t").read_bytes() == b"new"
    assert (dirs.upper / "t0").read_bytes() == b""
    assert (dirs.upper / "a").read_bytes() == b"lower data+more"
    assert all((lower / n).read_bytes() == b"lower data" for n in ("t", "t0", "a"))


def test_open_for_writing_copies_up_at_open_or_in_no_open_mode_at_the_first_write(
    union_mount: StrataMountFactory, dirs: UnionDirs, mode: str
) -> None:
    (dirs.lowers[0] / "f").write_bytes(b"lower data")
    assert dirs.upper is not None
    with union_mount(dirs) as m:
        fd = os.open(m.mnt / "f", os.O_RDWR)
        try:
            # no-open mode: README, differences from overlayfs
            assert (dirs.upper / "f").exists() == (mode != "no-open")
            os.pwrite(fd, b"L", 0)
            assert (dirs.upper / "f").read_bytes() == b"Lower data"
        finally:
            os.close(fd)


def test_reader_opened_before_a_copy_up_sees_the_new_data(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    """A reader reads what the union holds now (in passthrough mode too: a file this small is
    not passed through; for one that is, see test_passthrough.py)."""
    (dirs.lowers[0] / "f").write_bytes(b"old data")
    with union_mount(dirs) as m, open(m.mnt / "f", "rb", buffering=0) as reader:
        assert reader.read() == b"old data"
        with open(m.mnt / "f", "r+b", buffering=0) as writer:
            writer.write(b"NEW")
        assert os.pread(reader.fileno(), 100, 0) == b"NEW data"


def test_mmap_write_to_a_lower_file_copies_it_up(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    (dirs.lowers[0] / "f").write_bytes(b"a" * 8192)
    assert dirs.upper is not None
    with union_mount(dirs) as m:
        with open(m.mnt / "f", "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            mm[4096:4100] = b"MMAP"
            mm.flush()
        assert (m.mnt / "f").read_bytes()[4090:4104] == b"aaaaaaMMAPaaaa"
    assert (dirs.upper / "f").read_bytes() == b"a" * 4096 + b"MMAP" + b"a" * 4092
    assert (dirs.lowers[0] / "f").read_bytes() == b"a" * 8192


def test_files_unlinked_or_renamed_over_while_open_stay_usable(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    (dirs.lowers[0] / "low").write_bytes(b"lower")
    (dirs.lowers[0] / "victim").write_bytes(b"victim")
    with union_mount(dirs) as m:
        (m.mnt / "up").write_bytes(b"upper")
        (m.mnt / "new").write_bytes(b"replacement")
        up = os.open(m.mnt / "up", os.O_RDWR)
        low = os.open(m.mnt / "low", os.O_RDONLY)
        victim = os.open(m.mnt / "victim", os.O_RDONLY)
        try:
            os.unlink(m.mnt / "up")
            os.unlink(m.mnt / "low")
            os.rename(m.mnt / "new", m.mnt / "victim")
            assert os.fstat(up).st_nlink == 0
            assert os.pread(up, 100, 0) == b"upper"
            assert os.pread(low, 100, 0) == b"lower"
            assert os.pread(victim, 100, 0) == b"victim"
            os.pwrite(up, b"UP", 0)  # an upper file keeps being writable without a name
            os.ftruncate(up, 4)
            assert os.pread(up, 100, 0) == b"UPpe"
            assert (m.mnt / "victim").read_bytes() == b"replacement"
            assert sorted(os.listdir(m.mnt)) == ["victim"]
        finally:
            for fd in (up, low, victim):
                os.close(fd)


def test_more_open_files_than_the_fd_cache_all_read_right_and_fds_stay_bounded(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    count = FD_CACHE + 200
    lower = dirs.lowers[0] / "many"
    lower.mkdir()
    for i in range(count):
        (lower / f"f{i}").write_bytes(b"%d" % i * 3)
    # With OPEN/RELEASE, the RELEASEs of the files closed just before the unmount can still be
    # in the daemon when the kernel ends the connection: pyfuse3 then logs that the reply failed.
    late_release = [r"fuse_release\(\): fuse_reply_\* failed"]
    with union_mount(dirs, allowed_log_errors=late_release) as m:
        base = daemon_fds(m)
        fds = [os.open(m.mnt / "many" / f"f{i}", os.O_RDONLY) for i in range(count)]
        try:
            for _ in range(2):  # the second round reopens what the cache closed
                for i, fd in enumerate(fds):
                    # O_DIRECT is not used: the kernel's page cache would answer the second
                    # round, so drop it for this file first
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    assert os.pread(fd, 100, 0) == b"%d" % i * 3
            assert daemon_fds(m) <= base + FD_CACHE + 10
        finally:
            for fd in fds:
                os.close(fd)


def test_the_daemon_closes_fds_of_removed_files(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    with union_mount(dirs) as m:
        base = daemon_fds(m)
        (m.mnt / "d").mkdir()
        for i in range(300):
            (m.mnt / "d" / f"f{i}").write_bytes(b"x")
        for i in range(300):
            os.unlink(m.mnt / "d" / f"f{i}")
        os.rmdir(m.mnt / "d")
        deadline = time.monotonic() + 10
        while daemon_fds(m) > base + 20 and time.monotonic() < deadline:
            time.sleep(0.05)  # FORGETs of evicted inodes come in batches
        assert daemon_fds(m) <= base + 20
