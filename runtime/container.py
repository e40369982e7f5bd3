"""Containers: create one, run it (the calling process is its monitor), join it, stop it.

The processes of a running container, and why each exists:

    monitor    `strata run` itself (or, with -d, a daemon forked from it): waits for the
    │          container, forwards signals, relays a pty, unmounts and records the exit status.
    ├─ union daemon   forked, mounts the rootfs and serves it; lives in the monitor's mount
    │                 namespace (the host's, or the rootless user+mount namespace).
    └─ ns parent      forked, unshares the mount, UTS, IPC, [network] and PID namespaces and forks
       │              the container's PID 1 (unshare(CLONE_NEWPID) applies to children only);
       │              then only waits and passes PID 1's status on.
       └─ PID 1   makes `/` rslave, binds the rootfs on itself, mounts /proc, /dev, /sys, the
                  /etc files and volumes, pivot_roots, detaches the old root, then execs the
                  command (or, with --init, runs the tiny init, which forks the command).

Each child gets PR_SET_PDEATHSIG from its parent, so killing the monitor with SIGKILL kills the
container and makes the daemon unmount. The monitor and PID 1 talk over a SOCK_SEQPACKET pair:
`pid N` (PID 1's host pid), `net` (bridge ready), `ready` (with the pty master attached), `go`,
`error CODE MESSAGE`; end-of-file after `go` means the command was exec'd (the socket is
close-on-exec).

A container gets strata's own top lower layer (`init/`): the mount points the runtime needs
(/proc, /sys, /dev, /etc/{hostname,hosts,resolv.conf}, volume targets), with the image's own
ownership and modes where the image has them. Docker does the same ("-init" layer): the container's
upper layer only ever holds what the container itself wrote, and `--read-only` works on images
that lack a mount point.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final, NoReturn

from unionfs import libc
from unionfs.config import UnionConfig
from unionfs.errors import UsageError

from . import capabilities, console, mounts, namespaces, network, security
from .cgroups import Limits
from .images import ImageSpec
from .init import FORWARDED, deliver, exit_code, run_init
from .namespaces import IdMap, IdRange, Namespace
from .network import DEFAULT_SUBNET
from .process import ExecError, ProcessSpec, exec_process
from .rootfs import OneShotReport, UnionRootfs, detach_if_mounted, redirect_stdio
from .security import Confinement, SecurityOptions
from .state import (
    CREATED,
    EXITED,
    RUNNING,
    ContainerConfig,
    ContainerDir,
    ContainerState,
    StateRoot,
    Volume,
    now,
    process_alive,
    process_start_time,
    remove_tree,
)
from .trace import mark

START_FAILED: Final = 125


class StartError(UsageError):
    """The container could not be started (nothing ran); `exit_code` as Docker's: 125 for the
    runtime, 126/127 for a command that cannot be run or does not exist."""

    def __init__(self, message: str, exit_code: int = START_FAILED) -> None:
        super().__init__(message, exit_code)


# ---------------------------------------------------------------------------------------------
# create


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """Everything `create`/`run` was asked for, already checked for syntax."""

    image: ImageSpec
    argv: tuple[str, ...]  # empty: the image's entrypoint + cmd
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()  # -e and --env-file, K=V, in order
    workdir: str = ""
    user: str | None = None
    hostname: str = ""
    name: str = ""
    volumes: tuple[Volume, ...] = ()
    network: str = "host"
    subnet: str = DEFAULT_SUBNET
    read_only: bool = False
    tty: bool = False
    interactive: bool = False
    init: bool = False
    auto_remove: bool = False
    memory: int = 0
    pids_limit: int = 0
    security: SecurityOptions = field(default_factory=SecurityOptions)
    # Who runs it, decided before the caller may have entered a user namespace (where it is
    # root): None means "look at our own ids now".
    rootless: bool | None = None
    id_map: IdMap | None = None


def rootless_map() -> IdMap:
    return namespaces.rootless_id_map(os.getuid(), os.getgid(), namespaces.current_user_name())


def container_config(root: StateRoot, req: CreateRequest, cid: str) -> ContainerConfig:
    from .process import merge_env

    image = req.image.config
    entrypoint = req.entrypoint if req.entrypoint is not None else image.entrypoint
    argv = (*entrypoint, *(req.argv or (image.cmd if req.entrypoint is None else ())))
    if not argv:
        raise UsageError("no command given and the image defines none", 125)
    hostname = req.hostname or cid[:12]
    env = merge_env(
        image.env,
        [f"HOSTNAME={hostname}"],
        ["TERM=xterm"] if req.tty else [],
        req.env,
    )
    rootless = req.rootless if req.rootless is not None else os.geteuid() != 0
    id_map: dict[str, list[list[int]]] = {}
    if rootless:
        id_map = (req.id_map or rootless_map()).to_json()
    sec = req.security
    return ContainerConfig(
        id=cid,
        name=req.name or f"strata_{cid[:8]}",
        created=now(),
        image=req.image.ref,
        layers=tuple(str(p) for p in req.image.layers),
        argv=argv,
        env=env,
        workdir=req.workdir or image.workdir or "/",
        user=req.user if req.user is not None else image.user,
        hostname=hostname,
        network=req.network,
        subnet=req.subnet if req.network == "bridge" else "",
        volumes=req.volumes,
        read_only=req.read_only,
        tty=req.tty,
        interactive=req.interactive,
        init=req.init,
        auto_remove=req.auto_remove,
        rootless=rootless,
        id_map=id_map,
        memory=req.memory,
        pids_limit=req.pids_limit,
        capabilities=tuple(capabilities.sorted_names(sec.capabilities())),
        privileged=sec.privileged,
        cap_add=sec.cap_add,
        cap_drop=sec.cap_drop,
        security_opt=sec.security_opt,
        seccomp=sec.seccomp_mode,
        seccomp_origin=sec.profile_file or "",
        no_new_privileges=sec.no_new_privileges,
        mask_paths=sec.mask_paths and not sec.privileged,
    )


def confinement_of(root: StateRoot, cdir: ContainerDir) -> Confinement:
    """What the container's processes apply to themselves before exec (runtime.security)."""
    cfg = cdir.config
    return security.confinement(
        caps=capabilities.recorded(cfg.capabilities),
        seccomp=cfg.seccomp,
        no_new_privileges=cfg.no_new_privileges,
        container_dir=cdir.path,
        cache_dir=root.seccomp_cache,
    )


