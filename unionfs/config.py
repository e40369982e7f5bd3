"""What a mount is made of, checked once before anything is mounted or written.

`UnionConfig` is what the union core needs (layers and semantic options); `MountOptions` is what
only the FUSE mount needs. Both are frozen: the core never changes its configuration while serving.
`validate()` does every check that can fail on bad input, so that a failure happens before the
kernel mount exists and before any layer is touched (the work dir is only written after it).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .errors import UsageError


class WhiteoutFormat(enum.Enum):
    """How strata writes whiteouts into the upper layer (it always reads every form)."""

    AUTO = "auto"  # 0/0 character devices when mknod works, `.wh.` files otherwise
    CHARDEV = "chardev"  # the kernel overlayfs form
    WH = "wh"  # the OCI/AUFS form: an empty file named `.wh.NAME`


@dataclass(frozen=True, slots=True)
class IdMapping:
    """One `uidmapping=`/`gidmapping=` range: union ids [inside, inside+count) are stored on disk
    as [outside, outside+count), the fuse-overlayfs meaning of `inside:outside:count`."""

    inside: int
    outside: int
    count: int


@dataclass(frozen=True, slots=True)
class UnionConfig:
    """The layers (lowers top first) and the options that change union semantics."""

    lowers: tuple[Path, ...]
    upper: Path | None = None
    work: Path | None = None
    whiteout: WhiteoutFormat = WhiteoutFormat.AUTO
    volatile: bool = False  # skip fsync (as overlayfs's `volatile`)
    squash_uid: int | None = None  # report every file as owned by this uid
    squash_gid: int | None = None
    uid_map: tuple[IdMapping, ...] = ()
    gid_map: tuple[IdMapping, ...] = ()
    # Metadata-only copy-up (see unionfs/metacopy.py): chmod, chown, utimes and xattr changes of
    # a lower file copy its metadata now and its data at the first data write. On for strata's
    # own stack (`strata mount`, `strata run`), which reads the marker back; fuse-strata turns it
    # off, because engines that use it diff the upper directory themselves and would read a
    # metacopy file as a hole. Markers already in a layer are honoured either way.
    metacopy: bool = True

    @property
    def read_only(self) -> bool:
        return self.upper is None


DEFAULT_SPIN_US: Final = 100


class Passthrough(enum.Enum):
    """FUSE passthrough (`passthrough=` mount option): the kernel reads, writes and maps regular
    files straight from the layer file, so all mounts over a layer share its page cache.

    AUTO uses it when it can (the patched pyfuse3 with libfuse 3.17, a kernel that offers it,
    CAP_SYS_ADMIN in the initial user namespace) and otherwise serves as without it; ON refuses
    to mount where it cannot; OFF keeps FUSE's no-open mode, where opening a file sends no
    request (see ops.py)."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class MountOptions:
    """Options for the kernel mount only; they do not change what the core does."""

    fsname: str = "strata"
    allow_other: bool = False
    default_permissions: bool = True
    read_only: bool = False
    debug: bool = False
    extra: tuple[str, ...] = field(default=())  # passed to the kernel as-is (dev, suid, ...)
    # How long the daemon keeps polling /dev/fuse after it ran out of requests before it sleeps
    # (the patched pyfuse3's set_spin; 0: never). Waking a sleeping daemon for the next request
    # costs as much as serving it on a VM; the poll is skipped while requests come further apart.
    spin_us: int = DEFAULT_SPIN_US
    passthrough: Passthrough = Passthrough.AUTO


def _check_dir(path: Path, what: str) -> Path:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: does not exist") from None
    except OSError as exc:
        raise UsageError(f"{what} {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {path}: not a directory")
    return Path(os.path.realpath(path))


def _inside(a: Path, b: Path) -> bool:
    """True when a is b or below it."""
    return a == b or b in a.parents


def _check_no_overlap(lowers: Sequence[Path]) -> None:
    """Refuse a lower layer given twice, or inside another one (as kernel overlayfs refuses
    overlapping layers): UsageError naming both."""
    seen: dict[Path, Path] = {}
    for lower in lowers:
        if lower in seen:
            raise UsageError(f"lower layer {lower}: given twice")
        seen[lower] = lower
    for lower in lowers:
        for parent in lower.parents:
            if parent in seen:
                raise UsageError(f"lower layers {parent} and {lower}: one is inside the other")


def unique_lowers(lowers: Sequence[Path]) -> tuple[Path, ...]:
    """The layers with each repeat dropped but its topmost occurrence. An image may hold one
    layer twice (two steps that made the same changes); the lower copy is then shadowed, name
    for name, by the upper one, so dropping it changes nothing that the union shows."""
    seen: set[str] = set()
    kept = []
    for lower in lowers:
        key = os.path.realpath(lower)
        if key not in seen:
            seen.add(key)
            kept.append(lower)
    return tuple(kept)


def validate(cfg: UnionConfig) -> UnionConfig:
    """Check the layers and return the config with every path resolved (lower paths may be symlinks).

    Raises UsageError with one line naming the culprit. Writes nothing.
    """
    if not cfg.lowers:
        raise UsageError("no lower layer given")
    lowers = tuple(_check_dir(p, "lower layer") for p in cfg.lowers)
    for lower in lowers:
        if not os.access(lower, os.R_OK | os.X_OK):
            raise UsageError(f"lower layer {lower}: not readable")
    _check_no_overlap(lowers)
    upper = work = None
    if cfg.upper is not None or cfg.work is not None:
        if cfg.upper is None or cfg.work is None:
            raise UsageError("upper and work directories must be given together")
        upper = _check_dir(cfg.upper, "upper directory")
        work = _check_dir(cfg.work, "work directory")
        for path, what in ((upper, "upper directory"), (work, "work directory")):
            if not os.access(path, os.W_OK | os.X_OK):
                raise UsageError(f"{what} {path}: not writable")
        if os.stat(upper).st_dev != os.stat(work).st_dev:
            raise UsageError(f"work directory {work}: not on the same filesystem as upper {upper}")
        if _inside(upper, work) or _inside(work, upper):
            raise UsageError(f"upper {upper} and work {work} must not be inside one another")
        for lower in lowers:
            if _inside(upper, lower) or _inside(lower, upper):
                raise UsageError(f"upper {upper} and lower {lower} must not be inside one another")
            if _inside(work, lower) or _inside(lower, work):
                raise UsageError(f"work {work} and lower {lower} must not be inside one another")
    return dataclasses.replace(cfg, lowers=lowers, upper=upper, work=work)
