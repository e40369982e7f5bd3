"""Lookup: resolve one name across the layers to a node (kernel namei.c).

The upper layer is asked first; a whiteout, a non-directory or an opaque directory stops the walk
down the lowers, whose merged listing (`LayerStack.lower_view`) answers for every lower layer at
once. An upper object copied up from below carries an origin xattr that keeps its st_ino, so one
object keeps one node across copy-up and remount; a marker that strata could not have written is a
corrupt layer (`bad_marker`).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _sys, metacopy
from .errors import LayerCorruptError, fs_error
from .inodes import ROOT, DirNode, FileNode, InodeNo, Node, decode_ino, encode_ino
from .layers import UPPER, is_upper_opaque
from .whiteout import NAME_MAX, has_whiteout_file, is_chardev_whiteout, is_reserved_name

if TYPE_CHECKING:
    from .core import UnionFS


@dataclass(slots=True)
class Resolved:
    """What one name in one directory resolves to, before it becomes (or updates) a node."""

    st: os.stat_result  # of the topmost object
    upper: bool
    lower: int  # topmost lower layer holding it, 0 if none
    lowers: tuple[int, ...]  # dirs: lower candidates (opacity of each checked later)
    ino: int
    nlink_extra: int = 0  # names of a copied-up hard-link group that were not linked up
    redirect: bytes | None = None  # the metacopy marker of the topmost object, if any


def origin(fs: UnionFS, dirfd: int, name: bytes, st: os.stat_result) -> tuple[int, int]:
    """(st_ino, extra st_nlink) of an upper object: its origin's number when it was copied
    up, else its own; the extra links are names of its lower hard-link group that stayed
    below (shadowed or whited out in a higher layer), which overlayfs keeps counting."""
    if fs.work.origin_xattr is not None:
        raw = _sys.getxattr(dirfd, name, fs.work.origin_xattr)
        if raw is not None:
            if len(raw) == 8:
                ino, extra = struct.unpack("<Q", raw)[0], 0
            elif len(raw) == 12:
                ino, extra = struct.unpack("<QI", raw)
            else:
                raise bad_marker(fs, name, "origin", raw)
            if not is_lower_ino(fs, ino) or extra > 0xFFFF:
                raise bad_marker(fs, name, "origin", raw)
            return ino, extra
    return encode_ino(UPPER, st.st_ino), 0


def same_object(fs: UnionFS, node: Node, child: Resolved) -> bool:
    """May the upper object `child` share `node`'s number (found by its origin)? Only as a
    name of one hard-link group: the same upper inode as the node's upper copy, or, for a
    node still below, a lower object with several links (its copy-up links every name).
    A file claiming the number of any other live file is a forged origin."""
    if node.upper:
        try:
            dirfd, other = fs.layers.where(node, UPPER)
            st = os.stat(other, dir_fd=dirfd, follow_symlinks=False)
        except OSError:
            return True  # its upper copy is gone: nothing to mistake this one for
        return (st.st_dev, st.st_ino) == (child.st.st_dev, child.st.st_ino)
    lower = node.lower_st  # a lower file keeps its Attr rather than its stat (attrs.node_attr)
    if lower is None:
        try:
            fd, name = fs.layers.where(node, node.lower)
            lower = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            return False
    return lower.st_nlink > 1


def is_lower_ino(fs: UnionFS, ino: int) -> bool:
    """Could `ino` be the number of an object of a lower layer (what an origin records)?"""
    layer, real = decode_ino(ino)
    return 1 <= layer < len(fs.layers.root_fds) and real > 1


def bad_marker(fs: UnionFS, name: bytes, what: str, raw: bytes) -> LayerCorruptError:
    """EIO for the object whose private marker (always in the upper layer) is not one strata
    could have written: the upper layer is corrupt, and the union turns read-only; every
    other object stays readable."""
    return fs.layer_corrupt(UPPER, f"bad {what} marker {raw[:64]!r} on {os.fsdecode(name)!r}")


def resolve(fs: UnionFS, parent: DirNode, name: bytes) -> Resolved | None:
    """What `name` in directory `parent` is in the union, or None (absent or whited out)."""
    if is_reserved_name(name):
        return None
    view = fs.layers.lower_view(parent) if parent.lowers else {}
    entry = view.get(name)
    if parent.upper:
        fd = fs.layers.dirfd(parent, UPPER)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            if is_chardev_whiteout(st.st_mode, st.st_rdev):
                return None
            lowers: tuple[int, ...] = ()
            if (
                stat.S_ISDIR(st.st_mode)
                and entry is not None
                and entry.is_dir
                and not is_upper_opaque(fd, name)
            ):
                lowers = entry.layers
            lower = entry.layers[0] if entry is not None else 0
            ino, extra = origin(fs, fd, name, st)
            redirect = marker(fs, UPPER, fd, name, st)
            return Resolved(st, True, lower, lowers, ino, extra, redirect)
        if entry is not None and has_whiteout_file(fd, name):
            return None
    if entry is None:
        return None
    layer = entry.layers[0]
    st = fs.layers.lower_stat(parent, layer, name)
    redirect = None
    if fs.layers.marker_layers[layer] and stat.S_ISREG(st.st_mode):
        redirect = marker(fs, layer, fs.layers.dirfd(parent, layer), name, st)
    return Resolved(
        st,
        False,
        layer,
        entry.layers if entry.is_dir else (),
        encode_ino(layer, st.st_ino),
        redirect=redirect,
    )


def marker(fs: UnionFS, layer: int, dirfd: int, name: bytes, st: os.stat_result) -> bytes | None:
    """The metacopy marker of a regular file in `layer` (only looked for where the layer's
    root says it may hold some, and never on empty files: those are never metacopied)."""
    if not fs.layers.marker_layers[layer] or not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return None
    return metacopy.read_marker(dirfd, name, fs.layers.private_ns)


_KINDS: dict[int, int] = {}


def node_for(fs: UnionFS, parent: DirNode, name: bytes, child: Resolved) -> Node:
    """The node for a resolved name: the known one if it is the same object, else a new one."""
    node = parent.children.get(name)
    kind = stat.S_IFMT(child.st.st_mode)
    kind = _KINDS.setdefault(kind, kind)  # one int object per kind, not one per node
    if node is not None and (node.nodeid != child.ino or node.kind != kind):
        fs.inodes.unlink(node, parent, name)
        node = None
    if node is None:
        node = fs.inodes.find(child.ino)
        if node is not None and (isinstance(node, DirNode) or node.kind != kind):
            if node.links or node.nodeid == ROOT:
                # a live directory, or another kind of object, has this number: only a
                # forged origin marker can make an upper object claim it
                raise bad_marker(fs, name, "origin", b"(the number of another object)")
            node = None  # directories have one name; a stale entry is replaced
        elif node is not None and child.upper and node.links and not same_object(fs, node, child):
            raise bad_marker(fs, name, "origin", b"(the number of another file)")
        elif (
            node is not None
            and not child.upper
            and node.upper
            and node.links
            and child.st.st_nlink <= 1
        ):
            # A lower file with one name whose number an upper file at another name holds:
            # only a forged origin does that (a copy-up of it would be at this name, and a
            # rename of the copy leaves a whiteout here). Refused rather than served as the
            # forger: no name shows another object's content.
            raise bad_marker(fs, name, "origin", b"(its number is claimed by another file)")
    if node is None:
        ino = InodeNo(child.ino)
        if kind == stat.S_IFDIR:
            node = DirNode(ino, kind, (), child.upper, child.lower, lowers=child.lowers)
        else:
            node = FileNode(ino, kind, (), child.upper, child.lower)
        fs.inodes.add(node)
    else:
        node.upper = node.upper or child.upper
        if isinstance(node, DirNode) and node.lowers != child.lowers and not node.opaque_checked:
            node.lowers = child.lowers
            node.view = None
    if not child.upper:
        node.lower_st = child.st
    if isinstance(node, FileNode):
        if child.upper:
            node.nlink_extra = child.nlink_extra
        if (child.upper or not node.upper) and node.redirect != child.redirect:
            node.redirect, node.data_src = child.redirect, None
    fs.inodes.link(node, parent, name)
    return node


def lookup_node(fs: UnionFS, parent: Node, name: bytes) -> Node:
    if len(name) > NAME_MAX:
        raise fs_error(errno.ENAMETOOLONG, name)
    if not isinstance(parent, DirNode):
        raise fs_error(errno.ENOTDIR, name)
    if name == b".":
        return parent
    if name == b"..":
        return parent.parent or parent
    if not parent.upper:
        # Nothing below a directory that is not in the upper layer has changed since it was
        # looked up: the known node is still right (lower layers are immutable).
        known = parent.children.get(name)
        if known is not None:
            return known
    child = resolve(fs, parent, name)
    if child is None:
        old = parent.children.get(name)
        if old is not None:
            fs.inodes.unlink(old, parent, name)
        raise fs_error(errno.ENOENT, name)
    return node_for(fs, parent, name, child)