def _check_profile(root: StateRoot, req: CreateRequest) -> bytes | None:
    """A --security-opt seccomp=FILE profile, read and compiled once to refuse a bad one before
    anything is created; its bytes (None without a profile file)."""
    sec = req.security
    path = sec.profile_file
    if path is None:
        return None
    from . import seccomp as sc

    profile, raw = sc.read_profile(path)
    sc.program(profile, sec.capabilities(), root.seccomp_cache, where=path)
    return raw


def create(root: StateRoot, req: CreateRequest) -> ContainerDir:
    """Make a container (its dir, writable layer, init layer); nothing runs yet."""
    with root.lock():
        # The image was resolved before the lock was taken: an `rmi` may have removed it since.
        for layer in req.image.layers:
            if not layer.is_dir():
                raise UsageError(f"image {req.image.ref}: layer {layer} is gone (removed?)", 125)
        if req.name:
            root.check_name(req.name)
        profile = _check_profile(root, req)
        cid = root.new_id()
        config = container_config(root, req, cid)
        staging = root.staging_dir(cid)
        try:
            staging.mkdir(mode=0o700)
            for sub in ("rootfs",) if req.read_only else ("rootfs", "upper", "work"):
                (staging / sub).mkdir(mode=0o755 if sub != "work" else 0o700)
            build_init_layer(staging / "init", req.image.layers, req.volumes)
            for name in mounts.ETC_FILES:
                (staging / name).touch(mode=0o644)
            if profile is not None:
                (staging / security.PROFILE_FILE).write_bytes(profile)
            return root.commit(staging, config)
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(staging)
            raise


def _image_stat(layers: Sequence[Path], rel: str) -> os.stat_result | None:
    """The path's attributes in the topmost layer that has it (whiteouts are not considered:
    this only picks modes and owners for strata's own mount points)."""
    for layer in layers:
        try:
            return os.lstat(layer / rel)
        except OSError:
            continue
    return None


