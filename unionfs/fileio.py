"""File I/O: the fd each regular file's reads and writes go to, cached per node (kernel file.c).

The fd belongs to the node rather than to an open: in FUSE's no-open mode the kernel sends no
open or release at all. Fds are kept in an LRU of `FD_CACHE`; a file whose last name went while
the kernel held it keeps its fd pinned until it is forgotten. A metacopy file is read from where
its marker leads (`data_source`), and its first write copies the data up.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from typing import TYPE_CHECKING, Final

from . import _sys, attrs, copyup, metacopy
from .errors import LayerCorruptError, fs_error
from .inodes import DirNode, FileNode, Node
from .layers import UPPER

if TYPE_CHECKING:
    from .core import UnionFS


FD_CACHE: Final = 512  # cached per-node fds (besides pinned ones); RLIMIT_NOFILE allows


def data_source(fs: UnionFS, node: FileNode) -> metacopy.DataSource | None:
    """Where the data of a metacopy node is (absolute layer index); None for a file that
    holds its own data. Cached: the layers below the marker never change while mounted.
    Raises LayerCorruptError (EIO, the union turns read-only) when the data is missing."""
    if node.redirect is None:
        return None
    if node.data_src is not None:
        return node.data_src
    layer = UPPER if node.upper else node.lower
    base = layer + 1
    size = attrs.node_stat(fs, node).st_size
    try:
        found = metacopy.find_data(
            fs.layers.root_fds[base:], node.redirect, size, fs.layers.private_ns
        )
    except LayerCorruptError as exc:  # the layer holding the marker does not fit those below
        raise fs.layer_corrupt(layer, exc.problem) from None
    src = dataclasses.replace(found, layer=found.layer + base)
    node.data_src = src
    return src


def open_data(fs: UnionFS, node: FileNode) -> int:
    """A read-only fd with node's data: its own file, or where its metacopy marker leads."""
    src = data_source(fs, node)
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


async def io_fd(fs: UnionFS, node: Node, *, write: bool) -> int:
    """The fd for I/O on a regular file, opened on first use and cached on the node.

    A write first copies a lower (or metacopy) file up with its data. A file whose last
    name is gone keeps the fd pinned at unlink; it can be written only if it was an upper
    file (a lower one cannot be copied up without a name)."""
    if isinstance(node, FileNode) and node.fd >= 0 and (node.fd_writable or not write):
        if not node.fd_pinned:
            fs.fd_lru.pop(node, None)
            fs.fd_lru[node] = None
        return node.fd
    if not isinstance(node, FileNode) or not stat.S_ISREG(node.kind):
        raise fs_error(errno.EISDIR if isinstance(node, DirNode) else errno.EINVAL)
    if not node.links:  # a pinned fd that cannot write, or none at all
        raise fs_error(errno.EROFS if node.fd >= 0 else errno.ENOENT)
    if write:
        fs.check_writable()
        await copyup.copy_up(fs, node, data=True)
    fd, writable = open_io(fs, node, write=write)
    keep_fd(fs, node, fd, writable=writable)
    return fd


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


async def open(fs: UnionFS, nodeid: int, flags: int) -> None:
    """An open(2) the kernel tells us of (not in no-open mode): copy up for writing, as
    overlayfs does at open; O_TRUNC (atomic_o_trunc) truncates here."""
    node = fs.inodes.get(nodeid)
    writable = (flags & os.O_ACCMODE) != os.O_RDONLY
    if writable or flags & os.O_TRUNC:
        fs.check_writable()
        await copyup.copy_up(fs, node, data=not flags & os.O_TRUNC)
    if not node.links:
        raise fs_error(errno.ENOENT)
    if flags & os.O_TRUNC:
        os.ftruncate(await io_fd(fs, node, write=True), 0)


async def write(fs: UnionFS, nodeid: int, offset: int, data: bytes) -> int:
    fs.check_writable()  # also for an fd that is already open for writing
    return os.pwrite(await io_fd(fs, fs.inodes.get(nodeid), write=True), data, offset)


async def fsync(fs: UnionFS, nodeid: int, datasync: bool) -> None:
    node = fs.inodes.get(nodeid)
    if fs.cfg.volatile or not node.upper or (isinstance(node, FileNode) and node.redirect):
        return  # nothing of it was written here
    fd = await io_fd(fs, node, write=False)
    if datasync:
        os.fdatasync(fd)
    else:
        os.fsync(fd)
