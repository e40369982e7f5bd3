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
from .state import RUNNING, ContainerDir, ContainerState, StateRoot, process_alive, remove_tree
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
            remove(root, cdir, force=True, volumes=True)
        raise
    if cdir.config.auto_remove:
        remove(root, cdir, force=True, volumes=True)
        mark("removed")
    elif cdir.config.restart_policy != "no":  # hook: runtime.restart, the restarts go on
        start_detached(root, cdir, remove_on_failure=False, after_exit=code)
    return code


def start_detached(
    root: StateRoot,
    cdir: ContainerDir,
    *,
    remove_on_failure: bool,
    after_exit: int | None = None,
) -> None:
    """Start a monitor daemon for the container and return once the command runs (StartError
    with the container's message otherwise). Its output goes to the container's log.
    `after_exit`: the container has just exited with this status (a foreground run): the
    daemon only restarts it as its restart policy says, and returns at once."""
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
            _monitor_daemon(root, cdir, write_fd, after_exit)
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
            remove(root, cdir, force=True, volumes=True)
    raise StartError(failure.message or "the container's monitor died", failure.code)


def _monitor_daemon(
    root: StateRoot, cdir: ContainerDir, report_fd: int, after_exit: int | None
) -> NoReturn:
    status = 1
    report = startup.StartupReport(report_fd)
    try:
        os.chdir("/")
        # The monitor's own messages; the container's output goes to its log (runtime.logs).
        redirect_stdio(cdir.sub("monitor.log"), stdout_to_log=True, mode=0o600)
        if cdir.config.interactive:  # hook: runtime.attach, the container's input
            fifo = _open_stdin_fifo(cdir)
            os.dup2(fifo, 0)
            os.close(fifo)
        if after_exit is None:
            began = time.monotonic()
            status = Monitor(root, cdir, attached=False).run(on_started=report.ok)
            ran_for = time.monotonic() - began
        else:
            report.ok()
            status, ran_for = after_exit, 0.0
        status = keep_restarting(root, cdir, status, ran_for)
        if cdir.config.auto_remove:
            remove(root, cdir, force=True, volumes=True)
    except UsageError as exc:
        status = exc.exit_code
        report.fail(exc.exit_code, str(exc))
    except BaseException as exc:
        report.fail(START_FAILED, f"{type(exc).__name__}: {exc}")
    finally:
        report.fail(START_FAILED, "the monitor stopped before the container started")
        os._exit(status)


def _open_stdin_fifo(cdir: ContainerDir) -> int:
    """For the detached monitor of a `-i` container: the FIFO `containers/<id>/stdin` that its
    container reads and `strata attach` writes (runtime.attach), opened for reading and writing,
    so that its input never ends while no one is attached."""
    path = cdir.sub("stdin")
    with contextlib.suppress(FileExistsError):
        os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def keep_restarting(root: StateRoot, cdir: ContainerDir, code: int, ran_for: float) -> int:
    """Start the container again for as long as its restart policy says (runtime.restart),
    waiting docker's delays; the last exit status. Ends at a stop by hand, a start by hand,
    its removal, or a start that fails."""
    from . import restart

    cfg = cdir.config
    if cfg.restart_policy == "no":
        return code
    delay = restart.next_delay(restart.FIRST_DELAY / 2, ran_for)
    count = 0
    while True:
        with root.lock():
            if not cdir.path.exists():
                return code
            state = cdir.read_state()
            count = state.restart_count
            if (
                state.status == RUNNING
                or state.stopped_by_hand
                or not restart.wanted(cfg.restart_policy, cfg.restart_retries, code, count)
            ):
                return code
            cdir.write_state(state.replace(restarting=True))
        if not _wait_unless_stopped(cdir, delay):
            return code
        began = time.monotonic()
        try:
            code = Monitor(root, cdir, restart_count=count + 1, attached=False).run()
        except StartError as exc:
            print(f"strata: restart of {cfg.name} failed: {exc}", file=sys.stderr, flush=True)
            with contextlib.suppress(OSError), root.lock():
                if cdir.path.exists():
                    cdir.write_state(cdir.read_state().replace(restarting=False))
            return code
        count += 1
        delay = restart.next_delay(delay, time.monotonic() - began)


