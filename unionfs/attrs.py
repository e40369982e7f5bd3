"""Inode attributes: what the kernel sees of a node (`Attr`), read from its stat (kernel inode.c).

Attributes of objects only in lower layers are cached (those layers never change while mounted);
ids pass through uidmapping=/gidmapping= and squash_to_* here and nowhere else. A metacopy file
reports the blocks of its data, so where that data is (`data_source`) is found here too. Nothing
here copies up: changing attributes (writes.py) sits above copyup.py, which uses this module.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import metacopy
from .errors import LayerCorruptError, fs_error
from .inodes import ROOT, FileNode, InodeNo, Node
from .layers import UPPER

if TYPE_CHECKING:
    from .config import IdMapping
    from .core import UnionFS


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: new objects are owned by uid/gid (the umask is applied by the adapter)."""

    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class Attr:
    nodeid: InodeNo  # == st_ino
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


def node_stat(fs: UnionFS, node: Node) -> os.stat_result:
    if not node.links and node.nodeid != ROOT:
        if isinstance(node, FileNode):
            if node.unlinked_st is not None:
                return node.unlinked_st
            if node.fd >= 0:
                return os.fstat(node.fd)
        raise fs_error(errno.ENOENT)
    if node.upper:
        fd, name = fs.layers.where(node, UPPER)
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    st = node.lower_st
    if st is None:
        fd, name = fs.layers.where(node, node.lower)
        st = node.lower_st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    return st


def node_attr(fs: UnionFS, node: Node) -> Attr:
    """The attributes the kernel sees. Those of objects only in lower layers cannot change until
    they are copied up or lose a name, so recently used ones are kept (`InodeTable.attrs`, a
    bounded hot set: a readdir's entries, then the kernel's lookups of them).

    A lower file keeps neither its stat_result nor its Attr for as long as the kernel holds
    it: the two were ~900 bytes per file (issue 16), and the kernel keeps the attributes it was
    given for `ops.TIMEOUT` anyway. A miss stats the lower file again (one fstatat)."""
    if not node.upper:
        cached = fs.inodes.attrs.get(node)
        if cached is not None:
            return cached
    attr = make_attr(fs, node, node_stat(fs, node))
    if not node.upper and node.links:
        fs.inodes.cache_attr(node, attr)
        if isinstance(node, FileNode):
            node.lower_st = None
    return attr


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
    size = node_stat(fs, node).st_size
    try:
        found = metacopy.find_data(
            fs.layers.root_fds[base:], node.redirect, size, fs.layers.private_ns
        )
    except LayerCorruptError as exc:  # the layer holding the marker does not fit those below
        raise fs.layer_corrupt(layer, exc.problem) from None
    src = dataclasses.replace(found, layer=found.layer + base)
    node.data_src = src
    return src


def make_attr(fs: UnionFS, node: Node, st: os.stat_result) -> Attr:
    nlink = st.st_nlink
    if not node.links and node.nodeid != ROOT:
        nlink = 0
    elif isinstance(node, FileNode):
        if node.upper and node.nlink_extra:
            nlink += node.nlink_extra
    elif len(node.lowers) + node.upper > 1:
        if not node.opaque_checked:
            fs.layers.lower_view(node)  # cuts node.lowers at an opaque layer
        if len(node.lowers) + node.upper > 1:
            nlink = 1  # a merged directory: overlayfs does not count its subdirs either
    uid, gid = st.st_uid, st.st_gid
    cfg = fs.cfg
    if cfg.uid_map:
        uid = _map_id(uid, cfg.uid_map, inward=True)
    if cfg.gid_map:
        gid = _map_id(gid, cfg.gid_map, inward=True)
    if cfg.squash_uid is not None:
        uid = cfg.squash_uid
    if cfg.squash_gid is not None:
        gid = cfg.squash_gid
    blocks = st.st_blocks
    if isinstance(node, FileNode) and node.redirect is not None:
        try:  # a metacopy file reports its data's blocks, as overlayfs does
            src = data_source(fs, node)
        except OSError:
            src = None  # missing data: opening fails with EIO, attributes stay readable
        if src is not None:
            blocks = src.st.st_blocks
    mtime = st.st_mtime_ns
    atime = mtime if st.st_atime_ns == mtime else st.st_atime_ns
    ctime = (
        mtime if st.st_ctime_ns == mtime else atime if st.st_ctime_ns == atime else st.st_ctime_ns
    )
    return Attr(
        nodeid=node.nodeid,
        mode=_shared(st.st_mode),
        nlink=nlink,
        uid=_shared(uid),
        gid=_shared(gid),
        rdev=st.st_rdev,
        size=st.st_size,
        blocks=blocks,
        blksize=_shared(st.st_blksize),
        atime_ns=atime,
        mtime_ns=mtime,
        ctime_ns=ctime,
        generation=node.generation,
    )


# One int object per value of the fields that take few values (modes, ids, block sizes), and
# one for equal timestamps: each int a stat returns is a new 28-36 byte object, and a lower
# file's Attr lives as long as the kernel holds the file (issue 16: ~130 bytes a node).
_SHARED_MAX = 4096
_shared_ints: dict[int, int] = {}


def _shared(value: int) -> int:
    known = _shared_ints.get(value)
    if known is not None:
        return known
    if len(_shared_ints) < _SHARED_MAX:
        _shared_ints[value] = value
    return value


def disk_ids(fs: UnionFS, uid: int, gid: int) -> tuple[int, int]:
    """The ids stored on disk for union ids (inverse of uidmapping=/gidmapping=)."""
    if fs.cfg.uid_map and uid != -1:
        uid = _map_id(uid, fs.cfg.uid_map, inward=False)
    if fs.cfg.gid_map and gid != -1:
        gid = _map_id(gid, fs.cfg.gid_map, inward=False)
    return uid, gid


async def readlink(fs: UnionFS, nodeid: int) -> bytes:
    node = fs.inodes.get(nodeid)
    fd, name = fs.layers.where(node, UPPER if node.upper else node.lower)
    return os.readlink(name, dir_fd=fd)


def _map_id(value: int, mapping: tuple[IdMapping, ...], *, inward: bool) -> int:
    """Translate an id through uidmapping=/gidmapping= ranges (unmapped ids pass unchanged)."""
    for m in mapping:
        src, dst = (m.outside, m.inside) if inward else (m.inside, m.outside)
        if src <= value < src + m.count:
            return dst + (value - src)
    return value
