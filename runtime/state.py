"""The state root: every container's configuration, state and writable layer, under one lock.

Layout (`--root`, default /var/lib/strata as root, $XDG_DATA_HOME/strata otherwise):

    lock                       flock(2): exclusive for changes, shared for reading
    containers/<id>/
        config.json            what to run (written once, at create)
        state.json             created | running | exited, pids, exit code, address
        upper/ work/           the writable layer (absent with --read-only), kept until `rm`
        init/                  strata's own top lower layer: mount points the image lacks
        rootfs/                where the union is mounted while the container runs
        hostname hosts resolv.conf   bound over the container's /etc files
        ctr.log                what it printed, a record per line (runtime.logs)
        log                    output of a detached container, as an older strata wrote it
        monitor.log            a detached monitor's own messages
        union.log              the union daemon's log
        health.json            docker's State.Health: status, failing streak, last 5 checks
        seccomp.json           the --security-opt seccomp=FILE profile, as it was at create
    seccomp/<key>.bpf          compiled seccomp programs, by profile, capabilities and kernel
    volumes/<name>/            named and anonymous volumes (runtime.volumes)
    ip_forward                 present while strata has switched IPv4 forwarding on (bridge NAT)

Each JSON file is written to a temporary name and renamed into place, so a reader never sees a
half-written file, even without the lock. A new container is built under `containers/.new-<id>`
and renamed into place, so a failed create leaves nothing behind.

A container recorded as running whose monitor process is gone (killed, or the host rebooted) is
reported as exited (`effective_state()`); the next command that takes the lock writes that down.
Processes are identified by pid *and* start time, so a reused pid is not mistaken for them.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Final

from unionfs import _sys
from unionfs.errors import UsageError

CREATED: Final = "created"
RUNNING: Final = "running"
EXITED: Final = "exited"
EXIT_FIFO: Final = "exit."  # + pid: an attached client's FIFO (ContainerDir.tell_exit)

_NAME: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")


def default_root() -> Path:
    env = os.environ.get("STRATA_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0 and _sys.in_initial_user_namespace():  # not root of a rootless userns
        return Path("/var/lib/strata")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(data) / "strata"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"


def epoch(stamp: str) -> float | None:
    """Seconds since the epoch of a state timestamp (`2024-01-02T03:04:05.123456789Z`)."""
    if not stamp:
        return None
    try:
        base, _, frac = stamp.rstrip("Z").partition(".")
        seconds = calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    return seconds + (float(f"0.{frac}") if frac.isdigit() else 0.0)


def write_json(path: Path, data: object) -> None:
    """Write `data` as JSON to `path` atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a full disk must not keep the half-written copy
            os.unlink(tmp)
        raise


