"""Copy-up: make a lower object exist in the upper layer, atomically (kernel copy_up.c).

Parents first, from the topmost ancestor not yet up; the copy is built in the work dir (data with
holes kept, then owner, mode, xattrs -- after the data, as a write clears security.capability --,
origin and times) and renamed into place, so a crash leaves the old object or the whole new one.
Racing copy-ups of one node wait on its lock, and the later ones find it done. `CopyUpCtx` gathers
what one copy needs once (as `ovl_copy_up_ctx`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

from . import _sys, attrs, fileio, libc, lookup
from .errors import fs_error
from .inodes import ROOT, DirNode, FileNode, Node
from .layers import UPPER
from .whiteout import is_private_xattr
from .workdir import remove_tree, restore_times

if TYPE_CHECKING:
    from .core import UnionFS

log = logging.getLogger(__name__)

INLINE_COPY_MAX: Final = 256 * 1024  # smaller copies are cheaper inline than in a thread


def set_origin(fs: UnionFS, dirfd: int, name: bytes, ino: int, extra: int = 0) -> None:
    if fs.work.origin_xattr is not None:
        value = struct.pack("<QI", ino, extra) if extra else struct.pack("<Q", ino)
        _sys.setxattr(dirfd, name, fs.work.origin_xattr, value)


async def copy_up(
    fs: UnionFS, node: Node, *, data: bool = True, metadata_only: bool = False
) -> None:
    """Make node exist in the upper layer: parents first, then the object, atomically.

    The copy is built in the work dir with data (holes kept), owner, mode, xattrs, times and
    an origin xattr (keeping st_ino), then renamed into place. Racing copy-ups of one node
    wait for the first; a lower file with several names gets all its visible names linked.

    `data=False`: the caller empties the file at once (O_TRUNC, truncate to 0), so no data is
    copied. `metadata_only=True` (chmod, chown, utimes, xattrs, rename): with metacopy on, a
    regular file with one name and some data becomes a metacopy file (unionfs/metacopy.py)
    whose data stays below. Without it, a metacopy upper file gets its data now.
    """
    if not node.upper:
        fs.check_writable()
        chain: list[Node] = []
        cur: Node | None = node
        while cur is not None and not cur.upper:
            chain.append(cur)
            cur = cur.parent
        if cur is None:
            raise fs_error(errno.ENOENT, node.name)  # unlinked meanwhile
        for ancestor in reversed(chain[1:]):
            await copy_up_node(fs, ancestor, data=True, metadata_only=False)
        await copy_up_node(fs, node, data=data, metadata_only=metadata_only)
    if isinstance(node, FileNode) and node.redirect is not None and node.upper:
        if not metadata_only:
            await copy_up_data(fs, node, data=data)
        else:
            async with node.lock:
                pass  # a data copy-up may be replacing the file: change the new one


async def copy_up_node(fs: UnionFS, node: Node, *, data: bool, metadata_only: bool) -> None:
    async with node.lock:
        if node.upper:
            return
        if isinstance(node, DirNode):
            copy_up_dir(fs, node)
        elif stat.S_ISREG(node.kind) and attrs.node_stat(fs, node).st_nlink > 1:
            # No metacopy for hard links: a later data copy-up would have to move every
            # name of the group at once; copying the data now keeps them one file.
            await copy_up_hardlinked(fs, node, data=data)
        else:
            meta = metadata_only and can_metacopy(fs, node)
            await copy_up_one(fs, node, data=data, meta=meta)
        node.upper = True
        if isinstance(node, FileNode):
            fileio.drop_fd(fs, node)  # it was on the lower file
        elif fs.invalidate is not None:
            fs.invalidate(node.nodeid)  # now merged: its st_nlink became 1


def can_metacopy(fs: UnionFS, node: FileNode) -> bool:
    """A metadata change of this lower node may leave its data below (an empty file has
    nothing worth deferring, and is never a metacopy file)."""
    return (
        fs.work.metacopy_xattr is not None
        and stat.S_ISREG(node.kind)
        and attrs.node_stat(fs, node).st_size > 0
    )


def copy_up_dir(fs: UnionFS, node: DirNode) -> None:
    parent = node.parent
    assert parent is not None
    src_fd, name = fs.layers.where(node, node.lower)
    st = attrs.node_stat(fs, node)
    tmp = fs.work.tmpname()
    os.mkdir(tmp, 0o700, dir_fd=fs.work.tmp_fd)
    copy_meta(fs, src_fd, name, fs.work.tmp_fd, tmp, st, node.nodeid)
    rename_into_place(fs, tmp, parent, node.name)


async def copy_up_one(fs: UnionFS, node: FileNode, *, data: bool, meta: bool = False) -> None:
    """Copy a non-directory up; retried if it was moved while its data was copied.

    `meta`: make a metacopy file whose marker records the path the file has now, which is
    its path in its lower layer (lower objects are never renamed in place).
    """
    while True:
        parent = node.parent
        if parent is None:
            raise fs_error(errno.ENOENT, node.name)
        name = node.name
        src_fd = fs.layers.dirfd(parent, node.lower)
        marker = relpath(fs, node) if meta else None
        st = attrs.node_stat(fs, node)
        tmp = await build_copy(fs, CopyUpCtx(node, src_fd, name, st, data, marker))
        if node.parent is parent and node.name == name and parent.upper:
            rename_into_place(fs, tmp, parent, name)
            if stat.S_ISREG(st.st_mode) and marker is None and data and st.st_size > 0:
                sync_dir(fs, fs.layers.dirfd(parent, UPPER))
            node.redirect, node.data_src = marker, None
            return
        remove_tree(fs.work.tmp_fd, tmp)  # renamed or unlinked meanwhile: start over
        if not node.links:
            raise fs_error(errno.ENOENT, name)
        await copy_up(fs, node.parent or parent)


async def copy_up_data(fs: UnionFS, node: FileNode, *, data: bool) -> None:
    """Give a metacopy upper file its data (none with data=False), atomically.

    The whole file is built in the work dir -- data from where the marker leads, metadata
    and xattrs from the metacopy file, no marker -- and renamed over the metacopy file, so a
    crash leaves either the metacopy file or the full one (never a torn file); leftovers in
    the work dir go at the next mount. Read-only descriptors then move to the new file.
    """
    async with node.lock:
        while node.upper and node.redirect is not None:
            parent = node.parent
            if parent is None or not node.links:
                raise fs_error(errno.ENOENT, node.name)
            name = node.name
            pfd = fs.layers.dirfd(parent, UPPER)
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            tmp = await build_copy(fs, CopyUpCtx(node, pfd, name, st, data))
            if node.parent is parent and node.name == name:
                pst = os.stat(pfd)
                # Swapped, not renamed over: ext4 (auto_da_alloc) would flush the whole new
                # file synchronously in a rename that replaces a file. The metacopy file
                # lands in the work dir (removed at the next mount if we crash now).
                libc.renameat2(fs.work.tmp_fd, tmp, pfd, name, libc.RENAME_EXCHANGE)
                os.unlink(tmp, dir_fd=fs.work.tmp_fd)
                restore_times(pfd, pst)
                if data and st.st_size > 0:
                    sync_dir(fs, pfd)
                node.redirect, node.data_src = None, None
                break
            remove_tree(fs.work.tmp_fd, tmp)  # renamed meanwhile: start over
    fileio.drop_fd(fs, node)  # it was on the data below


def relpath(fs: UnionFS, node: Node) -> bytes:
    """node's path from the root of the union (= its path inside the layer holding it)."""
    parts: list[bytes] = []
    cur = node
    while cur.nodeid != ROOT:
        parent = cur.parent
        if parent is None:
            raise fs_error(errno.ENOENT, node.name)
        parts.append(cur.name)
        cur = parent
    return b"/".join(reversed(parts))


