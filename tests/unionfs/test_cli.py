"""The union's commands through the installed scripts: bad input, daemonized mounts
(fuse-strata, strata mount/umount, `python -m unionfs`, `mount -t fuse.fuse-strata`, fstab).

The commands run in child processes, like an engine or mount(8) would run them. Every mount is
undone in a `finally` (and an autouse fixture lazily unmounts anything a failed test left under
its tmp_path).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from tests.helpers.commands import (
    FUSE_STRATA,
    STRATA,
    assert_one_line_error,
    run,
)
from tests.helpers.mounts import skip_unless_fuse, skip_unless_root
from unionfs import libc, mountinfo

MOUNT_TIMEOUT: Final = 30.0
EXIT_TIMEOUT: Final = 15.0


# ---------------------------------------------------------------------------------------------
# helpers for the tests that run the installed commands


@pytest.fixture(autouse=True)
def _no_mounts_left_behind(tmp_path: Path) -> Iterator[None]:
    """Unmount (lazily) whatever a test left mounted below its tmp_path, and fail it for that."""
    yield
    root = Path(os.path.realpath(tmp_path))
    leftovers = [m for m in mountinfo.read_mountinfo() if root in m.mountpoint.parents]
    for m in reversed(leftovers):
        force_unmount(m.mountpoint)
    assert not leftovers, f"mounts left behind: {[str(m.mountpoint) for m in leftovers]}"


def mounts_at(path: Path) -> list[mountinfo.MountEntry]:
    return mountinfo.mounts_at(Path(os.path.realpath(path)))


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie whose parent does not reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def daemon_pids(mnt: Path) -> set[int]:
    """The processes serving the FUSE mount at `mnt` (holding its /dev/fuse connection)."""
    top = mounts_at(mnt)[-1]
    return {pid for pid, _ in mountinfo.fuse_device_holders(top.minor)}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def force_unmount(mnt: Path) -> None:
    """Undo whatever is mounted at `mnt`: fusermount3 -u, then -uz, then umount -l; then make
    sure the FUSE daemons that served it are gone (TERM, then KILL)."""
    for _ in range(10):
        entries = mounts_at(mnt)
        if not entries:
            return
        top = entries[-1]
        pids = daemon_pids(mnt) if top.fstype.startswith("fuse") and top.major == 0 else set()
        for cmd in (["fusermount3", "-u"], ["fusermount3", "-uz"], ["umount", "-l"]):
            if run(*cmd, mnt).returncode == 0:
                break
        deadline = time.monotonic() + EXIT_TIMEOUT
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                if alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            time.sleep(0.2)


@contextlib.contextmanager
def unmounted_afterwards(mnt: Path) -> Iterator[None]:
    try:
        yield
    finally:
        force_unmount(mnt)


@contextlib.contextmanager
def tmpfs_at(path: Path, *options: str) -> Iterator[Path]:
    skip_unless_root()
    path.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options) or "rw", "strata-test", path], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


@contextlib.contextmanager
def read_only_bind(path: Path) -> Iterator[Path]:
    skip_unless_root()
    subprocess.run(["mount", "--bind", path, path], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path, path], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


Snapshot = dict[str, tuple[int, int, int, bytes]]


def snapshot(*roots: Path) -> Snapshot:
    """Every entry below the roots (and the roots): mode, size, mtime and file contents."""
    entries: Snapshot = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in ["", *dirnames, *filenames]:
                path = Path(dirpath, name)
                st = path.lstat()
                data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
                entries[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return entries


@dataclass(frozen=True)
class Layers:
    """lower1/ (top), lower2/ (base), upper/, work/ and mnt/ in one tmp dir."""

    root: Path
    lower1: Path
    lower2: Path
    upper: Path
    work: Path
    mnt: Path

    @classmethod
    def create(cls, root: Path) -> Layers:
        root = Path(os.path.realpath(root))
        layers = cls(
            root, root / "lower1", root / "lower2", root / "upper", root / "work", root / "mnt"
        )
        for d in (layers.lower1, layers.lower2, layers.upper, layers.work, layers.mnt):
            d.mkdir()
        (layers.lower1 / "both").write_text("from lower1\n")
        (layers.lower2 / "both").write_text("from lower2\n")
        (layers.lower2 / "base-only").write_text("base\n")
        (layers.lower1 / "dir").mkdir()
        (layers.lower1 / "dir" / "f").write_text("f\n")
        (layers.upper / "upper-only").write_text("upper\n")
        return layers

    @property
    def lowerdir(self) -> str:
        return f"lowerdir={self.lower1}:{self.lower2}"

    @property
    def rw_options(self) -> str:
        return f"{self.lowerdir},upperdir={self.upper},workdir={self.work}"

    def snapshot(self) -> Snapshot:
        return snapshot(self.lower1, self.lower2, self.upper, self.work)


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    return Layers.create(tmp_path)


# ---------------------------------------------------------------------------------------------
# bad input through the installed commands: one line, non-zero, nothing mounted, nothing changed


def _missing_lower(x: Layers) -> list[str]:
    return ["-o", f"lowerdir={x.lower1}:{x.root}/nope,upperdir={x.upper},workdir={x.work}"]


def _lower_is_a_file(x: Layers) -> list[str]:
    return ["-o", f"lowerdir={x.lower2}/base-only,upperdir={x.upper},workdir={x.work}"]


def _upper_without_work(x: Layers) -> list[str]:
    return ["-o", f"{x.lowerdir},upperdir={x.upper}"]


def _upper_inside_a_lower(x: Layers) -> list[str]:
    return ["-o", f"{x.lowerdir},upperdir={x.lower1}/dir,workdir={x.work}"]


def _malformed_lowerdir(x: Layers) -> list[str]:
    return ["-o", f"lowerdir={x.lower1}::{x.lower2},upperdir={x.upper},workdir={x.work}"]


def _unknown_option(x: Layers) -> list[str]:
    return ["-o", f"{x.rw_options},frobnicate"]


def _bad_mapping(x: Layers) -> list[str]:
    return ["-o", f"{x.rw_options},uidmapping=0:1000"]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (_missing_lower, "does not exist"),
        (_lower_is_a_file, "not a directory"),
        (_upper_without_work, "upperdir given without workdir"),
        (_upper_inside_a_lower, "must not be inside one another"),
        (_malformed_lowerdir, "empty path"),
        (_unknown_option, "fuse-strata: unknown option 'frobnicate'"),
        (_bad_mapping, "uidmapping="),
    ],
)
def test_fuse_strata_rejects_bad_layers_and_options(
    layers: Layers, make_args: Callable[[Layers], list[str]], message: str
) -> None:
    before = layers.snapshot()
    line = assert_one_line_error(run(FUSE_STRATA, *make_args(layers), layers.mnt), "fuse-strata")
    assert message in line
    assert not mounts_at(layers.mnt)
    assert layers.snapshot() == before


def test_missing_mountpoint_is_rejected(layers: Layers) -> None:
    before = layers.snapshot()
    result = run(FUSE_STRATA, "-o", layers.rw_options, layers.root / "nomnt")
    assert "mountpoint" in assert_one_line_error(result, "fuse-strata")
    assert "does not exist" in result.stderr
    assert layers.snapshot() == before


def test_mountpoint_that_is_a_file_is_rejected(layers: Layers) -> None:
    result = run(FUSE_STRATA, "-o", layers.rw_options, layers.lower2 / "base-only")
    assert "not a directory" in assert_one_line_error(result, "fuse-strata")


def test_mountpoint_inside_a_layer_is_rejected(layers: Layers) -> None:
    before = layers.snapshot()
    result = run(FUSE_STRATA, "-o", layers.rw_options, layers.lower1 / "dir")
    assert "inside the layer" in assert_one_line_error(result, "fuse-strata")
    assert layers.snapshot() == before


def test_mountpoint_already_mounted_is_rejected(layers: Layers) -> None:
    with tmpfs_at(layers.mnt):
        before = layers.snapshot()
        result = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert "already mounted" in assert_one_line_error(result, "fuse-strata")
        assert len(mounts_at(layers.mnt)) == 1
        assert layers.snapshot() == before


def test_work_dir_that_is_not_writable_is_rejected(layers: Layers) -> None:
    with read_only_bind(layers.work):
        before = layers.snapshot()
        result = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert "not writable" in assert_one_line_error(result, "fuse-strata")
        assert not mounts_at(layers.mnt)
        assert layers.snapshot() == before


def test_work_dir_on_another_filesystem_than_upper_is_rejected(layers: Layers) -> None:
    with tmpfs_at(layers.root / "otherfs") as other:
        work = other / "work"
        work.mkdir()
        before = layers.snapshot()
        options = f"{layers.lowerdir},upperdir={layers.upper},workdir={work}"
        result = run(FUSE_STRATA, "-o", options, layers.mnt)
        assert "not on the same filesystem" in assert_one_line_error(result, "fuse-strata")
        assert not mounts_at(layers.mnt)
        assert layers.snapshot() == before
        assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [[STRATA, "mount"], [sys.executable, "-m", "unionfs"]],
    ids=["strata-mount", "python-m-unionfs"],
)
def test_strata_mount_rejects_bad_input(layers: Layers, command: list[str | Path]) -> None:
    before = layers.snapshot()
    missing = run(*command, "--lower", layers.root / "nope", layers.mnt)
    assert "does not exist" in assert_one_line_error(missing, "strata")
    no_work = run(*command, "--lower", layers.lower1, "--upper", layers.upper, layers.mnt)
    assert "--upper and --work" in assert_one_line_error(no_work, "strata")
    usage = run(*command, layers.mnt)
    assert "--lower" in assert_one_line_error(usage, "strata")
    assert not mounts_at(layers.mnt)
    assert layers.snapshot() == before


def test_strata_umount_of_something_not_mounted_fails_clearly(tmp_path: Path) -> None:
    result = run(STRATA, "umount", tmp_path)
    assert assert_one_line_error(result, "strata") == f"strata: {tmp_path}: not mounted"
    assert result.returncode == 1


def test_strata_umount_refuses_a_mount_that_is_not_fuse(tmp_path: Path) -> None:
    with tmpfs_at(tmp_path / "t") as t:
        result = run(STRATA, "umount", t)
        assert "not a FUSE mount" in assert_one_line_error(result, "strata")
        assert mounts_at(t)


# A FUSE mount whose daemon was killed: stat() of the mount point fails with ENOTCONN.
_DEAD_MOUNT_SCRIPT: Final = textwrap.dedent(
    """
    import os, signal, sys
    import pyfuse3
    pyfuse3.init(pyfuse3.Operations(), sys.argv[1], set())
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.fuse
def test_dead_fuse_mount_at_the_mountpoint_is_reported_and_strata_umount_clears_it(
    layers: Layers,
) -> None:
    skip_unless_fuse()
    with unmounted_afterwards(layers.mnt):
        subprocess.run(
            [sys.executable, "-c", _DEAD_MOUNT_SCRIPT, str(layers.mnt)], check=False, timeout=30
        )
        assert mounts_at(layers.mnt), "could not make a dead FUSE mount"
        with pytest.raises(OSError, match=os.strerror(errno.ENOTCONN)):
            os.stat(layers.mnt)
        result = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert "dead FUSE mount" in assert_one_line_error(result, "fuse-strata")
        cleared = run(STRATA, "umount", layers.mnt)
        assert cleared.returncode == 0, cleared.stderr
        assert not mounts_at(layers.mnt)


