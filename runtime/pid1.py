"""The container's processes from the fork to the exec of its command, as a recipe.

    monitor (runtime.monitor)
    └─ ns parent   `ns_parent`: unshares the mount, UTS, IPC, [network] and PID namespaces and
       │           forks PID 1 (unshare(CLONE_NEWPID) applies to children only); then only waits
       │           and passes PID 1's exit status on.
       └─ PID 1    `pid1`: `/` rslave, the rootfs bound on itself, /proc, /dev, /sys, the /etc
                   files and volumes mounted, pivot_root, the old root detached (`prepare_root`),
                   `ready`; then, on `go`, exec the command (or, with --init, run the tiny init,
                   which forks the command).

Both run in children forked by the monitor and never return; they report a failure to start as
an `error` control message (runtime.control) and exit. Each gets PR_SET_PDEATHSIG from its parent,
so killing the monitor kills the container. Everything they need is computed beforehand in the
monitor (`Plan`): nothing may be imported or looked up on the host after pivot_root.
"""

from __future__ import annotations

import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NoReturn

from unionfs import libc

from . import mounts, namespaces, network, runflags
from .control import START_FAILED, recv, send, send_error
from .init import FORWARDED, exit_code, run_init
from .namespaces import IdMap
from .process import ExecError, ProcessSpec, exec_process
from .security import Confinement
from .state import ContainerDir
from .trace import mark

INIT_TITLE: Final = "strata-init"


@dataclass(slots=True)
class Plan:
    """What the container's processes need, computed in the monitor before forking (nothing
    may be imported or looked up on the host after pivot_root)."""

    cdir: ContainerDir
    monitor_pid: int
    flags: int
    own_network: bool
    join_network: int | None  # an fd on another container's network namespace to enter
    wait_for_network: bool  # the monitor connects the namespace, then says `net`
    devpts_gid: int | None
    process: ProcessSpec
    init: bool
    can_setgroups: bool
    confinement: Confinement
    usernet: bool = False  # pasta/slirp4netns (runtime.usernet): wait for `net` before `ready`
    userns: IdMap | None = None  # --userns keep-id: a user namespace of its own, with this map


def ns_parent(plan: Plan, sock: socket.socket) -> NoReturn:
    """Unshare, fork PID 1, pass its pid on, then wait and mirror its exit status."""
    code = START_FAILED
    try:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)  # still blocked: nothing arrives here
        libc.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != plan.monitor_pid:
            os._exit(code)
        mark("ns parent forked")
        try:
            if plan.join_network is not None:
                libc.setns(
                    plan.join_network, libc.CLONE_NEWNET, what="the other container's network"
                )
            if plan.userns is not None:  # first, so that it owns the other new namespaces
                namespaces.enter_user_namespace(plan.userns, (), nested=True)
            libc.unshare(plan.flags)
        except OSError as exc:
            send_error(sock, START_FAILED, f"cannot create namespaces: {exc.strerror}")
            os._exit(code)
        pid = os.fork()
        if pid == 0:
            _pid1(plan, sock)
        send(sock, f"pid {pid}")
        sock.close()
        _, status = os.waitpid(pid, 0)
        code = exit_code(status)
    finally:
        os._exit(code)


def _pid1(plan: Plan, sock: socket.socket) -> NoReturn:
    """The container's PID 1, in its new namespaces: build the root, then become the command."""
    code = START_FAILED

    def report(status: int, message: str) -> None:
        send_error(sock, status, message)

    try:
        # Die with the ns parent (and so with the monitor); lead a session of its own, so that
        # the terminal's signals reach the container only through the monitor.
        libc.set_pdeathsig(signal.SIGKILL)
        os.setsid()
        slave = _prepare_root(plan, sock)  # ... pivot_root, `ready`
        # The monitor records the pids and applies limits before `go`: nothing of the command
        # may run before that.
        msg, _ = recv(sock)
        if msg != "go":
            os._exit(code)
        if plan.init:
            code = run_init(
                lambda: _fork_command(plan, sock, slave), confine=lambda: _confine_init(plan)
            )
            os._exit(code)
        # exec_process confines (bounding set and seccomp before the switch of user, the final
        # capabilities after it), then execs: a failure is reported as `error`.
        exec_process(
            plan.process,
            report=report,
            slave=slave,
            handled_signals=FORWARDED,
            can_setgroups=plan.can_setgroups,
            confinement=plan.confinement,
            pdeathsig=signal.SIGKILL,
        )
    except ExecError as exc:
        code = exc.code
        report(code, str(exc))
    except OSError as exc:
        report(
            code, str(exc.strerror if exc.filename is None else f"{exc.filename}: {exc.strerror}")
        )
    except BaseException as exc:
        report(code, f"{type(exc).__name__}: {exc}")
    os._exit(code)


