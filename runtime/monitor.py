"""The monitor: one run of a container, from mounting its rootfs to recording its exit status.

It is `strata run` itself (or, with -d, a daemon forked from it) and the parent of the
container's processes:

    monitor    waits for the container, forwards signals (runtime.signals), relays a pty,
    │          unmounts and records the exit status.
    ├─ union daemon   forked (runtime.rootfs), mounts the rootfs and serves it; lives in the
    │                 monitor's mount namespace (the host's, or the rootless user+mount namespace).
    └─ ns parent      forked, unshares the namespaces and forks the container's PID 1
       └─ PID 1       (runtime.pid1).

Each child gets PR_SET_PDEATHSIG from its parent, so killing the monitor with SIGKILL kills the
container and makes the daemon unmount. The monitor and PID 1 talk in control messages
(runtime.control).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from unionfs.errors import UsageError

from . import console, namespaces, network, publish, usernet
from .cgroups import Limits
from .control import START_FAILED, StartError, check_error, recv, send
from .create import confinement_of, id_map_of, union_config
from .init import FORWARDED, exit_code
from .logs import LOG, STREAMS, LogWriter
from .namespaces import Namespace
from .pid1 import Plan, ns_parent
from .process import ProcessSpec
from .rootfs import UnionRootfs, detach_if_mounted
from .signals import Interrupted, SignalRelay
from .state import (
    EXITED,
    RUNNING,
    ContainerConfig,
    ContainerDir,
    ContainerState,
    StateRoot,
    now,
    process_start_time,
)
from .trace import mark

if TYPE_CHECKING:
    from .networks import Attachment


class Monitor:
    """One run of a container, from mounting its rootfs to recording its exit status."""

    def __init__(
        self,
        root: StateRoot,
        cdir: ContainerDir,
        *,
        daemon: UnionRootfs | None = None,
        restart_count: int = 0,
        attached: bool = True,
    ) -> None:
        self.root = root
        self.restart_count = restart_count  # runtime.restart: 0 for a start by hand
        self.cdir = cdir
        self.daemon = daemon  # a union daemon forked early, or None to fork one here
        self.attached = attached  # the container's output goes to our stdout/stderr, and its log
        self.log: LogWriter | None = None
        self.output: dict[str, tuple[int, int]] = {}  # stream -> pipe (without -t)
        self.cfg = cdir.config
        self.relay = SignalRelay()
        self.sock: socket.socket | None = None
        self.ns_parent: int | None = None
        self.init_pid = 0
        self.master: int | None = None
        self.address = ""
        self.attach: Attachment | None = None  # the bridge network it joins, if any
        self.dns_upstreams: tuple[str, ...] = ()  # the bridge's DNS forwarder relays to these
        self.net_fd: int | None = None  # --network container:ID: that container's netns
        self.net_owner: ContainerDir | None = None  # ... and that container
        self.ports = publish.Reservation()  # published ports: held from _claim to the exit
        self.daemon_pid = 0
        self.rootfs: UnionRootfs | None = None
        self.limits = Limits(
            cdir.config.id,
            memory=cdir.config.memory,
            pids=cdir.config.pids_limit,
            cpu_quota=cdir.config.cpu_quota,
        )
        self.usernet: usernet.Helper | None = None  # pasta/slirp4netns (runtime.usernet)
        self.health_pid = 0  # the health checker (runtime.health), while it runs

    # -- the whole life

    def run(self, *, on_started: Callable[[], None] | None = None) -> int:
        """Start the container, wait for it, clean up; its exit code. StartError if it could
        not start (the recorded state is then put back as it was)."""
        self.relay.install()
        try:
            try:
                previous = self._claim()
            except BaseException:
                if self.daemon is not None:
                    self.daemon.stop()
                raise
            try:
                code = self._run(on_started)
            except BaseException as exc:
                self.relay.cleaning = True
                self._release(previous, exc)
                raise
            self.relay.cleaning = True
            try:
                self._record_exit(code)
            except OSError as exc:  # a full disk: the command's status still is the answer
                print(
                    f"strata: warning: could not record the exit of {self.cfg.name}:"
                    f" {exc.strerror}",
                    file=sys.stderr,
                    flush=True,
                )
            mark("exit recorded")
            return code
        except Interrupted as exc:
            raise StartError(
                f"interrupted by {signal.Signals(exc.signum).name}", 128 + exc.signum
            ) from None
        finally:
            self.relay.restore()

    def _claim(self) -> ContainerState:
        """Mark the container running (refusing one that is), allocate its address."""
        with self.root.lock():
            previous = reconcile(self.root, self.cdir)  # a dead rootfs mount is detached
            if previous.status == RUNNING:
                raise StartError(f"container {self.cfg.name} is already running", START_FAILED)
            if self.restart_count and previous.stopped_by_hand:  # runtime.restart: a stop won
                raise StartError(f"container {self.cfg.name} was stopped", START_FAILED)
            usernet.collect(self.cdir)  # a helper a monitor killed with SIGKILL left
            if self.cfg.network.startswith("container:"):
                self.net_fd = self._open_shared_network()
            # published ports (runtime.publish): one in use refuses the start before anything,
            # the address lease included
            self.ports = publish.reserve(publish.wanted(self.cfg))
            if self.cfg.network in usernet.MODES:  # hook: runtime.usernet; its helper binds
                self.ports.close()  # them: none may be inherited by the union daemon forked next
            self.attach = _attachment(self.root, self.cfg)  # hook: user networks
            if self.attach is not None:
                with network.host_lock():
                    self.address = network.lease_address(
                        self.attach.bridge, self.attach.net, self.cfg.id, self.attach.gw
                    )
            me = os.getpid()
            self.cdir.write_state(
                ContainerState(
                    status=RUNNING,
                    monitor_pid=me,
                    monitor_start=process_start_time(me) or 0,
                    started_at=now(),
                    ip=self.address,
                    ports=self.ports.texts(),
                    restart_count=self.restart_count,
                )
            )
        return previous

    def _open_shared_network(self) -> int:
        """`--network container:ID`: an fd on that container's network namespace, which must
        be running (lock held); its hostname, hosts and resolv.conf become ours."""
        ref = self.cfg.network.removeprefix("container:")
        try:
            other = self.root.find(ref)
        except UsageError:
            raise StartError(
                f"--network container:{ref[:12]}: no such container", START_FAILED
            ) from None
        state = other.effective_state()
        if state.status != RUNNING or not state.init_pid:
            raise StartError(f"--network: container {other.name} is not running", START_FAILED)
        try:
            fd = os.open(f"/proc/{state.init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise StartError(
                f"--network: cannot open the network of {other.name}: {exc.strerror}", START_FAILED
            ) from None
        self.net_owner = other
        return fd

    def _release(self, previous: ContainerState, exc: BaseException) -> None:
        self._leave_usernet()
        with contextlib.suppress(OSError), self.root.lock():
            self._leave_bridge()
            if self.cdir.path.exists():
                previous = previous.replace(ports=())  # _leave_bridge took their rules
                self.cdir.write_state(previous if previous.status != RUNNING else ContainerState())

    def _leave_bridge(self) -> None:
        """Release this container's address, its DNS name and its published ports' rules
        (lock held; its veth goes with its network namespace). Before the exit is recorded, so
        that whoever waits for the exit finds the host clean. The bridge stays (`strata network
        prune`)."""
        if self.attach is None or os.geteuid() != 0 or not self.address:
            return
        try:
            network.leave(self.cfg.id, self.address, self.attach.bridge)
        except (OSError, UsageError) as exc:
            print(f"strata: warning: bridge clean-up: {exc}", file=sys.stderr, flush=True)
        if self.attach.defn is not None:  # hook: user networks, its DNS records (and server)
            from .networks import update_dns

            try:
                update_dns(self.root, self.attach.defn, exclude=self.cfg.id)
            except (OSError, UsageError) as exc:
                print(f"strata: warning: DNS clean-up: {exc}", file=sys.stderr, flush=True)
        self._unpublish()
        self._dns_tidy()

    def _unpublish(self) -> None:
        """Remove the published ports' rules (also what dead containers left), then let the
        ports go (lock held)."""
        try:
            publish.tidy(self.root, exclude=self.cfg.id)
        except (OSError, UsageError) as exc:
            publish.warn(f"published ports clean-up: {exc}")
        finally:
            self.ports.close()

    def _dns_tidy(self) -> None:  # hook: runtime.dns, the bridge's DNS forwarder
        if not self.dns_upstreams:  # not one of its users (others' are collected by theirs)
            return
        from .dns import dns_tidy

        try:
            dns_tidy(self.root, exclude=self.cfg.id, stop=False)
        except (OSError, UsageError) as exc:
            print(f"strata: warning: DNS forwarder clean-up: {exc}", file=sys.stderr, flush=True)

    def _leave_usernet(self) -> None:
        """Stop the pasta/slirp4netns helper (runtime.usernet), before the exit is recorded."""
        if self.usernet is not None:
            self.usernet.stop()
            self.usernet = None

    def _record_exit(self, code: int) -> None:
        self._leave_usernet()
        with self.root.lock():
            self._leave_bridge()
            state = self.cdir.read_state()
            self.cdir.write_state(
                state.replace(
                    status=EXITED,
                    exit_code=code,
                    finished_at=now(),
                    init_pid=0,
                    init_start=0,
                    daemon_pid=0,
                    ip="",
                    ports=(),
                    paused=False,
                )
            )

    def _run(self, on_started: Callable[[], None] | None) -> int:
        cfg = self.cfg
        if cfg.rootless and not namespaces.in_user_namespace():
            namespaces.enter_user_namespace(id_map_of(cfg))
        self._write_etc_files()
        mark("etc files written")
        with contextlib.ExitStack() as stack:
            rootfs = self.daemon or UnionRootfs(privileged=not cfg.rootless)
            self.daemon = None
            stack.callback(rootfs.stop)
            stack.callback(self.limits.remove)  # after the container's processes are gone
            rootfs.mount(
                union_config(self.cdir), self.cdir.rootfs, log_path=self.cdir.sub("union.log")
            )
            plan = self._plan()
            rootfs.wait_mounted()
            mark("rootfs mounted")
            stack.callback(self._reap_container)
            self.rootfs = rootfs
            self.daemon_pid = rootfs.pid or 0
            stack.callback(self._close_output)
            self._open_output()
            self._spawn(plan)
            self._handshake(self.daemon_pid)
            mark("command started")
            self._start_health(stack)
            if on_started is not None:
                on_started()
            status = self._wait()
            mark("container exited")
            code = exit_code(status)
            if self.relay.emulated is not None and code == 128 + signal.SIGKILL:
                code = 128 + self.relay.emulated
            return code
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_health(self, stack: contextlib.ExitStack) -> None:
        """hook: runtime.health, the HEALTHCHECK's checker (a child, off the monitor's path);
        stopped first on the way out, before the exit is recorded."""
        from . import health

        if health.probe_argv(self.cfg.healthcheck, self.cfg.shell) is None:
            return
        try:
            self.health_pid = health.spawn_checker(self.root, self.cdir)
        except OSError as exc:
            print(f"strata: warning: no health checks: {exc.strerror}", file=sys.stderr, flush=True)
            return
        stack.callback(self._stop_health)

    def _stop_health(self) -> None:
        from . import health

        pid, self.health_pid = self.health_pid, 0
        health.stop_checker(self.cdir, pid)

    # -- before the fork

    def _write_etc_files(self) -> None:
        cfg = self.cfg
        if self.net_owner is not None:  # the network's owner's files, as docker shares them
            for name in ("hostname", "hosts", "resolv.conf"):
                tmp = self.cdir.sub(f".{name}.tmp")
                shutil.copyfile(self.net_owner.sub(name), tmp)
                os.rename(tmp, self.cdir.sub(name))
            return
        extra = []
        for entry in cfg.add_hosts:
            host, ip = network.split_add_host(entry)
            if ip == network.HOST_GATEWAY:
                ip = (
                    str(self.attach.gw)
                    if self.attach
                    else usernet.host_gateway(cfg.network)
                    or network.host_gateway(cfg.network, None)
                )
            extra.append((host, ip))
        host_resolv = network.host_resolv_conf()
        if self.attach is not None and self.attach.defn is not None:  # hook: user networks
            from .networks import resolv_conf  # the network's own server, which forwards

            resolv = resolv_conf(
                str(self.attach.gw),
                dns=cfg.dns,
                search=cfg.dns_search,
                options=cfg.dns_options,
                host=host_resolv,
            )
        else:
            forwarder = ""
            if self.attach is not None and not cfg.dns:  # hook: runtime.dns, a stub-only host
                self.dns_upstreams = network.bridge_dns_upstreams(host_resolv)
                forwarder = str(self.attach.gw) if self.dns_upstreams else ""
            resolv = network.resolv_conf(
                cfg.network,
                dns=cfg.dns or usernet.default_dns(cfg.network),
                search=cfg.dns_search,
                options=cfg.dns_options,
                host=host_resolv,
                forwarder=forwarder,
            )
        files = {
            "hostname": f"{cfg.hostname}\n",
            "hosts": network.hosts_file(
                cfg.hostname, self.address or None, name=cfg.name, extra=extra
            ),
            "resolv.conf": resolv,
        }
        for name, text in files.items():
            path = self.cdir.sub(name)
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            os.rename(tmp, path)

    def _plan(self) -> Plan:
        cfg = self.cfg
        kinds = [Namespace.MNT, Namespace.UTS, Namespace.IPC, Namespace.PID]
        own_network = cfg.network != "host" and self.net_fd is None
        if own_network:
            kinds.append(Namespace.NET)
        self.relay.is_namespace_init = not cfg.init
        return Plan(
            cdir=self.cdir,
            monitor_pid=os.getpid(),
            flags=namespaces.flags_of(kinds),
            own_network=own_network,
            join_network=self.net_fd,
            wait_for_network=self.attach is not None,
            devpts_gid=None if cfg.rootless else 5,
            process=ProcessSpec(
                argv=cfg.argv,
                env=cfg.env,
                workdir=cfg.workdir,
                user=cfg.user,
                tty=cfg.tty,
                interactive=cfg.interactive,
                groups=cfg.group_add,
            ),
            init=cfg.init,
            can_setgroups=namespaces.setgroups_allowed(),
            confinement=confinement_of(self.root, self.cdir),
            usernet=cfg.network in usernet.MODES,
        )

    def _spawn(self, plan: Plan) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                parent_sock.close()
                self.ports.close()  # the published ports are the monitor's to hold
                for fd, (read, write) in zip((1, 2), self.output.values(), strict=False):
                    os.dup2(write, fd)
                    # Only the monitor reads: a write into a pipe it stopped reading fails.
                    os.close(read)
                ns_parent(plan, child_sock)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child_sock.close()
        for stream, (read, write) in self.output.items():
            os.close(write)
            self.output[stream] = (read, -1)
        if self.net_fd is not None:  # the ns parent has entered it
            os.close(self.net_fd)
            self.net_fd = None
        self.sock = parent_sock
        self.ns_parent = pid

    def _open_output(self) -> None:
        """The log, and (without -t: with it the pty carries both) a pipe for each of the
        container's stdout and stderr, which `_wait` copies to the log (and to ours)."""
        self.log = LogWriter(
            self.cdir.sub(LOG), max_size=self.cfg.log_max_size, max_file=self.cfg.log_max_file
        )
        if not self.cfg.tty:
            for stream in STREAMS:
                self.output[stream] = os.pipe2(os.O_CLOEXEC)

    def _close_output(self) -> None:
        for read, write in self.output.values():
            for fd in (read, write):
                if fd >= 0:
                    os.close(fd)
        self.output = {}
        if self.log is not None:
            self.log.close()
            self.log = None

    def _sink(self, stream: str) -> console.Sink:
        """Where the container's `stream` goes: its log, and our own stream when attached."""
        log, ours = self.log, (1 if stream == "stdout" else 2)
        assert log is not None

        def sink(data: bytes) -> bool:
            log.write(stream, data)
            return console.write_all(ours, data) if self.attached else True

        return sink

    # -- start-up conversation

    def _expect(self) -> tuple[str, list[int]]:
        assert self.sock is not None
        msg, fds = recv(self.sock)
        if msg is None:
            raise StartError("the container died while starting", START_FAILED)
        check_error(msg)
        return msg, fds

    def _handshake(self, daemon_pid: int) -> None:
        """`pid` (from the ns parent) and `ready` (from PID 1) may come in either order, except
        with a bridge or pasta/slirp4netns, where PID 1 waits for `net` after its mounts and
        pivot_root: the monitor, once it has the pid, connects the namespace meanwhile."""
        assert self.sock is not None
        assert self.ns_parent is not None
        ready: list[int] | None = None
        while not self.init_pid or ready is None:
            msg, fds = self._expect()
            if msg.startswith("pid ") and not self.init_pid:
                self.init_pid = int(msg.split()[1])
                self._record_pids(daemon_pid)
            elif msg == "ready" and ready is None:
                ready = fds
            else:
                raise StartError(f"unexpected message from the container: {msg!r}")
        if ready:
            self.master = ready[0]
            self.relay.master = self.master
            console.copy_window_size(sys.stdin.fileno(), self.master)
        # From here on signals go to the container: set the target before "go" so that an
        # interrupt cannot abort a command that already runs.
        self.relay.target = self.init_pid
        send(self.sock, "go")
        last, _ = recv(self.sock)
        self.sock.close()
        self.sock = None
        if last is not None:
            self.relay.target = None
            check_error(last)

    def _record_pids(self, daemon_pid: int) -> None:
        assert self.sock is not None
        assert self.ns_parent is not None
        with self.root.lock():
            state = self.cdir.read_state()
            self.cdir.write_state(
                state.replace(
                    init_pid=self.init_pid,
                    init_start=process_start_time(self.init_pid) or 0,
                    daemon_pid=daemon_pid,
                )
            )
            if (at := self.attach) is not None:
                with network.host_lock():
                    network.ensure_bridge(at.net, at.bridge, at.gw)
                    network.connect_host_side(self.cfg.id, self.ns_parent, at.bridge)
                network.connect_container_side(self.ns_parent, self.address, at.net, at.gw)
                mark("bridge connected")
                veth = network.veth_name(self.cfg.id)
                publish.start(
                    self.root, self.cfg, self.address, at.net, at.bridge, veth, self.ports
                )
                mark("ports forwarded")
                if at.defn is not None:  # hook: user networks, names through runtime.dns
                    from .networks import update_dns

                    update_dns(self.root, at.defn, start=True)
                elif self.dns_upstreams:  # hook: runtime.dns, before the command runs
                    from .dns import start_bridge_forwarder

                    mark("dns forwarder wanted")
                    start_bridge_forwarder(at.net, self.dns_upstreams, self.cfg.id)
                    mark("dns forwarder ready")
        if self.limits.wanted():
            for warning in self.limits.apply(self.init_pid):
                print(f"strata: warning: {warning}", file=sys.stderr, flush=True)
        self.limits.join_freezer(self.init_pid)  # hook: strata pause (runtime.pause)
        if self.cfg.network in usernet.MODES:  # hook: runtime.usernet, the namespace exists
            mark("network helper starting")
            self.usernet = usernet.start(
                self.cfg.network, self.cdir, self.ns_parent, self.ports.mappings
            )
            mark("network helper ready")
        if self.attach is not None or self.usernet is not None:
            send(self.sock, "net")

    # -- while it runs

    def _wait(self) -> int:
        """Wait for the container (relaying its pty with -t); its wait status. Should the union
        daemon die first, the container is killed: its root is gone."""
        assert self.ns_parent is not None
        result: list[int] = []

        def finished(block: bool = False) -> bool:
            while not result:
                try:
                    pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
                except ChildProcessError:
                    return True
                if pid == 0:
                    return False
                if pid == self.ns_parent:
                    result.append(status)
                elif pid == self.daemon_pid:
                    self._daemon_died(status)
                elif self.usernet is not None and pid == self.usernet.pid:
                    self.usernet.reaped = True  # died early: its pid must not be signalled
                elif pid == self.health_pid:
                    self.health_pid = 0  # the checker gave up (monitor.log says why)
            return True

        if self.master is not None:  # -t: the pty carries stdout and stderr
            sources = {self.master: self._sink("stdout")}
        else:
            sources = {read: self._sink(stream) for stream, (read, _w) in self.output.items()}
        self.output = {}  # (the relay closes them)
        stdin = sys.stdin.fileno() if self.cfg.interactive and self.master is not None else None
        with (
            console.raw_terminal(sys.stdin.fileno())
            if stdin is not None and self.attached
            else contextlib.nullcontext()
        ):
            console.relay(sources, stdin=stdin, master=self.master, finished=finished)
        self.master = self.relay.master = None
        self.ns_parent = None
        return result[0] if result else 128 + signal.SIGKILL

    def _daemon_died(self, status: int) -> None:
        self.daemon_pid = 0
        if self.rootfs is not None:
            self.rootfs.reaped()  # its pid may be reused: never signal it again
        print(
            f"strata: the union daemon died ({exit_code(status)}); stopping the container",
            file=sys.stderr,
            flush=True,
        )
        for target in (self.init_pid, self.ns_parent):
            if target:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)

    def _reap_container(self) -> None:
        """After a failed start (or an exception): kill what was forked and reap it."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.master is not None:
            os.close(self.master)
            self.master = None
        pid, self.ns_parent = self.ns_parent, None
        self.relay.target = None
        if pid is None:
            return
        for target in (self.init_pid, pid):
            if target:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(target, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _attachment(root: StateRoot, cfg: ContainerConfig) -> Attachment | None:
    """The bridge network the container joins (default or user network), or None."""
    if cfg.network != "bridge" and not cfg.network_id:
        return None
    from .networks import attachment

    return attachment(root, cfg)


def reconcile(root: StateRoot, cdir: ContainerDir) -> ContainerState:
    """Write down that a container whose monitor died is exited, and detach a dead rootfs
    mount it left (call with the lock held)."""
    recorded = cdir.read_state()
    state = cdir.effective_state()
    if state != recorded:
        state = state.replace(init_pid=0, init_start=0, daemon_pid=0, ip="")
        cdir.write_state(state)
    if state.status != RUNNING and os.geteuid() == 0:
        detach_if_mounted(cdir.rootfs)
    return state
