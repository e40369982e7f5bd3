"""Listing directories: the merge of a directory's layers (kernel readdir.c).

The lower listings of a directory are merged once (`LayerStack.lower_view`: lower layers never
change, and lookup, below this module, uses the merge too); `entries` adds the upper layer on top,
hiding whited-out names; a readdir handle lists a snapshot so that its positions survive
concurrent changes. A merged directory with only whiteouts below is empty for rmdir.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _sys, attrs, lookup
from .errors import fs_error
from .inodes import DirNode
from .layers import UPPER, is_whiteout_entry
from .whiteout import is_reserved_name, whiteout_target

if TYPE_CHECKING:
    from .attrs import Attr
    from .core import UnionFS


@dataclass(slots=True)
class DirHandle:
    node: DirNode
    names: list[bytes] | None = None


def entries(fs: UnionFS, node: DirNode) -> list[bytes]:
    """The merged listing of directory node (no '.', '..'), upper first then lowers."""
    names: list[bytes] = []
    hidden: set[bytes] = set()
    seen: set[bytes] = set()
    if node.upper:
        fd = fs.layers.dirfd(node, UPPER)
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
        names.extend(n for n in fs.layers.lower_view(node) if n not in seen and n not in hidden)
    return names


async def opendir(fs: UnionFS, nodeid: int) -> int:
    node = fs.inodes.get(nodeid)
    if not isinstance(node, DirNode):
        raise fs_error(errno.ENOTDIR)
    fh = next(fs.next_handle)
    fs.dir_handles[fh] = DirHandle(node)
    return fh


def readdir(fs: UnionFS, fh: int, start: int) -> Iterator[tuple[bytes, Attr, int]]:
    """Entries from position `start` as (name, attr, next position); no lookup counted.

    The listing is a snapshot taken at the first read, so positions stay valid while the
    directory changes; names gone since are skipped. A rewind appends the names that are new
    since and keeps every position, as one handle may be read from several places (the FUSE
    adapter keeps one per directory when the kernel sends no opendir).
    """
    handle = fs.dir_handles.get(fh)
    if not isinstance(handle, DirHandle):
        raise fs_error(errno.EBADF)
    node = handle.node
    if handle.names is None or start == 0:
        names = [b".", b"..", *entries(fs, node)]
        old = handle.names
        if old is not None and len(old) < 2 * len(names) + 64:  # else start afresh
            known = set(old)
            names = old + [n for n in names if n not in known]
        handle.names = names
    for pos in range(start, len(handle.names)):
        name = handle.names[pos]
        try:
            child = lookup.lookup_node(fs, node, name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            continue  # a broken object (logged): the rest of the listing is still served
        yield name, attrs.node_attr(fs, child), pos + 1


async def releasedir(fs: UnionFS, fh: int) -> None:
    fs.dir_handles.pop(fh, None)