def _prepare_root(plan: Plan, sock: socket.socket) -> int | None:
    """Mounts, pivot_root, and the pty; tell the monitor `ready`. Returns the pty slave."""
    cdir = plan.cdir
    cfg = cdir.config
    rootfs = cdir.rootfs
    mark("pid 1 forked")
    # 1. Our mounts must not propagate back to the host: `/` rslave before anything is mounted.
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_SLAVE)
    libc.sethostname(cfg.hostname)
    # 2. The network: `lo` up. The monitor, once it knows our pid, connects the namespace from
    #    the host meanwhile (bridge: veth, address, route, no process of ours taking a pid for
    #    it; pasta/slirp4netns: its helper) and says `net`, awaited after pivot_root.
    if plan.own_network:
        network.loopback_up()
    # 3. The rootfs bound on itself (pivot_root wants a mount point), then the container's
    #    mounts inside it, while the host's paths (volumes, /etc files) can still be named.
    libc.mount(rootfs, rootfs, None, libc.MS_BIND | libc.MS_REC)
    mounts.mount_all(
        rootfs,
        etc_dir=cdir.path,
        volumes=[
            mounts.tmpfs_mount(v.target, v.options)
            if v.kind == "tmpfs"
            else mounts.BindMount(v.source, v.target, v.read_only, copy=v.copy)
            for v in cfg.volumes
        ],
        devpts_gid=plan.devpts_gid,
        shm_size=cfg.shm_size,
        privileged=cfg.privileged,
        masked=cfg.mask_paths,
    )
    # 4. pivot_root into it and detach the old root: the host is out of sight from here on.
    os.chdir(rootfs)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)  # the old root, stacked on top by pivot_root(".", ".")
    os.chdir("/")
    mark("pivot_root done")
    runflags.apply_ulimits(cfg.ulimits)  # inherited by the command (and --init's init)
    if plan.init:
        _hide_init()
    if plan.wait_for_network or plan.usernet:  # set up meanwhile by the monitor: wait for it
        _wait_for_net(sock)
    # 5. `ready`, with the pty's master for the monitor to relay (the slave becomes the
    #    command's terminal and /dev/console).
    if plan.process.tty:
        master, slave = os.openpty()
        mounts.bind_console(Path("/"), os.ttyname(slave))
        send(sock, "ready", [master])
        os.close(master)
        return slave
    send(sock, "ready")
    return None


def _wait_for_net(sock: socket.socket) -> None:
    """The monitor's `net`: the namespace's network is set up (anything else: it failed)."""
    msg, _ = recv(sock)
    if msg != "net":
        os._exit(START_FAILED)


def _hide_init() -> None:
    """--init's PID 1 is this Python process: its command line and environment would show the
    host's (the interpreter, the venv, strata's arguments). They are overwritten, and the
    process is made non-dumpable, which closes its /proc files (exe, maps, environ, fd) and
    ptrace to the container's processes."""
    libc.set_dumpable(False)
    libc.scrub_command_line(INIT_TITLE)
    libc.set_name(INIT_TITLE)


def _fork_command(plan: Plan, sock: socket.socket, slave: int | None) -> int:
    """--init: the command in a child of PID 1 (the init reaps and forwards signals)."""
    pid = os.fork()
    if pid == 0:
        libc.set_dumpable(True)  # the command's process; exec makes it so anyway
        exec_process(
            plan.process,
            report=lambda status, message: send_error(sock, status, message),
            slave=slave,
            handled_signals=FORWARDED,
            can_setgroups=plan.can_setgroups,
            confinement=plan.confinement,
        )
    sock.close()
    if slave is not None:
        os.close(slave)
    return pid


def _confine_init(plan: Plan) -> None:
    """The init, confined as the container's root: after it has forked the command, which
    confines itself (it may need to switch users first)."""
    plan.confinement.enter()
    plan.confinement.finish(0)
