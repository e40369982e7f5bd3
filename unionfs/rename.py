"""rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE, for files and any directory (kernel dir.c).

Unlike overlayfs (EXDEV), a lower or merged directory is renamed by first copying its whole
visible subtree up and making it opaque (`materialize`): each copied entry is what was visible,
so an interruption leaves the union unchanged.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import TYPE_CHECKING

from . import copyup, dirops, fileio, libc, lookup, readdir
from .errors import fs_error
from .inodes import DirNode, Node
from .layers import UPPER
from .whiteout import remove_whiteout_file

if TYPE_CHECKING:
    from .core import UnionFS


async def materialize(fs: UnionFS, node: DirNode) -> None:
    """Copy a merged directory's whole visible subtree up and make it opaque (for rename).

    Each copied entry is identical to what was visible, so an interruption leaves the union
    unchanged; the directory becomes opaque only once everything is up.
    """
    await copyup.copy_up(fs, node)
    if not node.lowers:
        return
    view = fs.layers.lower_view(node)
    for name in list(view):
        try:
            child = lookup.lookup_node(fs, node, name)
        except FileNotFoundError:
            continue  # whited out in the upper
        if isinstance(child, DirNode):
            await materialize(fs, child)
        else:
            await copyup.copy_up(fs, child, metadata_only=True)
    ufd = fs.layers.dirfd(node, UPPER)
    dirops.make_opaque(fs, ufd, b".")
    dirops.drop_whiteouts(fs, ufd)
    forget_lowers(fs, node)


def forget_lowers(fs: UnionFS, node: DirNode) -> None:
    """node and everything known below it now live in the upper layer only."""
    stack: list[Node] = [node]
    while stack:
        cur = stack.pop()
        cur.upper = True
        if isinstance(cur, DirNode):
            cur.lowers = ()
            cur.view = None
            cur.listings = {}
            cur.opaque_checked = True
            stack.extend(cur.children.values())


async def rename(
    fs: UnionFS,
    old_parent_id: int,
    old_name: bytes,
    new_parent_id: int,
    new_name: bytes,
    flags: int,
) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE, for files and any directory.

    A lower or merged directory is first copied up with its whole visible subtree (and made
    opaque), so renaming directories never fails with EXDEV.
    """
    fs.check_writable()
    if flags & ~(libc.RENAME_NOREPLACE | libc.RENAME_EXCHANGE) or flags == (
        libc.RENAME_NOREPLACE | libc.RENAME_EXCHANGE
    ):
        raise fs_error(errno.EINVAL, new_name)
    dirops.check_new_name(fs, new_name)
    old_parent = fs.inodes.get_dir(old_parent_id, old_name)
    new_parent = fs.inodes.get_dir(new_parent_id, new_name)
    src = lookup.lookup_node(fs, old_parent, old_name)
    try:
        dst: Node | None = lookup.lookup_node(fs, new_parent, new_name)
    except FileNotFoundError:
        dst = None
    if dst is src:
        return  # two names of one object: rename(2) does nothing
    if flags & libc.RENAME_NOREPLACE and dst is not None:
        raise fs_error(errno.EEXIST, new_name)
    if flags & libc.RENAME_EXCHANGE:
        if dst is None:
            raise fs_error(errno.ENOENT, new_name)
        await exchange(fs, old_parent, old_name, src, new_parent, new_name, dst)
        return
    if dst is not None:
        if isinstance(src, DirNode) and not isinstance(dst, DirNode):
            raise fs_error(errno.ENOTDIR, new_name)
        if not isinstance(src, DirNode) and isinstance(dst, DirNode):
            raise fs_error(errno.EISDIR, new_name)
        if isinstance(dst, DirNode) and readdir.entries(fs, dst):
            raise fs_error(errno.ENOTEMPTY, new_name)
    if isinstance(src, DirNode) and is_ancestor(src, new_parent):
        raise fs_error(errno.EINVAL, new_name)
    await move_up(fs, src)
    await copyup.copy_up(fs, new_parent)
    await copyup.copy_up(fs, old_parent)
    ofd = fs.layers.dirfd(old_parent, UPPER)
    nfd = fs.layers.dirfd(new_parent, UPPER)
    if dst is not None:
        fileio.pin_if_last_name(fs, dst)
    src_in_lower = dirops.in_lowers(fs, old_parent, old_name)
    dst_in_lower = dirops.in_lowers(fs, new_parent, new_name)
    try:
        dst_st: os.stat_result | None = os.stat(new_name, dir_fd=nfd, follow_symlinks=False)
    except FileNotFoundError:
        dst_st = None
    if dst_st is None:
        if src_in_lower and rename_whiteout(fs, ofd, old_name, nfd, new_name):
            pass
        else:
            libc.renameat2(ofd, old_name, nfd, new_name, libc.RENAME_NOREPLACE)
            if src_in_lower:
                dirops.whiteout(fs, old_parent, old_name)
    elif not isinstance(src, DirNode) and not stat.S_ISDIR(dst_st.st_mode):
        libc.renameat2(ofd, old_name, nfd, new_name)
        if src_in_lower:
            dirops.whiteout(fs, old_parent, old_name)
    else:
        # A directory (or a whiteout a directory moves over): swap, then deal with what
        # landed at the old name.
        libc.renameat2(ofd, old_name, nfd, new_name, libc.RENAME_EXCHANGE)
        if src_in_lower:
            dirops.whiteout(fs, old_parent, old_name)
        else:
            dirops.remove_upper(fs, ofd, old_name, dst_st)
    remove_whiteout_file(nfd, new_name)
    if isinstance(src, DirNode) and dst_in_lower:
        dirops.make_opaque(fs, nfd, new_name)
    if dst is not None:
        fs.inodes.unlink(dst, new_parent, new_name)
        if isinstance(dst, DirNode):
            fs.layers.fds.drop((dst.nodeid, UPPER))
    fs.inodes.unlink(src, old_parent, old_name)
    fs.inodes.link(src, new_parent, new_name)
    moved(fs, src)


