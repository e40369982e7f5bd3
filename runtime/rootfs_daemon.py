"""The union daemon's side of a container's rootfs: forked by `runtime.prefork`, it imports the
union, waits for the parent's `DaemonRequest` (`runtime.rootfs.UnionRootfs.mount()`), mounts,
reports through `unionfs.startup` and serves until unmounted or signalled.

Apart from `runtime.rootfs` (the parent's side) so that the fork, which must import almost
nothing, and the parent's handle of the daemon both depend on it and not on each other.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from unionfs import libc, startup
from unionfs.config import MountOptions, UnionConfig
from unionfs.errors import UsageError

from .trace import mark


@dataclass(frozen=True, slots=True)
class DaemonRequest:
    """What the parent sends the pre-forked daemon once it knows: the mount to serve."""

    cfg: UnionConfig
    opts: MountOptions
    mountpoint: Path
    log_path: Path


def serve_daemon(
    request_fd: int,
    report_fd: int,
    parent: int,
    mask: set[int | signal.Signals],
    reset: Iterable[signal.Signals],
) -> None:
    """The daemon: import, read the request, mount, report `ok`, serve until unmounted or
    signalled; never returns. Without a request (the parent gave up) it exits quietly."""
    status = 1
    report = startup.StartupReport(report_fd)
    try:
        for sig in reset:
            signal.signal(sig, signal.SIG_DFL)
        libc.set_pdeathsig(signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl: nobody needs us
            os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.setsid()
        os.chdir("/")
        mark("daemon forked")
        # trio, pyfuse3 and the core: only in the daemon. The collector would run dozens of
        # times while they load and find nothing to free: off meanwhile, ~8% of the ~100 ms
        # of imports that stand between `strata run` and the mount.
        gc.disable()
        from unionfs import mount

        gc.enable()
        mark("daemon imported")

        data = _read_all(request_fd)
        os.close(request_fd)
        if not data:
            report.close()
            os._exit(0)
        request = pickle.loads(data)
        assert isinstance(request, DaemonRequest)
        redirect_stdio(request.log_path)
        logging.basicConfig(
            level=logging.WARNING, format="%(asctime)s %(levelname)s:%(name)s:%(message)s"
        )
        mount.run(request.cfg, request.opts, request.mountpoint, on_mounted=report.ok)
        status = 0
    except UsageError as exc:
        report.fail(exc.exit_code, str(exc))
    except OSError as exc:
        report.fail(1, str(exc.strerror or exc))
    except BaseException as exc:
        report.fail(1, f"{type(exc).__name__}: {exc}")
        with contextlib.suppress(Exception):
            logging.getLogger(__name__).exception("union daemon failed")
    finally:
        report.fail(1, "the union daemon stopped before mounting")
        os._exit(status)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def redirect_stdio(log_path: Path, *, stdout_to_log: bool = False, mode: int = 0o644) -> None:
    """stdin (and stdout unless `stdout_to_log`) from/to /dev/null, stderr appended to a log."""
    null = os.open(os.devnull, os.O_RDWR)
    logfd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, mode)
    os.dup2(null, 0)
    os.dup2(logfd if stdout_to_log else null, 1)
    os.dup2(logfd, 2)
    os.close(null)
    os.close(logfd)
