"""What a container sees mounted, as data, and the loop that mounts it.

`CONTAINER_MOUNTS` is the default set (/proc, /dev as a tmpfs with a fresh devpts, /dev/shm,
/dev/mqueue, /sys read-only); `DEVICE_NODES` are bound from the host's /dev (a bind works in a user
namespace, mknod does not); `DEV_LINKS` are the usual symlinks. `mount_all()` mounts them under the
rootfs before pivot_root, together with the container's /etc files and its volumes, and then
hides `MASKED_PATHS` and makes `READONLY_PATHS` read-only (docker's and podman's lists; not with
--privileged or systempaths=unconfined): the kernel's knobs and the host's hardware stay out of
a container's reach.

Every target is resolved inside the rootfs with `resolve_in_root()`, which follows symlinks as if the
rootfs were `/`: an image (or a container's earlier writes) cannot make a mount land on the host.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unionfs import libc
from unionfs.libc import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT
from unionfs.mountinfo import mounts_under


@dataclass(frozen=True, slots=True)
class Mount:
    """One filesystem mount inside the container; `target` is absolute in the container."""

    target: str
    fstype: str
    source: str
    flags: int = 0
    data: str | None = None


@dataclass(frozen=True, slots=True)
class BindMount:
    """`source` (a host path) bound at `target` (in the container), optionally read-only;
    `copy`: a volume, filled from the image's content at `target` first if it is empty."""

    source: str
    target: str
    read_only: bool = False
    copy: bool = False


# tmpfs options that are mount flags (the rest, size= mode= uid= ..., is the tmpfs's data)
_FLAG_OPTIONS: Final = {
    "ro": (MS_RDONLY, True), "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True), "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True), "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True), "exec": (MS_NOEXEC, False),
    "noatime": (libc.MS_NOATIME, True), "atime": (libc.MS_NOATIME, False),
    "nodiratime": (libc.MS_NODIRATIME, True), "diratime": (libc.MS_NODIRATIME, False),
    "relatime": (libc.MS_RELATIME, True), "norelatime": (libc.MS_RELATIME, False),
    "strictatime": (libc.MS_STRICTATIME, True),
    "sync": (libc.MS_SYNCHRONOUS, True), "async": (libc.MS_SYNCHRONOUS, False),
}  # fmt: skip


def tmpfs_mount(target: str, options: str) -> Mount:
    """A tmpfs at `target` with docker's `--tmpfs` options (checked by runtime.volumes);
    docker's defaults, nosuid, nodev and noexec, unless the options say otherwise."""
    flags = _NOSUID_NODEV_NOEXEC
    data = []
    for opt in (o for o in options.split(",") if o):
        if opt in _FLAG_OPTIONS:
            bit, on = _FLAG_OPTIONS[opt]
            flags = flags | bit if on else flags & ~bit
        else:
            data.append(opt)
    return Mount(target, "tmpfs", "tmpfs", flags, ",".join(data) or None)


_NOSUID_NODEV_NOEXEC: Final = MS_NOSUID | MS_NODEV | MS_NOEXEC

PROC: Final = Mount("/proc", "proc", "proc", _NOSUID_NODEV_NOEXEC)
DEV: Final = Mount("/dev", "tmpfs", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=65536k")
DEVPTS: Final = Mount(
    "/dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"
)
SHM: Final = Mount("/dev/shm", "tmpfs", "shm", _NOSUID_NODEV_NOEXEC, "mode=1777,size=65536k")
MQUEUE: Final = Mount("/dev/mqueue", "mqueue", "mqueue", _NOSUID_NODEV_NOEXEC)
SYSFS: Final = Mount("/sys", "sysfs", "sysfs", _NOSUID_NODEV_NOEXEC | MS_RDONLY)

# In mount order (/dev before what lives in it). /sys comes separately: sysfs may only be mounted
# by the owner of the network namespace, so with the host's network the host's /sys is bound.
CONTAINER_MOUNTS: Final[tuple[Mount, ...]] = (PROC, DEV, DEVPTS, SHM, MQUEUE)

DEVICE_NODES: Final = ("null", "zero", "full", "random", "urandom", "tty")

DEV_LINKS: Final[tuple[tuple[str, str], ...]] = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)

# Hidden: a file gets /dev/null bound over it, a directory an empty read-only tmpfs (runc's
# maskPath). Kernel memory, keys and timers of the host, its sound, SCSI and block devices,
# firmware, power capping and SELinux: docker's list and podman's together.
MASKED_PATHS: Final = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
    "/sys/firmware", "/sys/devices/virtual/powercap", "/sys/dev/block", "/sys/fs/selinux",
)  # fmt: skip
# Read-only: /proc/sys (kernel.core_pattern, vm.drop_caches, ...), sysrq, and what drives the
# host's buses, filesystems and interrupts. All of /sys is read-only already.
READONLY_PATHS: Final = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)  # fmt: skip

