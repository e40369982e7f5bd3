"""`strata exec`: run a command in a running container.

The caller joins the container's namespaces and root itself and forks the command (a PID
namespace applies to children only), then waits for it, relaying signals and a pty as the
monitor does. The command is confined as the container's own processes are.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from dataclasses import dataclass
from typing import NoReturn

from unionfs import startup
from unionfs.errors import UsageError

from . import console, namespaces, runflags
from .control import START_FAILED, StartError
from .create import confinement_of
from .init import FORWARDED, exit_code
from .process import ProcessSpec, exec_process
from .security import Confinement
from .signals import SignalRelay
from .state import RUNNING, ContainerDir, StateRoot, process_alive


@dataclass(frozen=True, slots=True)
class Joined:
    """What a process that has entered a container (`enter`) needs to start a command there."""

    confinement: Confinement
    can_setgroups: bool


def enter(root: StateRoot, cdir: ContainerDir) -> Joined:
    """Join the running container's namespaces and root (this process's own: a PID namespace
    applies to children, so the command must be forked after). UsageError (status 1) when it is
    not running or is paused. Shared by `strata exec` and the health checks (runtime.health)."""
    state = cdir.effective_state()
    if state.status != RUNNING or not process_alive(state.init_pid, state.init_start):
        raise UsageError(f"container {cdir.name} is not running", 1)
    if state.paused:
        raise UsageError(f"container {cdir.name} is paused, unpause the container before exec", 1)
    confinement = confinement_of(root, cdir)
    pid1 = state.init_pid
    can_setgroups = namespaces.setgroups_allowed(str(pid1))  # while the host's /proc is ours
    kinds = list(namespaces.JOIN_ORDER)
    fds = namespaces.open_namespaces(pid1, kinds)
    root_fd = os.open(f"/proc/{pid1}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        namespaces.join_namespaces(pid1, fds)
        os.fchdir(root_fd)
        os.chroot(".")
        os.chdir("/")
    finally:
        os.close(root_fd)
    return Joined(confinement, can_setgroups)


def exec_child(
    cdir: ContainerDir,
    spec: ProcessSpec,
    joined: Joined,
    err_w: int,
    *,
    slave: int | None = None,
    pdeathsig: int | None = None,
) -> NoReturn:  # pragma: no cover - child
    """In the child forked after `enter`: the container's --ulimit, then exec `spec` confined
    as the container's own processes are; a failure is reported on `err_w`."""
    try:  # the container's --ulimit, as its own processes have them
        runflags.apply_ulimits(cdir.config.ulimits)
    except OSError as exc:
        startup.StartupReport(err_w).fail(START_FAILED, str(exc.strerror or exc))
        os._exit(START_FAILED)
    exec_process(
        spec,
        report=startup.StartupReport(err_w).fail,
        slave=slave,
        handled_signals=FORWARDED,
        can_setgroups=joined.can_setgroups,
        confinement=joined.confinement,
        pdeathsig=pdeathsig,
    )


def exec_in(root: StateRoot, cdir: ContainerDir, spec: ProcessSpec) -> int:
    """Run `spec` in the running container: join its namespaces, fork (the PID namespace applies
    to children), wait for it, forward signals; its exit code. The command is confined as the
    container's own processes are."""
    joined = enter(root, cdir)
    master = slave = None
    if spec.tty:
        master, slave = os.openpty()
    err_r, err_w = os.pipe()
    relay = SignalRelay()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(err_r)
        if master is not None:
            os.close(master)
        exec_child(cdir, spec, joined, err_w, slave=slave)
    os.close(err_w)
    if slave is not None:
        os.close(slave)
    relay.target = pid
    relay.is_namespace_init = False
    relay.master = master
    relay.install()
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        # The pipe is close-on-exec: end of file without a report is the command's exec.
        failure = startup.wait_for_start(err_r, died=None, default_code=START_FAILED)
        if failure is not None:
            os.waitpid(pid, 0)
            raise StartError(failure.message, failure.code)
        if master is None:
            _, status = os.waitpid(pid, 0)
            return exit_code(status)
        result: list[int] = []

        def finished() -> bool:
            if not result:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    result.append(status)
            return bool(result)

        console.copy_window_size(sys.stdin.fileno(), master)
        stdin = sys.stdin.fileno() if spec.interactive else None
        with (
            console.raw_terminal(sys.stdin.fileno())
            if stdin is not None
            else contextlib.nullcontext()
        ):
            sink = functools.partial(console.write_all, sys.stdout.fileno())
            console.relay({master: sink}, stdin=stdin, master=master, finished=finished)
            master = None  # (closed by the relay)
        return exit_code(result[0])
    finally:
        relay.cleaning = True
        relay.restore()
        if master is not None:
            with contextlib.suppress(OSError):
                os.close(master)