# ---------------------------------------------------------------------------------------------
# real mounts


@pytest.mark.fuse
def test_fuse_strata_daemonizes_and_returns_once_the_mount_is_live(layers: Layers) -> None:
    skip_unless_fuse()
    link = (
        layers.root / "low:er"
    )  # a symlinked lower (as containers/storage's l/ links) with a colon
    link.symlink_to(layers.lower2)
    lowerdir = f"lowerdir={layers.lower1}:{layers.root}/low\\:er"
    options = f"{lowerdir},upperdir={layers.upper},workdir={layers.work}"
    with unmounted_afterwards(layers.mnt):
        # capture_output: run() returns only when the daemon has let go of our stdout/stderr.
        result = run(FUSE_STRATA, "-o", options, layers.mnt)
        assert result.returncode == 0, result.stderr
        assert (result.stdout, result.stderr) == ("", "")
        assert (layers.mnt / "both").read_text() == "from lower1\n"  # right away
        assert (layers.mnt / "base-only").read_text() == "base\n"
        assert (layers.mnt / "upper-only").read_text() == "upper\n"
        assert libc.statfs_type(layers.mnt) == mountinfo.FUSE_SUPER_MAGIC
        pids = daemon_pids(layers.mnt)
        assert pids
        for pid in pids:
            assert os.getsid(pid) != os.getsid(0)  # its own session
            for fd in (0, 1, 2):
                assert os.readlink(f"/proc/{pid}/fd/{fd}") == os.devnull
            assert os.readlink(f"/proc/{pid}/cwd") == "/"


