"""The pyfuse3 `Operations` adapter: decode arguments, call the core, encode the answer.

Nothing here knows about layers. The one `errno_boundary` turns the core's OSError into
FUSEError; any other exception is a bug, logged with its traceback (tests fail on that) and
answered with EIO so the mount keeps serving.

Cache policy: strata is the only writer of the upper layer through the mount and lower layers
are immutable, so the kernel may keep entries, attributes and page cache for a long time
(`TIMEOUT`), and negative lookups are cached too. Changing layers under a live mount is
unsupported (as with overlayfs).

With the patched pyfuse3 (scripts/pyfuse3; `FEATURES.no_opendir`), directory listings are cached
by the kernel too: opendir answers ENOSYS once, after which the kernel sends no opendir/releasedir,
keeps each listing it read (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE) and asks `readdir` by inode. The
kernel drops a cached listing itself when a request through the mount changes that directory
(create, mknod, mkdir, symlink, link, unlink, rmdir, rename bump its version) or when it sees the
directory's mtime change; what the core changes behind its back goes through `invalidate`. With
`FEATURES.fuse_caps` the mount also asks for FUSE_CAP_DONT_MASK, so the umask is applied here, and
not under a default ACL. With `FEATURES.no_open`, open (and create) answer ENOSYS too: the kernel
sends no OPEN/RELEASE, and file I/O arrives by inode, which the core serves from an fd cached per
node. Each feature is probed on its own (`fusefeatures.probe`); stock pyfuse3 works without them.

With `FEATURES.passthrough`, when the mount asks for it (`passthrough=`, mount.py) and the kernel
grants it at FUSE_INIT, the mount keeps OPEN instead (passthrough is a property of an open) and
answers each open of a regular file with a backing file: the layer file its data is in (the
lower file, or the upper one after the copy-up an open for writing makes). The kernel then reads,
writes and maps that file itself, so reads cost no request and the page cache is the layer
file's, one copy for every mount over the layer. See `_Backing` for the kernel's rules.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

import pyfuse3

from . import fusefeatures
from .attrs import Attr, Caller, SetAttr
from .core import UnionFS
from .inodes import Node

log = logging.getLogger(__name__)

TIMEOUT: Final = 3600.0
# Encoded replies kept for reuse (`_entry`): the hot set of a working mount, not one per node
# the kernel holds (a reply is ~300 bytes; 200k of them were a fifth of the daemon's memory).
ENTRY_CACHE_MAX: Final = 16384

# What the installed pyfuse3 adds to the stock release (scripts/pyfuse3/strata.patch).
FEATURES: Final = fusefeatures.probe(pyfuse3)


@contextlib.contextmanager
def errno_boundary(op: str) -> Iterator[None]:
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except OSError as exc:
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
    except Exception:
        log.exception("%s failed unexpectedly", op)
        raise pyfuse3.FUSEError(errno.EIO) from None


def to_entry(attr: Attr) -> pyfuse3.EntryAttributes:
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = pyfuse3.InodeT(attr.nodeid)
    entry.generation = attr.generation
    entry.st_mode = pyfuse3.ModeT(attr.mode)
    entry.st_nlink = attr.nlink
    entry.st_uid = attr.uid
    entry.st_gid = attr.gid
    entry.st_rdev = attr.rdev
    entry.st_size = attr.size
    entry.st_blocks = attr.blocks
    entry.st_blksize = attr.blksize
    entry.st_atime_ns = attr.atime_ns
    entry.st_mtime_ns = attr.mtime_ns
    entry.st_ctime_ns = attr.ctime_ns
    entry.entry_timeout = TIMEOUT
    entry.attr_timeout = TIMEOUT
    return entry


def _negative_entry() -> pyfuse3.EntryAttributes:
    """A cached 'no such name' (st_ino 0): the kernel drops it itself when it creates the name."""
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = pyfuse3.InodeT(0)
    entry.entry_timeout = TIMEOUT
    return entry


def _caller(ctx: pyfuse3.RequestContext) -> Caller:
    return Caller(uid=ctx.uid, gid=ctx.gid)


_DEFAULT_ACL: Final = "system.posix_acl_default"


# Files smaller than this when first opened get cached opens, not passthrough ones: after a
# passthrough read the kernel drops the file's atime and the next stat() asks GETATTR, a third
# round trip per file for a `tar c` or a compiler walking many small files, which a cached
# open does not cost; and a small file's pages are little to share. Most of an image's bytes
# are in larger files (libraries, programs, data), which go through. Measured in bench/README.md.
PASSTHROUGH_MIN_SIZE: Final = 64 * 1024


@dataclass(slots=True)
class _Backing:
    """The backing file registered for a node (passthrough mode), and how many opens of the
    node the kernel holds.

    While passthrough opens of an inode exist, the kernel wants every open of it to be a
    passthrough open of the same backing file (anything else fails with EIO). So while a
    lower file is open, an open for writing, which would copy it up and give it another
    backing file, fails with ETXTBSY, as writing to a running program does; and an open for
    reading after a copy-up made otherwise (chmod without metacopy, truncate) gets the file
    the other opens have, which holds the same data unless it was truncated. Once the last
    open is released the next one gets the file the union holds now. Kept after the last
    release (registering again costs two ioctls), closed when the node's data moves or the
    kernel forgets the node."""

    # 0: cached opens, as without passthrough: a small file (PASSTHROUGH_MIN_SIZE), or the
    # kernel refused the file (say a layer on a stacked filesystem)
    backing_id: int
    # Where the node's data was when the file was registered: it moves only from below to
    # the node's upper file (a copy-up), so while this holds the backing file is still right,
    # and an open needs no fd or fstat.
    in_upper: bool
    opens: int = 0


class UnionOperations(pyfuse3.Operations):
    """pyfuse3 handlers for a `UnionFS`. `access()` is not implemented: the mount uses
    `default_permissions`, so the kernel checks permissions from our attributes."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = True

    def __init__(self, fs: UnionFS, *, passthrough: bool = False) -> None:
        super().__init__()
        self.fs = fs
        fs.invalidate = self._invalidate
        # The core caches the Attr of lower-only objects; their encoded replies are reused too.
        self._entries: dict[int, tuple[Attr, pyfuse3.EntryAttributes]] = {}
        # Without opendir (no-opendir mode), one core directory handle per directory node, kept
        # until the kernel forgets the node: its listing snapshot keeps readdir positions valid.
        self.cache_listings = FEATURES.no_opendir
        self._dir_handles: dict[int, tuple[Node, int]] = {}
        self.dont_mask = False  # set when the kernel granted FUSE_CAP_DONT_MASK
        # STRATA_FUSE_OPEN=1 keeps OPEN/RELEASE (the stock-pyfuse3 path): for tests and A/B runs.
        self.no_open = FEATURES.no_open and os.environ.get("STRATA_FUSE_OPEN") != "1"
        # Asked for by the mount; `passthrough` is set when the kernel granted it at init.
        self.passthrough_asked = passthrough and FEATURES.passthrough
        self.passthrough = False
        self._backing: dict[int, _Backing] = {}

    def init_connection(self, conn: dict[str, int]) -> None:
        """Called by the patched pyfuse3 during FUSE_INIT: the capabilities to ask for.

        CACHE_SYMLINKS: the kernel keeps symlink targets in its page cache instead of asking
        READLINK at every path walk through a link (a third of the requests of `python3 -c
        pass` in a Debian chroot). A symlink's target never changes in place: lower layers are
        immutable and the union only ever replaces a link by a new inode."""
        caps = FEATURES.fuse_caps
        want = caps.get("DONT_MASK", 0)
        conn["want"] |= want | caps.get("CACHE_SYMLINKS", 0)
        passthrough = caps.get("PASSTHROUGH", 0)
        if self.passthrough_asked and conn["capable"] & passthrough:
            # Backing files on a stacked filesystem (overlayfs, another passthrough FUSE) are
            # refused per file and served without passthrough; in return a filesystem may be
            # stacked on this mount (as a container engine's overlay on a lower layer).
            conn["want"] |= passthrough
            conn["max_backing_stack_depth"] = 0
            self.passthrough, self.no_open = True, False
        elif self.passthrough_asked:
            log.info("the kernel does not offer FUSE passthrough: serving without it")
        if self.no_open:
            # With atomic O_TRUNC the kernel leaves truncation to an OPEN we will not get; without
            # it an O_TRUNC open sends SETATTR(size=0), which copies up and truncates.
            conn["want"] &= ~caps.get("ATOMIC_O_TRUNC", 0)
        self.dont_mask = bool(want and conn["capable"] & want)
        log.debug("fuse init: %s", conn)

    @staticmethod
    def _invalidate(nodeid: int) -> None:
        try:
            pyfuse3.invalidate_inode(pyfuse3.InodeT(nodeid), attr_only=True)
        except OSError as exc:  # the kernel may not know the node (yet): nothing to drop
            log.debug("invalidate_inode(%d): %s", nodeid, exc)

    async def _masked(self, parent_inode: pyfuse3.InodeT, mode: int, umask: int) -> int:
        """The mode for a new object: with FUSE_CAP_DONT_MASK the kernel leaves the umask to
        us, and it must not apply under a default ACL (the upper fs then inherits the ACL)."""
        if not self.dont_mask or not mode & umask:
            return mode
        try:
            await self.fs.getxattr(parent_inode, _DEFAULT_ACL)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP):
                raise
            return mode & ~umask
        return mode

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        cached = self._entries.get(attr.nodeid)
        if cached is not None and cached[0] is attr:
            return cached[1]
        entry = to_entry(attr)
        if len(self._entries) >= ENTRY_CACHE_MAX:
            self._entries.clear()  # cheaper than an LRU's bookkeeping on every hit
        self._entries[attr.nodeid] = (attr, entry)
        return entry

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            with errno_boundary("lookup"):
                return self._entry(await self.fs.lookup(parent_inode, name))
        except pyfuse3.FUSEError as exc:
            if exc.errno == errno.ENOENT:
                return _negative_entry()
            raise

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        try:
            self.fs.forget([(int(ino), n) for ino, n in inode_list])
            for ino, _ in inode_list:
                if ino not in self.fs.inodes.nodes:
                    self._entries.pop(ino, None)
                    backing = self._backing.pop(ino, None)
                    if backing is not None and backing.backing_id:
                        pyfuse3.backing_close(backing.backing_id)
                    dir_handle = self._dir_handles.pop(ino, None)
                    if dir_handle is not None:
                        await self.fs.releasedir(dir_handle[1])
        except Exception:
            log.exception("forget failed")

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        with errno_boundary("getattr"):
            return self._entry(await self.fs.getattr(inode))

    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        changes = SetAttr(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        with errno_boundary("setattr"):
            return to_entry(await self.fs.setattr(inode, changes))

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        with errno_boundary("readlink"):
            return await self.fs.readlink(inode)

    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        with errno_boundary("mknod"):
            mode = await self._masked(parent_inode, mode, ctx.umask)
            return to_entry(await self.fs.mknod(parent_inode, name, mode, rdev, _caller(ctx)))

    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        with errno_boundary("mkdir"):
            mode = await self._masked(parent_inode, mode, ctx.umask)
            return to_entry(await self.fs.mkdir(parent_inode, name, mode, _caller(ctx)))

    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        with errno_boundary("unlink"):
            await self.fs.unlink(parent_inode, name)

    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        with errno_boundary("rmdir"):
            await self.fs.rmdir(parent_inode, name)

    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        with errno_boundary("symlink"):
            return to_entry(await self.fs.symlink(parent_inode, name, target, _caller(ctx)))

    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        with errno_boundary("rename"):
            await self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        with errno_boundary("link"):
            return to_entry(await self.fs.link(inode, new_parent_inode, new_name))

    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        """Files are read and written by inode (the core caches an fd per node), so an open has
        nothing to set up. In no-open mode ENOSYS tells the kernel to stop sending OPEN and
        RELEASE (two of the three requests of reading a small file); a lower file is then
        copied up at its first write or truncate rather than at an open for writing.
        Otherwise the handle is the inode, and opening for writing copies up as overlayfs does."""
        if self.no_open:
            raise pyfuse3.FUSEError(errno.ENOSYS)
        write = (flags & os.O_ACCMODE) != os.O_RDONLY
        with errno_boundary("open"):
            if self.passthrough and (write or flags & os.O_TRUNC):
                self._check_no_other_backing(inode)  # before a copy-up or truncation
            await self.fs.open(inode, flags)
            info = pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode), keep_cache=True)
            if self.passthrough:
                self._pass_through(info, inode, write=write)
        return info

    def _check_no_other_backing(self, inode: int) -> None:
        """ETXTBSY when open lower-file opens would keep the kernel on another backing file
        than the one an open for writing needs (see `_Backing`)."""
        backing = self._backing.get(inode)
        if backing is not None and backing.backing_id and backing.opens and not backing.in_upper:
            raise OSError(errno.ETXTBSY, "open elsewhere from a lower layer")

    def _pass_through(self, info: pyfuse3.FileInfo, inode: int, *, write: bool) -> None:
        """Give the open of regular file `inode` its backing file (see `_Backing`)."""
        backing = self._backing.get(inode)
        in_upper = self.fs.data_in_upper(inode)
        if backing is None or (backing.in_upper != in_upper and not backing.opens):
            try:
                fd = self.fs.data_fd(inode, write=write)
            except OSError as exc:
                if exc.errno in (errno.EISDIR, errno.EINVAL):  # not a regular file: as before
                    return
                raise
            if backing is not None and backing.backing_id:
                pyfuse3.backing_close(backing.backing_id)
            backing_id = 0
            if os.fstat(fd).st_size >= PASSTHROUGH_MIN_SIZE:
                try:
                    backing_id = pyfuse3.backing_open(fd)
                except OSError as exc:  # say a layer on overlayfs: cached opens, as without
                    log.debug("no passthrough for node %d: %s", inode, exc)
            backing = _Backing(backing_id, in_upper)
            self._backing[inode] = backing
        if backing.backing_id:
            # The kernel takes only these open flags with a backing file (FOPEN_PASSTHROUGH_MASK:
            # no KEEP_CACHE, the page cache is the backing file's).
            info.backing_id, info.keep_cache = backing.backing_id, False
        backing.opens += 1

    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if self.no_open:  # create's reply carries a handle; mknod + (no) open does not
            raise pyfuse3.FUSEError(errno.ENOSYS)
        with errno_boundary("create"):
            mode = await self._masked(parent_inode, mode, ctx.umask)
            attr = await self.fs.create(parent_inode, name, mode, _caller(ctx))
            info = pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(attr.nodeid), keep_cache=True)
            if self.passthrough:
                self._pass_through(info, attr.nodeid, write=True)
        return info, to_entry(attr)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        with errno_boundary("read"):
            return await self.fs.read(fh, off, size)

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        with errno_boundary("write"):
            return await self.fs.write(fh, off, buf)

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        # Nothing to do at close (writes go straight to the upper file, locks stay in the
        # kernel): ENOSYS once makes the kernel stop sending FLUSH on every close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        # The core's fd belongs to the node and goes when the kernel forgets it; passthrough
        # mode counts the opens a node's backing file serves.
        backing = self._backing.get(fh)
        if backing is not None and backing.opens:
            backing.opens -= 1

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        with errno_boundary("fsync"):
            await self.fs.fsync(fh, datasync)

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if self.cache_listings:
            # No more opendir/releasedir requests; the kernel caches listings (see above).
            raise pyfuse3.FUSEError(errno.ENOSYS)
        with errno_boundary("opendir"):
            return pyfuse3.FileHandleT(await self.fs.opendir(inode))

    async def _dir_handle(self, inode: int) -> int:
        """The core handle readdir uses for directory `inode` when there is no opendir."""
        node = self.fs.inodes.get(inode)
        known = self._dir_handles.get(inode)
        if known is not None:
            if known[0] is node:
                return known[1]
            await self.fs.releasedir(known[1])  # a new object under a reused node id
        fh = await self.fs.opendir(inode)
        self._dir_handles[inode] = (node, fh)
        return fh

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        with errno_boundary("readdir"):
            handle = await self._dir_handle(fh) if self.cache_listings else fh
            for name, attr, next_id in self.fs.readdir(handle, start_id):
                if not pyfuse3.readdir_reply(token, name, self._entry(attr), next_id):
                    break
                if name not in (b".", b".."):  # the kernel takes no reference for these
                    self.fs.remember(attr.nodeid)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        with errno_boundary("releasedir"):
            await self.fs.releasedir(fh)

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        return None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        with errno_boundary("statfs"):
            st = await self.fs.statfs()
        data = pyfuse3.StatvfsData()
        data.f_bsize = st.f_bsize
        data.f_frsize = st.f_frsize
        data.f_blocks = st.f_blocks
        data.f_bfree = st.f_bfree
        data.f_bavail = st.f_bavail
        data.f_files = st.f_files
        data.f_ffree = st.f_ffree
        data.f_favail = st.f_favail
        data.f_namemax = st.f_namemax
        return data

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        with errno_boundary("getxattr"):
            return await self.fs.getxattr(inode, os.fsdecode(name))

    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        with errno_boundary("listxattr"):
            names = await self.fs.listxattr(inode)
        return [pyfuse3.XAttrNameT(os.fsencode(n)) for n in names]

    async def setxattr(
        self,
        inode: pyfuse3.InodeT,
        name: pyfuse3.XAttrNameT,
        value: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        with errno_boundary("setxattr"):
            await self.fs.setxattr(inode, os.fsdecode(name), value)

    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        with errno_boundary("removexattr"):
            await self.fs.removexattr(inode, os.fsdecode(name))
