"""Directory operations: create, mkdir, mknod, symlink, link, unlink, rmdir, whiteouts (dir.c).

Each visible change is built where it cannot be seen (the work dir) and swapped in by one rename,
so a crash never leaves a half-done state: a new object over a whiteout replaces it atomically,
a removed lower name gets a whiteout, an upper-only name is just unlinked, and a new directory
over a deleted lower one is opaque. mknod of a 0/0 character device is refused (EPERM), so that
no user can forge a whiteout.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from typing import TYPE_CHECKING, Final

from . import _sys, attrs, copyup, fileio, libc, lookup, readdir
from .errors import fs_error
from .inodes import DirNode, FileNode, Node
from .layers import UPPER, is_whiteout_entry
from .whiteout import (
    NAME_MAX,
    OPAQUE_MARKER,
    WH_PREFIX,
    is_reserved_name,
    remove_whiteout_file,
    whiteout_target,
)
from .workdir import remove_tree

if TYPE_CHECKING:
    from .attrs import Attr, Caller
    from .core import UnionFS

log = logging.getLogger(__name__)

S_IFWHT: Final = stat.S_IFCHR
SHARED_WHITEOUT: Final = b"whiteout"  # in the work dir's tmp/: new whiteouts are links to it


def drop_whiteouts(fs: UnionFS, dirfd: int) -> None:
    """Remove whiteouts from an opaque upper dir (they hide nothing there any more)."""
    rfd = os.open(b".", _sys.O_DIR, dir_fd=dirfd)
    try:
        with os.scandir(rfd) as it:  # entries stat through rfd: use them before closing it
            names = [
                os.fsencode(e.name)
                for e in it
                if whiteout_target(os.fsencode(e.name)) is not None or is_whiteout_entry(e)
            ]
    finally:
        os.close(rfd)
    for name in names:
        os.unlink(name, dir_fd=dirfd)


def make_opaque(fs: UnionFS, dirfd: int, name: bytes) -> None:
    if fs.work.opaque_xattr is not None and not fs.work.whiteout_wh:
        _sys.setxattr(dirfd, name, fs.work.opaque_xattr, b"y")
        return
    # name is a directory we just checked or made: the one '/' cannot cross a symlink
    fd = os.open(
        name + b"/" + OPAQUE_MARKER,
        os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dirfd,
    )
    os.close(fd)


def in_lowers(fs: UnionFS, parent: DirNode, name: bytes) -> bool:
    return bool(parent.lowers) and name in fs.layers.lower_view(parent)


def make_whiteout_tmp(fs: UnionFS) -> bytes:
    """A new whiteout in the work dir: a hard link to one shared whiteout inode, as overlayfs
    makes them (a link costs less than a new inode: `rm -rf` of a lower tree is mostly
    this), or a new 0/0 character device where linking fails."""
    if fs.work.whiteout_wh:
        raise AssertionError("chardev whiteout requested in .wh. mode")
    tmp = fs.work.tmpname()
    if fs.share_whiteouts:
        try:
            os.link(SHARED_WHITEOUT, tmp, src_dir_fd=fs.work.tmp_fd, dst_dir_fd=fs.work.tmp_fd)
            return tmp
        except FileNotFoundError:
            mknod_whiteout(fs, SHARED_WHITEOUT)
            return make_whiteout_tmp(fs)
        except OSError as exc:
            if exc.errno != errno.EMLINK:
                log.info("whiteouts are not shared: cannot link them: %s", exc)
                fs.share_whiteouts = False
            else:  # the link count is full: start a new shared inode
                os.unlink(SHARED_WHITEOUT, dir_fd=fs.work.tmp_fd)
    mknod_whiteout(fs, tmp)
    return tmp


def mknod_whiteout(fs: UnionFS, name: bytes) -> None:
    os.mknod(name, S_IFWHT, os.makedev(0, 0), dir_fd=fs.work.tmp_fd)  # c--------- as the kernel


def whiteout(fs: UnionFS, parent: DirNode, name: bytes) -> None:
    """Hide the lower `name` in parent; replaces any upper object there, atomically."""
    pfd = fs.layers.dirfd(parent, UPPER)
    try:
        st: os.stat_result | None = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if fs.work.whiteout_wh:
        if len(name) + len(WH_PREFIX) > NAME_MAX:
            raise fs_error(errno.ENAMETOOLONG, name)  # `.wh.NAME` cannot be written
        fd = os.open(WH_PREFIX + name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        os.close(fd)
        if st is not None:
            remove_upper(fs, pfd, name, st)
        return
    tmp = make_whiteout_tmp(fs)
    if st is None:
        libc.renameat2(fs.work.tmp_fd, tmp, pfd, name, libc.RENAME_NOREPLACE)
    elif stat.S_ISDIR(st.st_mode):
        libc.renameat2(fs.work.tmp_fd, tmp, pfd, name, libc.RENAME_EXCHANGE)
        remove_tree(fs.work.tmp_fd, tmp)
    else:
        libc.renameat2(fs.work.tmp_fd, tmp, pfd, name)


def remove_upper(fs: UnionFS, pfd: int, name: bytes, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        tmp = fs.work.tmpname()
        libc.renameat2(pfd, name, fs.work.tmp_fd, tmp)
        remove_tree(fs.work.tmp_fd, tmp)
    else:
        os.unlink(name, dir_fd=pfd)


def check_new_name(fs: UnionFS, name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise fs_error(errno.ENAMETOOLONG, name)
    if is_reserved_name(name):
        raise fs_error(errno.EPERM, name)  # would forge a whiteout or an opaque marker


async def prepare_create(fs: UnionFS, parent_id: int, name: bytes) -> tuple[DirNode, int, bool]:
    """Parent copied up, name free: returns (parent, upper fd, whether lower had name)."""
    fs.check_writable()
    check_new_name(fs, name)
    parent = fs.inodes.get_dir(parent_id, name)
    if lookup.resolve(fs, parent, name) is not None:
        raise fs_error(errno.EEXIST, name)
    await copyup.copy_up(fs, parent)
    return parent, fs.layers.dirfd(parent, UPPER), in_lowers(fs, parent, name)


def owner(fs: UnionFS, pfd: int, caller: Caller) -> tuple[int, int]:
    """uid, gid for a new object: the caller's, or the parent's gid in a setgid directory."""
    pst = os.stat(pfd)
    uid, gid = attrs.disk_ids(fs, caller.uid, caller.gid)
    return uid, (pst.st_gid if pst.st_mode & stat.S_ISGID else gid)


def scratch(fs: UnionFS, pfd: int, name: bytes, in_lower: bool) -> tuple[int, bytes]:
    """Where to build a new object: at its name, or (over a whiteout) somewhere to swap from.

    Normally the work dir; but a directory with a default ACL must be the one the object is
    created in, so that the upper filesystem applies the inheritance: then a hidden name in
    the parent is used (`.wh..wh.` names are reserved and never shown).
    """
    if not in_lower:
        return pfd, name
    if _sys.getxattr(pfd, b".", "system.posix_acl_default") is not None:
        return pfd, b".wh..wh.strata." + fs.work.tmpname()
    return fs.work.tmp_fd, fs.work.tmpname()


def place_new(fs: UnionFS, src_fd: int, tmp: bytes, pfd: int, name: bytes, is_dir: bool) -> None:
    """Move a new object built at (src_fd, tmp) to name, replacing a whiteout atomically."""
    if not fs.work.whiteout_wh:
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            if is_dir:  # rename(2) cannot put a directory over a character device
                libc.renameat2(src_fd, tmp, pfd, name, libc.RENAME_EXCHANGE)
                os.unlink(tmp, dir_fd=src_fd)
            else:
                libc.renameat2(src_fd, tmp, pfd, name)
            return
    libc.renameat2(src_fd, tmp, pfd, name, libc.RENAME_NOREPLACE)
    remove_whiteout_file(pfd, name)


def finish_new(fs: UnionFS, parent: DirNode, name: bytes) -> Node:
    node = lookup.lookup_node(fs, parent, name)
    node.lookups += 1
    return node


def keep_setid(fd_or_name: int | bytes, perm: int, dir_fd: int | None = None) -> None:
    """chown clears set-id bits: put back the ones asked for, leaving the rest of the mode
    (and an inherited ACL's mask) as the filesystem made it."""
    if not perm & (stat.S_ISUID | stat.S_ISGID):
        return
    if isinstance(fd_or_name, int):
        os.fchmod(fd_or_name, stat.S_IMODE(os.fstat(fd_or_name).st_mode) | perm & 0o7000)
    else:
        st = os.stat(fd_or_name, dir_fd=dir_fd, follow_symlinks=False)
        os.chmod(fd_or_name, stat.S_IMODE(st.st_mode) | perm & 0o7000, dir_fd=dir_fd)


async def create(fs: UnionFS, parent_id: int, name: bytes, mode: int, caller: Caller) -> Attr:
    """A new regular file; the fd it was made with becomes its cached I/O fd."""
    parent, pfd, in_lower = await prepare_create(fs, parent_id, name)
    uid, gid = owner(fs, pfd, caller)
    oflags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    perm = stat.S_IMODE(mode)
    dirfd, tmp = scratch(fs, pfd, name, in_lower)
    # Created with the final mode (our umask is 0) so that a default ACL is applied to it.
    fd = os.open(tmp, oflags | os.O_NOFOLLOW, perm, dir_fd=dirfd)
    try:
        os.fchown(fd, uid, gid)
        keep_setid(fd, perm)
        if in_lower:
            place_new(fs, dirfd, tmp, pfd, name, False)
        node = finish_new(fs, parent, name)
        assert isinstance(node, FileNode)  # made as a regular file just now
    except BaseException:
        os.close(fd)
        raise
    fileio.keep_fd(fs, node, fd, writable=True)
    return attrs.node_attr(fs, node)


async def mkdir(fs: UnionFS, parent_id: int, name: bytes, mode: int, caller: Caller) -> Attr:
    parent, pfd, in_lower = await prepare_create(fs, parent_id, name)
    uid, gid = owner(fs, pfd, caller)
    dirfd, tmp = scratch(fs, pfd, name, in_lower)
    os.mkdir(tmp, stat.S_IMODE(mode), dir_fd=dirfd)  # setgid parents pass S_ISGID on
    os.chown(tmp, uid, gid, dir_fd=dirfd, follow_symlinks=False)
    if in_lower:
        make_opaque(fs, dirfd, tmp)  # the deleted lower directory must stay hidden
        place_new(fs, dirfd, tmp, pfd, name, True)
    return attrs.node_attr(fs, finish_new(fs, parent, name))


async def mknod(
    fs: UnionFS, parent_id: int, name: bytes, mode: int, rdev: int, caller: Caller
) -> Attr:
    if stat.S_ISCHR(mode) and rdev == 0:
        raise fs_error(errno.EPERM, name)  # a user must not forge a whiteout
    if stat.S_ISREG(mode):  # how the kernel creates files once create() said ENOSYS
        return await create(fs, parent_id, name, mode, caller)
    parent, pfd, in_lower = await prepare_create(fs, parent_id, name)
    uid, gid = owner(fs, pfd, caller)
    dirfd, tmp = scratch(fs, pfd, name, in_lower)
    os.mknod(tmp, stat.S_IFMT(mode) | stat.S_IMODE(mode), rdev, dir_fd=dirfd)
    os.chown(tmp, uid, gid, dir_fd=dirfd, follow_symlinks=False)
    keep_setid(tmp, stat.S_IMODE(mode), dirfd)
    if in_lower:
        place_new(fs, dirfd, tmp, pfd, name, False)
    return attrs.node_attr(fs, finish_new(fs, parent, name))


async def symlink(fs: UnionFS, parent_id: int, name: bytes, target: bytes, caller: Caller) -> Attr:
    parent, pfd, in_lower = await prepare_create(fs, parent_id, name)
    uid, gid = owner(fs, pfd, caller)
    dirfd, tmp = scratch(fs, pfd, name, in_lower)
    os.symlink(target, tmp, dir_fd=dirfd)
    os.chown(tmp, uid, gid, dir_fd=dirfd, follow_symlinks=False)
    if in_lower:
        place_new(fs, dirfd, tmp, pfd, name, False)
    return attrs.node_attr(fs, finish_new(fs, parent, name))


async def link(fs: UnionFS, nodeid: int, new_parent_id: int, new_name: bytes) -> Attr:
    fs.check_writable()
    node = fs.inodes.get(nodeid)
    if isinstance(node, DirNode):
        raise fs_error(errno.EPERM, new_name)
    if not node.links:
        raise fs_error(errno.ENOENT, new_name)
    await copyup.copy_up(fs, node)
    parent, pfd, in_lower = await prepare_create(fs, new_parent_id, new_name)
    src_fd, src_name = fs.layers.where(node, UPPER)
    dirfd, tmp = (fs.work.tmp_fd, fs.work.tmpname()) if in_lower else (pfd, new_name)
    os.link(src_name, tmp, src_dir_fd=src_fd, dst_dir_fd=dirfd, follow_symlinks=False)
    if in_lower:
        place_new(fs, dirfd, tmp, pfd, new_name, False)
    fs.inodes.link(node, parent, new_name)
    node.lookups += 1
    return attrs.node_attr(fs, node)


async def unlink(fs: UnionFS, parent_id: int, name: bytes) -> None:
    fs.check_writable()
    parent = fs.inodes.get_dir(parent_id, name)
    node = lookup.lookup_node(fs, parent, name)
    if isinstance(node, DirNode):
        raise fs_error(errno.EISDIR, name)
    if not node.upper and stat.S_ISREG(node.kind) and attrs.node_stat(fs, node).st_nlink > 1:
        # The other names must see st_nlink drop (as overlayfs with index=on): move the
        # file with all its names up first, then remove this name there.
        await copyup.copy_up(fs, node)
    await remove(fs, parent, name, node)


async def rmdir(fs: UnionFS, parent_id: int, name: bytes) -> None:
    fs.check_writable()
    parent = fs.inodes.get_dir(parent_id, name)
    node = lookup.lookup_node(fs, parent, name)
    if not isinstance(node, DirNode):
        raise fs_error(errno.ENOTDIR, name)
    if readdir.entries(fs, node):
        raise fs_error(errno.ENOTEMPTY, name)
    await remove(fs, parent, name, node)
    fs.layers.fds.drop((node.nodeid, UPPER))


async def remove(fs: UnionFS, parent: DirNode, name: bytes, node: Node) -> None:
    await copyup.copy_up(fs, parent)
    fileio.pin_if_last_name(fs, node)
    pfd = fs.layers.dirfd(parent, UPPER)
    if in_lowers(fs, parent, name):
        whiteout(fs, parent, name)
    else:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        remove_upper(fs, pfd, name, st)
    fs.inodes.unlink(node, parent, name)