def mark_upper_layer(fs: UnionFS) -> None:
    """Flag the upper root as holding metacopy files, before the first marker is written
    (so a reader of this layer never misses one, even after a crash right after)."""
    if fs.layers.marker_layers[UPPER]:
        return
    _sys.setxattr(fs.layers.root_fds[UPPER], b".", fs.work.metacopy_layer_xattr, b"y")
    fs.layers.marker_layers[UPPER] = True


@dataclass(frozen=True, slots=True)
class CopyUpCtx:
    """What one copy of a non-directory needs, gathered once (overlayfs's `ovl_copy_up_ctx`).

    The copy is made from `name` in the directory `src_fd` (the lower file, or a metacopy upper
    file getting its data) with the metadata `st`. `data`: copy the data (False when the caller
    empties the file at once). `marker`: make a metacopy file recording this path instead.
    """

    node: FileNode
    src_fd: int
    name: bytes
    st: os.stat_result
    data: bool
    marker: bytes | None = None


async def build_copy(fs: UnionFS, ctx: CopyUpCtx) -> bytes:
    """Build the copy `ctx` describes in the work dir and return its name there.

    A regular file gets its data from wherever node's data is (`fileio.open_data`); with a
    `marker` it gets none, only its size (a hole) and the metacopy xattr. Copied data is
    fsync'ed before the copy is returned (not with `volatile`), as overlayfs does: the copy
    is renamed into place next, and after a power loss the name must not show an empty or
    torn file. On any error (ENOSPC, EDQUOT, EIO...) the partial copy is removed at once,
    so a full filesystem is not kept full by it, and the error goes to the caller.
    """
    tmp = fs.work.tmpname()
    try:
        await build_copy_at(fs, ctx, tmp)
    except BaseException:
        with contextlib.suppress(OSError):  # never hide the error that stopped the copy
            remove_tree(fs.work.tmp_fd, tmp)
        raise
    return tmp