@pytest.mark.fuse
def test_strata_umount_unmounts_and_waits_until_the_daemon_is_gone(layers: Layers) -> None:
    skip_unless_fuse()
    with unmounted_afterwards(layers.mnt):
        mounted = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert mounted.returncode == 0, mounted.stderr
        (layers.mnt / "new").write_text("written through the union\n")
        pids = daemon_pids(layers.mnt)
        result = run(STRATA, "umount", layers.mnt)
        assert result.returncode == 0, result.stderr
        assert (result.stdout, result.stderr) == ("", "")
        assert not mounts_at(layers.mnt)
        assert not any(alive(pid) for pid in pids)
        assert (layers.upper / "new").read_text() == "written through the union\n"
        again = run(STRATA, "umount", layers.mnt)
        assert "not mounted" in assert_one_line_error(again, "strata")


@pytest.mark.fuse
def test_strata_umount_times_out_clearly_when_the_daemon_does_not_let_go(layers: Layers) -> None:
    skip_unless_fuse()
    skip_unless_root()  # unmounting without the daemon's help: umount(2)
    with unmounted_afterwards(layers.mnt):
        mounted = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert mounted.returncode == 0, mounted.stderr
        pids = daemon_pids(layers.mnt)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            result = run(STRATA, "umount", "--timeout", "0.5", layers.mnt)
            line = assert_one_line_error(result, "strata")
            assert "still holds the FUSE connection" in line
            assert not mounts_at(layers.mnt)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        wait_for(lambda: not any(alive(p) for p in pids), EXIT_TIMEOUT, "the daemon to exit")


