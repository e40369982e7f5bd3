"""Changes that copy an object up first: setattr and truncate (kernel inode.c's ovl_setattr), an
open for writing or with O_TRUNC, and write (file.c).

They sit above copyup.py, which sits above what they share with the read paths (attrs.py's
attributes, fileio.py's fd cache), so a read never reaches copy-up code: a write gets its fd
from `writable_fd`, which copies the file up with its data before fileio.py opens it.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from . import attrs, copyup, fileio
from .attrs import Attr, SetAttr
from .errors import fs_error
from .inodes import ROOT, FileNode, Node
from .layers import UPPER

if TYPE_CHECKING:
    from .core import UnionFS


async def writable_fd(fs: UnionFS, node: Node) -> int:
    """The fd for writes to a regular file: a lower (or metacopy) file is copied up with its
    data first, unless it already has a writable fd (an upper file, or one whose last name
    is gone: a lower one cannot be copied up without a name)."""
    if not (isinstance(node, FileNode) and node.fd >= 0 and node.fd_writable):
        fileio.check_io(node)
        fs.check_writable()
        await copyup.copy_up(fs, node, data=True)
    return fileio.io_fd(fs, node, write=True)


async def setattr(fs: UnionFS, nodeid: int, changes: SetAttr) -> Attr:
    node = fs.inodes.get(nodeid)
    fs.check_writable()
    if node.links or node.nodeid == ROOT:
        if changes.size is None:  # chmod, chown, utimes: the data may stay below
            await copyup.copy_up(fs, node, metadata_only=True)
        else:
            await copyup.copy_up(fs, node, data=changes.size != 0)
    if changes.size is not None:
        os.ftruncate(await writable_fd(fs, node), changes.size)
    if not node.links and node.nodeid != ROOT:
        return setattr_unlinked(fs, node, changes)
    dirfd, name = fs.layers.where(node, UPPER)
    if changes.uid is not None or changes.gid is not None:
        uid, gid = attrs.disk_ids(
            fs,
            -1 if changes.uid is None else changes.uid,
            -1 if changes.gid is None else changes.gid,
        )
        os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
    if changes.mode is not None and not stat.S_ISLNK(node.kind):
        os.chmod(name, stat.S_IMODE(changes.mode), dir_fd=dirfd)
    if changes.atime_ns is not None or changes.mtime_ns is not None:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        times = (
            st.st_atime_ns if changes.atime_ns is None else changes.atime_ns,
            st.st_mtime_ns if changes.mtime_ns is None else changes.mtime_ns,
        )
        os.utime(name, ns=times, dir_fd=dirfd, follow_symlinks=False)
    return attrs.node_attr(fs, node)


def setattr_unlinked(fs: UnionFS, node: Node, changes: SetAttr) -> Attr:
    """fchmod/fchown/futimens on an open file whose last name is gone.

    Only an upper file can be changed: the fds of a lower or metacopy file are on a lower
    layer, which must never change, and a file without a name cannot be copied up.
    """
    if not isinstance(node, FileNode):
        raise fs_error(errno.ENOENT)
    if not node.upper or node.redirect is not None:
        raise fs_error(errno.EROFS)
    fd = node.fd
    if fd < 0:
        raise fs_error(errno.ENOENT)
    if changes.uid is not None or changes.gid is not None:
        uid, gid = attrs.disk_ids(
            fs,
            -1 if changes.uid is None else changes.uid,
            -1 if changes.gid is None else changes.gid,
        )
        os.fchown(fd, uid, gid)
    if changes.mode is not None:
        os.fchmod(fd, stat.S_IMODE(changes.mode))
    if changes.atime_ns is not None or changes.mtime_ns is not None:
        st = os.fstat(fd)
        os.utime(
            fd,
            ns=(
                st.st_atime_ns if changes.atime_ns is None else changes.atime_ns,
                st.st_mtime_ns if changes.mtime_ns is None else changes.mtime_ns,
            ),
        )
    return attrs.node_attr(fs, node)


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
        os.ftruncate(await writable_fd(fs, node), 0)


async def write(fs: UnionFS, nodeid: int, offset: int, data: bytes) -> int:
    fs.check_writable()  # also for an fd that is already open for writing
    return os.pwrite(await writable_fd(fs, fs.inodes.get(nodeid)), data, offset)