def _wait_unless_stopped(cdir: ContainerDir, delay: float) -> bool:
    """Sleep `delay` s; False as soon as the container is stopped by hand, started by hand or
    removed meanwhile."""
    deadline = time.monotonic() + delay
    while time.monotonic() < deadline:
        if not cdir.path.exists():
            return False
        state = cdir.read_state()
        if state.stopped_by_hand or state.status == RUNNING:
            return False
        time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
    return True


def stop_by_hand(root: StateRoot, cdir: ContainerDir) -> None:
    """Record that the container is being stopped by hand (stop, kill, rm -f, restart): its
    restart policy does not start it again (runtime.restart)."""
    if cdir.config.restart_policy == "no":
        return
    with root.lock():
        if cdir.path.exists():
            state = cdir.read_state()
            cdir.write_state(state.replace(stopped_by_hand=True, restarting=False))


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
            _unpause_for_signal(cdir)
            return
    deliver(state.init_pid, sig, is_namespace_init=not cdir.config.init)
    _unpause_for_signal(cdir)


def _unpause_for_signal(cdir: ContainerDir) -> None:
    """A paused container thaws once signalled (as docker's kill and stop), so that its
    processes can take the signal: frozen, they would not even die of SIGKILL until thawed."""
    state = cdir.read_state()
    if state.paused:
        _thaw(cdir, state)


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


def stop(cdir: ContainerDir, timeout: float | None = None) -> None:
    """The container's stop signal (--stop-signal, else the image's STOPSIGNAL, else SIGTERM),
    then SIGKILL after `timeout` seconds (None: its --stop-timeout, else 10); returns once the
    container has stopped."""
    from .runflags import parse_signal

    state = cdir.effective_state()
    if state.status != RUNNING:
        return
    cfg = cdir.config
    sig = int(signal.SIGTERM)
    with contextlib.suppress(UsageError):  # an image's STOPSIGNAL strata cannot name: SIGTERM
        sig = parse_signal(cfg.stop_signal) if cfg.stop_signal else sig
    if timeout is None:
        timeout = 10.0 if cfg.stop_timeout is None else float(cfg.stop_timeout)
    with contextlib.suppress(UsageError):
        signal_container(cdir, sig)
    if wait_stopped(cdir, None if timeout < 0 else timeout):
        return
    with contextlib.suppress(UsageError):
        signal_container(cdir, signal.SIGKILL)
    if not wait_stopped(cdir, 15.0):
        raise UsageError(f"container {cdir.name} did not stop", 1)


def remove(root: StateRoot, cdir: ContainerDir, *, force: bool, volumes: bool = False) -> None:
    """Remove a container and its writable layer (-f: stop it first; `volumes`, `rm -v` and
    `--rm`: its anonymous volumes too, as docker's; named volumes stay). Nothing is written on
    the way, so that this works on a full disk too (and frees its space first)."""
    state = cdir.effective_state()
    # the caller may be the container's own monitor (run --rm) whose exit could not be recorded
    if state.status == RUNNING and state.monitor_pid != os.getpid():
        if not force:
            raise UsageError(f"container {cdir.name} is running: stop it first, or use -f", 1)
        stop_by_hand(root, cdir)
        with contextlib.suppress(UsageError):
            signal_container(cdir, signal.SIGKILL)
        wait_stopped(cdir, 15.0)
    with root.lock():
        if not cdir.path.exists():
            return
        stopped = cdir.effective_state().status != RUNNING
        if stopped:
            usernet.collect(cdir)  # a pasta/slirp4netns a monitor killed with SIGKILL left
            from .cgroups import remove_stale  # and its cgroups

            remove_stale(cdir.id)
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
        if volumes:  # hook: runtime.volumes, now that no container lists them
            from . import volumes as vols

            for volume in cdir.config.volumes:
                if volume.anonymous:
                    with contextlib.suppress(UsageError):  # in use by another: kept, as docker
                        vols.remove(root, volume.name, force=True)
    _remove_layer_tree(cdir, doomed)


