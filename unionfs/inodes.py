"""The objects the kernel knows (nodes), their names, lookup counts and inode numbers.

A node is one union object. pyfuse3 makes the FUSE node id and st_ino one number, so a node's id
is its inode number, derived from where the object came from so that it stays the same across
copy-up and remount (see `encode_ino`). Hard-linked files are one node with several names
(`links`); the first name is the one used to reach the object in the layers. When an inode number
comes back for a new object while the kernel may still hold the old one (an upper inode freed and
reused), the new node gets a higher generation, which tells the kernel the old one is stale.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, NewType, TypeAlias

import trio
import xxhash

from .errors import fs_error

if TYPE_CHECKING:
    from .attrs import Attr
    from .layers import Listing
    from .metacopy import DataSource

InodeNo = NewType("InodeNo", int)
ROOT: Final = InodeNo(1)

_LAYER_SHIFT: Final = 56
_INO_MASK: Final = (1 << _LAYER_SHIFT) - 1


def encode_ino(layer: int, real_ino: int) -> int:
    """st_ino of an object first seen in `layer` (0 = upper) with inode number `real_ino` there.

    Like overlayfs's xino: the layer index goes in the high bits, so numbers from different layers
    never collide. Real numbers that do not fit (not seen on ext4/xfs/btrfs in practice) are hashed.
    """
    if 1 < real_ino <= _INO_MASK:  # 1 is FUSE's root node id
        return (layer << _LAYER_SHIFT) | real_ino
    digest = xxhash.xxh64_intdigest(real_ino.to_bytes(8, "little")) & _INO_MASK
    return (layer << _LAYER_SHIFT) | max(digest, 2)


def decode_ino(ino: int) -> tuple[int, int]:
    """(layer, number in the layer) of an st_ino made by `encode_ino` (hashed numbers stay
    hashed)."""
    return ino >> _LAYER_SHIFT, ino & _INO_MASK


@dataclass(frozen=True, slots=True)
class LowerEntry:
    """A name as the lower layers of one directory show it: the layers holding it, top first.

    For a directory every layer that merges into it (before opacity is known); otherwise one.
    """

    layers: tuple[int, ...]
    is_dir: bool


@dataclass(slots=True)
class _Rare:
    """The fields of a node that most nodes never set, kept out of the node itself: a slot is
    8 bytes on every node the kernel holds (issue 16), this object exists on the few that
    need one. Read and written through the node's properties of the same names."""

    generation: int = 0  # > 0: the node id was reused for a new object (inodes.add)
    lower_st: os.stat_result | None = None
    lock: trio.Lock | None = None
    fd_writable: bool = False
    fd_pinned: bool = False  # the file's last name went while the kernel held it: keep the fd
    nlink_extra: int = 0  # copied-up hard link: group names left in lower layers (still counted)
    # Metacopy (unionfs/metacopy.py): the path recorded in the marker of the file the union serves
    # (the upper one if `upper`, else the one in `lower`), None for a file that holds its data;
    # and where that data was found (indexed from the layer below).
    redirect: bytes | None = None
    data_src: DataSource | None = None
    # Of a metacopy file whose last name went while the kernel held it: its fd is on the data
    # below, whose metadata is not the file's.
    unlinked_st: os.stat_result | None = None


_NO_RARE: Final = _Rare()


