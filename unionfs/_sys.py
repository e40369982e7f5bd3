"""The union's file-system calls on top of `os`: opens, xattrs, data copies and the probes the
work dir runs (the foreign calls themselves, such as renameat2, live in `unionfs.libc`).

Everything here works on a directory fd plus one name component (never a joined path), so no
symlink inside a layer is ever followed: xattr calls go through `/proc/self/fd/DIRFD/NAME` with
follow_symlinks=False (the magic link resolves the directory we already hold; NAME is a single
component looked up without following), data copies keep holes.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Final

FICLONE: Final = 0x40049409

O_DIR: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
O_PATHDIR: Final = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_lower(name: bytes, flags: int, dir_fd: int) -> int:
    """Open something in a lower layer for reading without touching its atime where permitted.

    Lower layers must not change while mounted; O_NOATIME needs ownership or CAP_FOWNER, so it is
    dropped when refused (as overlayfs does for its lower files).
    """
    try:
        return os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
    except PermissionError:
        return os.open(name, flags, dir_fd=dir_fd)


def fd_path(dirfd: int, name: bytes | None = None) -> bytes:
    """A path naming `name` inside the directory `dirfd` refers to, for calls without *at forms."""
    base = b"/proc/self/fd/%d" % dirfd
    return base if name is None else base + b"/" + name


def getxattr(dirfd: int, name: bytes, attr: str) -> bytes | None:
    """The value of xattr `attr` of `name` in dirfd, or None when it is absent or unsupported."""
    try:
        return os.getxattr(fd_path(dirfd, name), attr, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES):
            return None
        raise


def listxattr(dirfd: int, name: bytes) -> list[str]:
    try:
        return os.listxattr(fd_path(dirfd, name), follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return []
        raise


def setxattr(dirfd: int, name: bytes, attr: str, value: bytes, flags: int = 0) -> None:
    os.setxattr(fd_path(dirfd, name), attr, value, flags, follow_symlinks=False)


def removexattr(dirfd: int, name: bytes, attr: str) -> None:
    os.removexattr(fd_path(dirfd, name), attr, follow_symlinks=False)


def fgetxattr(fd: int, attr: str) -> bytes | None:
    try:
        return os.getxattr(fd, attr)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES):
            return None
        raise


def copy_data(src: int, dst: int, size: int) -> None:
    """Copy `size` bytes of src to dst, keeping holes; reflink when the filesystem can.

    Runs in a worker thread (it may take seconds for big files). dst must be empty.
    """
    if size == 0:
        return
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return
    except OSError:
        pass
    pos = 0
    while pos < size:
        try:
            data = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        hole = os.lseek(src, data, os.SEEK_HOLE)
        _copy_range(src, dst, data, min(hole, size) - data)
        pos = hole
    os.ftruncate(dst, size)


def _copy_range(src: int, dst: int, off: int, count: int) -> None:
    end = off + count
    while off < end:
        try:
            n = os.copy_file_range(src, dst, end - off, off, off)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            n = _copy_range_rw(src, dst, off, end - off)
        if n == 0:  # the file shrank under us (it cannot in a lower layer); stop
            return
        off += n


def _copy_range_rw(src: int, dst: int, off: int, count: int) -> int:
    buf = os.pread(src, min(count, 1 << 20), off)
    if buf:
        os.pwrite(dst, buf, off)
    return len(buf)


def can_mknod_whiteout(dirfd: int) -> bool:
    """Probe once: may this process make a 0/0 character device (a kernel-form whiteout) here?"""
    name = b".strata-probe-%d" % os.getpid()
    try:
        os.mknod(name, 0o600 | 0o020000, os.makedev(0, 0), dir_fd=dirfd)
    except OSError:
        return False
    os.unlink(name, dir_fd=dirfd)
    return True


def can_set_xattr(dirfd: int, attr: str) -> bool:
    """Probe once: may this process set xattr `attr` (e.g. trusted.*) on files here?"""
    name = b".strata-probe-x-%d" % os.getpid()
    fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dirfd)
    os.close(fd)
    try:
        setxattr(dirfd, name, attr, b"y")
        return True
    except OSError:
        return False
    finally:
        os.unlink(name, dir_fd=dirfd)


def in_initial_user_namespace() -> bool:
    """Does this process run in the initial user namespace (where root may set trusted.*
    xattrs)? True where /proc/self/uid_map cannot be read (no user namespaces)."""
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True
