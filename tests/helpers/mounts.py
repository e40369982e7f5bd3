"""Real mounts for tests: strata in a child process, kernel overlayfs as the oracle, tree snapshots.

Every mount made here is undone in a `finally`, and a strata daemon that crashed, exited non-zero or
logged a traceback or an ERROR line fails the test that used it (the checklogs idea from s3ql).

- `StrataMount`: `python -m unionfs ... -f MNT` in a child process, stderr to a log file.
- `KernelOverlay`: `mount -t overlay` (root only), the differential oracle.
- `convert_oci_whiteouts()`: OCI `.wh.` whiteouts -> 0/0 chardevs and opaque xattrs for overlayfs.
- `tree_snapshot()` / `diff_snapshots()`: compare whole trees, e.g. strata's merged view against the
  kernel's, or a lower layer before and after a test.
- Fixtures `union_mount` and `kernel_overlay` are factories returning those context managers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple, Self

import pytest
import xxhash

from unionfs import mountinfo
from unionfs.mountinfo import MountEntry

MOUNT_TIMEOUT: Final = 30.0  # seconds for the daemon to make its mount
EXIT_TIMEOUT: Final = 15.0  # seconds for the daemon to exit after its mount is gone
UNMOUNT_RETRIES: Final = 10  # `fusermount3 -u` attempts on EBUSY before `-uz`

# Log lines that fail a test: a traceback, a faulthandler dump, or an ERROR/CRITICAL record in
# the usual formats ("ERROR:unionfs.ops:...", "... ERROR unionfs.ops ...", "[ERROR] ...").
_BAD_LOG_LINE: Final = re.compile(
    rb"Traceback \(most recent call last\)|Fatal Python error"
    rb"|(?:^|[ \t\[])(?:ERROR|CRITICAL)(?:[:\]]|[ \t]|$)"
)
_LOG_TAIL_LINES: Final = 200


# -------------------------------------------------------------------------------------------------
# skips


def skip_unless_fuse() -> None:
    """Skip the calling test, with a reason, when FUSE mounts cannot be made here."""
    if shutil.which("fusermount3") is None:
        pytest.skip("fusermount3 is not installed (apt install fuse3)")
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        pytest.skip(f"cannot open /dev/fuse: {exc.strerror}")
    os.close(fd)


def skip_unless_root() -> None:
    """Skip the calling test, with a reason, unless it runs as root."""
    if os.geteuid() != 0:
        pytest.skip("needs root")


def skip_unless_kernel_overlay() -> None:
    """Skip unless running as root with overlayfs available in the kernel."""
    skip_unless_root()
    if not _kernel_has_overlay():
        subprocess.run(["modprobe", "overlay"], capture_output=True, check=False)
        if not _kernel_has_overlay():
            pytest.skip("the kernel has no overlay filesystem")


def _kernel_has_overlay() -> bool:
    with open("/proc/filesystems") as f:
        return any(line.split()[-1:] == ["overlay"] for line in f)


# -------------------------------------------------------------------------------------------------
# /proc/self/mountinfo


def mounts_at(path: Path | str) -> list[MountEntry]:
    """Mounts whose mount point is `path` (after realpath), oldest first."""
    return mountinfo.mounts_at(Path(os.path.realpath(path)))


def is_mounted(path: Path | str) -> bool:
    return mountinfo.is_mounted(Path(os.path.realpath(path)))


CRASH_STRIDE: Final = 16 * 1024


def append_bytes(path: Path, data: bytes) -> None:
    """One O_APPEND write of `data` to `path` (through a mount: a copy-up of a lower file)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def make_strided_file(path: Path, size: int) -> None:
    """`size` bytes with 4 KiB of data at each CRASH_STRIDE, holes between: a big file that is
    quick to write and whose copy (holes kept) is slow enough to be killed half-way."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.ftruncate(fd, size)
        block = b"L" * 4096
        for off in range(0, size, CRASH_STRIDE):
            os.pwrite(fd, block, off)
    finally:
        os.close(fd)


# -------------------------------------------------------------------------------------------------
# strata in a child process


@dataclass(frozen=True)
class UnionDirs:
    """The directories of one union: `lowers` top first, optional `upper`/`work`, and `mnt`."""

    lowers: list[Path]
    upper: Path | None
    work: Path | None
    mnt: Path

    @classmethod
    def create(cls, tmp_path: Path, nlowers: int = 2, *, upper: bool = True) -> UnionDirs:
        """Make `lower0/` (top) ... `lower{n-1}/` (base), `upper/`, `work/` and `mnt/`."""
        lowers = [tmp_path / f"lower{i}" for i in range(nlowers)]
        dirs = cls(
            lowers=lowers,
            upper=tmp_path / "upper" if upper else None,
            work=tmp_path / "work" if upper else None,
            mnt=tmp_path / "mnt",
        )
        for d in (*lowers, dirs.upper, dirs.work, dirs.mnt):
            if d is not None:
                d.mkdir(exist_ok=True)
        return dirs

    def cli_args(self) -> list[str]:
        """The layer arguments of `python -m unionfs` (without `-f MNT`)."""
        args: list[str] = []
        for lower in self.lowers:
            args += ["--lower", str(lower)]
        if self.upper is not None:
            args += ["--upper", str(self.upper)]
        if self.work is not None:
            args += ["--work", str(self.work)]
        return args


class StrataMount:
    """`python -m unionfs ... -f MNT` in a child process, as a context manager.

    Entering starts the daemon (stderr to `log_path`, never a pipe: a full pipe would block it) and
    waits until the FUSE mount appears in /proc/self/mountinfo, failing at once with the log if the
    daemon exits first. Leaving always unmounts (`fusermount3 -u`, retried on EBUSY, then `-uz`),
    waits for the daemon (terminate, then kill), and then fails the test when the daemon exited
    non-zero or its log holds a traceback or an ERROR line. After `kill_daemon()` (crash tests) the
    exit status and the log are not checked.
    """

    def __init__(
        self,
        dirs: UnionDirs,
        *,
        log_path: Path,
        extra_args: Sequence[str] = (),
        allowed_log_errors: Sequence[str] = (),
        mount_timeout: float = MOUNT_TIMEOUT,
    ) -> None:
        self.dirs = dirs
        self.mnt = dirs.mnt
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.allowed_log_errors = [re.compile(p.encode()) for p in allowed_log_errors]
        self.mount_timeout = mount_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.killed = False
        self._unmounted = False

    # -- public --------------------------------------------------------------------------------

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "unionfs",
            *self.dirs.cli_args(),
            *self.extra_args,
            "-f",
            str(self.mnt),
        ]

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def kill_daemon(self) -> None:
        """SIGKILL the daemon (a crash), then lazily unmount the dead mount."""
        assert self.proc is not None, "the daemon was not started"
        self.killed = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        if is_mounted(self.mnt):
            _fusermount("-uz", self.mnt)
        self._unmounted = True

    def kill_daemon_mid_copy_up(self, name: str, size: int, tmp: Path) -> None:
        """Write 4 KiB at the end of the `size`-byte file `name` (which copies its data up),
        wait until that copy-up shows in the work dir's `tmp`, then SIGKILL the daemon: the
        crash whose recovery the copy-up tests check. Fails if no copy-up was seen."""
        dd = subprocess.Popen(
            [
                "dd",
                "if=/dev/zero",
                f"of={self.mnt / name}",
                "bs=4096",
                "count=1",
                f"seek={(size - 4096) // 4096}",
                "conv=notrunc",
                "status=none",
            ],
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while not os.listdir(tmp):
                assert dd.poll() is None, "the copy-up ended before it could be seen"
                assert time.monotonic() < deadline, "no copy-up started"
            self.kill_daemon()
        finally:
            dd.kill()
            dd.wait()

    def unmount(self) -> None:
        """Unmount and wait for the daemon; idempotent (also done by leaving the context)."""
        if self._unmounted:
            return
        self._unmounted = True
        try:
            unmount_fuse(self.mnt)
        finally:
            self._reap()

    def problems(self) -> list[str]:
        """What is wrong with how the daemon ended (empty when all is well)."""
        if self.killed or self.proc is None:
            return []
        found = []
        if self.proc.returncode != 0:
            found.append(f"strata daemon exited with status {self.proc.returncode}")
        log = self.log_path.read_bytes() if self.log_path.exists() else b""
        for line in log.splitlines():
            if not _BAD_LOG_LINE.search(line):
                continue
            if not any(p.search(line) for p in self.allowed_log_errors):
                found.append(f"strata daemon logged: {line.decode(errors='replace')}")
        if is_mounted(self.mnt):
            found.append(f"{self.mnt} is still mounted")
        return found

    # -- context manager -----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.unmount()
        except BaseException as cleanup_exc:
            if exc is None:
                raise
            exc.add_note(f"and unmounting {self.mnt} failed too: {cleanup_exc!r}")
        problems = self.problems()
        if exc is not None:
            # Do not hide the test's own failure; attach what the daemon said instead.
            if problems or self.log_text().strip():
                exc.add_note(self._report(problems))
            return
        if problems:
            pytest.fail(self._report(problems), pytrace=False)

    # -- internals -----------------------------------------------------------------------------

    def start(self) -> None:
        assert self.proc is None, "a StrataMount is entered once"
        before = {m.mount_id for m in mounts_at(self.mnt)}
        env = dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONDONTWRITEBYTECODE="1")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", env=env
            )
        try:
            self._wait_for_mount(before)
        except BaseException:
            self.killed = True  # the failure already carries the log
            self._unmounted = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
            if {m.mount_id for m in mounts_at(self.mnt)} - before:
                _fusermount("-uz", self.mnt)
            raise

    def _wait_for_mount(self, before: set[int]) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.mount_timeout
        while True:
            new = [m for m in mounts_at(self.mnt) if m.mount_id not in before]
            if any(m.fstype.startswith("fuse") for m in new):
                return
            if self.proc.poll() is not None:
                pytest.fail(
                    self._report(
                        [f"strata daemon exited with status {self.proc.returncode} before mounting"]
                    ),
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(
                    self._report([f"no FUSE mount at {self.mnt} after {self.mount_timeout}s"]),
                    pytrace=False,
                )
            time.sleep(0.02)

    def _reap(self) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            proc.wait(timeout=EXIT_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            pass
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with self.log_path.open("ab") as log:
            log.write(b"\n[test harness] ERROR: daemon did not exit after unmount; signalled it\n")

    def _report(self, problems: Iterable[str]) -> str:
        lines = self.log_text().splitlines()
        tail = lines[-_LOG_TAIL_LINES:]
        head = "\n".join(problems) or "the strata daemon said:"
        cut = f"(last {_LOG_TAIL_LINES} of {len(lines)} lines)" if len(lines) > len(tail) else ""
        return (
            f"{head}\ncommand: {' '.join(self.command)}\n"
            f"--- daemon log {self.log_path} {cut}---\n" + "\n".join(tail) + "\n--- end of log ---"
        )


def _fusermount(flag: str, mnt: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["fusermount3", flag, str(mnt)], capture_output=True, text=True, check=False
    )


def unmount_fuse(mnt: Path) -> None:
    """`fusermount3 -u`, retried while EBUSY, then `fusermount3 -uz` as the last resort."""
    for attempt in range(UNMOUNT_RETRIES):
        if not is_mounted(mnt):
            return
        result = _fusermount("-u", mnt)
        if result.returncode == 0:
            return
        if "busy" not in result.stderr.lower():
            break
        time.sleep(0.1 * (attempt + 1))
    if is_mounted(mnt):
        _fusermount("-uz", mnt)


# -------------------------------------------------------------------------------------------------
# kernel overlayfs


class KernelOverlay:
    """`mount -t overlay` over `lowers` (top first) [+ upper/work] at `mnt`; always unmounted.

    Kernel overlayfs reads only its own whiteout forms (0/0 char devices and
    `trusted.overlay.opaque` xattrs): pass it layers run through `convert_oci_whiteouts()`.
    """

    def __init__(self, dirs: UnionDirs, *, options: Sequence[str] = ()) -> None:
        for path in (*dirs.lowers, dirs.upper, dirs.work):
            if path is not None and any(c in str(path) for c in ",:\\"):
                raise ValueError(f"{path}: overlay options cannot hold ',', ':' or '\\' here")
        if dirs.upper is None and len(dirs.lowers) < 2:
            raise ValueError("a read-only kernel overlay needs at least two lower layers")
        self.dirs = dirs
        self.mnt = dirs.mnt
        opts = ["lowerdir=" + ":".join(str(p) for p in dirs.lowers)]
        if dirs.upper is not None:
            assert dirs.work is not None, "upper needs work"
            opts += [f"upperdir={dirs.upper}", f"workdir={dirs.work}"]
        self.options = ",".join([*opts, *options])
        self._mounted = False

    def __enter__(self) -> Self:
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", self.options, str(self.mnt)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"mount -t overlay -o {self.options} {self.mnt} failed: {result.stderr}")
        self._mounted = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unmount()

    def unmount(self) -> None:
        if not self._mounted:
            return
        self._mounted = False
        for attempt in range(UNMOUNT_RETRIES):
            result = subprocess.run(
                ["umount", str(self.mnt)], capture_output=True, text=True, check=False
            )
            if result.returncode == 0 or not is_mounted(self.mnt):
                return
            time.sleep(0.1 * (attempt + 1))
        subprocess.run(["umount", "-l", str(self.mnt)], check=False)


OCI_WHITEOUT_PREFIX: Final = ".wh."
OCI_OPAQUE_MARKER: Final = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR: Final = "trusted.overlay.opaque"


def convert_oci_whiteouts(layer_dir: Path) -> None:
    """Rewrite an OCI layer directory in place into the form kernel overlayfs reads.

    `.wh.NAME` becomes a 0/0 character device `NAME` (or, when the layer also holds a directory
    `NAME`, makes that directory opaque); `.wh..wh..opq` becomes `trusted.overlay.opaque=y` on its
    directory. Directory times are restored so the converted tree compares equal. Needs root (mknod,
    trusted xattrs). Destructive: run it on a copy.
    """
    for dirpath, _dirnames, filenames in os.walk(layer_dir):
        markers = [n for n in filenames if n.startswith(OCI_WHITEOUT_PREFIX)]
        if not markers:
            continue
        st = os.lstat(dirpath)
        for name in markers:
            os.unlink(os.path.join(dirpath, name))
        for name in markers:
            if name == OCI_OPAQUE_MARKER:
                os.setxattr(dirpath, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
                continue
            target = os.path.join(dirpath, name[len(OCI_WHITEOUT_PREFIX) :])
            try:
                tst = os.lstat(target)
            except FileNotFoundError:
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                continue
            if stat.S_ISDIR(tst.st_mode):  # deleted and re-made in one layer: hide the lower dir
                os.setxattr(target, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
            # a non-directory of the same name already hides the lower entry
        os.utime(dirpath, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_tree(src: Path, dst: Path) -> None:
    """`cp -a` (owners, modes, times, xattrs, hard links, devices) of `src` to a new `dst`."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)], check=True)