@dataclass(eq=False, slots=True)
class BaseNode:
    """One union object the kernel (or a union operation in progress) holds a reference to.

    What every object has; a directory is a `DirNode`, anything else a `FileNode` (`Node` is
    either, so that a test of one kind leaves the other).
    """

    nodeid: InodeNo  # == st_ino
    kind: int  # stat.S_IFMT bits
    # (parent, name) pairs; empty once unlinked; root has none. A tuple: most nodes keep one
    # name for life, and a 1-tuple is 40 bytes smaller than a list holding one pair.
    links: tuple[tuple[DirNode, bytes], ...]
    upper: bool  # the object exists in the upper layer at its names
    lower: int  # lower layer holding it (non-dirs) or its top lower layer (dirs); 0 = none
    lookups: int = 0
    # What few nodes ever have (see `_Rare`), made at the first write of such a field.
    _rare: _Rare | None = None

    @property
    def lock(self) -> trio.Lock:
        """Serialises copy-up of this node (created lazily: most nodes never need it)."""
        rare = self._rare_fields()
        if rare.lock is None:
            rare.lock = trio.Lock()
        return rare.lock

    def _rare_fields(self) -> _Rare:
        if self._rare is None:
            self._rare = _Rare()
        return self._rare

    @property
    def generation(self) -> int:
        return 0 if self._rare is None else self._rare.generation

    @generation.setter
    def generation(self, value: int) -> None:
        if value or self._rare is not None:
            self._rare_fields().generation = value

    @property
    def lower_st(self) -> os.stat_result | None:
        """Stat of the lower object (immutable, so cached; a lower file drops it once its
        attributes are known, see attrs.node_attr)."""
        return None if self._rare is None else self._rare.lower_st

    @lower_st.setter
    def lower_st(self, value: os.stat_result | None) -> None:
        if value is not None:
            self._rare_fields().lower_st = value
        elif self._rare is not None:
            self._rare.lower_st = None
            if self._rare == _NO_RARE:  # what every lower file comes to (attrs.node_attr)
                self._rare = None

    @property
    def parent(self) -> DirNode | None:
        return self.links[0][0] if self.links else None

    @property
    def name(self) -> bytes:
        return self.links[0][1] if self.links else b""


@dataclass(eq=False, slots=True)
class DirNode(BaseNode):
    """A directory: the lower layers merged into it and what is known of its entries."""

    lowers: tuple[int, ...] = ()  # lower layers merged into it, top first
    opaque_checked: bool = False  # `lowers` has been cut at the first opaque layer
    view: dict[bytes, LowerEntry] | None = None  # merged lower listing (cached)
    listings: dict[int, Listing] = field(default_factory=dict)  # layer -> its listing
    children: dict[bytes, Node] = field(default_factory=dict)


@dataclass(eq=False, slots=True)
class FileNode(BaseNode):
    """Anything but a directory; the fd and metacopy state apply to regular files only."""

    # The fd reads and writes use (see fileio.io_fd), -1 if none. Cached per node rather than
    # per open: in FUSE's no-open mode the kernel sends no open/release at all.
    fd: int = -1
    # fd_writable, fd_pinned, nlink_extra, redirect, data_src, unlinked_st: see `_Rare`.

    @property
    def fd_writable(self) -> bool:
        return self._rare is not None and self._rare.fd_writable

    @fd_writable.setter
    def fd_writable(self, value: bool) -> None:
        if value or self._rare is not None:
            self._rare_fields().fd_writable = value

    @property
    def fd_pinned(self) -> bool:
        return self._rare is not None and self._rare.fd_pinned

    @fd_pinned.setter
    def fd_pinned(self, value: bool) -> None:
        if value or self._rare is not None:
            self._rare_fields().fd_pinned = value

    @property
    def nlink_extra(self) -> int:
        return 0 if self._rare is None else self._rare.nlink_extra

    @nlink_extra.setter
    def nlink_extra(self, value: int) -> None:
        if value or self._rare is not None:
            self._rare_fields().nlink_extra = value

    @property
    def redirect(self) -> bytes | None:
        return None if self._rare is None else self._rare.redirect

    @redirect.setter
    def redirect(self, value: bytes | None) -> None:
        if value is not None or self._rare is not None:
            self._rare_fields().redirect = value

    @property
    def data_src(self) -> DataSource | None:
        return None if self._rare is None else self._rare.data_src

    @data_src.setter
    def data_src(self, value: DataSource | None) -> None:
        if value is not None or self._rare is not None:
            self._rare_fields().data_src = value

    @property
    def unlinked_st(self) -> os.stat_result | None:
        return None if self._rare is None else self._rare.unlinked_st

    @unlinked_st.setter
    def unlinked_st(self, value: os.stat_result | None) -> None:
        if value is not None or self._rare is not None:
            self._rare_fields().unlinked_st = value


Node: TypeAlias = DirNode | FileNode


