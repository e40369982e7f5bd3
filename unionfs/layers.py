"""Layer-relative, no-follow access to layer directories, and what is cached about lower layers.

Lower layers are immutable while mounted, so a directory of a lower layer is listed once while
a directory node uses it (`Listing`); the merge of a directory's lower listings
(`LayerStack.lower_view`) is made once too, for lookup and readdir both. Both go when the kernel
forgets the directory, so the daemon's memory follows what the kernel holds. Directory fds are cached
(`DirFds`, LRU) so that reaching a deep directory costs one `openat` per component only the first
time; every open is relative to the parent's fd with O_NOFOLLOW, so nothing inside a layer can lead
the daemon outside it.
"""

from __future__ import annotations

import collections
import errno
import marshal
import os
import stat
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

import xxhash

from . import _sys, metacopy
from .errors import fs_error
from .inodes import ROOT, DirNode, LowerEntry, Node
from .whiteout import (
    OPAQUE_MARKER,
    OPAQUE_XATTRS,
    is_chardev_whiteout,
    is_opaque_value,
    is_reserved_name,
    whiteout_target,
)

if TYPE_CHECKING:
    from .config import UnionConfig

DT_DIR = stat.S_IFDIR
DT_OTHER = 0
UPPER: Final = 0  # the index of the upper layer; lowers follow, top first


@dataclass(slots=True, weakref_slot=True)
class Listing:
    """One directory of one lower layer: its visible names, the names it whites out, opacity.

    `kinds` maps each visible name to S_IFDIR or 0 (not a directory): enough to merge layers.
    `stats` holds what the listing had to stat anyway (character devices, which may be
    whiteouts); other names are stat'ed by lookup, whose node keeps the attributes while the
    kernel holds it (a stat_result per name here cost ~600 bytes per cached name). A listing
    lives as long as a directory node uses it (`DirNode.listings`), so what the kernel forgets
    is released with it.
    """

    kinds: dict[bytes, int]
    whiteouts: frozenset[bytes]
    opaque: bool
    stats: dict[bytes, os.stat_result] = field(default_factory=dict)

    def stat(self, dirfd: int, name: bytes) -> os.stat_result:
        st = self.stats.get(name)
        return st if st is not None else os.stat(name, dir_fd=dirfd, follow_symlinks=False)


def read_listing(dirfd: int) -> Listing:
    """List the directory `dirfd` (an O_PATH fd is fine) the way the union reads a layer."""
    kinds: dict[bytes, int] = {}
    whiteouts: set[bytes] = set()
    opaque = False
    stats: dict[bytes, os.stat_result] = {}
    fd = _sys.open_lower(b".", _sys.O_DIR, dirfd)
    try:
        for attr in OPAQUE_XATTRS:
            if is_opaque_value(_sys.fgetxattr(fd, attr)):
                opaque = True
                break
        with os.scandir(fd) as it:
            for entry in it:
                name = os.fsencode(entry.name)
                if is_reserved_name(name):
                    if name == OPAQUE_MARKER:
                        opaque = True
                    target = whiteout_target(name)
                    if target is not None:
                        whiteouts.add(target)
                    continue
                if entry.is_dir(follow_symlinks=False):
                    kinds[name] = DT_DIR
                    continue
                if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                    kinds[name] = DT_OTHER
                    continue
                st = entry.stat(follow_symlinks=False)  # char devices may be whiteouts
                if is_chardev_whiteout(st.st_mode, st.st_rdev):
                    whiteouts.add(name)
                else:
                    kinds[name] = DT_OTHER
                    stats[name] = st
    finally:
        os.close(fd)
    return Listing(kinds, frozenset(whiteouts), opaque, stats)


def is_whiteout_entry(entry: os.DirEntry[str]) -> bool:
    """Is this directory entry a 0/0 character device (stat only what d_type cannot rule out)?"""
    if entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
        return False
    if entry.is_symlink():
        return False
    st = entry.stat(follow_symlinks=False)
    return is_chardev_whiteout(st.st_mode, st.st_rdev)


