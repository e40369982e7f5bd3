"""File I/O: the fd each regular file's reads and writes go to, cached per node (kernel file.c).

The fd belongs to the node rather than to an open: in FUSE's no-open mode the kernel sends no
open or release at all. Fds are kept in an LRU of `FD_CACHE`; a file whose last name went while
the kernel held it keeps its fd pinned until it is forgotten. A metacopy file is read from where
its marker leads (`attrs.data_source`). A write's fd comes through writes.py, which copies the
file up with its data first; this module sits below copyup.py, which drops and opens fds here.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING, Final

from . import _sys, attrs, metacopy
from .errors import fs_error
from .inodes import DirNode, FileNode, Node
from .layers import UPPER

if TYPE_CHECKING:
    from .core import UnionFS


FD_CACHE: Final = 512  # cached per-node fds (besides pinned ones); RLIMIT_NOFILE allows


def open_data(fs: UnionFS, node: FileNode) -> int:
    """A read-only fd with node's data: its own file, or where its metacopy marker leads."""
    src = attrs.data_source(fs, node)
    if src is not None:
        return metacopy.open_in_layer(fs.layers.root_fds[src.layer], src.relpath)
    dirfd, name = fs.layers.where(node, UPPER if node.upper else node.lower)
    return _sys.open_lower(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dirfd)


def pin_if_last_name(fs: UnionFS, node: Node) -> None:
    """Before a file the kernel holds loses its last name: keep an fd, as it may still be
    open (in no-open mode we cannot know), and for a metacopy file its metadata (see
    FileNode.unlinked_st). The fd goes when the kernel forgets the node."""
    if not isinstance(node, FileNode) or not stat.S_ISREG(node.kind):
        return
    if len(node.links) != 1 or node.lookups <= 0:
        return
    if node.redirect is not None:
        node.unlinked_st = attrs.node_stat(fs, node)
    upper_file = node.upper and node.redirect is None
    if node.fd < 0 or (upper_file and not node.fd_writable):  # else the cached one will do
        try:
            fd, writable = open_io(fs, node, write=False)
        except OSError:
            return  # metacopy data missing: reads of the unlinked file fail (EIO) as before
        drop_fd(fs, node)
        node.fd, node.fd_writable = fd, writable
    fs.fd_lru.pop(node, None)
    node.fd_pinned = True


def open_io(fs: UnionFS, node: FileNode, *, write: bool) -> tuple[int, bool]:
    """Open the file node's reads and writes go to: (fd, writable).

    The upper file read-write when possible (so one fd serves both); else read-only the
    lower file or a metacopy file's data below (EIO if it is missing)."""
    if node.upper and node.redirect is None:
        dirfd, name = fs.layers.where(node, UPPER)
        flags = os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            return os.open(name, os.O_RDWR | flags, dir_fd=dirfd), True
        except OSError:
            if write:
                raise
            return os.open(name, os.O_RDONLY | flags, dir_fd=dirfd), False
    return open_data(fs, node), False


def io_fd(fs: UnionFS, node: Node, *, write: bool) -> int:
    """The fd for I/O on a regular file, opened on first use and cached on the node.

    A write needs the file up with its data first (`writes.writable_fd` copies it up, then
    comes here). A file whose last name is gone keeps the fd pinned at unlink; it can be
    written only if it was an upper file (a lower one cannot be copied up without a name)."""
    if isinstance(node, FileNode) and node.fd >= 0 and (node.fd_writable or not write):
        if not node.fd_pinned:
            fs.fd_lru.pop(node, None)
            fs.fd_lru[node] = None
        return node.fd
    file = check_io(node)
    fd, writable = open_io(fs, file, write=write)
    keep_fd(fs, file, fd, writable=writable)
    return fd


def check_io(node: Node) -> FileNode:
    """node, if it is a regular file with a name to do I/O on; else the error I/O gets."""
    if not isinstance(node, FileNode) or not stat.S_ISREG(node.kind):
        raise fs_error(errno.EISDIR if isinstance(node, DirNode) else errno.EINVAL)
    if not node.links:  # a pinned fd that cannot write, or none at all
        raise fs_error(errno.EROFS if node.fd >= 0 else errno.ENOENT)
    return node


def keep_fd(fs: UnionFS, node: FileNode, fd: int, *, writable: bool) -> None:
    drop_fd(fs, node)
    node.fd, node.fd_writable = fd, writable
    fs.fd_lru[node] = None
    while len(fs.fd_lru) > FD_CACHE:
        drop_fd(fs, next(iter(fs.fd_lru)))


def drop_fd(fs: UnionFS, node: FileNode) -> None:
    """Close node's cached fd (after copy-up it is on the old file; or the node is gone)."""
    fs.fd_lru.pop(node, None)
    if node.fd >= 0:
        os.close(node.fd)
    node.fd, node.fd_writable, node.fd_pinned = -1, False, False


async def fsync(fs: UnionFS, nodeid: int, datasync: bool) -> None:
    node = fs.inodes.get(nodeid)
    if fs.cfg.volatile or not node.upper or (isinstance(node, FileNode) and node.redirect):
        return  # nothing of it was written here
    fd = io_fd(fs, node, write=False)
    if datasync:
        os.fdatasync(fd)
    else:
        os.fsync(fd)