def build_init_layer(init: Path, layers: Sequence[Path], volumes: Sequence[Volume]) -> None:
    """strata's top lower layer: mount points, with the image's owner/mode where it has them."""
    dirs = list(mounts.MOUNTPOINT_DIRS)
    files = list(mounts.MOUNTPOINT_FILES)
    for volume in volumes:
        rel = os.path.normpath(volume.target).lstrip("/")
        (dirs if os.path.isdir(volume.source) else files).append(rel)
    init.mkdir(mode=0o755)
    root_st = _image_stat(layers, ".")
    if root_st is not None:
        _copy_attrs(init, root_st)
    made: set[str] = set()

    def make_dir(rel: str) -> None:
        if not rel or rel in made:
            return
        make_dir(os.path.dirname(rel))
        made.add(rel)
        path = init / rel
        st = _image_stat(layers, rel)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            st = None  # a symlink or file in the image: strata's dir shadows it (as Docker's)
        path.mkdir(mode=0o755, exist_ok=True)
        if st is not None:
            _copy_attrs(path, st)

    for rel in dirs:
        make_dir(rel)
    for rel in files:
        make_dir(os.path.dirname(rel))
        path = init / rel
        if not path.exists():
            path.touch(mode=0o644)


def _copy_attrs(path: Path, st: os.stat_result) -> None:
    with contextlib.suppress(OSError):
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    with contextlib.suppress(OSError):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def union_config(cdir: ContainerDir) -> UnionConfig:
    cfg = cdir.config
    lowers = (cdir.sub("init"), *(Path(p) for p in cfg.layers))
    if cfg.read_only:
        return UnionConfig(lowers=lowers)
    return UnionConfig(lowers=lowers, upper=cdir.sub("upper"), work=cdir.sub("work"))


def id_map_of(cfg: ContainerConfig) -> IdMap:
    def ranges(key: str) -> tuple[IdRange, ...]:
        return tuple(IdRange(*r) for r in cfg.id_map.get(key, []))

    return IdMap(uids=ranges("uids"), gids=ranges("gids"))


# ---------------------------------------------------------------------------------------------
# signals in the monitor


class _Interrupted(BaseException):
    """A SIGINT/SIGTERM/SIGHUP while the container was still starting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalRelay:
    """The monitor's signal handlers: before the container runs, an interrupt aborts the start;
    while it runs, signals go to its PID 1 (SIGWINCH resizes the pty instead); afterwards they
    are ignored, so that clean-up finishes."""

    def __init__(self) -> None:
        self.target: int | None = None
        self.is_namespace_init = True
        self.emulated: int | None = None
        self.master: int | None = None
        self.cleaning = False
        self._saved: dict[int, object] = {}

    def install(self) -> None:
        for sig in FORWARDED:
            self._saved[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._saved.clear()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.cleaning:
            return
        if self.target is None:
            if signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                raise _Interrupted(signum)
            return
        if signum == signal.SIGWINCH and self.master is not None:
            console.copy_window_size(sys.stdin.fileno(), self.master)
            return
        if deliver(self.target, signum, is_namespace_init=self.is_namespace_init):
            self.emulated = signum


# ---------------------------------------------------------------------------------------------
# control messages between the monitor and the container's PID 1


def _send(sock: socket.socket, text: str, fds: Sequence[int] = ()) -> None:
    with contextlib.suppress(OSError):
        if fds:
            socket.send_fds(sock, [text.encode()], list(fds))
        else:
            sock.send(text.encode())


def _recv(sock: socket.socket) -> tuple[str | None, list[int]]:
    """One message (None at end of file) and the fds that came with it."""
    msg, fds, _, _ = socket.recv_fds(sock, 4096, 4)
    return (msg.decode(errors="replace") if msg else None), fds


def _check_error(msg: str) -> None:
    if msg.startswith("error "):
        code, _, text = msg[6:].partition(" ")
        raise StartError(text, int(code) if code.isdigit() else START_FAILED)


# ---------------------------------------------------------------------------------------------
# the container's PID 1 (and its parent), in the forked children


@dataclass(slots=True)
class _Plan:
    """What the container's processes need, computed in the monitor before forking (nothing
    may be imported or looked up on the host after pivot_root)."""

    cdir: ContainerDir
    monitor_pid: int
    flags: int
    own_network: bool
    bridge: tuple[str, ipaddress.IPv4Network] | None
    devpts_gid: int | None
    process: ProcessSpec
    init: bool
    can_setgroups: bool
    confinement: Confinement


def _ns_parent(plan: _Plan, sock: socket.socket) -> NoReturn:
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
            libc.unshare(plan.flags)
        except OSError as exc:
            _send(sock, f"error {START_FAILED} cannot create namespaces: {exc.strerror}")
            os._exit(code)
        pid = os.fork()
        if pid == 0:
            _pid1(plan, sock)
        _send(sock, f"pid {pid}")
        sock.close()
        _, status = os.waitpid(pid, 0)
        code = exit_code(status)
    finally:
        os._exit(code)


def _pid1(plan: _Plan, sock: socket.socket) -> NoReturn:
    """The container's PID 1: namespaces are set; build the root, then become the command."""
    code = START_FAILED

    def report(status: int, message: str) -> None:
        _send(sock, f"error {status} {message}")

    try:
        libc.set_pdeathsig(signal.SIGKILL)
        os.setsid()
        slave = _prepare_root(plan, sock)
        msg, _ = _recv(sock)
        if msg != "go":
            os._exit(code)
        if plan.init:
            code = run_init(
                lambda: _fork_command(plan, sock, slave), confine=lambda: _confine_init(plan)
            )
            os._exit(code)
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