async def build_copy_at(fs: UnionFS, ctx: CopyUpCtx, tmp: bytes) -> None:
    st, marker = ctx.st, ctx.marker
    mode = st.st_mode
    if stat.S_ISREG(mode):
        # The data is opened first: missing metacopy data (EIO) leaves nothing behind.
        wanted = marker is None and ctx.data and st.st_size > 0
        src = fileio.open_data(fs, ctx.node) if wanted else -1
        try:
            dst = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                0o600,
                dir_fd=fs.work.tmp_fd,
            )
            try:
                if marker is not None:
                    assert fs.work.metacopy_xattr is not None
                    mark_upper_layer(fs)
                    os.ftruncate(dst, st.st_size)
                    os.setxattr(dst, fs.work.metacopy_xattr, marker)
                elif src >= 0 and st.st_size > INLINE_COPY_MAX:
                    await trio.to_thread.run_sync(
                        _sys.copy_data, src, dst, st.st_size, limiter=fs.copy_limiter
                    )
                elif src >= 0:
                    _sys.copy_data(src, dst, st.st_size)
                if src >= 0 and not fs.cfg.volatile:
                    await trio.to_thread.run_sync(os.fsync, dst, limiter=fs.copy_limiter)
            finally:
                os.close(dst)
        finally:
            if src >= 0:
                os.close(src)
    elif stat.S_ISLNK(mode):
        os.symlink(os.readlink(ctx.name, dir_fd=ctx.src_fd), tmp, dir_fd=fs.work.tmp_fd)
    else:
        os.mknod(tmp, mode, st.st_rdev, dir_fd=fs.work.tmp_fd)
    copy_meta(fs, ctx.src_fd, ctx.name, fs.work.tmp_fd, tmp, st, ctx.node.nodeid)


def sync_dir(fs: UnionFS, fd: int) -> None:
    """Make a rename of a data copy into the upper directory `fd` durable (not with
    `volatile`): the copy itself was synced before it was renamed."""
    if fs.cfg.volatile:
        return
    dfd = os.open(_sys.fd_path(fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def copy_meta(
    fs: UnionFS, src_fd: int, name: bytes, dst_fd: int, dst: bytes, st: os.stat_result, origin: int
) -> None:
    """Owner, mode, xattrs (after data: a write clears security.capability), origin, times."""
    os.chown(dst, st.st_uid, st.st_gid, dir_fd=dst_fd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode), dir_fd=dst_fd)
    for attr in _sys.listxattr(src_fd, name):
        if is_private_xattr(attr):
            continue
        value = _sys.getxattr(src_fd, name, attr)
        if value is not None:
            try:
                _sys.setxattr(dst_fd, dst, attr, value)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                log.warning("copy-up: cannot keep xattr %s of %r: %s", attr, name, exc.strerror)
    set_origin(fs, dst_fd, dst, origin)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_fd, follow_symlinks=False)


def rename_into_place(fs: UnionFS, tmp: bytes, parent: DirNode, name: bytes) -> None:
    """Move a finished copy from the work dir into parent's upper dir, keeping its times."""
    pfd = fs.layers.dirfd(parent, UPPER)
    pst = os.stat(pfd)
    try:
        libc.renameat2(fs.work.tmp_fd, tmp, pfd, name, libc.RENAME_NOREPLACE)
    except FileExistsError:
        # Already there (e.g. linked by a hard-link group copy-up); the copy is not needed.
        remove_tree(fs.work.tmp_fd, tmp)
    restore_times(pfd, pst)


async def copy_up_hardlinked(fs: UnionFS, node: FileNode, *, data: bool) -> None:
    """Copy up a multiply-linked lower file once and link every visible name to the copy."""
    st = attrs.node_stat(fs, node)  # of the lower file (taken before it has an upper copy)
    await copy_up_one(fs, node, data=data)
    parent = node.parent
    assert parent is not None
    layer = node.lower
    index = fs.layers.hardlinks(layer, fs.work.cache_fd)
    group = index.get(st.st_ino, [])
    for path in group:
        try:
            dirnode: Node = fs.root
            for comp in path[:-1]:
                dirnode = lookup.lookup_node(fs, dirnode, comp)
        except OSError:
            continue  # hidden by a whiteout or a replaced directory
        if not isinstance(dirnode, DirNode):
            continue  # replaced by a non-directory
        other = lookup.resolve(fs, dirnode, path[-1])
        if other is None or other.upper or other.ino != node.nodeid:
            continue  # whited out, already up, or shadowed by another file
        fs.inodes.link(node, dirnode, path[-1])
        await copy_up(fs, dirnode)
        src_fd = fs.layers.dirfd(parent, UPPER)
        dst_fd = fs.layers.dirfd(dirnode, UPPER)
        pst = os.stat(dst_fd)
        try:
            os.link(
                node.name, path[-1], src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False
            )
        except FileExistsError:
            pass
        restore_times(dst_fd, pst)
    fd, name = fs.layers.where(node, UPPER)
    extra = len(group) - os.stat(name, dir_fd=fd, follow_symlinks=False).st_nlink
    if extra > 0:  # names left below still count, as in overlayfs (index=on)
        set_origin(fs, fd, name, node.nodeid, extra)
        node.nlink_extra = extra