def is_chardev_whiteout(path: Path) -> bool:
    """Is `path` a 0/0 character device (the kernel's whiteout form)?"""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_whiteout_in(directory: Path, name: str) -> bool:
    """Whether `directory` (a real layer dir) holds a whiteout for `name` in any common form."""
    try:
        st = os.lstat(directory / name)
    except FileNotFoundError:
        return (directory / (OCI_WHITEOUT_PREFIX + name)).is_file()
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


# -------------------------------------------------------------------------------------------------
# running commands in a merged root


CHROOT_ENV: Final = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C",
    "DEBIAN_FRONTEND": "noninteractive",
}


def chroot_run(
    root: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run `chroot root argv...` (root only) and return its captured output.

    With `check`, a non-zero exit fails the test showing the command's stdout and stderr.
    """
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"  # found on our PATH, not the chroot's
    result = subprocess.run(
        [chroot, str(root), *argv],
        env=dict(env if env is not None else CHROOT_ENV),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"chroot {root} {argv!r} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
    return result


# -------------------------------------------------------------------------------------------------
# tree snapshots


class EntrySnapshot(NamedTuple):
    """What `tree_snapshot()` records for one path; excluded fields are None."""

    kind: str  # dir, file, symlink, fifo, chr, blk, socket
    mode: int  # permission bits incl. setuid/setgid/sticky
    uid: int
    gid: int
    size: int | None
    nlink: int | None
    content: str | None  # xxh3-128 of a regular file's data
    target: bytes | None  # symlink target
    rdev: tuple[int, int] | None  # (major, minor) of a device
    xattrs: tuple[tuple[str, bytes], ...] | None
    hardlinks: tuple[str, ...]  # all paths in the tree sharing this non-directory's inode, if > 1
    mtime_ns: int | None
    atime_ns: int | None
    ctime_ns: int | None
    ino: int | None


_KINDS: Final = (
    (stat.S_ISDIR, "dir"),
    (stat.S_ISREG, "file"),
    (stat.S_ISLNK, "symlink"),
    (stat.S_ISFIFO, "fifo"),
    (stat.S_ISCHR, "chr"),
    (stat.S_ISBLK, "blk"),
    (stat.S_ISSOCK, "socket"),
)


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    raise ValueError(f"unknown file type {mode:o}")


def file_hash(path: Path | str) -> str:
    h = xxhash.xxh3_128()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def read_xattrs(path: Path | str) -> tuple[tuple[str, bytes], ...]:
    """All extended attributes of `path` (not following a symlink), sorted by name."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return ()
        raise
    return tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False)) for n in names))


