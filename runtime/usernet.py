"""User-mode networks: `--network pasta` and `--network slirp4netns`, the rootless default.

A rootless user cannot make veths or nft rules on the host, so the container's network namespace
gets a tap device served by a helper process that runs as the user and speaks for the container
with ordinary sockets on the host: pasta (Debian's `passt`), or slirp4netns where pasta is
missing. Root may pick them too (as podman allows); root's default stays the bridge.

The monitor starts the helper once the container's network namespace exists (`start`, from
`Monitor._record_pids`, before PID 1 gets `net` and runs the command) and stops it after the
container exited (`Helper.stop`). The helper is the monitor's child:

- pasta: `pasta -f --config-net --netns /proc/self/fd/N`, N an inherited descriptor of the
  namespace, opened by the monitor. Not `/proc/PID/ns/net`: pasta drops its capabilities before
  opening that path and is then refused (EACCES) the other process's namespace; its own
  descriptor it may open. Rootless, the monitor already lives in the container's user namespace
  (runtime.namespaces), which owns the network namespace, so pasta joins only the network
  namespace (no `--userns`: setns to one's own user namespace fails) and keeps the user's uid
  (`--runas 0:0`: uid 0 in that namespace is the user; pasta's default, nobody, may be unmapped).
  As root too: Debian 12's pasta (2023-03-09), switched to nobody, fails to join the namespace
  ("Couldn't switch to pasta namespaces"); it keeps only the capabilities it needs either way.
  Readiness: pasta writes its pid file once the namespace is configured; the "file" is
  `/proc/self/fd/W`, the write end of a pipe the monitor reads.
- slirp4netns: `slirp4netns --configure --netns-type=path /proc/self/fd/N tap0` with
  `--ready-fd` (written once configured) and `--exit-fd` (the read end of a pipe whose write end
  only the monitor holds: slirp4netns exits when the monitor does, also after SIGKILL). Published
  ports go through its API socket (`add_hostfwd`), as podman's slirp4netns port handler does.

Lifetime. pasta holds the namespace open and does not quit when the container's processes are
gone (with a descriptor it cannot watch the namespace go), so the monitor stops it (SIGTERM,
then reaps it). Should the monitor be killed with SIGKILL, pasta dies with it: it keeps the
PR_SET_PDEATHSIG it is started with, as its `--runas` changes no id (a change of uid would clear
it). Still, in case a helper outlives its monitor, its pid and start time are written to the
container's directory (`usernet.pid`), and the next start, `rm` or `strata network
prune` kills a recorded helper that still runs (`collect`), by pid only when the start time
matches (a reused pid is left alone).

Choices, as podman's defaults (podman 4.4+ for pasta, its slirp4netns defaults):
- `--no-map-gw` / `--disable-host-loopback`: the container does not reach the host's loopback
  services through the gateway address; the host's other addresses it reaches as any outside
  peer would. Except: slirp4netns with a published UDP port runs without
  `--disable-host-loopback`, as libslirp 4.7 sends the replies of forwarded UDP to the host
  through 10.0.2.2, the host-loopback alias, and drops them otherwise (TCP is unaffected).
- pasta `-T none -U none`: no forwarding of the host's loopback ports into the container's
  loopback; `-t none -u none` when nothing is published (pasta's default, `auto`, would publish
  whatever the container listens on).
- `-p` becomes pasta's `-t`/`-u` `[ADDR/]HOST_PORT:CONTAINER_PORT` (host port 0: a free port picked
  here); slirp4netns's `add_hostfwd` to its guest address 10.0.2.100. Debian 12's pasta loses
  the replies of UDP sent to a published port on the host's loopback when the host and container
  ports differ (its loopback "splice" path; the same port, or a non-loopback host address, work).
- DNS: pasta hands the container the host's resolvers (their traffic goes out through pasta),
  so resolv.conf keeps the host's non-loopback servers as for the bridge; slirp4netns answers
  DNS at 10.0.2.3 and forwards to the host's resolver, which is what resolv.conf names.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unionfs import libc

from .control import StartError
from .ports import PortMapping
from .state import ContainerDir, StateRoot, process_start_time

PASTA: Final = "pasta"
SLIRP4NETNS: Final = "slirp4netns"
MODES: Final = (PASTA, SLIRP4NETNS)
RECORD: Final = "usernet.pid"  # in the container's directory: "PID START_TIME MODE"
LOG: Final = "usernet.log"  # the helper's stderr
READY_TIMEOUT: Final = 20.0  # seconds for the helper to configure the namespace
SLIRP_DNS: Final = "10.0.2.3"
SLIRP_GATEWAY: Final = "10.0.2.2"
SLIRP_GUEST: Final = "10.0.2.100"
SLIRP_MTU: Final = 65520  # podman's; slirp4netns's default 1500 halves its throughput


def rootless_default() -> tuple[str, str]:
    """The rootless default network and why: pasta if on PATH, else slirp4netns, else none."""
    if shutil.which(PASTA):
        return PASTA, "pasta"
    if shutil.which(SLIRP4NETNS):
        return SLIRP4NETNS, "slirp4netns (pasta, from Debian's passt, is not installed)"
    return "none", "none (neither pasta nor slirp4netns is installed)"


def default_dns(mode: str) -> tuple[str, ...]:
    """Name servers that replace the host's in resolv.conf (none: keep the host's)."""
    return (SLIRP_DNS,) if mode == SLIRP4NETNS else ()


def host_gateway(mode: str) -> str | None:
    """`--add-host NAME:host-gateway` on a user-mode network: the address the container reaches
    the host's other addresses through (pasta: the host's default gateway, which pasta's tap
    answers for; slirp4netns: 10.0.2.2). None for other networks."""
    if mode == SLIRP4NETNS:
        return SLIRP_GATEWAY
    if mode != PASTA:
        return None
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "default"], capture_output=True, text=True, check=False
    ).stdout
    for route in json.loads(out or "[]"):
        if isinstance(route, dict) and route.get("gateway"):
            return str(route["gateway"])
    return None


def _free_port(host_ip: str, protocol: str) -> int:
    """A port the kernel calls free now (as docker picks one for `-p 80`: racy by nature)."""
    family = socket.AF_INET6 if ":" in host_ip else socket.AF_INET
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(family, kind) as s:
        s.bind((host_ip, 0))
        return int(s.getsockname()[1])


def concrete(mappings: Iterable[PortMapping]) -> tuple[PortMapping, ...]:
    """The mappings with host port 0 given a free port."""
    return tuple(
        m
        if m.host_port
        else PortMapping(m.host_ip, _free_port(m.host_ip, m.protocol), m.container_port, m.protocol)
        for m in mappings
    )


def pasta_port_args(mappings: Sequence[PortMapping]) -> list[str]:
    """pasta's `-t`/`-u` options for published ports (`none` when nothing is published)."""
    args: list[str] = []
    for protocol, flag in (("tcp", "-t"), ("udp", "-u")):
        specs = [
            (f"{m.host_ip}/" if m.host_ip else "") + f"{m.host_port}:{m.container_port}"
            for m in mappings
            if m.protocol == protocol
        ]
        for spec in specs or ["none"]:
            args += [flag, spec]
    return [*args, "-T", "none", "-U", "none"]


