"""Forking the union daemon with nothing but `os` and `signal` imported.

`UnionRootfs.start()` forks through here, and so does `strata.entry` for a root `strata run`
before anything else is imported: the daemon's ~100 ms of imports (trio, pyfuse3, the union core;
`runtime.rootfs_daemon`, the child's side, is imported in the child) then overlap all of the
parent's start-up.
The parent keeps the write end of the request pipe and the read end of the report pipe; see
`runtime.rootfs` and `runtime.rootfs_daemon` for what travels over them.
"""

from __future__ import annotations

import gc
import os
import signal
from typing import Final

# Signals the caller may handle (forwarding to the container): the daemon starts with the
# defaults and lets trio install its own handlers.
CHILD_RESET_SIGNALS: Final = {
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCHLD,
    signal.SIGALRM,
    signal.SIGCONT,
    signal.SIGPWR,
}

# (pid, request fd, report fd) of the daemon `prefork()` started and nobody has taken yet.
_preforked: tuple[int, int, int] | None = None


def fork_daemon() -> tuple[int, int, int]:
    """Fork the union daemon; (pid, request write fd, report read fd) in the parent."""
    request_r, request_w = os.pipe()
    report_r, report_w = os.pipe()
    parent = os.getpid()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, CHILD_RESET_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the daemon
            try:
                os.close(request_w)
                os.close(report_r)
                gc.disable()  # imports only from here to the mount (see serve_daemon)
                from .rootfs_daemon import serve_daemon

                serve_daemon(request_r, report_w, parent, blocked, CHILD_RESET_SIGNALS)
            finally:
                os._exit(1)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    os.close(request_r)
    os.close(report_w)
    return pid, request_w, report_r


def prefork() -> None:
    """Fork a (privileged) daemon now, for `take()` to hand out later."""
    global _preforked
    if _preforked is None:
        _preforked = fork_daemon()


def take() -> tuple[int, int, int] | None:
    """The pre-forked daemon, if any; the caller owns it now."""
    global _preforked
    daemon, _preforked = _preforked, None
    return daemon


def discard() -> None:
    """Stop a pre-forked daemon nobody took (it has mounted nothing): with no request it would
    exit by itself once its pipes close; SIGTERM ends it sooner if it is still importing."""
    daemon = take()
    if daemon is None:
        return
    pid, request_fd, report_fd = daemon
    os.close(request_fd)
    os.close(report_fd)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