def tree_snapshot(
    root: Path | str,
    *,
    content: bool = True,
    xattrs: bool = True,
    mtime: bool = True,
    atime: bool = False,
    ctime: bool = False,
    ino: bool = False,
    dir_size: bool = True,
    dir_nlink: bool = True,
    nlink: bool = True,
    exclude: Callable[[str], bool] | None = None,
) -> dict[str, EntrySnapshot]:
    """Walk `root` without following symlinks; map "/rel/path" ("/" for root) to its EntrySnapshot.

    Hard links are recorded as groups of paths (which names share an inode), never as raw inode
    numbers, so two mounts of the same tree compare equal. atime is off by default (reading through
    a mount updates it, relatime); ctime is off by default (copies and extraction cannot keep it).
    `exclude(relpath)` prunes a path and, for a directory, everything below it.
    """
    root = os.fspath(root)
    stats: dict[str, os.stat_result] = {}
    stack = ["/"]
    while stack:
        rel = stack.pop()
        full = root + rel if rel != "/" else root
        st = os.lstat(full)
        stats[rel] = st
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(full) as it:
                names = sorted(e.name for e in it)
            for name in reversed(names):
                child = (rel if rel != "/" else "") + "/" + name
                if exclude is None or not exclude(child):
                    stack.append(child)

    groups: dict[tuple[int, int], list[str]] = {}
    for rel, st in stats.items():
        if not stat.S_ISDIR(st.st_mode):
            groups.setdefault((st.st_dev, st.st_ino), []).append(rel)

    snap: dict[str, EntrySnapshot] = {}
    for rel, st in stats.items():
        full = root + rel if rel != "/" else root
        kind = _kind(st.st_mode)
        is_dir = kind == "dir"
        group = () if is_dir else tuple(sorted(groups[(st.st_dev, st.st_ino)]))
        snap[rel] = EntrySnapshot(
            kind=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=None if is_dir and not dir_size else st.st_size,
            nlink=None if not nlink or (is_dir and not dir_nlink) else st.st_nlink,
            content=file_hash(full) if content and kind == "file" else None,
            target=os.readlink(os.fsencode(full)) if kind == "symlink" else None,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None,
            xattrs=read_xattrs(full) if xattrs else None,
            hardlinks=group if len(group) > 1 else (),
            mtime_ns=st.st_mtime_ns if mtime else None,
            atime_ns=st.st_atime_ns if atime else None,
            ctime_ns=st.st_ctime_ns if ctime else None,
            ino=st.st_ino if ino else None,
        )
    return snap