def _remove_layer_tree(cdir: ContainerDir, path: Path) -> None:
    """rm -rf, in the container's user namespace when rootless (files of subordinate ids)."""
    if not cdir.config.rootless or namespaces.in_user_namespace():
        remove_tree(path)
        return
    try:
        namespaces.remove_tree_in(id_map_of(cdir.config), path)
    except OSError as e:
        raise UsageError(str(e), 1) from None


def wait_exit(cdir: ContainerDir) -> int:
    """`strata wait`: block until the container has stopped (a created one: until it has been
    started and has stopped, as docker waits), then its exit code. A container removed meanwhile
    (`run --rm`, `rm -f`) gives the code it recorded on its way out, if it could be read."""
    from .state import EXITED, ContainerState, read_json

    last: ContainerState | None = None
    while True:
        for path in (cdir.path, cdir.path.with_name(f".rm-{cdir.id}")):
            try:
                last = ContainerState.from_json(read_json(path / "state.json"))
                break
            except (OSError, ValueError):
                continue
        else:
            if last is not None and last.exit_code is not None and last.status == EXITED:
                return last.exit_code
            raise UsageError(f"container {cdir.name} was removed before it stopped", 1)
        if last.status == RUNNING and not process_alive(last.monitor_pid, last.monitor_start):
            return last.exit_code if last.exit_code is not None else 128 + signal.SIGKILL
        if last.status == EXITED:
            return last.exit_code if last.exit_code is not None else 128 + signal.SIGKILL
        time.sleep(0.02)


def rename(root: StateRoot, ref: str, new_name: str) -> None:
    """`strata rename`: a new name in config.json (under the lock, so that no other command
    takes the name meanwhile). A running container on a user network gets its DNS name changed
    too. Docker's status for every failure here is 1."""
    from dataclasses import replace

    from .state import write_json

    with root.lock():
        cdir = root.find(ref)
        if new_name == cdir.name:
            raise UsageError(f"container {cdir.name} already has the name {new_name!r}", 1)
        try:
            root.check_name(new_name)
        except UsageError as exc:
            raise UsageError(str(exc), 1) from None
        write_json(cdir.sub("config.json"), replace(cdir.config, name=new_name).to_json())
        if cdir.config.network_id and os.geteuid() == 0:  # hook: user networks' DNS names
            from .networks import find, update_dns

            defn = find(root, cdir.config.network_id)
            if defn is not None and cdir.effective_state().status == RUNNING:
                with contextlib.suppress(OSError, UsageError):
                    update_dns(root, defn)


def pause(root: StateRoot, cdir: ContainerDir) -> None:
    """`strata pause`: freeze the container's processes (runtime.pause) and record it."""
    from .pause import freeze

    with root.lock():
        state = cdir.effective_state()
        if state.status != RUNNING or not process_alive(state.init_pid, state.init_start):
            raise UsageError(f"container {cdir.name} is not running", 1)
        if state.paused:
            raise UsageError(f"container {cdir.name} is already paused", 1)
        freeze(state.init_pid, cdir.id)
        cdir.write_state(state.replace(paused=True))


def unpause(root: StateRoot, cdir: ContainerDir) -> None:
    """`strata unpause`: thaw what `pause` froze."""
    with root.lock():
        state = cdir.effective_state()
        if state.status != RUNNING or not state.paused:
            raise UsageError(f"container {cdir.name} is not paused", 1)
        _thaw(cdir, state)


def _thaw(cdir: ContainerDir, state: ContainerState) -> None:
    from .pause import thaw

    if process_alive(state.init_pid, state.init_start):
        thaw(state.init_pid, cdir.id)
    cdir.write_state(state.replace(paused=False))