def _fork_command(plan: _Plan, sock: socket.socket, slave: int | None) -> int:
    pid = os.fork()
    if pid == 0:
        libc.set_dumpable(True)  # the command's process; exec makes it so anyway
        exec_process(
            plan.process,
            report=lambda status, message: _send(sock, f"error {status} {message}"),
            slave=slave,
            handled_signals=FORWARDED,
            can_setgroups=plan.can_setgroups,
            confinement=plan.confinement,
        )
    sock.close()
    if slave is not None:
        os.close(slave)
    return pid


INIT_TITLE: Final = "strata-init"


def _hide_init() -> None:
    """--init's PID 1 is this Python process: its command line and environment would show the
    host's (the interpreter, the venv, strata's arguments). They are overwritten, and the
    process is made non-dumpable, which closes its /proc files (exe, maps, environ, fd) and
    ptrace to the container's processes."""
    libc.set_dumpable(False)
    libc.scrub_command_line(INIT_TITLE)
    libc.set_name(INIT_TITLE)


def _confine_init(plan: _Plan) -> None:
    """The init, confined as the container's root: after it has forked the command, which
    confines itself (it may need to switch users first)."""
    plan.confinement.enter()
    plan.confinement.finish(0)


def _prepare_root(plan: _Plan, sock: socket.socket) -> int | None:
    """Mounts, pivot_root, and the pty; tell the monitor `ready`. Returns the pty slave."""
    cdir = plan.cdir
    rootfs = cdir.rootfs
    mark("pid 1 forked")
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_SLAVE)
    libc.sethostname(cdir.config.hostname)
    if plan.own_network:
        network.loopback_up()
    if plan.bridge is not None:
        msg, _ = _recv(sock)
        if msg != "net":
            os._exit(START_FAILED)
        network.connect_container_side(*plan.bridge)
    libc.mount(rootfs, rootfs, None, libc.MS_BIND | libc.MS_REC)
    cfg = cdir.config
    mounts.mount_all(
        rootfs,
        etc_dir=cdir.path,
        volumes=[mounts.BindMount(v.source, v.target, v.read_only) for v in cfg.volumes],
        devpts_gid=plan.devpts_gid,
        privileged=cfg.privileged,
        masked=cfg.mask_paths,
    )
    os.chdir(rootfs)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)  # the old root, stacked on top by pivot_root(".", ".")
    os.chdir("/")
    mark("pivot_root done")
    if plan.init:
        _hide_init()
    if plan.process.tty:
        master, slave = os.openpty()
        mounts.bind_console(Path("/"), os.ttyname(slave))
        _send(sock, "ready", [master])
        os.close(master)
        return slave
    _send(sock, "ready")
    return None


# ---------------------------------------------------------------------------------------------
# the monitor


def _setgroups_allowed(pid: str = "self") -> bool:
    """Whether setgroups(2) is allowed in the user namespace of `pid` (no if "deny" was written
    there, as a process mapping only its own ids must)."""
    try:
        with open(f"/proc/{pid}/setgroups") as f:
            return f.read().strip() == "allow"
    except OSError:
        return True


