"""Metadata-only copy-up (metacopy): the on-disk marker, and where a metacopy file's data is.

A *metacopy file* is a regular file in a layer that has the right metadata (owner, mode, times,
xattrs, st_size) but no data of its own (it is one hole), and the xattr `trusted.strata.metacopy`
(`user.strata.metacopy` where trusted xattrs are not permitted, as for strata's origin xattr).
Its value is the path, relative to the layer root, at which the data was when the file was copied
up: `b"dir/file"` ('/'-separated, no leading '/', no empty, `.` or `..` components). It records
the original path the way overlayfs's `redirect` xattr does, so a metacopy file renamed inside
the union still finds its data.

The marker is layer-relative: the data is the regular file at that path in the topmost layer
*below* the layer holding the marker that has the path (the whole stack under it is searched
with the union's rules, every directory opened relative to its parent with O_NOFOLLOW). If that
file is itself a metacopy file, its own marker is followed below it in turn: an upper that later
becomes a lower layer of another stack keeps working. The search only ever goes down the stack, so
it ends, and no marker value can lead outside the layers. Missing data -- no layer below has the
path, it is whited out or hidden by an opaque directory, it is not a regular file, or its size
differs from the metacopy file's -- is `EIO`, never empty data.

A layer root that may hold metacopy files carries `trusted.strata.metacopy-layer` (or the `user.`
one), set before the first marker is written; the union looks for markers (one getxattr per
regular file) only in layers that carry it.

Which namespace is honoured is fixed by how the union is mounted, as overlayfs does with its
`userxattr` option: a mount by root reads only `trusted.*` (which only root can set), a rootless
one only `user.*`. Every function that reads markers takes that namespace (`ns`): on a root
mount a user who owns an upper file could otherwise set `user.strata.metacopy` on it and read
any file of the layers below through it.

`open_data()` is the entry point for code outside the union that reads a layer directly (e.g.
turning an upper directory into an image layer).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from . import _sys
from .errors import LayerCorruptError
from .whiteout import OPAQUE_MARKER, OPAQUE_XATTRS, WH_PREFIX, is_opaque_value

MARKER_NAME: Final = "strata.metacopy"  # prefixed with "trusted." or "user."
LAYER_NAME: Final = "strata.metacopy-layer"
NAMESPACES: Final = ("trusted", "user")
PATH_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class DataSource:
    """Where a metacopy file's data is: `layer` indexes the layer sequence that was searched."""

    layer: int
    relpath: bytes
    st: os.stat_result


def split_relpath(raw: bytes) -> tuple[bytes, ...] | None:
    """The components of a recorded path, or None when it is not a plain layer-relative path.

    A marker is layer content and may be hostile: absolute paths, `..`, `.`, empty components,
    NUL bytes and over-long paths are refused rather than normalised.
    """
    if not raw or len(raw) > PATH_MAX or b"\0" in raw or raw.startswith(b"/"):
        return None
    parts = tuple(raw.split(b"/"))
    if any(p in (b"", b".", b"..") or len(p) > 255 for p in parts):
        return None
    return parts


def read_marker(dirfd: int, name: bytes, ns: str) -> bytes | None:
    """The recorded path of the metacopy file `name` in `dirfd` (namespace `ns`), or None."""
    return _sys.getxattr(dirfd, name, f"{ns}.{MARKER_NAME}")


def layer_may_hold_markers(root_fd: int, ns: str) -> bool:
    """Does this layer root carry the flag set before any metacopy file was made in it?"""
    return _sys.getxattr(root_fd, b".", f"{ns}.{LAYER_NAME}") is not None


def _eio(relpath: bytes, why: str) -> LayerCorruptError:
    return LayerCorruptError(f"metacopy data {why}: {os.fsdecode(relpath)!r}")


