"""`strata diff CONTAINER`: what the container changed, read from its upper layer, as docker
lists it (`A` added, `C` changed, `D` deleted; pkg/archive's overlay changes).

The upper layer holds exactly what the container wrote, so it is walked (names sorted, depth
first, as docker walks it) and each entry compared with the layers below (the container's init
layer and its image's):

- a whiteout (a 0/0 character device, or a `.wh.NAME` file in the rootless form) is `D` of the
  name it hides;
- an opaque directory (an overlay opaque xattr or a `.wh..wh..opq` file) that a lower layer has
  is `D`: its old content is gone (docker says so of the directory, not of each child);
- anything else is `C` if a lower layer has the path, else `A`; a directory that a lower layer
  has with the same mode and mtime (a parent copied up for a change below it) is not listed
  itself;
- each directory above a listed change is listed as `C` before it, if it was not yet: docker
  says so of the parent of an `A` or `D`, and with kernel overlayfs every directory a change is
  copied up into has a new mtime in the upper layer, so docker lists them all (strata's union
  keeps the directory's times as the container saw them).

Markers (`.wh.` names) are never listed. The walk never follows a symlink: the upper layer is
read with lstat only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from unionfs.whiteout import (
    OPAQUE_MARKER,
    OPAQUE_XATTRS,
    is_chardev_whiteout,
    is_opaque_value,
    whiteout_target,
)

from .create import union_config
from .state import ContainerDir


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _in_lower(lowers: Sequence[Path], rel: str) -> os.stat_result | None:
    """The path's stat in the topmost lower layer that has it (only its existence and metadata
    matter; a lower layer is the image's, read with lstat)."""
    parents = rel.split("/")[:-1]
    for layer in lowers:
        # never through a symlink of the layer (an absolute one would name the host's path)
        if all(
            (p := _lstat(layer.joinpath(*parents[: i + 1]))) is not None and stat.S_ISDIR(p.st_mode)
            for i in range(len(parents))
        ):
            st = _lstat(layer / rel)
            if st is not None:
                return st
    return None


def _opaque(path: Path) -> bool:
    if os.path.lexists(path / OPAQUE_MARKER.decode()):
        return True
    for attr in OPAQUE_XATTRS:
        try:
            if is_opaque_value(os.getxattr(path, attr, follow_symlinks=False)):
                return True
        except OSError:
            continue
    return False


def changes(cdir: ContainerDir) -> list[tuple[str, str]]:
    """(kind, path) in docker's order; none for a --read-only container (no upper layer)."""
    cfg = union_config(cdir)
    if cfg.upper is None or not cfg.upper.is_dir():
        return []
    return list(_walk(cfg.upper, tuple(cfg.lowers)))


def _walk(upper: Path, lowers: tuple[Path, ...]) -> Iterator[tuple[str, str]]:
    recorded: set[str] = set()  # directories listed (docker's changedDirs)

    def ancestors(rel: str) -> Iterator[tuple[str, str]]:
        """The directories above a change not yet listed, top first, as `C`."""
        parts = rel.split("/") if rel else []
        for i in range(len(parts)):
            parent = "/".join(parts[: i + 1])
            if parent not in recorded:
                recorded.add(parent)
                yield "C", "/" + parent

    def visit(rel: str) -> Iterator[tuple[str, str]]:
        for name in sorted(os.listdir(upper / rel if rel else upper)):
            child = f"{rel}/{name}" if rel else name
            path = upper / child
            st = os.lstat(path)
            hidden = whiteout_target(os.fsencode(name))
            if name.startswith(".wh."):
                if hidden is None:
                    continue  # the opaque marker, or another marker
                kind, shown = "D", f"{rel}/{os.fsdecode(hidden)}" if rel else os.fsdecode(hidden)
            elif is_chardev_whiteout(st.st_mode, st.st_rdev):
                kind, shown = "D", child
            else:
                below = _in_lower(lowers, child)
                is_dir = stat.S_ISDIR(st.st_mode)
                if is_dir and below is not None and _opaque(path):
                    kind = "D"
                elif below is None:
                    kind = "A"
                elif (
                    is_dir
                    and stat.S_ISDIR(below.st_mode)
                    and below.st_mode == st.st_mode
                    and below.st_mtime_ns // 10**9 == st.st_mtime_ns // 10**9
                ):
                    kind = ""  # only a parent of what changed below it
                else:
                    kind = "C"
                shown = child
                if is_dir and kind:
                    recorded.add(child)
            if kind:
                yield from ancestors(rel)
                yield kind, "/" + shown
            if stat.S_ISDIR(st.st_mode) and not name.startswith(".wh."):
                yield from visit(child)

    yield from visit("")
