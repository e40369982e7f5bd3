"""The union core: lookup, readdir merge, copy-up, whiteouts and namespace operations.

Pure Python over real directories; never imports pyfuse3. Every method speaks POSIX vocabulary
(node ids, bytes names, flags) and returns an `Attr` or raises OSError with an errno; ops.py maps
that to FUSE at one boundary. Tests drive this class directly on temp dirs.

Layer indices: 0 is the upper layer, 1..n the lower layers top first (as in overlayfs.rst and in
st_ino's high bits). Methods are async only where they may wait (copy-up of big files runs in a
worker thread, racing copy-ups of one node wait on its lock); everything between two awaits runs
without interruption, which is what keeps the in-memory state and the layers consistent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import itertools
import logging
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from . import _sys, metacopy
from .config import UnionConfig, WhiteoutFormat
from .errors import UsageError, fs_error
from .inodes import ROOT, InodeNo, InodeTable, LowerEntry, Node, decode_ino, encode_ino
from .layers import DirFds, HardlinkIndex, Listing, hardlink_index, is_whiteout_entry, read_listing
from .whiteout import (
    OPAQUE_MARKER,
    OPAQUE_XATTRS,
    WH_PREFIX,
    is_chardev_whiteout,
    is_opaque_value,
    is_private_xattr,
    is_reserved_name,
    whiteout_target,
)

log = logging.getLogger(__name__)

NAME_MAX: Final = 255
INLINE_COPY_MAX: Final = 256 * 1024  # smaller copies are cheaper inline than in a thread
S_IFWHT: Final = stat.S_IFCHR
SHARED_WHITEOUT: Final = b"whiteout"  # in the work dir's tmp/: new whiteouts are links to it
UPPER: Final = 0


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: new objects are owned by uid/gid; umask applies where the kernel left it to us."""

    uid: int = 0
    gid: int = 0
    umask: int = 0o022
    pid: int = 0


@dataclass(frozen=True, slots=True)
class Attr:
    nodeid: InodeNo
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blocks: int
    blksize: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    generation: int = 0


