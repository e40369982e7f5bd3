"""Layer-relative, no-follow access to layer directories, and what is cached about lower layers.

Lower layers are immutable while mounted, so a directory of a lower layer is listed once (`Listing`)
and its entries are stat'ed at most once. Directory fds are cached (`DirFds`, LRU) so that reaching a
deep directory costs one `openat` per component only the first time; every open is relative to the
parent's fd with O_NOFOLLOW, so nothing inside a layer can lead the daemon outside it.
"""

from __future__ import annotations

import collections
import errno
import marshal
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from . import _sys
from .whiteout import (
    OPAQUE_MARKER,
    OPAQUE_XATTRS,
    is_chardev_whiteout,
    is_opaque_value,
    is_reserved_name,
    whiteout_target,
)

DT_DIR = stat.S_IFDIR
DT_OTHER = 0


@dataclass(slots=True)
class Listing:
    """One directory of one lower layer: its visible names, the names it whites out, opacity.

    `kinds` maps each visible name to S_IFDIR or 0 (not a directory): enough to merge layers.
    `stats` fills lazily; lower layers do not change, so a stat is never repeated.
    """

    kinds: dict[bytes, int]
    whiteouts: frozenset[bytes]
    opaque: bool
    stats: dict[bytes, os.stat_result] = field(default_factory=dict)

    def stat(self, dirfd: int, name: bytes) -> os.stat_result:
        st = self.stats.get(name)
        if st is None:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            self.stats[name] = st
        return st


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