def read_json(path: Path) -> dict[str, object]:
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def process_start_time(pid: int) -> int | None:
    """The start time of `pid` (clock ticks since boot, /proc/PID/stat field 22); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = raw[raw.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":  # a zombie has finished
        return None
    return int(fields[19])


def process_alive(pid: int, start_time: int) -> bool:
    return pid > 0 and start_time > 0 and process_start_time(pid) == start_time


@dataclass(frozen=True, slots=True)
class Volume:
    """A mount of the container's (runtime.volumes): a host path bound (`bind`), a volume of
    the state root (`volume`: `source` is its `_data`), or a tmpfs (`options`: its options)."""

    source: str
    target: str
    read_only: bool = False
    kind: str = "bind"
    name: str = ""  # a volume's name
    anonymous: bool = False  # a volume that goes with the container under `rm -v` / `--rm`
    copy: bool = False  # fill the volume from the image's content at `target` while it is empty
    options: str = ""  # tmpfs


@dataclass(frozen=True, slots=True)
class ContainerConfig:
    """What `create` decided (config.json). Layers are top first; `env` is final (K=V)."""

    id: str
    name: str
    created: str
    image: str
    layers: tuple[str, ...]
    argv: tuple[str, ...]
    env: tuple[str, ...]
    workdir: str
    user: str
    hostname: str
    network: str
    subnet: str = ""
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    add_hosts: tuple[str, ...] = ()  # NAME:IP as given (IP may be host-gateway)
    ports: tuple[str, ...] = ()  # -p, one PortMapping.text() per port (runtime.ports)
    publish_all: bool = False  # -P: the image's exposed ports to free host ports
    exposed_ports: tuple[str, ...] = ()  # the image's ExposedPorts keys (80/tcp), for -P
    network_aliases: tuple[str, ...] = ()  # --network-alias: more names on a user network
    network_id: str = ""  # a user network's id (runtime.networks); `network` holds its name
    volumes: tuple[Volume, ...] = ()
    read_only: bool = False
    tty: bool = False
    interactive: bool = False
    init: bool = False
    auto_remove: bool = False
    rootless: bool = False
    id_map: dict[str, list[list[int]]] = field(default_factory=dict)
    # --userns keep-id (rootless): the container's own user namespace, nested in the rootless
    # one, as IdMap.to_json (inside -> the rootless namespace's ids); empty: none
    userns: str = ""
    userns_map: dict[str, list[list[int]]] = field(default_factory=dict)
    memory: int = 0
    pids_limit: int = 0
    restart_policy: str = "no"  # --restart (runtime.restart) and its on-failure maximum
    restart_retries: int = 0
    cpu_quota: int = 0  # --cpus: µs of CPU time per 100 ms (runtime.cgroups)
    # security (runtime.security): the capability set (None: the default, for containers made
    # before strata recorded it), the options as given, the seccomp mode
    capabilities: tuple[str, ...] | None = None
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    security_opt: tuple[str, ...] = ()
    seccomp: str = "default"
    seccomp_origin: str = ""
    no_new_privileges: bool = False
    mask_paths: bool = True
    # runtime.runflags: labels (the image's under --label), stop signal and timeout (None: the
    # image's STOPSIGNAL, else SIGTERM; 10 s), ulimits (NAME=SOFT:HARD), /dev/shm's size,
    # supplementary groups of the command
    labels: dict[str, str] = field(default_factory=dict)
    stop_signal: str = ""
    stop_timeout: int | None = None
    ulimits: tuple[str, ...] = ()
    shm_size: int = 0
    group_add: tuple[str, ...] = ()
    log_max_size: int = 0  # --log-opt max-size (bytes; 0: no limit), runtime.logrotate
    log_max_file: int = 1  # --log-opt max-file
    log_attr_opts: dict[str, str] = field(default_factory=dict)  # labels/env: logs --details
    # runtime.health: docker's HealthConfig (the image's HEALTHCHECK under --health-*; None:
    # none), and the image's SHELL, which runs a CMD-SHELL check
    healthcheck: dict[str, object] | None = None
    shell: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["volumes"] = [asdict(v) for v in self.volumes]
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ContainerConfig:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        for key in (
            "layers",
            "argv",
            "env",
            "cap_add",
            "cap_drop",
            "security_opt",
            "dns",
            "dns_search",
            "dns_options",
            "add_hosts",
            "ports",
            "exposed_ports",
            "network_aliases",
            "ulimits",
            "group_add",
            "shell",
        ):
            items = values.get(key) or []
            assert isinstance(items, list | tuple)
            values[key] = tuple(str(i) for i in items)
        caps = values.get("capabilities")
        if caps is not None:
            assert isinstance(caps, list | tuple)
            values["capabilities"] = tuple(str(c) for c in caps)
        raw_volumes = data.get("volumes") or []
        assert isinstance(raw_volumes, list)
        values["volumes"] = tuple(Volume(**v) for v in raw_volumes)
        return cls(**values)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ContainerState:
    """What is happening to a container (state.json)."""

    status: str = CREATED
    monitor_pid: int = 0
    monitor_start: int = 0
    init_pid: int = 0  # the container's PID 1, as the host sees it
    init_start: int = 0
    daemon_pid: int = 0
    started_at: str = ""
    finished_at: str = ""
    exit_code: int | None = None
    ip: str = ""
    # the published ports as taken (runtime.ports PortMapping.text(), actual host ports), from
    # the start until their nft rules are removed (runtime.publish)
    ports: tuple[str, ...] = ()
    paused: bool = False  # `strata pause` (runtime.pause) until `unpause` or the exit
    # restart policies (runtime.restart): restarts since the last start by hand; a stop by hand
    # (no restart then); waiting to be restarted
    restart_count: int = 0
    stopped_by_hand: bool = False
    restarting: bool = False

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ContainerState:
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in data.items() if k in known}
        ports = values.get("ports") or []
        assert isinstance(ports, list | tuple)
        values["ports"] = tuple(str(p) for p in ports)
        return cls(**values)  # type: ignore[arg-type]

    def replace(self, **changes: object) -> ContainerState:
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ContainerDir:
    """One container's directory and what it records."""

    path: Path
    config: ContainerConfig

    @property
    def id(self) -> str:
        return self.config.id

    @property
    def name(self) -> str:
        return self.config.name

    def sub(self, name: str) -> Path:
        return self.path / name

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    def read_state(self) -> ContainerState:
        try:
            return ContainerState.from_json(read_json(self.path / "state.json"))
        except FileNotFoundError:
            return ContainerState()

    def write_state(self, state: ContainerState) -> None:
        write_json(self.path / "state.json", state.to_json())

    def tell_exit(self, code: int) -> None:
        """The exit status to each attached client's FIFO (`exit.<pid>`, runtime.attach), which
        keeps it when --rm takes this directory next; a FIFO nobody reads any more is skipped."""
        try:
            names = [n for n in os.listdir(self.path) if n.startswith(EXIT_FIFO)]
        except OSError:
            return
        for name in names:
            flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(self.path / name, flags)
            except OSError:  # ENXIO: its reader is gone
                continue
            try:
                with contextlib.suppress(OSError):
                    os.write(fd, b"%d\n" % code)
            finally:
                os.close(fd)

    def effective_state(self) -> ContainerState:
        """The recorded state, corrected when the container's monitor has died unseen."""
        state = self.read_state()
        if state.status == RUNNING and not process_alive(state.monitor_pid, state.monitor_start):
            return state.replace(status=EXITED, finished_at=state.finished_at or "", paused=False)
        return state