def diff_snapshots(
    left: Mapping[str, EntrySnapshot],
    right: Mapping[str, EntrySnapshot],
    *,
    names: tuple[str, str] = ("left", "right"),
    limit: int = 50,
) -> list[str]:
    """Readable differences between two snapshots (empty when equal), at most `limit` lines."""
    out: list[str] = []
    for path in sorted(left.keys() | right.keys()):
        a, b = left.get(path), right.get(path)
        if a == b:
            continue
        if a is None:
            out.append(f"{path}: only in {names[1]} ({b.kind if b else ''})")
        elif b is None:
            out.append(f"{path}: only in {names[0]} ({a.kind})")
        else:
            fields = [
                f"{name} {getattr(a, name)!r} != {getattr(b, name)!r}"
                for name in EntrySnapshot._fields
                if getattr(a, name) != getattr(b, name)
            ]
            out.append(f"{path}: " + "; ".join(fields))
        if len(out) >= limit:
            out.append("...")
            break
    return out


def without_fields(
    snap: Mapping[str, EntrySnapshot], paths: Iterable[str], fields: Iterable[str]
) -> dict[str, EntrySnapshot]:
    """A copy of `snap` with `fields` set to None for `paths` (to exclude known differences)."""
    cleared = dict.fromkeys(fields)
    unknown = cleared.keys() - set(EntrySnapshot._fields)
    if unknown:
        raise ValueError(f"not EntrySnapshot fields: {sorted(unknown)}")
    out = dict(snap)
    for path in paths:
        if path in out:
            out[path] = EntrySnapshot(**{**out[path]._asdict(), **cleared})
    return out


