"""The container's root filesystem: a strata union served by a daemon forked from this process.

Why a fork and not `strata mount`: the caller has already imported the union's configuration
code, and a second interpreter would pay Python's start-up again; the child imports trio, pyfuse3
and the union core while the parent prepares the container. The daemon

- stays in the caller's mount namespace (the host's, or the rootless user+mount namespace), never
  in the container's, so the container cannot see or kill it;
- gets SIGTERM from the kernel when its parent dies (PR_SET_PDEATHSIG): a `strata run` killed with
  SIGKILL still takes the mount down (the daemon unmounts on SIGTERM);
- runs in its own session, so a Ctrl-C at the terminal does not unmount under a running container;
- writes its log (warnings, tracebacks) to a file in the container's state dir.

`UnionRootfs` is a context manager: `__exit__` always stops the daemon and checks that nothing is
left mounted (a lazy unmount is the last resort).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import select
import signal
import time
from pathlib import Path
from types import TracebackType
from typing import Final

from unionfs import libc, startup
from unionfs.config import MountOptions, UnionConfig, unique_lowers, validate
from unionfs.errors import UsageError

from . import prefork
from .prefork import fork_daemon
from .rootfs_daemon import DaemonRequest
from .trace import mark

STOP_TIMEOUT: Final = 10.0  # seconds the daemon gets to unmount after SIGTERM

log = logging.getLogger(__name__)


def mount_options(cfg: UnionConfig, *, privileged: bool) -> MountOptions:
    """How the rootfs is mounted: everyone in the container may use it (allow_other; in a user
    namespace the kernel confines that to the namespace), the kernel checks permissions, set-uid
    programs work as root, device nodes in the image do not (the container gets its own /dev)."""
    extra = ("suid", "nodev") if privileged else ("nodev",)
    return MountOptions(
        fsname="strata",
        allow_other=True,
        default_permissions=True,
        read_only=cfg.read_only,
        extra=extra,
    )


class UnionRootfs:
    """A union daemon forked early (`start()`), told later what to mount (`mount()`); `stop()`
    (or leaving the `with` block) always unmounts and stops it.

    Forking first lets the daemon import trio, pyfuse3 and the union core while the parent is
    still reading the command line and creating the container: on two cores the daemon's
    start-up (about 100 ms of imports) and the parent's overlap.
    """

    def __init__(self, *, privileged: bool) -> None:
        self.privileged = privileged
        self.mountpoint: Path | None = None
        self.pid: int | None = None
        self._request_fd: int | None = None
        self._report_fd: int | None = None

    # -- starting

    def start(self) -> None:
        """Fork the daemon: it imports the union and waits for `mount()`."""
        self.pid, self._request_fd, self._report_fd = fork_daemon()

    def mount(self, cfg: UnionConfig, mountpoint: Path, *, log_path: Path) -> None:
        """Check the layers (UsageError on bad ones) and ask the daemon to mount them."""
        if self.pid is None:
            self.start()
        assert self._request_fd is not None, "mount() once"
        cfg = validate(dataclasses.replace(cfg, lowers=unique_lowers(cfg.lowers)))
        request = DaemonRequest(
            cfg, mount_options(cfg, privileged=self.privileged), mountpoint, log_path
        )
        fd, self._request_fd = self._request_fd, None
        self.mountpoint = mountpoint
        try:
            _write_all(fd, pickle.dumps(request))
        except BrokenPipeError:
            pass  # the daemon died: wait_mounted() tells
        finally:
            os.close(fd)

    def wait_mounted(self) -> None:
        """Block until the daemon reports the mount live; UsageError with its message if not."""
        assert self._report_fd is not None, "start() first"
        fd, self._report_fd = self._report_fd, None
        failure = startup.wait_for_start(fd, died="the union daemon died before mounting")
        if failure is not None:
            raise UsageError(f"cannot mount the container's rootfs: {failure.message}", 125)

    # -- stopping

    def reaped(self) -> None:
        """The caller has reaped the daemon (it died): `stop()` only detaches the mount."""
        self.pid = None

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Unmount: SIGTERM makes the daemon unmount and exit; wait for it, kill it if it hangs,
        and detach whatever is still mounted at the mount point."""
        for fd in (self._request_fd, self._report_fd):
            if fd is not None:
                os.close(fd)
        self._request_fd = self._report_fd = None
        pid, self.pid = self.pid, None
        if pid is None:
            if self.mountpoint is not None:
                detach_if_mounted(self.mountpoint)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        mark("daemon signalled")
        if not _wait_exit(pid, timeout):
            log.warning("union daemon %d did not stop in %gs; killing it", pid, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        if self.mountpoint is not None:
            detach_if_mounted(self.mountpoint)
        mark("daemon stopped")

    def __enter__(self) -> UnionRootfs:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def take_preforked(*, privileged: bool) -> UnionRootfs | None:
    """The daemon `strata.entry` forked at start-up (`prefork.prefork()`, always privileged),
    if there is one and a privileged one is wanted; the caller owns it now."""
    if not privileged:
        return None
    forked = prefork.take()
    if forked is None:
        return None
    daemon = UnionRootfs(privileged=True)
    daemon.pid, daemon._request_fd, daemon._report_fd = forked
    return daemon


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _wait_exit(pid: int, timeout: float) -> bool:
    """Reap child `pid`; False if it is still running after `timeout` seconds."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready, _, _ = select.select([pidfd], [], [], remaining)
            if ready:
                break
    finally:
        os.close(pidfd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    return True


def detach_if_mounted(path: Path) -> None:
    """Lazily unmount whatever is still mounted at `path` (a daemon that died uncleanly)."""
    from unionfs.mountinfo import mounts_at

    for _ in mounts_at(path):
        try:
            libc.umount2(path, libc.MNT_DETACH)
        except OSError as exc:
            log.warning("cannot detach %s: %s", path, exc.strerror)
            return