@dataclass(frozen=True, slots=True)
class SetAttr:
    """The fields of a setattr request that are to change (None = leave alone)."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None


@dataclass(slots=True)
class _Child:
    """What one name in one directory resolves to, before it becomes (or updates) a node."""

    st: os.stat_result  # of the topmost object
    upper: bool
    lower: int  # topmost lower layer holding it, 0 if none
    lowers: tuple[int, ...]  # dirs: lower candidates (opacity of each checked later)
    ino: int
    nlink_extra: int = 0  # names of a copied-up hard-link group that were not linked up
    redirect: bytes | None = None  # the metacopy marker of the topmost object, if any


@dataclass(slots=True)
class _DirHandle:
    node: Node
    names: list[bytes] | None = None


class UnionFS:
    """A union of `cfg.lowers` (read-only) under `cfg.upper` (writable), served by node ids."""

    def __init__(self, cfg: UnionConfig) -> None:
        self.cfg = cfg
        self.inodes = InodeTable()
        self._fds = DirFds(limit=4096)
        self._listings: dict[tuple[int, int, int], Listing] = {}
        self._hardlinks: dict[int, HardlinkIndex] = {}
        self._handles: dict[int, _DirHandle] = {}
        # Nodes whose fd (Node.fd) is cached and may be closed again, least recently used first;
        # pinned fds (files without a name) are not in it.
        self._fd_lru: dict[Node, None] = {}
        self.inodes.on_drop = self._drop_fd
        self._next_handle = itertools.count(1)
        self._tmp_counter = itertools.count(1)
        self._copy_limiter = trio.CapacityLimiter(2)
        self._root_fds: list[int] = []  # index 0 = upper (-1 when read-only)
        self._work_fd = -1
        self._tmp_fd = -1
        self._share_whiteouts = True
        self._cache_fd: int | None = None
        self._lock_fd = -1
        self.read_only = cfg.upper is None
        # Set by the FUSE adapter: drop the kernel's cached attributes of a node whose attributes
        # changed by something other than a request on that node itself.
        self.invalidate: Callable[[int], None] | None = None
        self.whiteout_wh = cfg.whiteout is WhiteoutFormat.WH
        self.can_rename_whiteout = False
        self.opaque_xattr: str | None = "trusted.overlay.opaque"
        self.origin_xattr: str | None = "trusted.strata.origin"
        # Metacopy markers are written under these names (None: metacopy=off, or no xattrs);
        # markers already in a layer are read whatever the option says.
        self.metacopy_xattr: str | None = None
        self._metacopy_layer_xattr = ""
        # The namespace of strata's private xattrs that this mount honours (metacopy markers):
        # "trusted" when mounted by root, "user" otherwise, as overlayfs's userxattr option.
        root = os.geteuid() == 0 and _sys.in_initial_user_namespace()
        self.private_ns = "trusted" if root else "user"
        self._marker_layers: list[bool] = []  # per layer: may it hold metacopy files?
        self._open()

    # ------------------------------------------------------------------ set-up and tear-down

    def _open(self) -> None:
        cfg = self.cfg
        if cfg.upper is not None and cfg.work is not None:
            self._root_fds.append(os.open(cfg.upper, _sys.O_PATHDIR))
            self._prepare_work(cfg.work)
        else:
            self._root_fds.append(-1)
        for lower in cfg.lowers:
            self._root_fds.append(os.open(lower, _sys.O_PATHDIR))
        self._marker_layers = [
            fd >= 0 and metacopy.layer_may_hold_markers(fd, self.private_ns)
            for fd in self._root_fds
        ]
        root = Node(
            nodeid=ROOT,
            kind=stat.S_IFDIR,
            links=[],
            upper=not self.read_only,
            lower=1,
            lowers=tuple(range(1, len(self._root_fds))),
            lookups=1,
        )
        if not self.read_only and self._is_upper_opaque(self._root_fds[UPPER], b"."):
            root.lowers = ()
        self.inodes.add(root)

    def _prepare_work(self, work: Path) -> None:
        """Take the in-use lock, clean leftovers of interrupted copy-ups, probe capabilities."""
        work_fd = os.open(work, _sys.O_PATHDIR)
        try:
            os.mkdir(b"strata", 0o700, dir_fd=work_fd)
        except FileExistsError:
            pass
        self._work_fd = os.open(b"strata", _sys.O_PATHDIR, dir_fd=work_fd)
        os.close(work_fd)
        self._lock_fd = os.open(
            b"lock",
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
            dir_fd=self._work_fd,
        )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"work directory {work} is in use by another strata mount") from None
        for sub in (b"tmp", b"cache"):
            try:
                os.mkdir(sub, 0o700, dir_fd=self._work_fd)
            except FileExistsError:
                pass
        self._tmp_fd = os.open(b"tmp", _sys.O_PATHDIR, dir_fd=self._work_fd)
        self._cache_fd = os.open(b"cache", _sys.O_PATHDIR, dir_fd=self._work_fd)
        self._clean_tmp()
        if self.cfg.whiteout is WhiteoutFormat.AUTO:
            self.whiteout_wh = not _sys.can_mknod_whiteout(self._tmp_fd)
        if not self.whiteout_wh:
            # RENAME_WHITEOUT moves a name away and leaves a whiteout in one step.
            self.can_rename_whiteout = True
        for attr_ns in ("trusted", "user"):
            if _sys.can_set_xattr(self._tmp_fd, f"{attr_ns}.strata.probe"):
                self.private_ns = attr_ns
                self.origin_xattr = f"{attr_ns}.strata.origin"
                self.opaque_xattr = f"{attr_ns}.overlay.opaque"
                if self.cfg.metacopy:
                    self.metacopy_xattr = f"{attr_ns}.{metacopy.MARKER_NAME}"
                    self._metacopy_layer_xattr = f"{attr_ns}.{metacopy.LAYER_NAME}"
                break
        else:
            self.origin_xattr = None
            self.opaque_xattr = None
        log.debug(
            "whiteouts as %s, opaque via %s, origin via %s",
            ".wh. files" if self.whiteout_wh else "chardevs",
            self.opaque_xattr or OPAQUE_MARKER.decode(),
            self.origin_xattr,
        )

    def _clean_tmp(self) -> None:
        """Remove what an interrupted copy-up or removal left in the work dir (never visible)."""
        rfd = os.open(b".", _sys.O_DIR, dir_fd=self._tmp_fd)
        try:
            names = os.listdir(rfd)
        finally:
            os.close(rfd)
        for name in names:
            self._remove_tree(self._tmp_fd, os.fsencode(name))

    def close(self) -> None:
        """Release every fd (at unmount)."""
        for node in list(self.inodes.nodes.values()):
            self._drop_fd(node)
        for node in list(self._fd_lru):
            self._drop_fd(node)
        self._handles.clear()
        self._fds.close_all()
        for fd in (*self._root_fds, self._work_fd, self._tmp_fd, self._cache_fd, self._lock_fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self._root_fds = []

    # ------------------------------------------------------------------ layer access

    def _dirfd(self, node: Node, layer: int) -> int:
        """O_PATH fd of directory `node` in `layer`, opened component by component, no-follow."""
        if node.nodeid == ROOT:
            return self._root_fds[layer]
        fd = self._fds.get((node.nodeid, layer))
        if fd is not None:
            return fd
        chain: list[Node] = []
        cur: Node | None = node
        base = -1
        while cur is not None:
            if cur.nodeid == ROOT:
                base = self._root_fds[layer]
                break
            cached = self._fds.get((cur.nodeid, layer))
            if cached is not None:
                base = cached
                break
            chain.append(cur)
            cur = cur.parent
        if cur is None:
            raise fs_error(errno.ENOENT, node.name)  # unlinked directory
        for step in reversed(chain):
            fd = os.open(step.name, _sys.O_PATHDIR, dir_fd=base)
            self._fds.put((step.nodeid, layer), fd)
            base = fd
        return base

    def _where(self, node: Node, layer: int) -> tuple[int, bytes]:
        """(fd of the directory holding node in layer, name) — (root fd, '.') for the root."""
        if node.nodeid == ROOT:
            return self._root_fds[layer], b"."
        parent = node.parent
        if parent is None:
            raise fs_error(errno.ENOENT, node.name)
        return self._dirfd(parent, layer), node.name

    def _listing(self, node: Node, layer: int) -> Listing:
        """The listing of directory node in a lower layer (shared by every node on that dir)."""
        listing = node.listings.get(layer)
        if listing is None:
            dirfd = self._dirfd(node, layer)
            st = os.fstat(dirfd)
            key = (layer, st.st_dev, st.st_ino)
            listing = self._listings.get(key)
            if listing is None:
                listing = read_listing(dirfd)
                self._listings[key] = listing
            node.listings[layer] = listing
        return listing

    def _view(self, node: Node) -> dict[bytes, LowerEntry]:
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
            listing = self._listing(node, layer)
            kept.append(layer)
            for name, kind in listing.kinds.items():
                if name in stopped:
                    continue
                is_dir = kind == stat.S_IFDIR
                entry = view.get(name)
                if entry is None:
                    view[name] = LowerEntry((layer,), is_dir)
                    if not is_dir:
                        stopped.add(name)
                elif is_dir:
                    view[name] = LowerEntry((*entry.layers, layer), True)
                else:
                    stopped.add(name)
            stopped.update(listing.whiteouts)
            if listing.opaque:
                break
        node.lowers = tuple(kept)
        node.opaque_checked = True
        node.view = view
        return view

    def _lower_stat(self, parent: Node, layer: int, name: bytes) -> os.stat_result:
        listing = self._listing(parent, layer)
        st = listing.stats.get(name)
        return st if st is not None else listing.stat(self._dirfd(parent, layer), name)

    def _is_upper_opaque(self, dirfd: int, name: bytes) -> bool:
        for attr in OPAQUE_XATTRS:
            if is_opaque_value(_sys.getxattr(dirfd, name, attr)):
                return True
        try:
            os.stat(name + b"/" + OPAQUE_MARKER, dir_fd=dirfd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def _origin(self, dirfd: int, name: bytes, st: os.stat_result) -> tuple[int, int]:
        """(st_ino, extra st_nlink) of an upper object: its origin's number when it was copied
        up, else its own; the extra links are names of its lower hard-link group that stayed
        below (shadowed or whited out in a higher layer), which overlayfs keeps counting."""
        if self.origin_xattr is not None:
            raw = _sys.getxattr(dirfd, name, self.origin_xattr)
            if raw is not None:
                if len(raw) == 8:
                    ino, extra = struct.unpack("<Q", raw)[0], 0
                elif len(raw) == 12:
                    ino, extra = struct.unpack("<QI", raw)
                else:
                    raise self._bad_marker(name, "origin", raw)
                if not self._is_lower_ino(ino) or extra > 0xFFFF:
                    raise self._bad_marker(name, "origin", raw)
                return ino, extra
        return encode_ino(UPPER, st.st_ino), 0

    def _same_object(self, node: Node, child: _Child) -> bool:
        """May the upper object `child` share `node`'s number (found by its origin)? Only as a
        name of one hard-link group: the same upper inode as the node's upper copy, or, for a
        node still below, a lower object with several links (its copy-up links every name).
        A file claiming the number of any other live file is a forged origin."""
        if node.upper:
            try:
                dirfd, other = self._where(node, UPPER)
                st = os.stat(other, dir_fd=dirfd, follow_symlinks=False)
            except OSError:
                return True  # its upper copy is gone: nothing to mistake this one for
            return (st.st_dev, st.st_ino) == (child.st.st_dev, child.st.st_ino)
        lower = node.lower_st
        return isinstance(lower, os.stat_result) and lower.st_nlink > 1

    def _is_lower_ino(self, ino: int) -> bool:
        """Could `ino` be the number of an object of a lower layer (what an origin records)?"""
        layer, real = decode_ino(ino)
        return 1 <= layer < len(self._root_fds) and real > 1

    @staticmethod
    def _bad_marker(name: bytes, what: str, raw: bytes) -> OSError:
        """EIO for the one object whose private marker is not one strata could have written;
        logged once per lookup, and the rest of the mount is unaffected."""
        log.warning("%r: ignoring a bad %s marker %r: served as EIO", name, what, raw[:64])
        return fs_error(errno.EIO, name)

    def _set_origin(self, dirfd: int, name: bytes, ino: int, extra: int = 0) -> None:
        if self.origin_xattr is not None:
            value = struct.pack("<QI", ino, extra) if extra else struct.pack("<Q", ino)
            _sys.setxattr(dirfd, name, self.origin_xattr, value)

    # ------------------------------------------------------------------ lookup

    def _upper_whiteout(self, dirfd: int, name: bytes) -> bool:
        """Is there a `.wh.NAME` marker for name in this upper directory?"""
        if len(name) + len(WH_PREFIX) > NAME_MAX:
            return False  # cannot exist
        try:
            os.stat(WH_PREFIX + name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _resolve(self, parent: Node, name: bytes) -> _Child | None:
        """What `name` in directory `parent` is in the union, or None (absent or whited out)."""
        if is_reserved_name(name):
            return None
        view = self._view(parent) if parent.lowers else {}
        entry = view.get(name)
        if parent.upper:
            fd = self._dirfd(parent, UPPER)
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
                    and not self._is_upper_opaque(fd, name)
                ):
                    lowers = entry.layers
                lower = entry.layers[0] if entry is not None else 0
                ino, extra = self._origin(fd, name, st)
                redirect = self._marker(UPPER, fd, name, st)
                return _Child(st, True, lower, lowers, ino, extra, redirect)
            if entry is not None and self._upper_whiteout(fd, name):
                return None
        if entry is None:
            return None
        layer = entry.layers[0]
        st = self._lower_stat(parent, layer, name)
        redirect = None
        if self._marker_layers[layer] and stat.S_ISREG(st.st_mode):
            redirect = self._marker(layer, self._dirfd(parent, layer), name, st)
        return _Child(
            st,
            False,
            layer,
            entry.layers if entry.is_dir else (),
            encode_ino(layer, st.st_ino),
            redirect=redirect,
        )

    def _marker(self, layer: int, dirfd: int, name: bytes, st: os.stat_result) -> bytes | None:
        """The metacopy marker of a regular file in `layer` (only looked for where the layer's
        root says it may hold some, and never on empty files: those are never metacopied)."""
        if not self._marker_layers[layer] or not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        return metacopy.read_marker(dirfd, name, self.private_ns)

    def _node_for(self, parent: Node, name: bytes, child: _Child) -> Node:
        """The node for a resolved name: the known one if it is the same object, else a new one."""
        node = parent.children.get(name)
        kind = stat.S_IFMT(child.st.st_mode)
        if node is not None and (node.ino != child.ino or node.kind != kind):
            self.inodes.unlink(node, parent, name)
            node = None
        if node is None:
            node = self.inodes.find(child.ino)
            if node is not None and (node.is_dir or node.kind != kind):
                if node.links or node.nodeid == ROOT:
                    # a live directory, or another kind of object, has this number: only a
                    # forged origin marker can make an upper object claim it
                    raise self._bad_marker(name, "origin", b"(the number of another object)")
                node = None  # directories have one name; a stale entry is replaced
            elif (
                node is not None
                and child.upper
                and node.links
                and not self._same_object(node, child)
            ):
                raise self._bad_marker(name, "origin", b"(the number of another file)")
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
                raise self._bad_marker(name, "origin", b"(its number is claimed by another file)")
        if node is None:
            node = Node(
                nodeid=InodeNo(child.ino),
                kind=kind,
                links=[],
                upper=child.upper,
                lower=child.lower,
                lowers=child.lowers,
            )
            self.inodes.add(node)
        else:
            node.upper = node.upper or child.upper
            if node.is_dir and node.lowers != child.lowers and not node.opaque_checked:
                node.lowers = child.lowers
                node.view = None
        if child.upper:
            node.nlink_extra = child.nlink_extra
        else:
            node.lower_st = child.st
        if (child.upper or not node.upper) and node.redirect != child.redirect:
            node.redirect, node.data_src = child.redirect, None
        self.inodes.link(node, parent, name)
        return node

    def _lookup(self, parent: Node, name: bytes) -> Node:
        if len(name) > NAME_MAX:
            raise fs_error(errno.ENAMETOOLONG, name)
        if not parent.is_dir:
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
        child = self._resolve(parent, name)
        if child is None:
            old = parent.children.get(name)
            if old is not None:
                self.inodes.unlink(old, parent, name)
            raise fs_error(errno.ENOENT, name)
        return self._node_for(parent, name, child)

    async def lookup(self, parent_id: int, name: bytes) -> Attr:
        """Resolve name in a directory and count one kernel reference to the result."""
        node = self._lookup(self.inodes.get(parent_id), name)
        node.lookups += 1
        return self._attr(node)

    def remember(self, nodeid: int) -> None:
        """Count one kernel reference taken by readdirplus (the kernel forgets it later)."""
        self.inodes.get(nodeid).lookups += 1

    def forget(self, items: list[tuple[int, int]]) -> None:
        for nodeid, count in items:
            node = self.inodes.nodes.get(InodeNo(nodeid))
            if node is None:
                continue
            self.inodes.forget(node, count)
            if node.nodeid not in self.inodes.nodes:
                for layer in range(len(self._root_fds)):
                    self._fds.drop((node.nodeid, layer))

    # ------------------------------------------------------------------ attributes

    def _stat(self, node: Node) -> os.stat_result:
        if not node.links and node.nodeid != ROOT:
            if isinstance(node.unlinked_st, os.stat_result):
                return node.unlinked_st
            if node.fd >= 0:
                return os.fstat(node.fd)
            raise fs_error(errno.ENOENT)
        if node.upper:
            fd, name = self._where(node, UPPER)
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        if node.lower_st is None:
            fd, name = self._where(node, node.lower)
            node.lower_st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        assert isinstance(node.lower_st, os.stat_result)
        return node.lower_st

    def _attr(self, node: Node) -> Attr:
        """The attributes the kernel sees; cached for objects only in lower layers, which cannot
        change until they are copied up or lose a name (both drop the cache)."""
        if node.attr is not None and not node.upper:
            assert isinstance(node.attr, Attr)
            return node.attr
        attr = self._make_attr(node, self._stat(node))
        if not node.upper and node.links:
            node.attr = attr
        return attr

    def _make_attr(self, node: Node, st: os.stat_result) -> Attr:
        nlink = st.st_nlink
        if not node.links and node.nodeid != ROOT:
            nlink = 0
        elif node.upper and node.nlink_extra:
            nlink += node.nlink_extra
        elif node.is_dir and len(node.lowers) + node.upper > 1:
            if not node.opaque_checked:
                self._view(node)  # cuts node.lowers at an opaque layer
            if len(node.lowers) + node.upper > 1:
                nlink = 1  # a merged directory: overlayfs does not count its subdirs either
        uid, gid = st.st_uid, st.st_gid
        cfg = self.cfg
        if cfg.uid_map:
            uid = _map_id(uid, cfg.uid_map, inward=True)
        if cfg.gid_map:
            gid = _map_id(gid, cfg.gid_map, inward=True)
        if cfg.squash_uid is not None:
            uid = cfg.squash_uid
        if cfg.squash_gid is not None:
            gid = cfg.squash_gid
        blocks = st.st_blocks
        if node.redirect is not None:
            try:  # a metacopy file reports its data's blocks, as overlayfs does
                src = self._data_source(node)
            except OSError:
                src = None  # missing data: opening fails with EIO, attributes stay readable
            if src is not None:
                blocks = src.st.st_blocks
        return Attr(
            nodeid=node.nodeid,
            ino=node.ino,
            mode=st.st_mode,
            nlink=nlink,
            uid=uid,
            gid=gid,
            rdev=st.st_rdev,
            size=st.st_size,
            blocks=blocks,
            blksize=st.st_blksize,
            atime_ns=st.st_atime_ns,
            mtime_ns=st.st_mtime_ns,
            ctime_ns=st.st_ctime_ns,
            generation=node.generation,
        )

    def _disk_ids(self, uid: int, gid: int) -> tuple[int, int]:
        """The ids stored on disk for union ids (inverse of uidmapping=/gidmapping=)."""
        if self.cfg.uid_map and uid != -1:
            uid = _map_id(uid, self.cfg.uid_map, inward=False)
        if self.cfg.gid_map and gid != -1:
            gid = _map_id(gid, self.cfg.gid_map, inward=False)
        return uid, gid

    async def getattr(self, nodeid: int) -> Attr:
        return self._attr(self.inodes.get(nodeid))

    async def readlink(self, nodeid: int) -> bytes:
        node = self.inodes.get(nodeid)
        fd, name = self._where(node, UPPER if node.upper else node.lower)
        return os.readlink(name, dir_fd=fd)

    async def setattr(self, nodeid: int, changes: SetAttr) -> Attr:
        node = self.inodes.get(nodeid)
        self._check_writable()
        if node.links or node.nodeid == ROOT:
            if changes.size is None:  # chmod, chown, utimes: the data may stay below
                await self.copy_up(node, metadata_only=True)
            else:
                await self.copy_up(node, data=changes.size != 0)
        if changes.size is not None:
            os.ftruncate(await self._io_fd(node, write=True), changes.size)
        if not node.links and node.nodeid != ROOT:
            return self._setattr_unlinked(node, changes)
        dirfd, name = self._where(node, UPPER)
        if changes.uid is not None or changes.gid is not None:
            uid, gid = self._disk_ids(
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
        return self._attr(node)

    def _setattr_unlinked(self, node: Node, changes: SetAttr) -> Attr:
        """fchmod/fchown/futimens on an open file whose last name is gone.

        Only an upper file can be changed: the fds of a lower or metacopy file are on a lower
        layer, which must never change, and a file without a name cannot be copied up.
        """
        if not node.upper or node.redirect is not None:
            raise fs_error(errno.EROFS)
        fd = node.fd
        if fd < 0:
            raise fs_error(errno.ENOENT)
        if changes.uid is not None or changes.gid is not None:
            uid, gid = self._disk_ids(
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
        return self._attr(node)

    # ------------------------------------------------------------------ copy-up

    def _check_writable(self) -> None:
        if self.read_only:
            raise fs_error(errno.EROFS)

    def _tmpname(self) -> bytes:
        return b"%d-%d" % (os.getpid(), next(self._tmp_counter))

    async def copy_up(self, node: Node, *, data: bool = True, metadata_only: bool = False) -> None:
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
            self._check_writable()
            chain: list[Node] = []
            cur: Node | None = node
            while cur is not None and not cur.upper:
                chain.append(cur)
                cur = cur.parent
            if cur is None:
                raise fs_error(errno.ENOENT, node.name)  # unlinked meanwhile
            for ancestor in reversed(chain[1:]):
                await self._copy_up_node(ancestor, data=True, metadata_only=False)
            await self._copy_up_node(node, data=data, metadata_only=metadata_only)
        if node.redirect is not None and node.upper:
            if not metadata_only:
                await self._copy_up_data(node, data=data)
            else:
                async with node.lock:
                    pass  # a data copy-up may be replacing the file: change the new one

    async def _copy_up_node(self, node: Node, *, data: bool, metadata_only: bool) -> None:
        async with node.lock:
            if node.upper:
                return
            if node.is_dir:
                self._copy_up_dir(node)
            elif stat.S_ISREG(node.kind) and self._stat(node).st_nlink > 1:
                # No metacopy for hard links: a later data copy-up would have to move every
                # name of the group at once; copying the data now keeps them one file.
                await self._copy_up_hardlinked(node, data=data)
            else:
                meta = metadata_only and self._can_metacopy(node)
                await self._copy_up_one(node, data=data, meta=meta)
            node.upper = True
            self._drop_fd(node)  # it was on the lower file
            if node.is_dir and self.invalidate is not None:
                self.invalidate(node.nodeid)  # now merged: its st_nlink became 1

    def _can_metacopy(self, node: Node) -> bool:
        """A metadata change of this lower node may leave its data below (an empty file has
        nothing worth deferring, and is never a metacopy file)."""
        return (
            self.metacopy_xattr is not None
            and stat.S_ISREG(node.kind)
            and self._stat(node).st_size > 0
        )

    def _copy_up_dir(self, node: Node) -> None:
        parent = node.parent
        assert parent is not None
        src_fd, name = self._where(node, node.lower)
        st = self._stat(node)
        tmp = self._tmpname()
        os.mkdir(tmp, 0o700, dir_fd=self._tmp_fd)
        self._copy_meta(src_fd, name, self._tmp_fd, tmp, st, self._origin_of(node))
        self._rename_into_place(tmp, parent, node.name)

    async def _copy_up_one(self, node: Node, *, data: bool, meta: bool = False) -> None:
        """Copy a non-directory up; retried if it was moved while its data was copied.

        `meta`: make a metacopy file whose marker records the path the file has now, which is
        its path in its lower layer (lower objects are never renamed in place).
        """
        while True:
            parent = node.parent
            if parent is None:
                raise fs_error(errno.ENOENT, node.name)
            name = node.name
            src_fd = self._dirfd(parent, node.lower)
            marker = self._relpath(node) if meta else None
            st = self._stat(node)
            tmp = await self._build_copy(node, src_fd, name, st, data, marker)
            if node.parent is parent and node.name == name and parent.upper:
                self._rename_into_place(tmp, parent, name)
                if stat.S_ISREG(st.st_mode) and marker is None and data and st.st_size > 0:
                    self._sync_dir(self._dirfd(parent, UPPER))
                node.redirect, node.data_src = marker, None
                return
            self._remove_tree(self._tmp_fd, tmp)  # renamed or unlinked meanwhile: start over
            if not node.links:
                raise fs_error(errno.ENOENT, name)
            await self.copy_up(node.parent or parent)

    async def _copy_up_data(self, node: Node, *, data: bool) -> None:
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
                pfd = self._dirfd(parent, UPPER)
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                tmp = await self._build_copy(node, pfd, name, st, data, None)
                if node.parent is parent and node.name == name:
                    pst = os.stat(pfd)
                    # Swapped, not renamed over: ext4 (auto_da_alloc) would flush the whole new
                    # file synchronously in a rename that replaces a file. The metacopy file
                    # lands in the work dir (removed at the next mount if we crash now).
                    _sys.renameat2(self._tmp_fd, tmp, pfd, name, _sys.RENAME_EXCHANGE)
                    os.unlink(tmp, dir_fd=self._tmp_fd)
                    self._restore_times(pfd, pst)
                    if data and st.st_size > 0:
                        self._sync_dir(pfd)
                    node.redirect, node.data_src = None, None
                    break
                self._remove_tree(self._tmp_fd, tmp)  # renamed meanwhile: start over
        self._drop_fd(node)  # it was on the data below

    def _relpath(self, node: Node) -> bytes:
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

    def _data_source(self, node: Node) -> metacopy.DataSource | None:
        """Where the data of a metacopy node is (absolute layer index); None for a file that
        holds its own data. Cached: the layers below the marker never change while mounted.
        Raises OSError(EIO) when the data is missing."""
        if node.redirect is None:
            return None
        if isinstance(node.data_src, metacopy.DataSource):
            return node.data_src
        base = (UPPER if node.upper else node.lower) + 1
        size = self._stat(node).st_size
        found = metacopy.find_data(self._root_fds[base:], node.redirect, size, self.private_ns)
        src = dataclasses.replace(found, layer=found.layer + base)
        node.data_src = src
        return src

    def _open_data(self, node: Node) -> int:
        """A read-only fd with node's data: its own file, or where its metacopy marker leads."""
        src = self._data_source(node)
        if src is not None:
            return metacopy.open_in_layer(self._root_fds[src.layer], src.relpath)
        dirfd, name = self._where(node, UPPER if node.upper else node.lower)
        return _sys.open_lower(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dirfd)

    def _mark_upper_layer(self) -> None:
        """Flag the upper root as holding metacopy files, before the first marker is written
        (so a reader of this layer never misses one, even after a crash right after)."""
        if self._marker_layers[UPPER]:
            return
        _sys.setxattr(self._root_fds[UPPER], b".", self._metacopy_layer_xattr, b"y")
        self._marker_layers[UPPER] = True

    async def _build_copy(
        self,
        node: Node,
        src_fd: int,
        name: bytes,
        st: os.stat_result,
        data: bool,
        marker: bytes | None,
    ) -> bytes:
        """Build node's copy in the work dir from (src_fd, name) and its metadata `st`.

        A regular file gets its data from wherever node's data is (`_open_data`); with a
        `marker` it gets none, only its size (a hole) and the metacopy xattr. Copied data is
        fsync'ed before the copy is returned (not with `volatile`), as overlayfs does: the copy
        is renamed into place next, and after a power loss the name must not show an empty or
        torn file. On any error (ENOSPC, EDQUOT, EIO...) the partial copy is removed at once,
        so a full filesystem is not kept full by it, and the error goes to the caller.
        """
        tmp = self._tmpname()
        try:
            await self._build_copy_at(node, src_fd, name, st, data, marker, tmp)
        except BaseException:
            with contextlib.suppress(OSError):  # never hide the error that stopped the copy
                self._remove_tree(self._tmp_fd, tmp)
            raise
        return tmp

    async def _build_copy_at(
        self,
        node: Node,
        src_fd: int,
        name: bytes,
        st: os.stat_result,
        data: bool,
        marker: bytes | None,
        tmp: bytes,
    ) -> None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            # The data is opened first: missing metacopy data (EIO) leaves nothing behind.
            src = self._open_data(node) if marker is None and data and st.st_size > 0 else -1
            try:
                dst = os.open(
                    tmp,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                    0o600,
                    dir_fd=self._tmp_fd,
                )
                try:
                    if marker is not None:
                        assert self.metacopy_xattr is not None
                        self._mark_upper_layer()
                        os.ftruncate(dst, st.st_size)
                        os.setxattr(dst, self.metacopy_xattr, marker)
                    elif src >= 0 and st.st_size > INLINE_COPY_MAX:
                        await trio.to_thread.run_sync(
                            _sys.copy_data, src, dst, st.st_size, limiter=self._copy_limiter
                        )
                    elif src >= 0:
                        _sys.copy_data(src, dst, st.st_size)
                    if src >= 0 and not self.cfg.volatile:
                        await trio.to_thread.run_sync(os.fsync, dst, limiter=self._copy_limiter)
                finally:
                    os.close(dst)
            finally:
                if src >= 0:
                    os.close(src)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(name, dir_fd=src_fd), tmp, dir_fd=self._tmp_fd)
        else:
            os.mknod(tmp, mode, st.st_rdev, dir_fd=self._tmp_fd)
        self._copy_meta(src_fd, name, self._tmp_fd, tmp, st, self._origin_of(node))

    def _sync_dir(self, fd: int) -> None:
        """Make a rename of a data copy into the upper directory `fd` durable (not with
        `volatile`): the copy itself was synced before it was renamed."""
        if self.cfg.volatile:
            return
        dfd = os.open(_sys.fd_path(fd), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def _copy_meta(
        self, src_fd: int, name: bytes, dst_fd: int, dst: bytes, st: os.stat_result, origin: int
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
        self._set_origin(dst_fd, dst, origin)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_fd, follow_symlinks=False)

    def _origin_of(self, node: Node) -> int:
        return node.ino

    def _rename_into_place(self, tmp: bytes, parent: Node, name: bytes) -> None:
        """Move a finished copy from the work dir into parent's upper dir, keeping its times."""
        pfd = self._dirfd(parent, UPPER)
        pst = os.stat(pfd)
        try:
            _sys.renameat2(self._tmp_fd, tmp, pfd, name, _sys.RENAME_NOREPLACE)
        except FileExistsError:
            # Already there (e.g. linked by a hard-link group copy-up); the copy is not needed.
            self._remove_tree(self._tmp_fd, tmp)
        self._restore_times(pfd, pst)

    def _restore_times(self, fd: int, st: os.stat_result) -> None:
        try:
            os.utime(_sys.fd_path(fd), ns=(st.st_atime_ns, st.st_mtime_ns))
        except OSError as exc:
            log.debug("cannot restore directory times: %s", exc)

    async def _copy_up_hardlinked(self, node: Node, *, data: bool) -> None:
        """Copy up a multiply-linked lower file once and link every visible name to the copy."""
        await self._copy_up_one(node, data=data)
        parent = node.parent
        assert parent is not None
        layer = node.lower
        st = self._stat(node) if node.lower_st is None else node.lower_st
        assert isinstance(st, os.stat_result)
        index = self._hardlinks.get(layer)
        if index is None:
            index = hardlink_index(
                self._root_fds[layer], self.cfg.lowers[layer - 1], self._cache_fd
            )
            self._hardlinks[layer] = index
        group = index.get(st.st_ino, [])
        for path in group:
            try:
                dirnode = self.inodes.get(ROOT)
                for comp in path[:-1]:
                    dirnode = self._lookup(dirnode, comp)
            except OSError:
                continue  # hidden by a whiteout or a replaced directory
            other = self._resolve(dirnode, path[-1])
            if other is None or other.upper or other.ino != node.ino:
                continue  # whited out, already up, or shadowed by another file
            self.inodes.link(node, dirnode, path[-1])
            await self.copy_up(dirnode)
            src_fd = self._dirfd(parent, UPPER)
            dst_fd = self._dirfd(dirnode, UPPER)
            pst = os.stat(dst_fd)
            try:
                os.link(
                    node.name, path[-1], src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False
                )
            except FileExistsError:
                pass
            self._restore_times(dst_fd, pst)
        fd, name = self._where(node, UPPER)
        extra = len(group) - os.stat(name, dir_fd=fd, follow_symlinks=False).st_nlink
        if extra > 0:  # names left below still count, as in overlayfs (index=on)
            self._set_origin(fd, name, node.ino, extra)
            node.nlink_extra = extra

    # ------------------------------------------------------------------ materializing directories

    async def _materialize(self, node: Node) -> None:
        """Copy a merged directory's whole visible subtree up and make it opaque (for rename).

        Each copied entry is identical to what was visible, so an interruption leaves the union
        unchanged; the directory becomes opaque only once everything is up.
        """
        await self.copy_up(node)
        if not node.lowers:
            return
        view = self._view(node)
        for name in list(view):
            try:
                child = self._lookup(node, name)
            except FileNotFoundError:
                continue  # whited out in the upper
            if child.is_dir:
                await self._materialize(child)
            else:
                await self.copy_up(child, metadata_only=True)
        ufd = self._dirfd(node, UPPER)
        self._make_opaque(ufd, b".")
        self._drop_whiteouts(ufd)
        self._forget_lowers(node)

    def _forget_lowers(self, node: Node) -> None:
        """node and everything known below it now live in the upper layer only."""
        stack = [node]
        while stack:
            cur = stack.pop()
            cur.upper = True
            if cur.is_dir:
                cur.lowers = ()
                cur.view = None
                cur.listings = {}
                cur.opaque_checked = True
                stack.extend(cur.children.values())

    def _drop_whiteouts(self, dirfd: int) -> None:
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

    def _make_opaque(self, dirfd: int, name: bytes) -> None:
        if self.opaque_xattr is not None and not self.whiteout_wh:
            _sys.setxattr(dirfd, name, self.opaque_xattr, b"y")
            return
        # name is a directory we just checked or made: the one '/' cannot cross a symlink
        fd = os.open(
            name + b"/" + OPAQUE_MARKER,
            os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dirfd,
        )
        os.close(fd)

    # ------------------------------------------------------------------ whiteouts

    def _in_lowers(self, parent: Node, name: bytes) -> bool:
        return bool(parent.lowers) and name in self._view(parent)

    def _make_whiteout_tmp(self) -> bytes:
        """A new whiteout in the work dir: a hard link to one shared whiteout inode, as overlayfs
        makes them (a link costs less than a new inode: `rm -rf` of a lower tree is mostly
        this), or a new 0/0 character device where linking fails."""
        if self.whiteout_wh:
            raise AssertionError("chardev whiteout requested in .wh. mode")
        tmp = self._tmpname()
        if self._share_whiteouts:
            try:
                os.link(SHARED_WHITEOUT, tmp, src_dir_fd=self._tmp_fd, dst_dir_fd=self._tmp_fd)
                return tmp
            except FileNotFoundError:
                self._mknod_whiteout(SHARED_WHITEOUT)
                return self._make_whiteout_tmp()
            except OSError as exc:
                if exc.errno != errno.EMLINK:
                    log.info("whiteouts are not shared: cannot link them: %s", exc)
                    self._share_whiteouts = False
                else:  # the link count is full: start a new shared inode
                    os.unlink(SHARED_WHITEOUT, dir_fd=self._tmp_fd)
        self._mknod_whiteout(tmp)
        return tmp

    def _mknod_whiteout(self, name: bytes) -> None:
        os.mknod(name, S_IFWHT, os.makedev(0, 0), dir_fd=self._tmp_fd)  # c--------- as the kernel

    def _whiteout(self, parent: Node, name: bytes) -> None:
        """Hide the lower `name` in parent; replaces any upper object there, atomically."""
        pfd = self._dirfd(parent, UPPER)
        try:
            st: os.stat_result | None = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if self.whiteout_wh:
            if len(name) + len(WH_PREFIX) > NAME_MAX:
                raise fs_error(errno.ENAMETOOLONG, name)  # `.wh.NAME` cannot be written
            fd = os.open(
                WH_PREFIX + name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=pfd
            )
            os.close(fd)
            if st is not None:
                self._remove_upper(pfd, name, st)
            return
        tmp = self._make_whiteout_tmp()
        if st is None:
            _sys.renameat2(self._tmp_fd, tmp, pfd, name, _sys.RENAME_NOREPLACE)
        elif stat.S_ISDIR(st.st_mode):
            _sys.renameat2(self._tmp_fd, tmp, pfd, name, _sys.RENAME_EXCHANGE)
            self._remove_tree(self._tmp_fd, tmp)
        else:
            _sys.renameat2(self._tmp_fd, tmp, pfd, name)

    def _remove_upper(self, pfd: int, name: bytes, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            tmp = self._tmpname()
            _sys.renameat2(pfd, name, self._tmp_fd, tmp)
            self._remove_tree(self._tmp_fd, tmp)
        else:
            os.unlink(name, dir_fd=pfd)

    def _remove_tree(self, dirfd: int, name: bytes) -> None:
        """rm -rf of name in dirfd without following symlinks (work dir leftovers, old dirs)."""
        try:
            os.unlink(name, dir_fd=dirfd)
            return
        except IsADirectoryError:
            pass
        except FileNotFoundError:
            return
        except PermissionError:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                raise
        sub = os.open(name, _sys.O_PATHDIR, dir_fd=dirfd)
        try:
            rfd = os.open(b".", _sys.O_DIR, dir_fd=sub)
            try:
                names = os.listdir(rfd)
            finally:
                os.close(rfd)
            for child in names:
                self._remove_tree(sub, os.fsencode(child))
        finally:
            os.close(sub)
        os.rmdir(name, dir_fd=dirfd)

    def _clear_upper_whiteout(self, pfd: int, name: bytes) -> None:
        """Remove a `.wh.` marker for name (after something new was put at name)."""
        if len(name) + len(WH_PREFIX) > NAME_MAX:
            return
        try:
            os.unlink(WH_PREFIX + name, dir_fd=pfd)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ creating objects

    def _check_new_name(self, name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise fs_error(errno.ENAMETOOLONG, name)
        if is_reserved_name(name):
            raise fs_error(errno.EPERM, name)  # would forge a whiteout or an opaque marker

    async def _prepare_create(self, parent_id: int, name: bytes) -> tuple[Node, int, bool]:
        """Parent copied up, name free: returns (parent, upper fd, whether lower had name)."""
        self._check_writable()
        self._check_new_name(name)
        parent = self.inodes.get(parent_id)
        if not parent.is_dir:
            raise fs_error(errno.ENOTDIR, name)
        if self._resolve(parent, name) is not None:
            raise fs_error(errno.EEXIST, name)
        await self.copy_up(parent)
        return parent, self._dirfd(parent, UPPER), self._in_lowers(parent, name)

    def _owner(self, pfd: int, caller: Caller) -> tuple[int, int]:
        """uid, gid for a new object: the caller's, or the parent's gid in a setgid directory."""
        pst = os.stat(pfd)
        uid, gid = self._disk_ids(caller.uid, caller.gid)
        return uid, (pst.st_gid if pst.st_mode & stat.S_ISGID else gid)

    def _scratch(self, pfd: int, name: bytes, in_lower: bool) -> tuple[int, bytes]:
        """Where to build a new object: at its name, or (over a whiteout) somewhere to swap from.

        Normally the work dir; but a directory with a default ACL must be the one the object is
        created in, so that the upper filesystem applies the inheritance: then a hidden name in
        the parent is used (`.wh..wh.` names are reserved and never shown).
        """
        if not in_lower:
            return pfd, name
        if _sys.getxattr(pfd, b".", "system.posix_acl_default") is not None:
            return pfd, b".wh..wh.strata." + self._tmpname()
        return self._tmp_fd, self._tmpname()

    def _place_new(self, src_fd: int, tmp: bytes, pfd: int, name: bytes, is_dir: bool) -> None:
        """Move a new object built at (src_fd, tmp) to name, replacing a whiteout atomically."""
        if not self.whiteout_wh:
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None:
                if is_dir:  # rename(2) cannot put a directory over a character device
                    _sys.renameat2(src_fd, tmp, pfd, name, _sys.RENAME_EXCHANGE)
                    os.unlink(tmp, dir_fd=src_fd)
                else:
                    _sys.renameat2(src_fd, tmp, pfd, name)
                return
        _sys.renameat2(src_fd, tmp, pfd, name, _sys.RENAME_NOREPLACE)
        self._clear_upper_whiteout(pfd, name)

    def _finish_new(self, parent: Node, name: bytes) -> Node:
        node = self._lookup(parent, name)
        node.lookups += 1
        return node

    @staticmethod
    def _keep_setid(fd_or_name: int | bytes, perm: int, dir_fd: int | None = None) -> None:
        """chown clears set-id bits: put back the ones asked for, leaving the rest of the mode
        (and an inherited ACL's mask) as the filesystem made it."""
        if not perm & (stat.S_ISUID | stat.S_ISGID):
            return
        if isinstance(fd_or_name, int):
            os.fchmod(fd_or_name, stat.S_IMODE(os.fstat(fd_or_name).st_mode) | perm & 0o7000)
        else:
            st = os.stat(fd_or_name, dir_fd=dir_fd, follow_symlinks=False)
            os.chmod(fd_or_name, stat.S_IMODE(st.st_mode) | perm & 0o7000, dir_fd=dir_fd)

    async def create(self, parent_id: int, name: bytes, mode: int, caller: Caller) -> Attr:
        """A new regular file; the fd it was made with becomes its cached I/O fd."""
        parent, pfd, in_lower = await self._prepare_create(parent_id, name)
        uid, gid = self._owner(pfd, caller)
        oflags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        perm = stat.S_IMODE(mode)
        dirfd, tmp = self._scratch(pfd, name, in_lower)
        # Created with the final mode (our umask is 0) so that a default ACL is applied to it.
        fd = os.open(tmp, oflags | os.O_NOFOLLOW, perm, dir_fd=dirfd)
        try:
            os.fchown(fd, uid, gid)
            self._keep_setid(fd, perm)
            if in_lower:
                self._place_new(dirfd, tmp, pfd, name, False)
            node = self._finish_new(parent, name)
        except BaseException:
            os.close(fd)
            raise
        self._keep_fd(node, fd, writable=True)
        return self._attr(node)

    async def mkdir(self, parent_id: int, name: bytes, mode: int, caller: Caller) -> Attr:
        parent, pfd, in_lower = await self._prepare_create(parent_id, name)
        uid, gid = self._owner(pfd, caller)
        dirfd, tmp = self._scratch(pfd, name, in_lower)
        os.mkdir(tmp, stat.S_IMODE(mode), dir_fd=dirfd)  # setgid parents pass S_ISGID on
        os.chown(tmp, uid, gid, dir_fd=dirfd, follow_symlinks=False)
        if in_lower:
            self._make_opaque(dirfd, tmp)  # the deleted lower directory must stay hidden
            self._place_new(dirfd, tmp, pfd, name, True)
        return self._attr(self._finish_new(parent, name))

    async def mknod(
        self, parent_id: int, name: bytes, mode: int, rdev: int, caller: Caller
    ) -> Attr:
        if stat.S_ISCHR(mode) and rdev == 0:
            raise fs_error(errno.EPERM, name)  # a user must not forge a whiteout
        if stat.S_ISREG(mode):  # how the kernel creates files once create() said ENOSYS
            return await self.create(parent_id, name, mode, caller)
        parent, pfd, in_lower = await self._prepare_create(parent_id, name)
        uid, gid = self._owner(pfd, caller)
        dirfd, tmp = self._scratch(pfd, name, in_lower)
        os.mknod(tmp, stat.S_IFMT(mode) | stat.S_IMODE(mode), rdev, dir_fd=dirfd)
        os.chown(tmp, uid, gid, dir_fd=dirfd, follow_symlinks=False)
        self._keep_setid(tmp, stat.S_IMODE(mode), dirfd)
        if in_lower:
            self._place_new(dirfd, tmp, pfd, name, False)
        return self._attr(self._finish_new(parent, name))

    async def symlink(self, parent_id: int, name: bytes, target: bytes, caller: Caller) -> Attr:
        parent, pfd, in_lower = await self._prepare_create(parent_id, name)
        uid, gid = self._owner(pfd, caller)
        dirfd, tmp = self._scratch(pfd, name, in_lower)
        os.symlink(target, tmp, dir_fd=dirfd)
        os.chown(tmp, uid, gid, dir_fd=dirfd, follow_symlinks=False)
        if in_lower:
            self._place_new(dirfd, tmp, pfd, name, False)
        return self._attr(self._finish_new(parent, name))

    async def link(self, nodeid: int, new_parent_id: int, new_name: bytes) -> Attr:
        self._check_writable()
        node = self.inodes.get(nodeid)
        if node.is_dir:
            raise fs_error(errno.EPERM, new_name)
        if not node.links:
            raise fs_error(errno.ENOENT, new_name)
        await self.copy_up(node)
        parent, pfd, in_lower = await self._prepare_create(new_parent_id, new_name)
        src_fd, src_name = self._where(node, UPPER)
        dirfd, tmp = (self._tmp_fd, self._tmpname()) if in_lower else (pfd, new_name)
        os.link(src_name, tmp, src_dir_fd=src_fd, dst_dir_fd=dirfd, follow_symlinks=False)
        if in_lower:
            self._place_new(dirfd, tmp, pfd, new_name, False)
        self.inodes.link(node, parent, new_name)
        node.lookups += 1
        return self._attr(node)

    # ------------------------------------------------------------------ removing objects

    def _entries(self, node: Node) -> list[bytes]:
        """The merged listing of directory node (no '.', '..'), upper first then lowers."""
        names: list[bytes] = []
        hidden: set[bytes] = set()
        seen: set[bytes] = set()
        if node.upper:
            fd = self._dirfd(node, UPPER)
            rfd = os.open(b".", _sys.O_DIR, dir_fd=fd)
            try:
                with os.scandir(rfd) as it:
                    for entry in it:
                        name = os.fsencode(entry.name)
                        if is_reserved_name(name):
                            target = whiteout_target(name)
                            if target is not None:
                                hidden.add(target)
                            continue
                        if is_whiteout_entry(entry):
                            hidden.add(name)
                            continue
                        names.append(name)
                        seen.add(name)
            finally:
                os.close(rfd)
        if node.lowers:
            names.extend(n for n in self._view(node) if n not in seen and n not in hidden)
        return names

    async def unlink(self, parent_id: int, name: bytes) -> None:
        self._check_writable()
        parent = self.inodes.get(parent_id)
        node = self._lookup(parent, name)
        if node.is_dir:
            raise fs_error(errno.EISDIR, name)
        if not node.upper and stat.S_ISREG(node.kind) and self._stat(node).st_nlink > 1:
            # The other names must see st_nlink drop (as overlayfs with index=on): move the
            # file with all its names up first, then remove this name there.
            await self.copy_up(node)
        await self._remove(parent, name, node)

    async def rmdir(self, parent_id: int, name: bytes) -> None:
        self._check_writable()
        parent = self.inodes.get(parent_id)
        node = self._lookup(parent, name)
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR, name)
        if self._entries(node):
            raise fs_error(errno.ENOTEMPTY, name)
        await self._remove(parent, name, node)
        self._fds.drop((node.nodeid, UPPER))

    def _pin_if_last_name(self, node: Node) -> None:
        """Before a file the kernel holds loses its last name: keep an fd, as it may still be
        open (in no-open mode we cannot know), and for a metacopy file its metadata (see
        Node.unlinked_st). The fd goes when the kernel forgets the node."""
        if not stat.S_ISREG(node.kind) or len(node.links) != 1 or node.lookups <= 0:
            return
        if node.redirect is not None:
            node.unlinked_st = self._stat(node)
        upper_file = node.upper and node.redirect is None
        if node.fd < 0 or (upper_file and not node.fd_writable):  # else the cached one will do
            try:
                fd, writable = self._open_io(node, write=False)
            except OSError:
                return  # metacopy data missing: reads of the unlinked file fail (EIO) as before
            self._drop_fd(node)
            node.fd, node.fd_writable = fd, writable
        self._fd_lru.pop(node, None)
        node.fd_pinned = True

    async def _remove(self, parent: Node, name: bytes, node: Node) -> None:
        await self.copy_up(parent)
        self._pin_if_last_name(node)
        pfd = self._dirfd(parent, UPPER)
        if self._in_lowers(parent, name):
            self._whiteout(parent, name)
        else:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            self._remove_upper(pfd, name, st)
        self.inodes.unlink(node, parent, name)

    # ------------------------------------------------------------------ rename

    async def rename(
        self, old_parent_id: int, old_name: bytes, new_parent_id: int, new_name: bytes, flags: int
    ) -> None:
        """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE, for files and any directory.

        A lower or merged directory is first copied up with its whole visible subtree (and made
        opaque), so renaming directories never fails with EXDEV.
        """
        self._check_writable()
        if flags & ~(_sys.RENAME_NOREPLACE | _sys.RENAME_EXCHANGE) or flags == (
            _sys.RENAME_NOREPLACE | _sys.RENAME_EXCHANGE
        ):
            raise fs_error(errno.EINVAL, new_name)
        self._check_new_name(new_name)
        old_parent = self.inodes.get(old_parent_id)
        new_parent = self.inodes.get(new_parent_id)
        src = self._lookup(old_parent, old_name)
        try:
            dst: Node | None = self._lookup(new_parent, new_name)
        except FileNotFoundError:
            dst = None
        if dst is src:
            return  # two names of one object: rename(2) does nothing
        if flags & _sys.RENAME_NOREPLACE and dst is not None:
            raise fs_error(errno.EEXIST, new_name)
        if flags & _sys.RENAME_EXCHANGE:
            if dst is None:
                raise fs_error(errno.ENOENT, new_name)
            await self._exchange(old_parent, old_name, src, new_parent, new_name, dst)
            return
        if dst is not None:
            if src.is_dir and not dst.is_dir:
                raise fs_error(errno.ENOTDIR, new_name)
            if not src.is_dir and dst.is_dir:
                raise fs_error(errno.EISDIR, new_name)
            if dst.is_dir and self._entries(dst):
                raise fs_error(errno.ENOTEMPTY, new_name)
        if src.is_dir and self._is_ancestor(src, new_parent):
            raise fs_error(errno.EINVAL, new_name)
        await self._move_up(src)
        await self.copy_up(new_parent)
        await self.copy_up(old_parent)
        ofd = self._dirfd(old_parent, UPPER)
        nfd = self._dirfd(new_parent, UPPER)
        if dst is not None:
            self._pin_if_last_name(dst)
        src_in_lower = self._in_lowers(old_parent, old_name)
        dst_in_lower = self._in_lowers(new_parent, new_name)
        try:
            dst_st: os.stat_result | None = os.stat(new_name, dir_fd=nfd, follow_symlinks=False)
        except FileNotFoundError:
            dst_st = None
        if dst_st is None:
            if src_in_lower and self._rename_whiteout(ofd, old_name, nfd, new_name):
                pass
            else:
                _sys.renameat2(ofd, old_name, nfd, new_name, _sys.RENAME_NOREPLACE)
                if src_in_lower:
                    self._whiteout(old_parent, old_name)
        elif not src.is_dir and not stat.S_ISDIR(dst_st.st_mode):
            _sys.renameat2(ofd, old_name, nfd, new_name)
            if src_in_lower:
                self._whiteout(old_parent, old_name)
        else:
            # A directory (or a whiteout a directory moves over): swap, then deal with what
            # landed at the old name.
            _sys.renameat2(ofd, old_name, nfd, new_name, _sys.RENAME_EXCHANGE)
            if src_in_lower:
                self._whiteout(old_parent, old_name)
            else:
                self._remove_upper(ofd, old_name, dst_st)
        self._clear_upper_whiteout(nfd, new_name)
        if src.is_dir and dst_in_lower:
            self._make_opaque(nfd, new_name)
        if dst is not None:
            self.inodes.unlink(dst, new_parent, new_name)
            if dst.is_dir:
                self._fds.drop((dst.nodeid, UPPER))
        self.inodes.unlink(src, old_parent, old_name)
        self.inodes.link(src, new_parent, new_name)
        self._moved(src)

    def _rename_whiteout(self, ofd: int, old: bytes, nfd: int, new: bytes) -> bool:
        """Move and leave a whiteout in one step (RENAME_WHITEOUT) where the kernel can."""
        if not self.can_rename_whiteout:
            return False
        try:
            _sys.renameat2(ofd, old, nfd, new, _sys.RENAME_WHITEOUT)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP):
                raise
            self.can_rename_whiteout = False
            return False
        return True

    async def _move_up(self, node: Node) -> None:
        """Get node into the upper layer in a form that can be renamed there."""
        if node.is_dir:
            await self._materialize(node)
        else:
            await self.copy_up(node, metadata_only=True)  # a metacopy file keeps its marker

    def _moved(self, node: Node) -> None:
        """A directory moved: its fds follow it, but cached lower state no longer applies."""
        if node.is_dir:
            self._forget_lowers(node)
            for layer in range(1, len(self._root_fds)):
                self._fds.drop((node.nodeid, layer))

    def _is_ancestor(self, node: Node, other: Node) -> bool:
        cur: Node | None = other
        while cur is not None:
            if cur is node:
                return True
            cur = cur.parent
        return False

    async def _exchange(
        self,
        old_parent: Node,
        old_name: bytes,
        src: Node,
        new_parent: Node,
        new_name: bytes,
        dst: Node,
    ) -> None:
        if (src.is_dir and self._is_ancestor(src, new_parent)) or (
            dst.is_dir and self._is_ancestor(dst, old_parent)
        ):
            raise fs_error(errno.EINVAL, new_name)
        await self._move_up(src)
        await self._move_up(dst)
        await self.copy_up(old_parent)
        await self.copy_up(new_parent)
        ofd = self._dirfd(old_parent, UPPER)
        nfd = self._dirfd(new_parent, UPPER)
        _sys.renameat2(ofd, old_name, nfd, new_name, _sys.RENAME_EXCHANGE)
        if src.is_dir and self._in_lowers(new_parent, new_name):
            self._make_opaque(nfd, new_name)
        if dst.is_dir and self._in_lowers(old_parent, old_name):
            self._make_opaque(ofd, old_name)
        self.inodes.unlink(src, old_parent, old_name)
        self.inodes.unlink(dst, new_parent, new_name)
        self.inodes.link(src, new_parent, new_name)
        self.inodes.link(dst, old_parent, old_name)
        self._moved(src)
        self._moved(dst)

    # ------------------------------------------------------------------ files

    FD_CACHE: Final = 512  # cached per-node fds (besides pinned ones); RLIMIT_NOFILE allows

    def _open_io(self, node: Node, *, write: bool) -> tuple[int, bool]:
        """Open the file node's reads and writes go to: (fd, writable).

        The upper file read-write when possible (so one fd serves both); else read-only the
        lower file or a metacopy file's data below (EIO if it is missing)."""
        if node.upper and node.redirect is None:
            dirfd, name = self._where(node, UPPER)
            flags = os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                return os.open(name, os.O_RDWR | flags, dir_fd=dirfd), True
            except OSError:
                if write:
                    raise
                return os.open(name, os.O_RDONLY | flags, dir_fd=dirfd), False
        return self._open_data(node), False

    async def _io_fd(self, node: Node, *, write: bool) -> int:
        """The fd for I/O on a regular file, opened on first use and cached on the node.

        A write first copies a lower (or metacopy) file up with its data. A file whose last
        name is gone keeps the fd pinned at unlink; it can be written only if it was an upper
        file (a lower one cannot be copied up without a name)."""
        if node.fd >= 0 and (node.fd_writable or not write):
            if not node.fd_pinned:
                self._fd_lru.pop(node, None)
                self._fd_lru[node] = None
            return node.fd
        if not stat.S_ISREG(node.kind):
            raise fs_error(errno.EISDIR if node.is_dir else errno.EINVAL)
        if not node.links:  # a pinned fd that cannot write, or none at all
            raise fs_error(errno.EROFS if node.fd >= 0 else errno.ENOENT)
        if write:
            self._check_writable()
            await self.copy_up(node, data=True)
        fd, writable = self._open_io(node, write=write)
        self._keep_fd(node, fd, writable=writable)
        return fd

    def _keep_fd(self, node: Node, fd: int, *, writable: bool) -> None:
        self._drop_fd(node)
        node.fd, node.fd_writable = fd, writable
        self._fd_lru[node] = None
        while len(self._fd_lru) > self.FD_CACHE:
            self._drop_fd(next(iter(self._fd_lru)))

    def _drop_fd(self, node: Node) -> None:
        """Close node's cached fd (after copy-up it is on the old file; or the node is gone)."""
        self._fd_lru.pop(node, None)
        if node.fd >= 0:
            os.close(node.fd)
        node.fd, node.fd_writable, node.fd_pinned = -1, False, False

    async def open(self, nodeid: int, flags: int) -> None:
        """An open(2) the kernel tells us of (not in no-open mode): copy up for writing, as
        overlayfs does at open; O_TRUNC (atomic_o_trunc) truncates here."""
        node = self.inodes.get(nodeid)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            self._check_writable()
            await self.copy_up(node, data=not flags & os.O_TRUNC)
        if not node.links:
            raise fs_error(errno.ENOENT)
        if flags & os.O_TRUNC:
            os.ftruncate(await self._io_fd(node, write=True), 0)

    async def read(self, nodeid: int, offset: int, size: int) -> bytes:
        return os.pread(await self._io_fd(self.inodes.get(nodeid), write=False), size, offset)

    async def write(self, nodeid: int, offset: int, data: bytes) -> int:
        return os.pwrite(await self._io_fd(self.inodes.get(nodeid), write=True), data, offset)

    async def fsync(self, nodeid: int, datasync: bool) -> None:
        node = self.inodes.get(nodeid)
        if self.cfg.volatile or not node.upper or node.redirect is not None:
            return  # nothing of it was written here
        fd = await self._io_fd(node, write=False)
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    # ------------------------------------------------------------------ directories

    async def opendir(self, nodeid: int) -> int:
        node = self.inodes.get(nodeid)
        if not node.is_dir:
            raise fs_error(errno.ENOTDIR)
        fh = next(self._next_handle)
        self._handles[fh] = _DirHandle(node)
        return fh

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Attr, int]]:
        """Entries from position `start` as (name, attr, next position); no lookup counted.

        The listing is a snapshot taken at the first read, so positions stay valid while the
        directory changes; names gone since are skipped. A rewind appends the names that are new
        since and keeps every position, as one handle may be read from several places (the FUSE
        adapter keeps one per directory when the kernel sends no opendir).
        """
        handle = self._handles.get(fh)
        if not isinstance(handle, _DirHandle):
            raise fs_error(errno.EBADF)
        node = handle.node
        if handle.names is None or start == 0:
            names = [b".", b"..", *self._entries(node)]
            old = handle.names
            if old is not None and len(old) < 2 * len(names) + 64:  # else start afresh
                known = set(old)
                names = old + [n for n in names if n not in known]
            handle.names = names
        for pos in range(start, len(handle.names)):
            name = handle.names[pos]
            try:
                child = self._lookup(node, name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                continue  # a broken object (logged): the rest of the listing is still served
            yield name, self._attr(child), pos + 1

    async def releasedir(self, fh: int) -> None:
        self._handles.pop(fh, None)

    # ------------------------------------------------------------------ xattrs and statfs

    def _xattr_where(self, node: Node) -> tuple[int, bytes]:
        return self._where(node, UPPER if node.upper else node.lower)

    async def getxattr(self, nodeid: int, attr: str) -> bytes:
        if is_private_xattr(attr):
            raise fs_error(errno.ENODATA)
        fd, name = self._xattr_where(self.inodes.get(nodeid))
        return os.getxattr(_sys.fd_path(fd, name), attr, follow_symlinks=False)

    async def listxattr(self, nodeid: int) -> list[str]:
        fd, name = self._xattr_where(self.inodes.get(nodeid))
        return [a for a in _sys.listxattr(fd, name) if not is_private_xattr(a)]

    async def setxattr(self, nodeid: int, attr: str, value: bytes, flags: int = 0) -> None:
        if is_private_xattr(attr):
            raise fs_error(errno.EPERM)
        self._check_writable()
        node = self.inodes.get(nodeid)
        await self.copy_up(node, metadata_only=True)
        fd, name = self._where(node, UPPER)
        _sys.setxattr(fd, name, attr, value, flags)

    async def removexattr(self, nodeid: int, attr: str) -> None:
        if is_private_xattr(attr):
            raise fs_error(errno.ENODATA)
        self._check_writable()
        node = self.inodes.get(nodeid)
        await self.copy_up(node, metadata_only=True)
        fd, name = self._where(node, UPPER)
        _sys.removexattr(fd, name, attr)

    async def statfs(self) -> os.statvfs_result:
        layer = 1 if self.read_only else UPPER
        return os.statvfs(_sys.fd_path(self._root_fds[layer]))


def _map_id(value: int, mapping: tuple[object, ...], *, inward: bool) -> int:
    """Translate an id through uidmapping=/gidmapping= ranges (unmapped ids pass unchanged)."""
    from .config import IdMapping

    for m in mapping:
        assert isinstance(m, IdMapping)
        src, dst = (m.outside, m.inside) if inward else (m.inside, m.outside)
        if src <= value < src + m.count:
            return dst + (value - src)
    return value