def rename_whiteout(fs: UnionFS, ofd: int, old: bytes, nfd: int, new: bytes) -> bool:
    """Move and leave a whiteout in one step (RENAME_WHITEOUT) where the kernel can."""
    if not fs.can_rename_whiteout:
        return False
    try:
        libc.renameat2(ofd, old, nfd, new, libc.RENAME_WHITEOUT)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP):
            raise
        fs.can_rename_whiteout = False
        return False
    return True


async def move_up(fs: UnionFS, node: Node) -> None:
    """Get node into the upper layer in a form that can be renamed there."""
    if isinstance(node, DirNode):
        await materialize(fs, node)
    else:
        await copyup.copy_up(fs, node, metadata_only=True)  # a metacopy file keeps its marker


def moved(fs: UnionFS, node: Node) -> None:
    """A directory moved: its fds follow it, but cached lower state no longer applies."""
    if isinstance(node, DirNode):
        forget_lowers(fs, node)
        for layer in range(1, len(fs.layers.root_fds)):
            fs.layers.fds.drop((node.nodeid, layer))


def is_ancestor(node: Node, other: Node) -> bool:
    cur: Node | None = other
    while cur is not None:
        if cur is node:
            return True
        cur = cur.parent
    return False


async def exchange(
    fs: UnionFS,
    old_parent: DirNode,
    old_name: bytes,
    src: Node,
    new_parent: DirNode,
    new_name: bytes,
    dst: Node,
) -> None:
    if (isinstance(src, DirNode) and is_ancestor(src, new_parent)) or (
        isinstance(dst, DirNode) and is_ancestor(dst, old_parent)
    ):
        raise fs_error(errno.EINVAL, new_name)
    await move_up(fs, src)
    await move_up(fs, dst)
    await copyup.copy_up(fs, old_parent)
    await copyup.copy_up(fs, new_parent)
    ofd = fs.layers.dirfd(old_parent, UPPER)
    nfd = fs.layers.dirfd(new_parent, UPPER)
    libc.renameat2(ofd, old_name, nfd, new_name, libc.RENAME_EXCHANGE)
    if isinstance(src, DirNode) and dirops.in_lowers(fs, new_parent, new_name):
        dirops.make_opaque(fs, nfd, new_name)
    if isinstance(dst, DirNode) and dirops.in_lowers(fs, old_parent, old_name):
        dirops.make_opaque(fs, ofd, old_name)
    fs.inodes.unlink(src, old_parent, old_name)
    fs.inodes.unlink(dst, new_parent, new_name)
    fs.inodes.link(src, new_parent, new_name)
    fs.inodes.link(dst, old_parent, old_name)
    moved(fs, src)
    moved(fs, dst)