def _dir_is_opaque(fd: int) -> bool:
    for attr in OPAQUE_XATTRS:
        if is_opaque_value(_sys.getxattr(fd, b".", attr)):
            return True
    try:
        os.stat(OPAQUE_MARKER, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _whited_out(fd: int, name: bytes) -> bool:
    if len(WH_PREFIX) + len(name) > 255:
        return False
    try:
        os.stat(WH_PREFIX + name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _stat_in_layer(
    root_fd: int, parts: tuple[bytes, ...], relpath: bytes, ns: str
) -> tuple[os.stat_result, bytes | None] | None:
    """(stat, marker) of the regular file at parts in one layer; None when the layer does not
    have the path and does not hide it either (look further down); EIO when it hides it."""
    fds: list[int] = []
    try:
        cur = root_fd
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                if last:
                    st = os.stat(part, dir_fd=cur, follow_symlinks=False)
                else:
                    cur = os.open(part, _sys.O_PATHDIR, dir_fd=cur)
                    fds.append(cur)
                    continue
            except FileNotFoundError:
                # Absent here: the layer hides the path from the ones below only by a whiteout
                # of this name or by an opaque directory on the way down.
                if _whited_out(cur, part) or any(_dir_is_opaque(fd) for fd in (root_fd, *fds)):
                    raise _eio(relpath, "is deleted in a layer above it") from None
                return None
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise _eio(relpath, "is hidden by a non-directory") from None
                raise
            if not stat.S_ISREG(st.st_mode):
                raise _eio(relpath, "is not a regular file")
            return st, read_marker(cur, part, ns)
        return None  # pragma: no cover - parts is never empty
    finally:
        for fd in fds:
            os.close(fd)


def find_data(layers: Sequence[int], relpath: bytes, size: int, ns: str) -> DataSource:
    """Resolve a marker: the data of a metacopy file of `size` bytes whose marker is `relpath`.

    `layers` are the root fds (O_PATH is fine) of the layers below the one holding the marker,
    top first. Metacopy files met on the way are followed further down. Raises
    LayerCorruptError (EIO) when the data is missing, never returns a wrong or empty file.
    """
    base = 0
    while True:
        parts = split_relpath(relpath)
        if parts is None:
            raise _eio(relpath, "path in the marker is invalid")
        for i in range(base, len(layers)):
            found = _stat_in_layer(layers[i], parts, relpath, ns)
            if found is None:
                continue
            st, marker = found
            if st.st_size != size:
                raise _eio(relpath, f"has {st.st_size} bytes, the metacopy file {size}")
            if marker is None:
                return DataSource(i, relpath, st)
            relpath, base = marker, i + 1  # a metacopy file below: follow its marker
            break
        else:
            raise _eio(relpath, "is in no layer below")


def open_in_layer(root_fd: int, relpath: bytes) -> int:
    """O_RDONLY fd of the regular file at relpath in one layer, opened without following links."""
    parts = split_relpath(relpath)
    if parts is None:
        raise _eio(relpath, "path in the marker is invalid")
    fds: list[int] = []
    try:
        cur = root_fd
        for part in parts[:-1]:
            cur = os.open(part, _sys.O_PATHDIR, dir_fd=cur)
            fds.append(cur)
        return _sys.open_lower(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, cur)
    finally:
        for fd in fds:
            os.close(fd)


def open_data(layer: Path | int, relpath: bytes, below: Sequence[Path | int], ns: str) -> int:
    """An O_RDONLY fd with the data of the regular file at `relpath` in `layer`; caller closes it.

    For a plain file that is the file itself; for a metacopy file it is its data in the layers
    `below` (root paths or fds, top first: the layers the union had under `layer`). This is what
    a reader of a bare upper directory must use instead of opening the file (an image commit
    would otherwise store a hole). `ns` is the namespace the union that wrote `layer` used.
    Raises LayerCorruptError (EIO) when a metacopy file's data is missing.
    """
    owned: list[int] = []
    try:

        def root(x: Path | int) -> int:
            if isinstance(x, int):
                return x
            fd = os.open(x, _sys.O_PATHDIR)
            owned.append(fd)
            return fd

        top = root(layer)
        parts = split_relpath(relpath)
        if parts is None:
            raise OSError(errno.EINVAL, "not a layer-relative path", os.fsdecode(relpath))
        found = _stat_in_layer(top, parts, relpath, ns)
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(relpath))
        st, marker = found
        if marker is None:
            return open_in_layer(top, relpath)
        roots = [root(x) for x in below]
        src = find_data(roots, marker, st.st_size, ns)
        return open_in_layer(roots[src.layer], src.relpath)
    finally:
        for fd in owned:
            os.close(fd)