class Monitor:
    """One run of a container, from mounting its rootfs to recording its exit status."""

    def __init__(
        self, root: StateRoot, cdir: ContainerDir, *, daemon: UnionRootfs | None = None
    ) -> None:
        self.root = root
        self.cdir = cdir
        self.daemon = daemon  # a union daemon forked early, or None to fork one here
        self.cfg = cdir.config
        self.relay = SignalRelay()
        self.sock: socket.socket | None = None
        self.ns_parent: int | None = None
        self.init_pid = 0
        self.master: int | None = None
        self.address = ""
        self.daemon_pid = 0
        self.rootfs: UnionRootfs | None = None
        self.limits = Limits(cdir.config.id, memory=cdir.config.memory, pids=cdir.config.pids_limit)

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
        except _Interrupted as exc:
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
            if self.cfg.network == "bridge":
                used = [
                    c.read_state().ip
                    for c in self.root.containers()
                    if c.id != self.cfg.id and c.effective_state().status == RUNNING
                ]
                self.address = network.allocate_address(network.parse_subnet(self.cfg.subnet), used)
            me = os.getpid()
            self.cdir.write_state(
                ContainerState(
                    status=RUNNING,
                    monitor_pid=me,
                    monitor_start=process_start_time(me) or 0,
                    started_at=now(),
                    ip=self.address,
                )
            )
        return previous

    def _release(self, previous: ContainerState, exc: BaseException) -> None:
        with contextlib.suppress(OSError), self.root.lock():
            if self.cdir.path.exists():
                self.cdir.write_state(previous if previous.status != RUNNING else ContainerState())

    def _record_exit(self, code: int) -> None:
        with self.root.lock():
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
            self._spawn(plan)
            self._handshake(self.daemon_pid)
            mark("command started")
            if on_started is not None:
                on_started()
            status = self._wait()
            mark("container exited")
            code = exit_code(status)
            if self.relay.emulated is not None and code == 128 + signal.SIGKILL:
                code = 128 + self.relay.emulated
            return code
        raise AssertionError("unreachable")  # pragma: no cover

    # -- before the fork

    def _write_etc_files(self) -> None:
        cfg = self.cfg
        files = {
            "hostname": f"{cfg.hostname}\n",
            "hosts": network.hosts_file(cfg.hostname, self.address or None),
            "resolv.conf": network.resolv_conf(cfg.network),
        }
        for name, text in files.items():
            path = self.cdir.sub(name)
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(text)
            os.chmod(tmp, 0o644)
            os.rename(tmp, path)

    def _plan(self) -> _Plan:
        cfg = self.cfg
        kinds = [Namespace.MNT, Namespace.UTS, Namespace.IPC, Namespace.PID]
        own_network = cfg.network != "host"
        if own_network:
            kinds.append(Namespace.NET)
        bridge = None
        if cfg.network == "bridge":
            bridge = (self.address, network.parse_subnet(cfg.subnet))
        self.relay.is_namespace_init = not cfg.init
        return _Plan(
            cdir=self.cdir,
            monitor_pid=os.getpid(),
            flags=namespaces.flags_of(kinds),
            own_network=own_network,
            bridge=bridge,
            devpts_gid=None if cfg.rootless else 5,
            process=ProcessSpec(
                argv=cfg.argv,
                env=cfg.env,
                workdir=cfg.workdir,
                user=cfg.user,
                tty=cfg.tty,
                interactive=cfg.interactive,
            ),
            init=cfg.init,
            can_setgroups=_setgroups_allowed(),
            confinement=confinement_of(self.root, self.cdir),
        )

    def _spawn(self, plan: _Plan) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - child
                parent_sock.close()
                _ns_parent(plan, child_sock)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child_sock.close()
        self.sock = parent_sock
        self.ns_parent = pid

    # -- start-up conversation

    def _expect(self) -> tuple[str, list[int]]:
        assert self.sock is not None
        msg, fds = _recv(self.sock)
        if msg is None:
            raise StartError("the container died while starting", START_FAILED)
        _check_error(msg)
        return msg, fds

    def _handshake(self, daemon_pid: int) -> None:
        """`pid` (from the ns parent) and `ready` (from PID 1) may come in either order, except
        with a bridge, where PID 1 waits for `net`, which needs the pid."""
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
        _send(self.sock, "go")
        last, _ = _recv(self.sock)
        self.sock.close()
        self.sock = None
        if last is not None:
            self.relay.target = None
            _check_error(last)

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
            if self.cfg.network == "bridge":
                net = network.parse_subnet(self.cfg.subnet)
                network.connect_host_side(net, self.cfg.id, self.ns_parent)
        if self.limits.wanted():
            for warning in self.limits.apply(self.init_pid):
                print(f"strata: warning: {warning}", file=sys.stderr, flush=True)
        if self.cfg.network == "bridge":
            _send(self.sock, "net")

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
            return True

        if self.master is None:
            finished(block=True)
        else:
            stdin = sys.stdin.fileno() if self.cfg.interactive else None
            with console.raw_terminal(sys.stdin.fileno()) if stdin is not None else _nothing():
                console.relay(
                    self.master, stdin=stdin, stdout=sys.stdout.fileno(), finished=finished
                )
            os.close(self.master)
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


