"""What is mounted where, and how to unmount a FUSE mount and know its daemon has let go.

One home for /proc/self/mountinfo: the union's command line, the runtime (rootfs and volume
clean-up), the bench and the tests read mounts through here. Paths come from mountinfo, never
from stat(): stat() of a mount whose daemon hangs would hang too.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final, NamedTuple

from . import libc
from .errors import UsageError

FUSE_SUPER_MAGIC: Final = 0x65735546  # statfs f_type of every FUSE mount
UMOUNT_TIMEOUT: Final = 10.0  # seconds `strata umount` waits for the daemon to let go
_POLL_INTERVAL: Final = 0.05
_FUSECTL_DIR: Final = "/sys/fs/fuse/connections"


class MountEntry(NamedTuple):
    mount_id: int
    major: int
    minor: int
    mountpoint: Path
    fstype: str
    source: str
    super_options: str = ""  # the filesystem's own options (cgroup v1: its controllers)


def _unescape_mountinfo(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field_)


def read_mountinfo() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo", "rb") as f:
        for raw in f:
            left, _, right = os.fsdecode(raw.rstrip(b"\n")).partition(" - ")
            fields = left.split(" ")
            major, _, minor = fields[2].partition(":")
            fstype, source, *rest = right.split(" ")
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    major=int(major),
                    minor=int(minor),
                    mountpoint=Path(_unescape_mountinfo(fields[4])),
                    fstype=fstype,
                    source=_unescape_mountinfo(source),
                    super_options=rest[0] if rest else "",
                )
            )
    return entries


def mounts_at(path: Path) -> list[MountEntry]:
    """The mounts whose mount point is `path` (already resolved), oldest first."""
    return [m for m in read_mountinfo() if m.mountpoint == path]


def is_mounted(path: Path) -> bool:
    """Whether something is mounted on `path` (already resolved). From mountinfo, because
    os.path.ismount() stats the path, which fails on a mount whose daemon died (ENOTCONN)."""
    return bool(mounts_at(path))


def mounts_under(path: Path) -> list[Path]:
    """`path` and every mount point below it, in mountinfo order (parents before children)."""
    return [
        m.mountpoint
        for m in read_mountinfo()
        if m.mountpoint == path or path in m.mountpoint.parents
    ]


def resolve_parent(path: Path) -> Path:
    """`path` with its parent resolved but without looking at the last component itself."""
    absolute = Path(os.path.abspath(path))
    return Path(os.path.realpath(absolute.parent)) / absolute.name


def is_fuse(entry: MountEntry) -> bool:
    """A FUSE mount with a connection (fuseblk mounts have a real block device instead)."""
    return entry.fstype.split(".")[0] == "fuse" and entry.major == 0


# ---------------------------------------------------------------------------------------------
# unmounting


def unmount(mountpoint: Path, *, lazy: bool = False, timeout: float = UMOUNT_TIMEOUT) -> None:
    """Unmount a FUSE mount and wait until its daemon has closed its /dev/fuse fd.

    The wait matters to callers that reuse the layers right away (a container engine, a test):
    until the daemon has let go it may still write to the upper and work dirs. The daemon is
    found by the FUSE connection id (the minor of the mount's st_dev): the kernel names it in
    the fdinfo of every /dev/fuse fd (`fuse_connection:`), and fusectl lists it under
    /sys/fs/fuse/connections while the connection exists.
    """
    path = resolve_parent(mountpoint)  # no stat(): the mount may be dead or hung
    mounted = mounts_at(path)
    if not mounted:
        raise UsageError(f"{mountpoint}: not mounted", 1)
    top = mounted[-1]
    if not is_fuse(top):
        raise UsageError(f"{mountpoint}: not a FUSE mount ({top.fstype})", 1)
    holders = fuse_device_holders(top.minor)
    _unmount_now(path, lazy=lazy)
    deadline = time.monotonic() + timeout
    while _connection_in_use(top.minor, holders):
        if time.monotonic() >= deadline:
            pids = " ".join(sorted({str(pid) for pid, _ in holders}))
            raise UsageError(
                f"{mountpoint}: unmounted, but the daemon (pid {pids or '?'}) still holds the"
                f" FUSE connection after {timeout:g} s",
                1,
            )
        time.sleep(_POLL_INTERVAL)


def _unmount_now(path: Path, *, lazy: bool) -> None:
    if os.geteuid() == 0:
        _umount2(path, lazy=lazy)
        return
    import shutil
    import subprocess

    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount is None:
        raise UsageError("fusermount3 not found (apt install fuse3)", 1)
    cmd = [fusermount, "-u", *(["-z"] if lazy else []), str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise UsageError(f"cannot unmount {path}: {detail}", 1)


def _umount2(path: Path, *, lazy: bool) -> None:
    try:
        libc.umount2(path, libc.MNT_DETACH if lazy else 0)
    except OSError as exc:
        hint = " (in use; close files and leave the directory, or use --lazy)"
        raise UsageError(
            f"cannot unmount {path}: {os.strerror(exc.errno or 0)}"
            f"{hint if exc.errno == errno.EBUSY else ''}",
            1,
        ) from None


def _fuse_dev_fds() -> Iterator[tuple[int, int, str]]:
    """(pid, fd, fdinfo text) of every /dev/fuse fd this process can see."""
    for pid_name in os.listdir("/proc"):
        if not pid_name.isdigit():
            continue
        fd_dir = f"/proc/{pid_name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd_name in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd_name}") != "/dev/fuse":
                    continue
                with open(f"/proc/{pid_name}/fdinfo/{fd_name}") as f:
                    info = f.read()
            except OSError:
                continue
            yield int(pid_name), int(fd_name), info


_FDINFO_CONNECTION: Final = re.compile(r"^fuse_connection:\s*(\d+)\s*$", re.MULTILINE)


def fuse_device_holders(connection: int) -> set[tuple[int, int]]:
    """The (pid, fd) pairs whose /dev/fuse fd serves FUSE connection `connection`."""
    holders = set()
    for pid, fd, info in _fuse_dev_fds():
        m = _FDINFO_CONNECTION.search(info)
        if m is not None and int(m[1]) == connection:
            holders.add((pid, fd))
    return holders


def fuse_connection_held(connection: int) -> bool | None:
    """Whether some process serves FUSE connection `connection`; None when we cannot tell
    (a kernel whose fdinfo does not name the connection)."""
    unknown = False
    for _, _, info in _fuse_dev_fds():
        m = _FDINFO_CONNECTION.search(info)
        if m is None:
            unknown = True
        elif int(m[1]) == connection:
            return True
    return None if unknown else False


def _holds(pid: int, fd: int, connection: int) -> bool:
    try:
        if os.readlink(f"/proc/{pid}/fd/{fd}") != "/dev/fuse":
            return False
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            m = _FDINFO_CONNECTION.search(f.read())
    except OSError:
        return False
    return m is not None and int(m[1]) == connection


def _connection_in_use(connection: int, holders: set[tuple[int, int]]) -> bool:
    if any(_holds(pid, fd, connection) for pid, fd in holders):
        return True
    # Without fdinfo's fuse_connection (older kernels) fusectl is the only witness left.
    return _fusectl_mounted() and os.path.isdir(f"{_FUSECTL_DIR}/{connection}")


def _fusectl_mounted() -> bool:
    return any(m.fstype == "fusectl" for m in mounts_at(Path(_FUSECTL_DIR)))