@dataclass
class Helper:
    """A running pasta or slirp4netns, the monitor's child."""

    mode: str
    pid: int
    start_time: int
    record: Path
    ports: tuple[PortMapping, ...]
    exit_fd: int | None = None  # slirp4netns --exit-fd's other end: closing it stops it
    reaped: bool = False

    def stop(self) -> None:
        """Stop and reap the helper, remove its record. Idempotent."""
        if self.exit_fd is not None:
            os.close(self.exit_fd)
            self.exit_fd = None
        if not self.reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.reaped = True
        with contextlib.suppress(FileNotFoundError):
            self.record.unlink()


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    libc.set_pdeathsig(signal.SIGKILL)


def _log_tail(path: Path) -> str:
    """The helper's last meaningful line of stderr (pasta also reports failing to reach syslog)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    useful = [ln.strip() for ln in lines if ln.strip() and "to syslog" not in ln]
    return useful[-1] if useful else ""


def _wait_ready(fd: int, pid: int, mode: str, log: Path) -> bytes:
    """Read the helper's readiness note from `fd`; StartError if it exits or stays silent."""
    ready, _, _ = select.select([fd], [], [], READY_TIMEOUT)
    data = os.read(fd, 64) if ready else b""
    if data:
        return data
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    why = _log_tail(log) or ("timed out" if not ready else "exited")
    raise StartError(f"--network {mode}: {why}")


