"""The lifecycle commands: run a container attached or detached, signal it, stop it, wait for
it, remove it. The monitor (runtime.monitor) does the running; these are its callers and the
commands that act on a running container from outside."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

from unionfs import startup
from unionfs.errors import UsageError

from . import namespaces, network, publish, usernet
from .control import START_FAILED, StartError
from .create import id_map_of
from .init import FORWARDED, deliver
from .monitor import Monitor
from .rootfs import UnionRootfs, detach_if_mounted
from .rootfs_daemon import redirect_stdio
from .state import RUNNING, ContainerDir, StateRoot, process_alive, remove_tree
from .trace import mark


def run_attached(
    root: StateRoot,
    cdir: ContainerDir,
    *,
    remove_on_failure: bool,
    daemon: UnionRootfs | None = None,
) -> int:
    """Run in the foreground; with --rm (or a start that failed for a new container) the
    container is removed afterwards. `daemon`: a union daemon forked early (see rootfs)."""
    try:
        code = Monitor(root, cdir, daemon=daemon).run()
    except StartError:
        if remove_on_failure:
            remove(root, cdir, force=True)
        raise
    if cdir.config.auto_remove:
        remove(root, cdir, force=True)
        mark("removed")
    return code


def start_detached(root: StateRoot, cdir: ContainerDir, *, remove_on_failure: bool) -> None:
    """Start a monitor daemon for the container and return once the command runs (StartError
    with the container's message otherwise). Its output goes to the container's log."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    read_fd, write_fd = os.pipe()
    first = os.fork()
    if first == 0:  # pragma: no cover - the daemon's short-lived parent
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            _monitor_daemon(root, cdir, write_fd)
        finally:
            os._exit(1)
    os.close(write_fd)
    os.waitpid(first, 0)
    failure = startup.wait_for_start(
        read_fd, died="the container's monitor died", default_code=START_FAILED
    )
    if failure is None:
        return
    if remove_on_failure:
        with contextlib.suppress(UsageError):
            remove(root, cdir, force=True)
    raise StartError(failure.message or "the container's monitor died", failure.code)


def _monitor_daemon(root: StateRoot, cdir: ContainerDir, report_fd: int) -> NoReturn:
    status = 1
    report = startup.StartupReport(report_fd)
    try:
        os.chdir("/")
        # The monitor's own messages; the container's output goes to its log (runtime.logs).
        redirect_stdio(cdir.sub("monitor.log"), stdout_to_log=True, mode=0o600)
        status = Monitor(root, cdir, attached=False).run(on_started=report.ok)
        if cdir.config.auto_remove:
            remove(root, cdir, force=True)
    except UsageError as exc:
        status = exc.exit_code
        report.fail(exc.exit_code, str(exc))
    except BaseException as exc:
        report.fail(START_FAILED, f"{type(exc).__name__}: {exc}")
    finally:
        report.fail(START_FAILED, "the monitor stopped before the container started")
        os._exit(status)


def signal_container(cdir: ContainerDir, sig: int) -> None:
    """Send `sig` to the container (UsageError unless it runs).

    A signal the monitor forwards goes to the monitor, which passes it on as `deliver()` does
    and so knows to report 128+N when it had to stand in with SIGKILL; others (SIGKILL) go
    straight to the container's PID 1.
    """
    state = cdir.effective_state()
    if state.status != RUNNING or not process_alive(state.init_pid, state.init_start):
        raise UsageError(f"container {cdir.name} is not running", 1)
    if sig in FORWARDED and process_alive(state.monitor_pid, state.monitor_start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.monitor_pid, sig)
            return
    deliver(state.init_pid, sig, is_namespace_init=not cdir.config.init)


def wait_stopped(cdir: ContainerDir, timeout: float | None) -> bool:
    """Wait until the container's monitor has finished (it records the exit and unmounts)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        state = cdir.read_state()
        if state.status != RUNNING or not process_alive(state.monitor_pid, state.monitor_start):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def stop(cdir: ContainerDir, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; returns once the container has stopped."""
    state = cdir.effective_state()
    if state.status != RUNNING:
        return
    with contextlib.suppress(UsageError):
        signal_container(cdir, signal.SIGTERM)
    if wait_stopped(cdir, timeout):
        return
    with contextlib.suppress(UsageError):
        signal_container(cdir, signal.SIGKILL)
    if not wait_stopped(cdir, 15.0):
        raise UsageError(f"container {cdir.name} did not stop", 1)


def remove(root: StateRoot, cdir: ContainerDir, *, force: bool) -> None:
    """Remove a container and its writable layer (-f: stop it first). Nothing is written on
    the way, so that this works on a full disk too (and frees its space first)."""
    state = cdir.effective_state()
    # the caller may be the container's own monitor (run --rm) whose exit could not be recorded
    if state.status == RUNNING and state.monitor_pid != os.getpid():
        if not force:
            raise UsageError(f"container {cdir.name} is running: stop it first, or use -f", 1)
        with contextlib.suppress(UsageError):
            signal_container(cdir, signal.SIGKILL)
        wait_stopped(cdir, 15.0)
    with root.lock():
        if not cdir.path.exists():
            return
        stopped = cdir.effective_state().status != RUNNING
        if stopped:
            usernet.collect(cdir)  # a pasta/slirp4netns a monitor killed with SIGKILL left
        if os.geteuid() == 0 and stopped:
            detach_if_mounted(cdir.rootfs)
            if cdir.config.network == "bridge" or cdir.config.network_id:  # what SIGKILL left
                with contextlib.suppress(OSError):
                    network.tidy(root, exclude=cdir.id)
                with contextlib.suppress(OSError):  # its published ports' rules
                    publish.tidy(root, exclude=cdir.id)
                with contextlib.suppress(OSError):  # hook: runtime.dns (imported only here)
                    from .dns import dns_tidy

                    dns_tidy(root, exclude=cdir.id, stop=False)
            if cdir.config.network_id:  # hook: user networks, DNS records and servers
                from .networks import tidy

                with contextlib.suppress(OSError, UsageError):
                    tidy(root, exclude=cdir.id, stop=False)
        doomed = cdir.path.with_name(f".rm-{cdir.id}")
        os.rename(cdir.path, doomed)  # gone from listings at once; removal may take a while
    _remove_layer_tree(cdir, doomed)


def _remove_layer_tree(cdir: ContainerDir, path: Path) -> None:
    """rm -rf, in the container's user namespace when rootless (files of subordinate ids)."""
    if not cdir.config.rootless or namespaces.in_user_namespace():
        remove_tree(path)
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            namespaces.enter_user_namespace(id_map_of(cdir.config), extra=())
            remove_tree(path)
            code = 0
        except BaseException as exc:
            print(f"strata: removing {path}: {exc}", file=sys.stderr)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise UsageError(f"could not remove {path}", 1)