@contextlib.contextmanager
def _nothing() -> Iterator[None]:
    yield


# ---------------------------------------------------------------------------------------------
# lifecycle commands


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
    chunks = []
    while chunk := os.read(read_fd, 4096):  # until the report's newline: the container's
        chunks.append(chunk)  # processes inherited the pipe (not across exec, but they fork)
        if b"\n" in chunk:
            break
    os.close(read_fd)
    report = b"".join(chunks).decode(errors="replace")
    if report.startswith("ok"):
        return
    code, _, message = report.partition(" ")
    if remove_on_failure:
        with contextlib.suppress(UsageError):
            remove(root, cdir, force=True)
    raise StartError(
        message.strip() or "the container's monitor died", int(code) if code.isdigit() else 125
    )


def _monitor_daemon(root: StateRoot, cdir: ContainerDir, report_fd: int) -> NoReturn:
    status = 1
    report = OneShotReport(report_fd)
    try:
        os.chdir("/")
        redirect_stdio(cdir.sub("log"), stdout_to_log=True, mode=0o600)
        status = Monitor(root, cdir).run(on_started=lambda: report("ok\n"))
        if cdir.config.auto_remove:
            remove(root, cdir, force=True)
    except UsageError as exc:
        status = exc.exit_code
        report(f"{exc.exit_code} {exc}\n")
    except BaseException as exc:
        report(f"125 {type(exc).__name__}: {exc}\n")
    finally:
        report("125 the monitor stopped before the container started\n")
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
        if os.geteuid() == 0 and cdir.effective_state().status != RUNNING:
            detach_if_mounted(cdir.rootfs)
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


# ---------------------------------------------------------------------------------------------
# exec


def exec_in(root: StateRoot, cdir: ContainerDir, spec: ProcessSpec) -> int:
    """Run `spec` in the running container: join its namespaces, fork (the PID namespace applies
    to children), wait for it, forward signals; its exit code. The command is confined as the
    container's own processes are."""
    state = cdir.effective_state()
    if state.status != RUNNING or not process_alive(state.init_pid, state.init_start):
        raise UsageError(f"container {cdir.name} is not running", 1)
    confinement = confinement_of(root, cdir)
    pid1 = state.init_pid
    can_setgroups = _setgroups_allowed(str(pid1))  # while the host's /proc is ours
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
    master = slave = None
    if spec.tty:
        master, slave = os.openpty()
    err_r, err_w = os.pipe()
    relay = SignalRelay()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child

        def report(code: int, message: str) -> None:
            with contextlib.suppress(OSError):
                os.write(err_w, f"{code} {message}".encode())

        os.close(err_r)
        if master is not None:
            os.close(master)
        exec_process(
            spec,
            report=report,
            slave=slave,
            handled_signals=FORWARDED,
            can_setgroups=can_setgroups,
            confinement=confinement,
        )
    os.close(err_w)
    if slave is not None:
        os.close(slave)
    relay.target = pid
    relay.is_namespace_init = False
    relay.master = master
    relay.install()
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        error = b""
        while chunk := os.read(err_r, 4096):
            error += chunk
        os.close(err_r)
        if error:
            os.waitpid(pid, 0)
            code, _, message = error.decode(errors="replace").partition(" ")
            raise StartError(message, int(code) if code.isdigit() else START_FAILED)
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
        with console.raw_terminal(sys.stdin.fileno()) if stdin is not None else _nothing():
            console.relay(master, stdin=stdin, stdout=sys.stdout.fileno(), finished=finished)
        return exit_code(result[0])
    finally:
        relay.cleaning = True
        relay.restore()
        if master is not None:
            with contextlib.suppress(OSError):
                os.close(master)


__all__ = [
    "CREATED",
    "CreateRequest",
    "Monitor",
    "StartError",
    "create",
    "exec_in",
    "reconcile",
    "remove",
    "run_attached",
    "signal_container",
    "start_detached",
    "stop",
]
