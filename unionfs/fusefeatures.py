"""What the installed pyfuse3 can do beyond stock pyfuse3 3.5.0, one probe per feature.

`scripts/setup.sh` builds pyfuse3 with `scripts/pyfuse3/strata.patch` (its README describes each
hunk); `pip install strata` alone gets the stock release. strata works with either: each feature
below is probed on its own, by the name its hunk adds to pyfuse3 (a field, a function, a table),
or, for a hunk that only changes behaviour, by its entry in the patch's `STRATA_FEATURES` set.
No patch level is compared: a pyfuse3 that one day ships some of these upstream is used for
exactly what it has.

This module never imports pyfuse3 (only `ops.py` and `mount.py` do): `probe()` takes the module,
so tests can probe a stand-in for either build.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType


@dataclass(frozen=True, slots=True)
class FuseFeatures:
    """The patched pyfuse3's features, each True/non-empty when the installed build has it."""

    no_opendir: bool = False
    """`opendir` may answer ENOSYS, and `readdir`/`fsyncdir` then get the directory's inode
    where they got the handle (FUSE's no-opendir mode). The kernel stops sending OPENDIR and
    RELEASEDIR and caches each listing it read until the directory changes, so a warm stat walk
    sends no request per directory. strata uses it (`UnionOperations.cache_listings`). Without
    it every listing costs OPENDIR, READDIRPLUS and RELEASEDIR again."""

    cache_readdir: bool = False
    """`FileInfo.cache_readdir`, and `opendir` may return a `FileInfo`: a filesystem that keeps
    OPENDIR can still let the kernel cache a listing (FOPEN_CACHE_DIR). strata does not use it
    (no-opendir mode caches listings too and saves two requests); probed for completeness."""

    fuse_caps: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """`pyfuse3.FUSE_CAPS` (capability names -> FUSE_CAP_* bits) and the
    `Operations.init_connection(conn)` hook that may change the FUSE_INIT negotiation. strata
    asks for DONT_MASK (it applies the umask itself, except under a default ACL, as a local
    filesystem does) and CACHE_SYMLINKS (no READLINK per path walk through a link), and drops
    ATOMIC_O_TRUNC in no-open mode. Without it the kernel applies the umask before strata sees
    the mode, also under a default ACL, and every walk through a symlink asks READLINK."""

    no_open: bool = False
    """`open` may answer ENOSYS, and `read`, `write`, `flush`, `release` and `fsync` then get the
    file's inode where they got the handle (FUSE's no-open mode): opening and closing a file
    sends the daemon nothing, so reading a small file costs one request instead of three. strata
    uses it unless `STRATA_FUSE_OPEN=1`; a lower file is then copied up at its first write or
    truncate instead of at an open for writing. Without it, OPEN and RELEASE for every file."""

    nonblocking_loop: bool = False
    """The request loop reads the (non-blocking) `/dev/fuse` fd before waiting on it, which
    saves a daemon busy with a stream of requests a lock, an epoll registration and a trip
    through trio's scheduler per request. Nothing to call: strata only reports it."""

    spin: bool = False
    """`pyfuse3.set_spin(us)`: after the last queued request the loop keeps reading `/dev/fuse`
    for `us` microseconds before it sleeps, which halves the round trip of a caller that sends
    one request after another on a VM. `mount.py` sets the `spin=US` mount option through it;
    without it the option is accepted and does nothing."""

    passthrough: bool = False
    """`pyfuse3.backing_open(fd)`/`backing_close(id)`, `FileInfo.backing_id` and the PASSTHROUGH
    capability (pyfuse3 built against libfuse >= 3.17): an open may hand the kernel a layer file
    to read, write and map itself (FOPEN_PASSTHROUGH, kernel >= 6.9), so the page cache is the
    layer file's, shared by every mount over that layer. `ops.py` uses it per the `passthrough=`
    mount option; without it every mount caches its own copy of what it reads."""

    @property
    def patched(self) -> bool:
        """Any of the features: the build `scripts/setup.sh` makes, not the stock release."""
        return any(
            (
                self.no_opendir,
                self.cache_readdir,
                self.fuse_caps,
                self.no_open,
                self.nonblocking_loop,
                self.spin,
                self.passthrough,
            )
        )

    def describe(self) -> str:
        """One line for logs and test reports: the features present, or "stock"."""
        names = [
            name
            for name, present in (
                ("no_opendir", self.no_opendir),
                ("cache_readdir", self.cache_readdir),
                ("fuse_caps", bool(self.fuse_caps)),
                ("no_open", self.no_open),
                ("nonblocking_loop", self.nonblocking_loop),
                ("spin", self.spin),
                ("passthrough", self.passthrough),
            )
            if present
        ]
        return ", ".join(names) if names else "stock"


def probe(pyfuse3: ModuleType) -> FuseFeatures:
    """The features of the pyfuse3 module given (the installed one, from `ops.py`)."""
    behaviour = frozenset(getattr(pyfuse3, "STRATA_FEATURES", ()))
    file_info_type = getattr(pyfuse3, "FileInfo", None)
    file_info = file_info_type() if file_info_type is not None else None
    caps = dict(getattr(pyfuse3, "FUSE_CAPS", {}))
    return FuseFeatures(
        no_opendir="no_opendir" in behaviour,
        cache_readdir=hasattr(file_info, "cache_readdir"),
        fuse_caps=MappingProxyType(caps),
        no_open="no_open" in behaviour,
        nonblocking_loop="nonblocking_loop" in behaviour,
        spin=callable(getattr(pyfuse3, "set_spin", None)),
        passthrough=callable(getattr(pyfuse3, "backing_open", None))
        and "PASSTHROUGH" in caps
        and hasattr(file_info, "backing_id"),
    )
