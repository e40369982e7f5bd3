"""The work directory: the in-use lock, the scratch dir copies are built in, capability probes.

Everything the union builds (copy-ups, new objects over whiteouts, whiteouts themselves) is made
in `strata/tmp` and then renamed into the upper layer in one step, so a crash never leaves a
half-done object visible; leftovers are removed at the next mount only (kernel
`ovl_workdir_cleanup`). What the upper filesystem can do (0/0 character devices, trusted or user
xattrs) is probed here once, at mount time, and frozen in the `WorkDir` (kernel super.c).
"""

from __future__ import annotations

import fcntl
import itertools
import logging
import os
import stat
from dataclasses import dataclass, field

from . import _sys, metacopy
from .config import UnionConfig, WhiteoutFormat
from .errors import UsageError
from .whiteout import OPAQUE_MARKER

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WorkDir:
    """The work dir's fds and what was probed there (fds are -1 for a read-only union).

    `private_ns` is the namespace of strata's private xattrs that this mount honours (metacopy
    markers): "trusted" when mounted by root, "user" otherwise, as overlayfs's userxattr option.
    `metacopy_xattr` names the markers written (None: metacopy=off, or no xattrs); markers
    already in a layer are read whatever the option says.
    """

    work_fd: int
    tmp_fd: int
    cache_fd: int | None
    lock_fd: int
    whiteout_wh: bool
    private_ns: str
    opaque_xattr: str | None = "trusted.overlay.opaque"
    origin_xattr: str | None = "trusted.strata.origin"
    metacopy_xattr: str | None = None
    metacopy_layer_xattr: str = ""
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def open(cls, cfg: UnionConfig) -> WorkDir:
        """Take the in-use lock, clean leftovers of interrupted copy-ups, probe capabilities."""
        root = os.geteuid() == 0 and _sys.in_initial_user_namespace()
        private_ns = "trusted" if root else "user"
        whiteout_wh = cfg.whiteout is WhiteoutFormat.WH
        if cfg.upper is None or cfg.work is None:
            return cls(-1, -1, None, -1, whiteout_wh, private_ns)
        top_fd = os.open(cfg.work, _sys.O_PATHDIR)
        try:
            os.mkdir(b"strata", 0o700, dir_fd=top_fd)
        except FileExistsError:
            pass
        work_fd = os.open(b"strata", _sys.O_PATHDIR, dir_fd=top_fd)
        os.close(top_fd)
        lock_fd = os.open(
            b"lock",
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            0o600,
            dir_fd=work_fd,
        )
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            os.close(work_fd)
            raise UsageError(
                f"work directory {cfg.work} is in use by another strata mount"
            ) from None
        for sub in (b"tmp", b"cache"):
            try:
                os.mkdir(sub, 0o700, dir_fd=work_fd)
            except FileExistsError:
                pass
        tmp_fd = os.open(b"tmp", _sys.O_PATHDIR, dir_fd=work_fd)
        cache_fd = os.open(b"cache", _sys.O_PATHDIR, dir_fd=work_fd)
        clean_tmp(tmp_fd)
        if cfg.whiteout is WhiteoutFormat.AUTO:
            whiteout_wh = not _sys.can_mknod_whiteout(tmp_fd)
        opaque_xattr: str | None = None
        origin_xattr: str | None = None
        metacopy_xattr: str | None = None
        metacopy_layer_xattr = ""
        for attr_ns in ("trusted", "user"):
            if _sys.can_set_xattr(tmp_fd, f"{attr_ns}.strata.probe"):
                private_ns = attr_ns
                origin_xattr = f"{attr_ns}.strata.origin"
                opaque_xattr = f"{attr_ns}.overlay.opaque"
                if cfg.metacopy:
                    metacopy_xattr = f"{attr_ns}.{metacopy.MARKER_NAME}"
                    metacopy_layer_xattr = f"{attr_ns}.{metacopy.LAYER_NAME}"
                break
        log.debug(
            "whiteouts as %s, opaque via %s, origin via %s",
            ".wh. files" if whiteout_wh else "chardevs",
            opaque_xattr or OPAQUE_MARKER.decode(),
            origin_xattr,
        )
        return cls(
            work_fd,
            tmp_fd,
            cache_fd,
            lock_fd,
            whiteout_wh,
            private_ns,
            opaque_xattr,
            origin_xattr,
            metacopy_xattr,
            metacopy_layer_xattr,
        )

    def tmpname(self) -> bytes:
        """A fresh name in the work dir (the pid keeps two mounts' leftovers apart)."""
        return b"%d-%d" % (os.getpid(), next(self._counter))

    def close(self) -> None:
        for fd in (self.work_fd, self.tmp_fd, self.cache_fd, self.lock_fd):
            if fd is not None and fd >= 0:
                os.close(fd)


def clean_tmp(tmp_fd: int) -> None:
    """Remove what an interrupted copy-up or removal left in the work dir (never visible)."""
    for name in _names(tmp_fd):
        remove_tree(tmp_fd, name)


def _names(dirfd: int) -> list[bytes]:
    """The entries of the directory `dirfd` (an O_PATH fd cannot be listed itself)."""
    rfd = os.open(b".", _sys.O_DIR, dir_fd=dirfd)
    try:
        return [os.fsencode(name) for name in os.listdir(rfd)]
    finally:
        os.close(rfd)


def remove_tree(dirfd: int, name: bytes) -> None:
    """rm -rf of name in dirfd without following symlinks (work dir leftovers, old dirs)."""
    try:
        os.unlink(name, dir_fd=dirfd)
        return
    except IsADirectoryError:
        pass
    except FileNotFoundError:
        return
    except PermissionError:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise
    sub = os.open(name, _sys.O_PATHDIR, dir_fd=dirfd)
    try:
        for child in _names(sub):
            remove_tree(sub, child)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=dirfd)


def restore_times(fd: int, st: os.stat_result) -> None:
    """Put back a directory's times after the union changed it for its own bookkeeping."""
    try:
        os.utime(_sys.fd_path(fd), ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError as exc:
        log.debug("cannot restore directory times: %s", exc)