# Attributes of lower-only objects kept at once (`InodeTable.attrs`): the hot set (a readdir's
# entries, then the kernel's lookups of them), not one Attr per node the kernel holds, which
# was ~250 bytes a node (issue 16).
ATTR_CACHE_MAX: Final = 16384


class InodeTable:
    """Node id (= st_ino) -> node, names, lookup counts; the attributes of recently used
    lower-only nodes (`attrs`, see attrs.node_attr)."""

    def __init__(self) -> None:
        self.nodes: dict[InodeNo, Node] = {}
        # Valid until the object is copied up (then not consulted) or loses a name (`unlink`).
        self.attrs: dict[Node, Attr] = {}
        # Called with a node that leaves the table (forgotten or superseded): close its fd.
        self.on_drop: Callable[[Node], None] | None = None

    def add(self, node: Node) -> None:
        """Register a new node; an older object with the same number is superseded."""
        old = self.nodes.get(node.nodeid)
        if old is not None and old is not node:
            node.generation = old.generation + 1
            node.lookups += old.lookups  # the kernel's references are to the number
            old.links = ()  # no name leads to the old object any more
            if self.on_drop is not None:
                self.on_drop(old)  # the kernel fails I/O on the old one (new generation)
        self.nodes[node.nodeid] = node

    def compact(self) -> None:
        """Copy the id table after many nodes left it: a dict never shrinks on deletion, and
        this one held ~25 bytes for every node the kernel once had."""
        self.nodes = dict(self.nodes)

    def cache_attr(self, node: Node, attr: Attr) -> None:
        """Keep `attr` of lower-only `node` (emptied when full: cheaper than an LRU)."""
        if len(self.attrs) >= ATTR_CACHE_MAX:
            self.attrs.clear()
        self.attrs[node] = attr

    def get(self, nodeid: int) -> Node:
        node = self.nodes.get(InodeNo(nodeid))
        if node is None:
            raise OSError(errno.ESTALE, "stale node id", str(nodeid))
        return node

    def get_dir(self, nodeid: int, name: bytes) -> DirNode:
        """The directory `nodeid`, to act on `name` in it (ENOTDIR if it is none)."""
        node = self.get(nodeid)
        if not isinstance(node, DirNode):
            raise fs_error(errno.ENOTDIR, name)
        return node

    def find(self, ino: int) -> Node | None:
        """The live node with this st_ino (how hard links find their shared node)."""
        node = self.nodes.get(InodeNo(ino))
        return node if node is not None and node.links else None

    def link(self, node: Node, parent: DirNode, name: bytes) -> None:
        for p, n in node.links:
            if p is parent and n == name:
                break
        else:
            node.links = (*node.links, (parent, name))
        parent.children[name] = node

    def unlink(self, node: Node, parent: DirNode, name: bytes) -> None:
        """Forget that `name` in `parent` is `node` (after unlink, rename-over, rmdir)."""
        node.links = tuple((p, n) for p, n in node.links if not (p is parent and n == name))
        self.attrs.pop(node, None)
        if parent.children.get(name) is node:
            del parent.children[name]

    def forget(self, node: Node, count: int) -> None:
        node.lookups -= count
        if node.lookups <= 0 and node.nodeid != ROOT:
            self._drop(node)

    def _drop(self, node: Node, *, upward: bool = True) -> None:
        if isinstance(node, DirNode):
            # Children the kernel does not hold (made by a union operation's own lookups) go too.
            for child in list(node.children.values()):
                if child.lookups <= 0:
                    self._drop(child, upward=False)
            if node.children:
                return  # still reachable by name from a child
        if self.nodes.get(node.nodeid) is node:
            del self.nodes[node.nodeid]
        self.attrs.pop(node, None)
        if self.on_drop is not None:
            self.on_drop(node)
        for parent, name in node.links:
            if parent.children.get(name) is node:
                del parent.children[name]
                if upward and parent.lookups <= 0 and parent.nodeid != ROOT:
                    self._drop(parent)


__all__ = [
    "ROOT",
    "DirNode",
    "FileNode",
    "InodeNo",
    "InodeTable",
    "LowerEntry",
    "Node",
    "encode_ino",
]