# -------------------------------------------------------------------------------------------------
# fixtures


class StrataMountFactory:
    """`union_mount(dirs)` or `union_mount(lowers=[...], upper=..., work=...)` -> StrataMount.

    Lowers are top first. Without `mnt`, a fresh `mnt<N>/` in the test's tmp dir is used; each
    mount logs to `strata-<N>.log` there. Mounts still up when the test ends are cleaned up.
    """

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[StrataMount] = []

    def __call__(
        self,
        dirs: UnionDirs | None = None,
        /,
        *,
        lowers: Sequence[Path] | None = None,
        upper: Path | None = None,
        work: Path | None = None,
        mnt: Path | None = None,
        extra_args: Sequence[str] = (),
        allowed_log_errors: Sequence[str] = (),
    ) -> StrataMount:
        n = len(self.made)
        if dirs is None:
            if lowers is None:
                raise TypeError("give a UnionDirs or lowers=")
            if mnt is None:
                mnt = self.tmp_path / f"mnt{n}"
                mnt.mkdir(exist_ok=True)
            dirs = UnionDirs(lowers=list(lowers), upper=upper, work=work, mnt=mnt)
        elif lowers is not None or upper is not None or work is not None or mnt is not None:
            raise TypeError("give either a UnionDirs or lowers=/upper=/work=/mnt=, not both")
        made = StrataMount(
            dirs,
            log_path=self.tmp_path / f"strata-{n}.log",
            extra_args=extra_args,
            allowed_log_errors=allowed_log_errors,
        )
        self.made.append(made)
        return made

    def cleanup(self) -> None:
        for made in self.made:
            if made.proc is not None and not made._unmounted:
                made.unmount()