@pytest.mark.fuse
def test_strata_mount_without_upper_is_a_read_only_union(layers: Layers) -> None:
    skip_unless_fuse()
    with unmounted_afterwards(layers.mnt):
        before = layers.snapshot()
        result = run(
            STRATA, "mount", "--lower", layers.lower1, "--lower", layers.lower2, layers.mnt
        )
        assert result.returncode == 0, result.stderr
        assert (result.stdout, result.stderr) == ("", "")
        assert (layers.mnt / "both").read_text() == "from lower1\n"
        assert sorted(os.listdir(layers.mnt)) == ["base-only", "both", "dir"]
        with pytest.raises(OSError, match=os.strerror(errno.EROFS)):
            (layers.mnt / "new").write_text("x")
        umounted = run(STRATA, "umount", layers.mnt)
        assert umounted.returncode == 0, umounted.stderr
        assert layers.snapshot() == before


@pytest.mark.fuse
def test_python_m_unionfs_f_serves_in_the_foreground_until_unmounted(layers: Layers) -> None:
    skip_unless_fuse()
    log = layers.root / "daemon.log"
    cmd = [sys.executable, "-m", "unionfs", "-f", "--lower", str(layers.lower1)]
    cmd += ["--upper", str(layers.upper), "--work", str(layers.work), str(layers.mnt)]
    with unmounted_afterwards(layers.mnt), log.open("wb") as err:
        proc = subprocess.Popen(cmd, stderr=err)
        try:
            wait_for(
                lambda: bool(mounts_at(layers.mnt)) or proc.poll() is not None,
                MOUNT_TIMEOUT,
                "the mount",
            )
            assert proc.poll() is None, log.read_text()
            assert (layers.mnt / "both").read_text() == "from lower1\n"
            assert daemon_pids(layers.mnt) == {proc.pid}
            result = run(STRATA, "umount", layers.mnt)
            assert result.returncode == 0, result.stderr
            assert proc.wait(timeout=EXIT_TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert b"Traceback" not in log.read_bytes()


@pytest.mark.fuse
def test_a_failure_in_the_daemon_reaches_the_parent_as_one_line(layers: Layers) -> None:
    skip_unless_fuse()
    second = layers.root / "mnt2"
    second.mkdir()
    with unmounted_afterwards(layers.mnt), unmounted_afterwards(second):
        first = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert first.returncode == 0, first.stderr
        # The same upper and work dir again: validation in the parent passes, the mount itself
        # refuses layers in use by another strata mount.
        result = run(FUSE_STRATA, "-o", layers.rw_options, second)
        assert_one_line_error(result, "fuse-strata")
        assert not mounts_at(second)


@pytest.fixture
def fuse_strata_on_default_path() -> Iterator[None]:
    """mount(8) runs mount.fuse3 without PATH, and it runs `sh -c 'fuse-strata ...'`, so sh
    searches its default PATH. Link the venv's fuse-strata into /usr/local/bin for the test and
    remove the link afterwards (a link we did not make is left alone)."""
    skip_unless_root()
    if shutil.which("mount.fuse3", path="/sbin:/usr/sbin") is None:
        pytest.skip("mount.fuse3 is not installed (apt install fuse3)")
    link = Path("/usr/local/bin/fuse-strata")
    if os.path.lexists(link):
        if link.resolve() != FUSE_STRATA.resolve():
            pytest.skip(f"{link} exists and is not this checkout's fuse-strata")
        yield
        return
    link.symlink_to(FUSE_STRATA)
    try:
        yield
    finally:
        link.unlink(missing_ok=True)


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_strata_on_default_path")
def test_mount_t_fuse_fuse_strata_works(layers: Layers) -> None:
    skip_unless_fuse()
    with unmounted_afterwards(layers.mnt):
        result = run(
            "mount", "-t", "fuse.fuse-strata", "layers", layers.mnt, "-o", layers.rw_options
        )
        assert result.returncode == 0, result.stderr
        assert (layers.mnt / "both").read_text() == "from lower1\n"
        assert mounts_at(layers.mnt)[-1].fstype.startswith("fuse")
        umounted = run(STRATA, "umount", layers.mnt)
        assert umounted.returncode == 0, umounted.stderr


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_strata_on_default_path")
def test_an_fstab_line_works_with_mount_T(layers: Layers) -> None:
    skip_unless_fuse()
    fstab = layers.root / "fstab"
    options = f"{layers.rw_options},nofail,_netdev,noatime,x-systemd.requires=/"
    fstab.write_text(f"layers {layers.mnt} fuse.fuse-strata {options} 0 0\n")
    with unmounted_afterwards(layers.mnt):
        result = run("mount", "-T", fstab, layers.mnt)
        assert result.returncode == 0, result.stderr
        assert (layers.mnt / "dir" / "f").read_text() == "f\n"
        umounted = run("umount", layers.mnt)
        assert umounted.returncode == 0, umounted.stderr
        assert not mounts_at(layers.mnt)


def test_a_lower_layer_given_twice_or_inside_another_is_refused(tmp_path: Path) -> None:
    """As kernel overlayfs refuses overlapping layers (issue 12: `--lower l1 --lower l1`
    mounted)."""
    (tmp_path / "l1/sub").mkdir(parents=True)
    (tmp_path / "m").mkdir()
    l1 = str(tmp_path / "l1")
    twice = run(STRATA, "mount", "--lower", l1, "--lower", l1 + "/", tmp_path / "m")
    assert assert_one_line_error(twice, "strata") == f"strata: lower layer {l1}: given twice"
    nested = run(STRATA, "mount", "--lower", l1 + "/sub", "--lower", l1, tmp_path / "m")
    assert "one is inside the other" in assert_one_line_error(nested, "strata")
    assert not os.path.ismount(tmp_path / "m")
    assert cli_unique(l1, l1 + "/", l1 + "/sub") == (l1, l1 + "/sub")


def cli_unique(*paths: str) -> tuple[str, ...]:
    from unionfs.config import unique_lowers

    return tuple(str(p) for p in unique_lowers([Path(p) for p in paths]))