# Files of /etc that each container gets from its state dir.
ETC_FILES: Final = ("hostname", "hosts", "resolv.conf")

# What must exist in the rootfs as a mount point: directories, then files.
MOUNTPOINT_DIRS: Final = ("proc", "sys", "dev", "etc")
MOUNTPOINT_FILES: Final = tuple(f"etc/{name}" for name in ETC_FILES)

_MAX_SYMLINKS: Final = 40


def resolve_in_root(root: Path, path: str) -> Path:
    """`path` (absolute in the container) as a host path below `root`, symlinks resolved as if
    `root` were `/` (absolute links restart at `root`, `..` stops at it). The last component
    need not exist."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, name)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            resolved.append(name)
            continue
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(name)
    return root.joinpath(*resolved)


def mount_at(rootfs: Path, m: Mount) -> None:
    target = resolve_in_root(rootfs, m.target)
    os.makedirs(target, exist_ok=True)
    libc.mount(m.source, target, m.fstype, m.flags, m.data)


def bind(
    source: str | Path, target: Path, *, read_only: bool = False, recursive: bool = True
) -> None:
    """Bind `source` on `target` (made to match: a directory or an empty file)."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif not os.path.lexists(target):
        os.makedirs(target.parent, exist_ok=True)
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    flags = MS_BIND | (MS_REC if recursive else 0)
    libc.mount(source, target, None, flags)
    if read_only:
        remount_read_only(target)


def remount_read_only(target: Path) -> None:
    """Make a bind mount read-only, keeping the flags the kernel has locked on it (nosuid, nodev,
    noexec and the atime mode of the source: in a user namespace a remount that drops them fails
    with EPERM)."""
    locked = 0
    try:
        st = os.statvfs(target)
    except OSError:
        pass
    else:
        for vfs_flag, ms_flag in (
            (os.ST_NOSUID, MS_NOSUID),
            (os.ST_NODEV, MS_NODEV),
            (os.ST_NOEXEC, MS_NOEXEC),
            (os.ST_NOATIME, libc.MS_NOATIME),
            (os.ST_NODIRATIME, libc.MS_NODIRATIME),
            (os.ST_RELATIME, libc.MS_RELATIME),
        ):
            if st.f_flag & vfs_flag:
                locked |= ms_flag
    libc.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked)


def mount_sys(rootfs: Path, *, writable: bool = False) -> None:
    """A fresh sysfs, read-only unless `writable` (--privileged). In a user namespace the kernel
    allows that only in a network namespace the user namespace owns; otherwise the host's /sys
    is bound, every mount in it read-only (unless `writable`)."""
    target = resolve_in_root(rootfs, "/sys")
    os.makedirs(target, exist_ok=True)
    try:
        flags = SYSFS.flags & ~MS_RDONLY if writable else SYSFS.flags
        libc.mount(SYSFS.source, target, SYSFS.fstype, flags)
        return
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EACCES):
            raise
    bind("/sys", target)
    if not writable:
        for below in mounts_under(target):
            remount_read_only(below)


def mask_paths(rootfs: Path) -> None:
    """Hide MASKED_PATHS and make READONLY_PATHS read-only (those that exist). They all lie in
    the container's fresh /proc and /sys, which hold nothing of the image: only those two are
    resolved in the rootfs, the rest is the kernel's own tree."""
    tops = {top: resolve_in_root(rootfs, top) for top in ("/proc", "/sys")}

    def host_path(path: str) -> Path:
        top, _, rest = path[1:].partition("/")
        return tops[f"/{top}"] / rest

    for path in MASKED_PATHS:
        target = host_path(path)
        try:
            is_dir = stat.S_ISDIR(os.lstat(target).st_mode)
        except FileNotFoundError:
            continue
        if is_dir:
            libc.mount("tmpfs", target, "tmpfs", MS_RDONLY)
        else:
            libc.mount("/dev/null", target, None, MS_BIND)
    for path in READONLY_PATHS:
        target = host_path(path)
        if os.path.lexists(target):
            libc.mount(target, target, None, MS_BIND | MS_REC)
            remount_read_only(target)


def bind_console(rootfs: Path, pty: str) -> None:
    """The container's terminal (a pty of its devpts, `/dev/pts/N`) as /dev/console, as runc
    does with a terminal."""
    bind(resolve_in_root(rootfs, pty), resolve_in_root(rootfs, "/dev/console"), recursive=False)


