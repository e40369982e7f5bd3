"""The union core's front: `UnionFS`, the object the FUSE adapter (ops.py) talks to.

Pure Python over real directories; never imports pyfuse3. Every entry point speaks POSIX
vocabulary (node ids, bytes names, flags) and returns an `Attr` or raises OSError with an errno;
ops.py maps that to FUSE at one boundary. Tests drive this class directly on temp dirs.

The work is done in one module per concern, in overlayfs's shape: lookup.py (namei.c), readdir.py,
copyup.py (copy_up.c), dirops.py and rename.py (dir.c), attrs.py and writes.py (inode.c), fileio.py
and writes.py (file.c), xattrs.py; layers.py holds the `LayerStack` and workdir.py the `WorkDir`
(super.c's probes). Their functions take the `UnionFS` as their first argument, as the kernel's
take the superblock, and the entry points below are those functions themselves, not wrappers around
them, so a request costs no more calls than when this was one class. The hot paths (lookup,
getattr, read) are written out here.

Layer indices: 0 is the upper layer, 1..n the lower layers top first (as in overlayfs.rst and in
st_ino's high bits). Functions are async only where they may wait (copy-up of big files runs in a
worker thread, racing copy-ups of one node wait on its lock); everything between two awaits runs
without interruption, which is what keeps the in-memory state and the layers consistent.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from collections.abc import Callable

import trio

from . import _sys, attrs, dirops, fileio, libc, readdir, writes, xattrs
from . import rename as renames
from .attrs import Attr
from .config import UnionConfig
from .errors import LayerCorruptError, fs_error
from .inodes import ROOT, DirNode, FileNode, InodeNo, InodeTable, Node
from .layers import UPPER, LayerStack, is_upper_opaque
from .lookup import lookup_node
from .workdir import WorkDir

log = logging.getLogger(__name__)

# Nodes dropped between two malloc_trim calls: a batch the kernel forgot at once, not the
# steady trickle of a working mount (a trim walks the whole heap).
TRIM_AFTER_DROPS = 8192


class UnionFS:
    """A union of `cfg.lowers` (read-only) under `cfg.upper` (writable), served by node ids.

    State the modules share: `inodes` (nodes by id, names, lookup counts), `layers` (root fds,
    dir fd cache, lower listings), `work` (the work dir and what was probed there, frozen),
    `fd_lru` (file fds that may be closed again), `dir_handles` (readdir snapshots), and two
    flags learnt while serving: `share_whiteouts`, `can_rename_whiteout`. `read_only` is a union
    without an upper layer; `failsafe` one that found a corrupt layer.
    """

    def __init__(self, cfg: UnionConfig) -> None:
        self.cfg = cfg
        self.read_only = cfg.upper is None
        # Set when a corrupt layer is detected (`layer_corrupt`): no more mutations.
        self.failsafe = False
        self.inodes = InodeTable()
        self.work = WorkDir.open(cfg)
        try:
            self.layers = LayerStack(cfg, self.work.private_ns)
        except BaseException:
            self.work.close()
            raise
        self.dir_handles: dict[int, readdir.DirHandle] = {}
        self.next_handle = itertools.count(1)
        # Nodes whose fd (Node.fd) is cached and may be closed again, least recently used first;
        # pinned fds (files without a name) are not in it.
        self.fd_lru: dict[FileNode, None] = {}
        self.inodes.on_drop = self._drop_fd
        self.copy_limiter = trio.CapacityLimiter(2)
        self._dropped_since_trim = 0  # nodes dropped since the last malloc_trim
        # Learnt while serving: the kernel may refuse to link whiteouts or RENAME_WHITEOUT.
        self.share_whiteouts = True
        self.can_rename_whiteout = self.work.tmp_fd >= 0 and not self.work.whiteout_wh
        # Set by the FUSE adapter: drop the kernel's cached attributes of a node whose attributes
        # changed by something other than a request on that node itself.
        self.invalidate: Callable[[int], None] | None = None
        root = DirNode(
            nodeid=ROOT,
            kind=stat.S_IFDIR,
            links=(),
            upper=not self.read_only,
            lower=1,
            lowers=tuple(range(1, len(self.layers.root_fds))),
            lookups=1,
        )
        if not self.read_only and is_upper_opaque(self.layers.root_fds[UPPER], b"."):
            root.lowers = ()
        self.inodes.add(root)
        self.root = root

    def close(self) -> None:
        """Release every fd (at unmount)."""
        for node in list(self.inodes.nodes.values()):
            self._drop_fd(node)
        for node in list(self.fd_lru):
            self._drop_fd(node)
        self.dir_handles.clear()
        self.layers.close()
        self.work.close()

    def _drop_fd(self, node: Node) -> None:
        if isinstance(node, FileNode):
            fileio.drop_fd(self, node)

    def check_writable(self) -> None:
        if self.read_only or self.failsafe:
            raise fs_error(errno.EROFS)

    def layer_corrupt(self, layer: int, problem: str) -> LayerCorruptError:
        """The error for a corrupt `layer` (index), after turning the union read-only.

        s3ql's failsafe: every later mutation fails with EROFS, reads of healthy files go on.
        One line is logged per detection, an error the first time (when the union turns
        read-only), a warning after that.
        """
        where = str(self.cfg.upper if layer == UPPER else self.cfg.lowers[layer - 1])
        if not self.failsafe:
            self.failsafe = True
            log.error("corrupt layer %s: %s; the union is read-only from now on", where, problem)
        else:
            log.warning("corrupt layer %s: %s", where, problem)
        return LayerCorruptError(problem, where)

    # ------------------------------------------------------------------ the hot paths

    async def lookup(self, parent_id: int, name: bytes) -> Attr:
        """Resolve name in a directory and count one kernel reference to the result."""
        node = lookup_node(self, self.inodes.get(parent_id), name)
        node.lookups += 1
        return attrs.node_attr(self, node)

    async def getattr(self, nodeid: int) -> Attr:
        return attrs.node_attr(self, self.inodes.get(nodeid))

    async def read(self, nodeid: int, offset: int, size: int) -> bytes:
        fd = fileio.io_fd(self, self.inodes.get(nodeid), write=False)
        return os.pread(fd, size, offset)

    def data_fd(self, nodeid: int, *, write: bool) -> int:
        """The fd a regular file's reads (and with `write`, writes) go to, owned by the node
        (fileio.io_fd): what FUSE passthrough hands the kernel as the backing file. For
        `write` the caller has copied the file up (an open for writing does)."""
        return fileio.io_fd(self, self.inodes.get(nodeid), write=write)

    def data_in_upper(self, nodeid: int) -> bool:
        """Whether the node's data is in its own upper file, so that writing it copies
        nothing up and moves no data (a metacopy file's data is still below)."""
        node = self.inodes.get(nodeid)
        return node.upper and not (isinstance(node, FileNode) and node.redirect is not None)

    # ------------------------------------------------------------------ lookup counts

    def remember(self, nodeid: int) -> None:
        """Count one kernel reference taken by readdirplus (the kernel forgets it later)."""
        self.inodes.get(nodeid).lookups += 1

    def forget(self, items: list[tuple[int, int]]) -> None:
        before = len(self.inodes.nodes)
        for nodeid, count in items:
            node = self.inodes.nodes.get(InodeNo(nodeid))
            if node is None:
                continue
            self.inodes.forget(node, count)
            if node.nodeid not in self.inodes.nodes:
                for layer in range(len(self.layers.root_fds)):
                    self.layers.fds.drop((node.nodeid, layer))
        self._dropped_since_trim += before - len(self.inodes.nodes)
        if self._dropped_since_trim >= TRIM_AFTER_DROPS:
            # The kernel let go of many nodes at once (memory pressure, drop_caches): hand the
            # heap memory they used back, or RSS stays at its peak (malloc keeps it for reuse).
            self._dropped_since_trim = 0
            self.inodes.compact()
            libc.malloc_trim()

    # ------------------------------------------------------------------ the other entry points

    readlink = attrs.readlink
    setattr = writes.setattr
    create = dirops.create
    mkdir = dirops.mkdir
    mknod = dirops.mknod
    symlink = dirops.symlink
    link = dirops.link
    unlink = dirops.unlink
    rmdir = dirops.rmdir
    rename = renames.rename
    open = writes.open
    write = writes.write
    fsync = fileio.fsync
    opendir = readdir.opendir
    releasedir = readdir.releasedir
    readdir = readdir.readdir  # last: from here on `readdir` in this class body is the function
    getxattr = xattrs.getxattr
    listxattr = xattrs.listxattr
    setxattr = xattrs.setxattr
    removexattr = xattrs.removexattr

    async def statfs(self) -> os.statvfs_result:
        layer = 1 if self.read_only else UPPER
        return os.statvfs(_sys.fd_path(self.layers.root_fds[layer]))