class StateRoot:
    """The directory holding every container, and its lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.containers_dir = path / "containers"
        # compiled seccomp programs, by content (runtime.seccomp.program)
        self.seccomp_cache = path / "seccomp"

    def ensure(self) -> None:
        self.containers_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    @contextlib.contextmanager
    def lock(self, *, exclusive: bool = True) -> Iterator[None]:
        """flock(2) on `ROOT/lock` for the duration (blocks while another command holds it)."""
        self.ensure()
        fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    def new_id(self) -> str:
        while True:
            cid = os.urandom(32).hex()
            if not (self.containers_dir / cid).exists():
                return cid

    def containers(self) -> list[ContainerDir]:
        """Every container, oldest first (needs no lock: files are replaced atomically)."""
        found = []
        try:
            names = os.listdir(self.containers_dir)
        except FileNotFoundError:
            return []
        for name in names:
            if name.startswith("."):
                continue
            path = self.containers_dir / name
            try:
                config = ContainerConfig.from_json(read_json(path / "config.json"))
            except (OSError, ValueError, TypeError):
                continue  # being removed, or not ours
            found.append(ContainerDir(path, config))
        found.sort(key=lambda c: c.config.created)
        return found

    def find(self, ref: str) -> ContainerDir:
        """A container by full id, name, or unique id prefix."""
        containers = self.containers()
        for c in containers:
            if ref in (c.id, c.name):
                return c
        if len(ref) >= 1 and all(ch in "0123456789abcdef" for ch in ref):
            matches = [c for c in containers if c.id.startswith(ref)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise UsageError(f"container id prefix {ref} is ambiguous", 1)
        raise UsageError(f"no such container: {ref}", 1)

    def check_name(self, name: str) -> None:
        if not _NAME.fullmatch(name):
            raise UsageError(
                f"invalid container name {name!r}: letters, digits, '_', '.' and '-'"
                " (not first), at most 128",
                125,
            )
        for c in self.containers():
            if c.name == name:
                raise UsageError(
                    f"the name {name!r} is already in use by container {c.id[:12]}", 125
                )

    def staging_dir(self, cid: str) -> Path:
        return self.containers_dir / f".new-{cid}"

    def commit(self, staging: Path, config: ContainerConfig) -> ContainerDir:
        """Move a fully prepared container dir into place (call with the lock held)."""
        write_json(staging / "config.json", config.to_json())
        write_json(staging / "state.json", ContainerState().to_json())
        final = self.containers_dir / config.id
        os.rename(staging, final)
        return ContainerDir(final, config)


def remove_tree(path: Path) -> None:
    """rm -rf of a tree in the state root (a container dir, an image layer or staging dir),
    refusing to descend into anything still mounted below it: the one home of this for runtime
    and images."""
    from unionfs.mountinfo import mounts_under

    mounted = [point for point in mounts_under(path) if point != path]
    if mounted:
        raise UsageError(f"{mounted[0]} is still mounted; not removing {path}", 1)

    def onerror(func: object, failed: str, exc_info: tuple[object, BaseException, object]) -> None:
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        if isinstance(exc, PermissionError) or (
            isinstance(exc, OSError) and exc.errno == errno.EACCES
        ):
            # a directory the container made unwritable (chmod 0 or 0555): open it up and retry
            parent = os.path.dirname(failed)
            with contextlib.suppress(OSError):
                os.chmod(parent, 0o700)
                if os.path.isdir(failed) and not os.path.islink(failed):
                    os.chmod(failed, 0o700)
                    shutil.rmtree(failed)
                else:
                    os.unlink(failed)
                return
        raise exc

    shutil.rmtree(path, onerror=onerror)  # onexc= from 3.12 on
