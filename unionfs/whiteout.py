"""Whiteouts and opaque directories: every form real images use is read, one form is written.

Read: 0/0 character devices (kernel overlayfs, podman/containers-storage), `.wh.NAME` files
(OCI/docker layer tars, fuse-overlayfs without mknod), `.wh..wh..opq` (OCI opaque marker), and the
opaque xattrs of the kernel (`trusted.overlay.opaque`), of unprivileged overlayfs
(`user.overlay.opaque`) and of fuse-overlayfs (`user.fuseoverlayfs.opaque`).
"""

from __future__ import annotations

import os
import stat
from typing import Final

NAME_MAX: Final = 255
WH_PREFIX: Final = b".wh."
OPAQUE_MARKER: Final = b".wh..wh..opq"
OPAQUE_XATTRS: Final = (
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
)

# xattrs that belong to the union (or to other overlay implementations): never listed, read or set
# through the mount, so that no user can forge a marker.
PRIVATE_XATTR_PREFIXES: Final = (
    "trusted.overlay.",
    "user.overlay.",
    "user.fuseoverlayfs.",
    "trusted.strata.",
    "user.strata.",
)


def is_chardev_whiteout(st_mode: int, st_rdev: int) -> bool:
    return stat.S_ISCHR(st_mode) and st_rdev == 0


def is_reserved_name(name: bytes) -> bool:
    """Names starting with `.wh.` are markers in every layer form: never shown, never created."""
    return name.startswith(WH_PREFIX)


def whiteout_target(name: bytes) -> bytes | None:
    """For a `.wh.NAME` marker, the NAME it hides; None for the opaque marker and other names."""
    if name.startswith(WH_PREFIX) and name != OPAQUE_MARKER and not name.startswith(b".wh..wh."):
        return name[len(WH_PREFIX) :]
    return None


def is_private_xattr(attr: str) -> bool:
    return attr.startswith(PRIVATE_XATTR_PREFIXES)


def is_opaque_value(value: bytes | None) -> bool:
    return value is not None and value.rstrip(b"\0") in (b"y", b"Y", b"1")


def has_whiteout_file(dirfd: int, name: bytes) -> bool:
    """Is there a `.wh.NAME` marker for name in this upper directory?"""
    if len(name) + len(WH_PREFIX) > NAME_MAX:
        return False  # cannot exist
    try:
        os.stat(WH_PREFIX + name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def remove_whiteout_file(dirfd: int, name: bytes) -> None:
    """Remove a `.wh.` marker for name (after something new was put at name)."""
    if len(name) + len(WH_PREFIX) > NAME_MAX:
        return
    try:
        os.unlink(WH_PREFIX + name, dir_fd=dirfd)
    except FileNotFoundError:
        pass