class KernelOverlayFactory:
    """`kernel_overlay(dirs)` or `kernel_overlay(lowers=[...], upper=, work=)` -> KernelOverlay."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.made: list[KernelOverlay] = []

    def __call__(
        self,
        dirs: UnionDirs | None = None,
        /,
        *,
        lowers: Sequence[Path] | None = None,
        upper: Path | None = None,
        work: Path | None = None,
        mnt: Path | None = None,
        options: Sequence[str] = (),
    ) -> KernelOverlay:
        if dirs is None:
            if lowers is None:
                raise TypeError("give a UnionDirs or lowers=")
            if mnt is None:
                mnt = self.tmp_path / f"ovl-mnt{len(self.made)}"
                mnt.mkdir(exist_ok=True)
            dirs = UnionDirs(lowers=list(lowers), upper=upper, work=work, mnt=mnt)
        made = KernelOverlay(dirs, options=options)
        self.made.append(made)
        return made

    def cleanup(self) -> None:
        for made in self.made:
            made.unmount()


@pytest.fixture
def union_mount(tmp_path: Path) -> Iterator[StrataMountFactory]:
    """A factory of strata mounts (skips the test when FUSE is unavailable)."""
    skip_unless_fuse()
    factory = StrataMountFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture
def kernel_overlay(tmp_path: Path) -> Iterator[KernelOverlayFactory]:
    """A factory of kernel overlayfs mounts (skips the test unless root with overlayfs)."""
    skip_unless_kernel_overlay()
    factory = KernelOverlayFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


__all__ = [
    "CHROOT_ENV",
    "EntrySnapshot",
    "KernelOverlay",
    "KernelOverlayFactory",
    "StrataMount",
    "StrataMountFactory",
    "UnionDirs",
    "append_bytes",
    "chroot_run",
    "convert_oci_whiteouts",
    "copy_tree",
    "diff_snapshots",
    "file_hash",
    "is_mounted",
    "is_whiteout_in",
    "kernel_overlay",
    "mounts_at",
    "read_xattrs",
    "skip_unless_fuse",
    "skip_unless_kernel_overlay",
    "skip_unless_root",
    "tree_snapshot",
    "union_mount",
    "unmount_fuse",
    "without_fields",
]