class DirFds:
    """An LRU of open O_PATH directory fds keyed by (node id, layer index).

    Callers use a returned fd before asking for more than `limit - 2` other fds, which the
    synchronous handlers always do (they need at most four at once).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._fds: collections.OrderedDict[tuple[int, int], int] = collections.OrderedDict()

    def get(self, key: tuple[int, int]) -> int | None:
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
        return fd

    def put(self, key: tuple[int, int], fd: int) -> None:
        old = self._fds.pop(key, None)
        if old is not None:
            os.close(old)
        self._fds[key] = fd
        while len(self._fds) > self._limit:
            _, victim = self._fds.popitem(last=False)
            os.close(victim)

    def drop(self, key: tuple[int, int]) -> None:
        fd = self._fds.pop(key, None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


HardlinkIndex = dict[int, list[tuple[bytes, ...]]]


def hardlink_index(root_fd: int, root: Path, cache_dir: int | None) -> HardlinkIndex:
    """Every multiply-linked regular file of one lower layer: inode -> paths (as components).

    Built by one walk of the layer the first time a hard-linked lower file is copied up, and
    cached in the work dir under a key of the layer's path and root identity (lower layers are
    immutable, so the index stays true).
    """
    st = os.fstat(root_fd)
    key = xxhash.xxh64(
        b"%s\0%d\0%d\0%d" % (os.fsencode(root), st.st_dev, st.st_ino, st.st_ctime_ns)
    ).hexdigest()
    name = f"links-{key}.marshal".encode()
    if cache_dir is not None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=cache_dir)
        except FileNotFoundError:
            pass
        else:
            with os.fdopen(fd, "rb") as f:
                loaded = marshal.load(f)
            if isinstance(loaded, dict):
                return loaded
    index: HardlinkIndex = {}
    _walk_links(root_fd, (), index)
    index = {ino: paths for ino, paths in index.items() if len(paths) > 1}
    if cache_dir is not None:
        tmp = name + b".tmp"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600, dir_fd=cache_dir
        )
        with os.fdopen(fd, "wb") as f:
            marshal.dump(index, f)
        os.rename(tmp, name, src_dir_fd=cache_dir, dst_dir_fd=cache_dir)
    return index


def _walk_links(dirfd: int, prefix: tuple[bytes, ...], index: HardlinkIndex) -> None:
    stack: list[tuple[int, tuple[bytes, ...], bool]] = [(dirfd, prefix, False)]
    while stack:
        fd, path, owned = stack.pop()
        try:
            rfd = _sys.open_lower(b".", _sys.O_DIR, fd)
            try:
                with os.scandir(rfd) as it:
                    for entry in it:
                        name = os.fsencode(entry.name)
                        if entry.is_dir(follow_symlinks=False):
                            try:
                                sub = os.open(name, _sys.O_PATHDIR, dir_fd=fd)
                            except OSError as exc:
                                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                                    continue
                                raise
                            stack.append((sub, (*path, name), True))
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            if st.st_nlink > 1:
                                index.setdefault(st.st_ino, []).append((*path, name))
            finally:
                os.close(rfd)
        finally:
            if owned:
                os.close(fd)


def is_upper_opaque(dirfd: int, name: bytes) -> bool:
    """Is the upper directory `name` in `dirfd` opaque (by any xattr form or the marker file)?"""
    for attr in OPAQUE_XATTRS:
        if is_opaque_value(_sys.getxattr(dirfd, name, attr)):
            return True
    try:
        os.stat(name + b"/" + OPAQUE_MARKER, dir_fd=dirfd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


class LayerStack:
    """The layers of one union, and what is cached about them while it is mounted.

    `root_fds[0]` is the upper layer (-1 for a read-only union), then the lowers top first. Lower
    listings are shared by every node on one lower directory (keyed by its identity), hard-link
    indexes are built once per lower layer, and `marker_layers` says which layers may hold
    metacopy files (the upper one turns True when the first marker is written).
    """

    def __init__(self, cfg: UnionConfig, private_ns: str) -> None:
        self.cfg = cfg
        self.root_fds: list[int] = []
        self.fds = DirFds(limit=4096)
        # Shared while some node holds them; gone with the last (the kernel forgot the dirs).
        self._listings: weakref.WeakValueDictionary[tuple[int, int, int], Listing] = (
            weakref.WeakValueDictionary()
        )
        self._hardlinks: dict[int, HardlinkIndex] = {}
        # One LowerEntry per distinct value: most names of a view are (one layer, not a dir).
        self._entries: dict[tuple[tuple[int, ...], bool], LowerEntry] = {}
        # The namespace of strata's private xattrs that this mount honours (metacopy markers).
        self.private_ns = private_ns
        try:
            if cfg.upper is not None and cfg.work is not None:
                self.root_fds.append(os.open(cfg.upper, _sys.O_PATHDIR))
            else:
                self.root_fds.append(-1)
            for lower in cfg.lowers:
                self.root_fds.append(os.open(lower, _sys.O_PATHDIR))
        except BaseException:
            self.close()
            raise
        self.marker_layers = [
            fd >= 0 and metacopy.layer_may_hold_markers(fd, private_ns) for fd in self.root_fds
        ]

    def close(self) -> None:
        self.fds.close_all()
        for fd in self.root_fds:
            if fd >= 0:
                os.close(fd)
        self.root_fds = []

    def dirfd(self, node: DirNode, layer: int) -> int:
        """O_PATH fd of directory `node` in `layer`, opened component by component, no-follow."""
        if node.nodeid == ROOT:
            return self.root_fds[layer]
        fd = self.fds.get((node.nodeid, layer))
        if fd is not None:
            return fd
        chain: list[Node] = []
        cur: Node | None = node
        base = -1
        while cur is not None:
            if cur.nodeid == ROOT:
                base = self.root_fds[layer]
                break
            cached = self.fds.get((cur.nodeid, layer))
            if cached is not None:
                base = cached
                break
            chain.append(cur)
            cur = cur.parent
        if cur is None:
            raise fs_error(errno.ENOENT, node.name)  # unlinked directory
        for step in reversed(chain):
            fd = os.open(step.name, _sys.O_PATHDIR, dir_fd=base)
            self.fds.put((step.nodeid, layer), fd)
            base = fd
        return base

    def where(self, node: Node, layer: int) -> tuple[int, bytes]:
        """(fd of the directory holding node in layer, name) — (root fd, '.') for the root."""
        if node.nodeid == ROOT:
            return self.root_fds[layer], b"."
        parent = node.parent
        if parent is None:
            raise fs_error(errno.ENOENT, node.name)
        return self.dirfd(parent, layer), node.name

    def listing(self, node: DirNode, layer: int) -> Listing:
        """The listing of directory node in a lower layer (shared by every node on that dir)."""
        listing = node.listings.get(layer)
        if listing is None:
            dirfd = self.dirfd(node, layer)
            st = os.fstat(dirfd)
            key = (layer, st.st_dev, st.st_ino)
            listing = self._listings.get(key)
            if listing is None:
                listing = read_listing(dirfd)
                self._listings[key] = listing
            node.listings[layer] = listing
        return listing

    def lower_view(self, node: DirNode) -> dict[bytes, LowerEntry]:
        """The merged lower listing of directory `node` (cached: lower layers never change).

        Walks node.lowers top-down; a whiteout or a non-directory stops a name, an opaque
        directory stops everything below it (and cuts node.lowers there).
        """
        if node.view is not None:
            return node.view
        view: dict[bytes, LowerEntry] = {}
        stopped: set[bytes] = set()
        kept: list[int] = []
        for layer in node.lowers:
            listing = self.listing(node, layer)
            kept.append(layer)
            for name, kind in listing.kinds.items():
                if name in stopped:
                    continue
                is_dir = kind == stat.S_IFDIR
                entry = view.get(name)
                if entry is None:
                    view[name] = self._entry((layer,), is_dir)
                    if not is_dir:
                        stopped.add(name)
                elif is_dir:
                    view[name] = self._entry((*entry.layers, layer), True)
                else:
                    stopped.add(name)
            stopped.update(listing.whiteouts)
            if listing.opaque:
                break
        node.lowers = tuple(kept)
        node.opaque_checked = True
        node.view = view
        return view

    def _entry(self, layers: tuple[int, ...], is_dir: bool) -> LowerEntry:
        """The shared LowerEntry of this value (they are immutable)."""
        entry = self._entries.get((layers, is_dir))
        if entry is None:
            entry = self._entries[(layers, is_dir)] = LowerEntry(layers, is_dir)
        return entry

    def lower_stat(self, parent: DirNode, layer: int, name: bytes) -> os.stat_result:
        listing = self.listing(parent, layer)
        st = listing.stats.get(name)
        return st if st is not None else listing.stat(self.dirfd(parent, layer), name)

    def hardlinks(self, layer: int, cache_fd: int | None) -> HardlinkIndex:
        """The hard-link index of lower `layer` (built at its first use, then kept)."""
        index = self._hardlinks.get(layer)
        if index is None:
            index = hardlink_index(self.root_fds[layer], self.cfg.lowers[layer - 1], cache_fd)
            self._hardlinks[layer] = index
        return index