def start(mode: str, cdir: ContainerDir, netns_pid: int, ports: Sequence[PortMapping]) -> Helper:
    """Start the helper for the network namespace of `netns_pid` and wait until the namespace
    is configured (address, default route, published ports)."""
    binary = shutil.which(mode)
    if binary is None:
        raise StartError(f"--network {mode}: {mode} is not installed")
    mappings = concrete(ports)
    log = cdir.sub(LOG)
    netns = os.open(f"/proc/{netns_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    exit_r = exit_w = -1
    api_dir = ""
    try:
        netns_path = f"/proc/self/fd/{netns}"
        if mode == PASTA:
            argv = [binary, "-f", "-q", "--config-net", "--netns", netns_path, "--no-map-gw"]
            argv += ["--runas", "0:0"]
            argv += ["--pid", f"/proc/self/fd/{ready_w}", *pasta_port_args(mappings)]
            fds = [netns, ready_w]
        else:
            exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
            argv = [
                binary, "--configure", f"--mtu={SLIRP_MTU}", "--enable-sandbox",
                "--enable-seccomp", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
                "--netns-type=path",
            ]  # fmt: skip
            if not any(m.protocol == "udp" for m in mappings):
                argv.append("--disable-host-loopback")  # UDP replies need it (docstring)
            if mappings:
                # AF_UNIX paths are short (108 bytes): not below the container's directory
                api_dir = tempfile.mkdtemp(prefix="strata-slirp-")
                argv.append(f"--api-socket={api_dir}/api.sock")
            argv += [netns_path, "tap0"]
            fds = [netns, ready_w, exit_r]
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                pass_fds=fds,
                preexec_fn=_set_pdeathsig,
            )
        os.close(ready_w)
        ready_w = -1
        if exit_r >= 0:
            os.close(exit_r)
            exit_r = -1
        helper = Helper(
            mode, proc.pid, process_start_time(proc.pid) or 0, cdir.sub(RECORD), mappings,
            exit_fd=exit_w if exit_w >= 0 else None,
        )  # fmt: skip
        exit_w = -1
        _write_record(helper)
        try:
            _wait_ready(ready_r, helper.pid, mode, log)
            if mode == SLIRP4NETNS and mappings:
                _slirp_forward(f"{api_dir}/api.sock", mappings)
        except BaseException:
            helper.reaped = _reap_if_gone(helper.pid)
            helper.stop()
            raise
        return helper
    finally:
        for fd in (netns, ready_r, ready_w, exit_r, exit_w):
            if fd >= 0:
                os.close(fd)
        if api_dir:
            shutil.rmtree(api_dir, ignore_errors=True)


def _reap_if_gone(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def _slirp_forward(path: str, mappings: Sequence[PortMapping]) -> None:
    """Each published port through slirp4netns's API socket, one request per connection."""
    for m in mappings:
        request = {
            "execute": "add_hostfwd",
            "arguments": {
                "proto": m.protocol,
                "host_addr": m.host_ip or "0.0.0.0",
                "host_port": m.host_port,
                "guest_addr": SLIRP_GUEST,
                "guest_port": m.container_port,
            },
        }
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(READY_TIMEOUT)
            s.connect(path)
            s.sendall(json.dumps(request).encode())
            s.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := s.recv(4096):
                reply += chunk
        answer = json.loads(reply or b"{}")
        if not isinstance(answer, dict) or "error" in answer or "return" not in answer:
            error = answer.get("error", answer) if isinstance(answer, dict) else answer
            desc = error.get("desc", error) if isinstance(error, dict) else error
            raise StartError(f"-p {m.text()}: slirp4netns: {desc}")


def _write_record(helper: Helper) -> None:
    tmp = helper.record.with_name(f".{RECORD}.tmp")
    tmp.write_text(f"{helper.pid} {helper.start_time} {helper.mode}\n")
    os.rename(tmp, helper.record)


def collect(cdir: ContainerDir) -> bool:
    """Kill the helper a monitor killed with SIGKILL left (its record names its pid and start
    time; a pid since reused by another process is left alone) and drop the record. Call for a
    container that is not running, with the state lock held. True if one was killed."""
    path = cdir.sub(RECORD)
    try:
        fields = path.read_text().split()
    except (FileNotFoundError, NotADirectoryError):
        return False
    killed = False
    try:
        pid, started = int(fields[0]), int(fields[1])
    except (IndexError, ValueError):
        pid = started = 0
    if pid > 0 and started > 0 and process_start_time(pid) == started:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed = True
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return killed


def collect_all(root: StateRoot) -> list[str]:
    """`collect` for every container of `root` that is not running (lock held); what went."""
    from .state import RUNNING

    return [
        f"{cdir.config.name}: stale network helper"
        for cdir in root.containers()
        if cdir.effective_state().status != RUNNING and collect(cdir)
    ]
