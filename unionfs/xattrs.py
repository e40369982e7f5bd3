"""Extended attributes through the union: strata's and other overlays' private ones are never
listed, read or set (no user can forge a marker); setting one copies up metadata only."""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from . import _sys, copyup
from .errors import fs_error
from .inodes import Node
from .layers import UPPER
from .whiteout import is_private_xattr

if TYPE_CHECKING:
    from .core import UnionFS


def xattr_where(fs: UnionFS, node: Node) -> tuple[int, bytes]:
    return fs.layers.where(node, UPPER if node.upper else node.lower)


async def getxattr(fs: UnionFS, nodeid: int, attr: str) -> bytes:
    if is_private_xattr(attr):
        raise fs_error(errno.ENODATA)
    fd, name = xattr_where(fs, fs.inodes.get(nodeid))
    return os.getxattr(_sys.fd_path(fd, name), attr, follow_symlinks=False)


async def listxattr(fs: UnionFS, nodeid: int) -> list[str]:
    fd, name = xattr_where(fs, fs.inodes.get(nodeid))
    return [a for a in _sys.listxattr(fd, name) if not is_private_xattr(a)]


async def setxattr(fs: UnionFS, nodeid: int, attr: str, value: bytes, flags: int = 0) -> None:
    if is_private_xattr(attr):
        raise fs_error(errno.EPERM)
    fd, name = await _upper_copy(fs, nodeid)
    _sys.setxattr(fd, name, attr, value, flags)


async def removexattr(fs: UnionFS, nodeid: int, attr: str) -> None:
    if is_private_xattr(attr):
        raise fs_error(errno.ENODATA)
    fd, name = await _upper_copy(fs, nodeid)
    _sys.removexattr(fd, name, attr)


async def _upper_copy(fs: UnionFS, nodeid: int) -> tuple[int, bytes]:
    """Where an xattr change goes: the node's upper copy (a metadata-only copy-up first)."""
    fs.check_writable()
    node = fs.inodes.get(nodeid)
    await copyup.copy_up(fs, node, metadata_only=True)
    return fs.layers.where(node, UPPER)