def populate_dev(rootfs: Path, *, devpts_gid: int | None, shm_size: int = 0) -> None:
    """The /dev tmpfs, its devpts, device nodes bound from the host, /dev/shm (`shm_size`
    bytes, --shm-size; default 64 MiB, as docker's) and the links."""
    dev = resolve_in_root(rootfs, "/dev")
    os.makedirs(dev, exist_ok=True)
    for m in CONTAINER_MOUNTS:
        if m is PROC:
            continue
        if m is DEVPTS and devpts_gid is not None:
            m = Mount(m.target, m.fstype, m.source, m.flags, f"{m.data},gid={devpts_gid}")
        if m is SHM and shm_size:
            m = Mount(m.target, m.fstype, m.source, m.flags, f"mode=1777,size={shm_size}")
        target = dev / m.target.removeprefix("/dev/") if m is not DEV else dev
        os.makedirs(target, exist_ok=True)
        try:
            libc.mount(m.source, target, m.fstype, m.flags, m.data)
        except OSError:
            if m is not MQUEUE:  # a kernel without POSIX message queues: no /dev/mqueue
                raise
        if m is DEV:
            for name in DEVICE_NODES:
                host = f"/dev/{name}"
                if os.path.exists(host):
                    bind(host, dev / name, recursive=False)
            for name, link in DEV_LINKS:
                os.symlink(link, dev / name)


def fill_volume(image_dir: Path, volume: str) -> None:
    """Copy the image's content at a mount point (`image_dir`, in the rootfs, before the volume
    hides it) into an empty volume, owners, modes and times included, as docker fills a new
    volume. Nothing is followed on either side: both trees are walked by directory fds with
    O_NOFOLLOW and *at calls (a volume may be shared with a running container that changes it
    meanwhile), symlinks are copied as symlinks, and device nodes, FIFOs and sockets left out."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        src = os.open(image_dir, flags)
    except OSError:  # missing, or not a directory in the image: nothing to copy
        return
    try:
        dst = os.open(volume, flags)
        try:
            if not os.listdir(dst):
                _copy_dir_content(src, dst)
                _copy_meta(dst, os.fstat(src))
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_meta(fd: int, st: os.stat_result) -> None:
    """Owner, mode and times of an open file or directory (never through a path)."""
    with contextlib.suppress(OSError):  # rootless: an owner outside the map (nobody) stays ours
        os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_dir_content(src: int, dst: int) -> None:
    nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
    for name in os.listdir(src):
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(name, 0o700, dir_fd=dst)
            sub_src = os.open(name, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=src)
            try:
                sub_dst = os.open(name, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=dst)
                try:
                    _copy_dir_content(sub_src, sub_dst)
                    _copy_meta(sub_dst, st)
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
        elif stat.S_ISREG(st.st_mode):
            fd_in = os.open(name, os.O_RDONLY | nofollow, dir_fd=src)
            try:
                create = os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow
                fd_out = os.open(name, create, 0o600, dir_fd=dst)
                try:
                    while os.sendfile(fd_out, fd_in, None, 1 << 20) > 0:
                        pass
                    _copy_meta(fd_out, st)
                finally:
                    os.close(fd_out)
            finally:
                os.close(fd_in)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=src), name, dir_fd=dst)
            with contextlib.suppress(OSError):
                os.chown(name, st.st_uid, st.st_gid, dir_fd=dst, follow_symlinks=False)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst, follow_symlinks=False)


def _depth(target: str) -> int:
    return len([p for p in target.split("/") if p])


def mount_all(
    rootfs: Path,
    *,
    etc_dir: Path,
    volumes: Sequence[BindMount | Mount],
    devpts_gid: int | None,
    shm_size: int = 0,
    privileged: bool = False,
    masked: bool = True,
) -> None:
    """Everything a container gets, below `rootfs` (still seen from the host's side):
    `volumes` (binds and tmpfs) parents first; `privileged` leaves /sys writable; `masked`
    hides and protects the kernel's paths."""
    mount_at(rootfs, PROC)
    populate_dev(rootfs, devpts_gid=devpts_gid, shm_size=shm_size)
    mount_sys(rootfs, writable=privileged)
    for name in ETC_FILES:
        bind(etc_dir / name, resolve_in_root(rootfs, f"/etc/{name}"), recursive=False)
    for volume in sorted(volumes, key=lambda v: _depth(v.target)):
        target = resolve_in_root(rootfs, volume.target)
        if isinstance(volume, Mount):
            os.makedirs(target, exist_ok=True)
            libc.mount(volume.source, target, volume.fstype, volume.flags, volume.data)
            continue
        if volume.copy:
            fill_volume(target, volume.source)
        bind(volume.source, target, read_only=volume.read_only)
    if masked:
        mask_paths(rootfs)
