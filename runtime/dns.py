"""A small DNS server and forwarder that strata runs on a bridge's gateway address, port 53 (UDP
and TCP), in the host's network namespace.

Two users: the default `bridge` network, whose containers cannot reach a host resolver on
loopback (systemd-resolved's 127.0.0.53 and the like), so their resolv.conf names the gateway and
this server relays to the host's loopback servers; and user networks, whose containers find each
other by name through the records file. It binds the gateway address only, never a wildcard, so
that it is no open resolver beyond the bridge.

The interface (other modules use exactly this):

- The **records file**: text, one line per address, `IP NAME [NAME ...]` (hosts-file syntax; `#`
  starts a comment). Its owner rewrites it whole and atomically (`write_records`: a temporary
  file, then rename); the server looks at its inode, size and mtime on every query (one stat) and
  reloads it when they changed. A missing file is an empty one.
- `write_records(path, entries)`: writes `entries` (IP, names) as the records file `path`.
- `start(run_dir, listen, records, upstreams) -> pid`: starts the server detached from the caller
  (its own session, stdio on /dev/null, working directory `/`) and returns once its sockets are
  bound: the server reports on a pipe, `ready PID` or `error MESSAGE`, no polling. `run_dir` holds
  its pid file (pid, process start time and the arguments, JSON) and a lock file that serialises
  `start` and `stop`. Idempotent: a server already running there with the same arguments is kept
  and its pid returned; one with other arguments (a new subnet, other upstreams) is replaced. An
  address that cannot be bound is a one-line UsageError, exit status 125.
- `stop(run_dir) -> bool`: SIGTERM to the recorded pid, only if that pid still has the recorded
  start time (a reused pid is never signalled), waits for it to go (a pidfd, no polling) and
  removes the pid file; whether a server was running. `running(run_dir) -> bool`.

What it answers, for a question of class IN:

- A name of the records file (case-insensitive, with or without the search domain `dns.strata`):
  A with its IPv4 addresses (AAAA with its IPv6 ones, if the file has any); any other type, AAAA
  of a name with only IPv4 addresses included, is NOERROR with no answer, so that a resolver
  asking for both does not wait on the upstreams.
- PTR of an address of the records file: its first name (with `.dns.strata` when it has no dot).
- Any other name in `dns.strata`: NXDOMAIN, never asked upstream.
- Everything else is forwarded to the upstreams in order: over UDP with a timeout per upstream,
  over TCP when the question came over TCP or the UDP answer is truncated (the whole answer is
  relayed when it fits the client's UDP size, else the truncated one, and the client asks again
  over TCP). The first answer is relayed as it came; none (every upstream silent or refusing) is
  SERVFAIL.

dnspython (the DNS wire format) is imported only in the server process: `strata run` imports
this module to start and stop the server, and must stay fast.

For the default bridge, `start_bridge_forwarder` runs the server in `/run/strata/dns/strata0`
(host-wide, per boot, as the bridge is shared by every state root) with an empty records file,
for the containers written down in its `users/`, and `dns_tidy` stops it once none of them runs
(of any state root: a user whose monitor is gone counts as stopped).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    import dns.message

    from .state import StateRoot

# The server process imports this module too, and its start-up is a container's wait: the
# union (unionfs's package), runtime.state and runtime.network are imported where they are
# used, as dnspython is.

SEARCH_DOMAIN: Final = "dns.strata"
PORT: Final = 53
TTL: Final = 10  # records change as containers come and go: resolvers should ask again soon
UPSTREAM_TIMEOUT: Final = 2.0  # per upstream: two silent ones still give SERVFAIL in glibc's 5 s
TCP_IDLE: Final = 10.0  # seconds a client's TCP connection may sit idle between queries
IN_FLIGHT: Final = 256  # questions answered at once (a thread each); more are dropped
STOP_TIMEOUT: Final = 5.0  # seconds after SIGTERM before SIGKILL

PID_FILE: Final = "dns.pid"
LOCK_FILE: Final = "dns.lock"
USERS: Final = "users"  # in a bridge's run dir: a file per container that uses its forwarder


# -- the records file -------------------------------------------------------------------------


def write_records(path: Path, entries: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Write the records file `path` atomically: (IP, names) per line. ValueError for an entry
    that is not an IP address and at least one name without spaces."""
    lines = []
    for ip, names in entries:
        ipaddress.ip_address(ip)
        if not names or any(not n or any(c.isspace() or c == "#" for c in n) for n in names):
            raise ValueError(f"records for {ip}: bad names {list(names)!r}")
        lines.append(f"{ip} {' '.join(names)}\n")
    _write_atomically(path, "".join(lines), mode=0o644)


class Records(NamedTuple):
    """The records file, parsed: lower-case name -> addresses, address -> its first name."""

    addresses: dict[str, tuple[str, ...]]
    names: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Records:
        addresses: dict[str, list[str]] = {}
        names: dict[str, str] = {}
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) < 2:
                continue
            try:
                ip = str(ipaddress.ip_address(fields[0]))
            except ValueError:
                continue
            names.setdefault(ip, fields[1])
            for name in fields[1:]:
                found = addresses.setdefault(name.lower().rstrip("."), [])
                if ip not in found:
                    found.append(ip)
        return cls({k: tuple(v) for k, v in addresses.items()}, names)


class RecordsFile:
    """The records file, reloaded when its inode, size or mtime changed (one stat a query)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: tuple[int, ...] | None = None
        self._records = Records({}, {})
        self._lock = threading.Lock()

    def current(self) -> Records:
        try:
            st = os.stat(self.path)
            key: tuple[int, ...] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            key = ()
        with self._lock:
            if key != self._key:
                text = ""
                if key:
                    with contextlib.suppress(FileNotFoundError):
                        text = self.path.read_text(errors="replace")
                self._records = Records.parse(text)
                self._key = key
            return self._records


# -- answering --------------------------------------------------------------------------------


class Answerer:
    """Answers one DNS message (wire format in, wire format out) from the records file or the
    upstreams. Runs in the server process only: it imports dnspython."""

    def __init__(self, records: Path, upstreams: Sequence[str]) -> None:
        self.records = RecordsFile(records)
        self.upstreams = tuple(upstreams)

    @staticmethod
    def warm_up() -> None:
        """Import the dnspython modules the answers need (about 60 ms), once serving: `start`
        returns as soon as the sockets are bound."""
        import dns.exception
        import dns.flags
        import dns.message
        import dns.opcode
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype
        import dns.reversename
        import dns.rrset  # noqa: F401

    def answer(self, wire: bytes, *, tcp: bool) -> bytes | None:
        """The reply to `wire`, or None to drop it (too short to carry an id)."""
        import dns.exception
        import dns.message
        import dns.rcode

        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            if len(wire) < 12:
                return None
            # FORMERR with the query's id: QR set, opcode kept, the counts zero
            flags = 0x8000 | (wire[2] & 0x78) << 8 | dns.rcode.FORMERR
            return wire[:2] + flags.to_bytes(2, "big") + bytes(8)
        if query.flags & 0x8000:  # a response: never answer one (no loops)
            return None
        local = self._local(query)
        limit = 65535 if tcp else max(512, query.payload if query.edns >= 0 else 512)
        if local is not None:
            return self._to_wire(local, limit)
        relayed = self._forward(wire, tcp=tcp, limit=limit)
        if relayed is not None:
            return relayed
        failed = dns.message.make_response(query, recursion_available=True)
        failed.set_rcode(dns.rcode.SERVFAIL)
        return self._to_wire(failed, limit)

    @staticmethod
    def _to_wire(message: dns.message.Message, limit: int) -> bytes:
        import dns.exception
        import dns.flags

        try:
            return message.to_wire(max_size=limit)
        except dns.exception.TooBig:
            message.answer.clear()
            message.flags |= dns.flags.TC
            return message.to_wire(max_size=limit)

    def _local(self, query: dns.message.Message) -> dns.message.Message | None:
        """The answer from the records file, or None to forward the question."""
        import dns.exception
        import dns.flags
        import dns.opcode
        import dns.rcode
        import dns.rdataclass
        import dns.rdatatype
        import dns.reversename
        import dns.rrset

        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            return None
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:
            return None
        records = self.records.current()
        name = question.name.to_text(omit_final_dot=True).lower()
        reply = dns.message.make_response(query, recursion_available=True)
        reply.flags |= dns.flags.AA
        if name.endswith((".in-addr.arpa", ".ip6.arpa")):
            try:
                address = str(ipaddress.ip_address(dns.reversename.to_address(question.name)))
            except (dns.exception.DNSException, ValueError):
                return None
            first = records.names.get(address)
            if first is None:
                return None
            if question.rdtype == dns.rdatatype.PTR:
                target = first if "." in first else f"{first}.{SEARCH_DOMAIN}"
                reply.answer.append(
                    dns.rrset.from_text(question.name, TTL, "IN", "PTR", target.rstrip(".") + ".")
                )
            return reply
        short = name.removesuffix(f".{SEARCH_DOMAIN}")
        addresses = records.addresses.get(short)
        if addresses is None:
            if name == SEARCH_DOMAIN or name.endswith(f".{SEARCH_DOMAIN}"):
                reply.set_rcode(dns.rcode.NXDOMAIN)
                return reply
            return None
        wanted = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(question.rdtype)
        found = [a for a in addresses if ipaddress.ip_address(a).version == wanted]
        if found:
            kind = "A" if wanted == 4 else "AAAA"
            reply.answer.append(dns.rrset.from_text(question.name, TTL, "IN", kind, *found))
        return reply

    def _forward(self, wire: bytes, *, tcp: bool, limit: int) -> bytes | None:
        """The first upstream's answer to `wire`, relayed as it came; None if none answers."""
        for upstream in self.upstreams:
            try:
                if tcp:
                    return _tcp_exchange(upstream, wire)
                reply = _udp_exchange(upstream, wire)
                if reply is None:
                    continue
                if reply[2] & 0x02:  # TC: ask again over TCP, relay it if it fits the client
                    with contextlib.suppress(OSError, ValueError):
                        whole = _tcp_exchange(upstream, wire)
                        if len(whole) <= limit:
                            return whole
                return reply
            except (OSError, ValueError):
                continue
        return None


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _udp_exchange(upstream: str, wire: bytes) -> bytes | None:
    """Send `wire` to `upstream` over UDP from a fresh port; its reply with the same id, or None
    after UPSTREAM_TIMEOUT. A refusing upstream (ICMP unreachable) is an OSError at once."""
    with socket.socket(_family(upstream), socket.SOCK_DGRAM) as s:
        s.connect((upstream, PORT))  # replies from anyone else are dropped by the kernel
        s.send(wire)
        s.settimeout(UPSTREAM_TIMEOUT)
        while True:
            try:
                reply = s.recv(65535)
            except TimeoutError:
                return None
            if len(reply) >= 12 and reply[:2] == wire[:2]:
                return reply


def _recv_exact(s: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        if not chunk:
            raise ValueError("connection closed mid-message")
        data += chunk
    return data


def _tcp_exchange(upstream: str, wire: bytes) -> bytes:
    with socket.create_connection((upstream, PORT), timeout=UPSTREAM_TIMEOUT) as s:
        s.sendall(len(wire).to_bytes(2, "big") + wire)
        size = int.from_bytes(_recv_exact(s, 2), "big")
        reply = _recv_exact(s, size)
    if len(reply) < 12 or reply[:2] != wire[:2]:
        raise ValueError("a TCP answer with another id")
    return reply


# -- the server process -----------------------------------------------------------------------


class Server:
    """The sockets (bound at construction: an OSError if the address cannot be had) and the
    threads serving them: one per UDP query, one per TCP connection."""

    def __init__(self, listen: str, answerer: Answerer) -> None:
        self.answerer = answerer
        self.slots = threading.BoundedSemaphore(IN_FLIGHT)
        family = _family(listen)
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.udp.bind((listen, PORT))
            self.tcp.bind((listen, PORT))
            self.tcp.listen(64)
        except OSError:
            self.udp.close()
            self.tcp.close()
            raise

    def serve(self) -> None:
        """Serve in background threads (daemon threads: the process ends with the main one)."""
        threading.Thread(target=self._udp_loop, daemon=True).start()
        threading.Thread(target=self._tcp_loop, daemon=True).start()

    def _udp_loop(self) -> None:
        while True:
            try:
                wire, client = self.udp.recvfrom(65535)
            except OSError:  # an ICMP error queued on the socket, say: the next one
                continue
            if self.slots.acquire(blocking=False):  # else dropped: the client asks again
                threading.Thread(target=self._udp_one, args=(wire, client), daemon=True).start()

    def _udp_one(self, wire: bytes, client: tuple[str, int]) -> None:
        try:
            reply = self._answer(wire, tcp=False)
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.udp.sendto(reply, client)
        finally:
            self.slots.release()

    def _tcp_loop(self) -> None:
        while True:
            try:
                conn, _ = self.tcp.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    continue
                raise
            if not self.slots.acquire(blocking=False):
                conn.close()
                continue
            threading.Thread(target=self._tcp_one, args=(conn,), daemon=True).start()

    def _tcp_one(self, conn: socket.socket) -> None:
        try:
            with conn, contextlib.suppress(OSError, ValueError):
                conn.settimeout(TCP_IDLE)
                while True:
                    head = conn.recv(2)
                    if not head:
                        return
                    if len(head) == 1:
                        head += _recv_exact(conn, 1)
                    wire = _recv_exact(conn, int.from_bytes(head, "big"))
                    reply = self._answer(wire, tcp=True)
                    if reply is None:
                        return
                    conn.sendall(len(reply).to_bytes(2, "big") + reply)
        finally:
            self.slots.release()

    def _answer(self, wire: bytes, *, tcp: bool) -> bytes | None:
        try:
            return self.answerer.answer(wire, tcp=tcp)
        except Exception:  # one bad message must not end the server; its client gets nothing
            return None


class _Spec(NamedTuple):
    """What a server runs with: recorded in its pid file, compared by `start`."""

    listen: str
    records: str
    upstreams: tuple[str, ...]


def _serve_main(argv: Sequence[str]) -> int:
    """The server process: `python -m runtime.dns SPEC_JSON READY_FD RUN_DIR`. Binds, forks (the
    child is reparented away from strata's monitor, whose wait(-1) must not meet it), writes the
    pid file (itself: a caller interrupted meanwhile still leaves a server `stop` finds),
    reports `ready PID` on READY_FD, imports dnspython while the caller goes on, then serves
    until SIGTERM."""
    raw, ready_fd, run_dir = json.loads(argv[0]), int(argv[1]), Path(argv[2])
    spec = _Spec(raw["listen"], raw["records"], tuple(raw["upstreams"]))
    # the caller's ignored or blocked signals survive exec: start from the defaults
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    try:
        server = Server(spec.listen, Answerer(Path(spec.records), spec.upstreams))
    except OSError as exc:
        os.write(ready_fd, f"error {exc.strerror or exc}".encode())
        return 1
    if os.fork() != 0:
        os._exit(0)
    me = os.getpid()
    record = {"pid": me, "start": _own_start_time(), **raw}
    _write_atomically(run_dir / PID_FILE, json.dumps(record) + "\n")
    # block the stop signals in every thread; the main thread takes them with sigwait
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server.serve()
    os.write(ready_fd, f"ready {me}".encode())
    os.close(ready_fd)
    # dnspython is imported in a thread of its own: a question asked meanwhile waits for the
    # import lock, and a stop (the container was /bin/true) does not wait for the import
    threading.Thread(target=Answerer.warm_up, daemon=True).start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    os._exit(0)  # the serving threads sit in recv: no interpreter shutdown to wait on them


def _own_start_time() -> int:
    """This process's start time, as runtime.state's process_start_time reads it (field 22 of
    /proc/PID/stat, after the command name), without importing runtime.state into the server."""
    with open("/proc/self/stat", "rb") as f:
        raw = f.read()
    return int(raw[raw.rindex(b")") + 2 :].split()[19])


def _server_command(spec: _Spec) -> list[str]:
    """The server's command line but its last two arguments (the pipe's fd, the run dir). -I:
    neither the working directory nor PYTHON* variables choose what `runtime` is imported."""
    return [sys.executable, "-I", "-m", "runtime.dns", json.dumps(_spec_fields(spec))]


def _spec_fields(spec: _Spec) -> dict[str, object]:
    return {"listen": spec.listen, "records": spec.records, "upstreams": list(spec.upstreams)}


def _start_time(pid: int) -> int:
    """runtime.state's process_start_time (0 for a process that is gone), imported here only."""
    from .state import process_start_time

    return process_start_time(pid) or 0


def _write_atomically(path: Path, text: str, *, mode: int | None = None) -> None:
    """`text` to `path` through a temporary file and a rename (with `mode` set before it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.rename(tmp, path)


# -- starting and stopping --------------------------------------------------------------------


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _recorded(run_dir: Path) -> tuple[int, int, _Spec] | None:
    """pid, start time and spec of the pid file's server if it still runs, else None."""
    try:
        raw = json.loads((run_dir / PID_FILE).read_text())
        pid, start = int(raw["pid"]), int(raw["start"])
        spec = _Spec(str(raw["listen"]), str(raw["records"]), tuple(raw["upstreams"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (pid, start, spec) if start and _start_time(pid) == start else None


def running(run_dir: Path) -> bool:
    """Whether the server of `run_dir` runs (its recorded pid, with its recorded start time)."""
    return _recorded(run_dir) is not None


def start(run_dir: Path, listen: str, records: Path, upstreams: Sequence[str]) -> int:
    """Start the server of `run_dir` on `listen`:53 (see the module docstring); its pid."""
    try:
        ipaddress.ip_address(listen)
        for upstream in upstreams:
            ipaddress.ip_address(upstream)
    except ValueError as exc:
        from unionfs.errors import UsageError

        raise UsageError(f"DNS server: {exc}", 125) from None
    spec = _Spec(listen, str(records), tuple(upstreams))
    run_dir.mkdir(parents=True, exist_ok=True)
    with _locked(run_dir):
        current = _recorded(run_dir)
        if current is not None:
            if current[2] == spec:
                return current[0]
            _stop_locked(run_dir)
        read_end, write_end = os.pipe()
        try:
            child = subprocess.Popen(
                [*_server_command(spec), str(write_end), str(run_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(write_end,),
                start_new_session=True,
                cwd="/",
            )
        finally:
            os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read().decode(errors="replace")  # EOF: ready, or the server is gone
        child.wait()
    word, _, rest = report.partition(" ")
    if word == "ready":
        return int(rest)
    detail = rest if word == "error" else f"it exited at once (status {child.returncode})"
    from unionfs.errors import UsageError

    raise UsageError(f"DNS server on {listen}:{PORT}: {detail}", 125)


def stop(run_dir: Path) -> bool:
    """Stop the server of `run_dir` (see the module docstring); whether one was running."""
    if not (run_dir / PID_FILE).exists():
        return False
    with _locked(run_dir):
        return _stop_locked(run_dir)


def _stop_locked(run_dir: Path) -> bool:
    current = _recorded(run_dir)
    if current is not None:
        pid, start_time, _ = current
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = -1
        if pidfd >= 0:
            try:
                if _start_time(pid) == start_time:  # still ours, now pinned by the pidfd
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                    if not select.select([pidfd], [], [], STOP_TIMEOUT)[0]:
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                        select.select([pidfd], [], [], STOP_TIMEOUT)
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
    with contextlib.suppress(FileNotFoundError):
        (run_dir / PID_FILE).unlink()
    return current is not None


# -- the default bridge -----------------------------------------------------------------------


def bridge_run_dir(bridge: str = "") -> Path:
    """The run dir of `bridge`'s server (default: runtime.network's BRIDGE, strata0), beside
    runtime.network's host-wide records (/run/strata: per boot, root's alone)."""
    from . import network

    network.RUN_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    return network.RUN_DIR / "dns" / (bridge or network.BRIDGE)


def start_bridge_forwarder(
    net: ipaddress.IPv4Network, upstreams: Sequence[str], container_id: str
) -> int:
    """Run the server on the default bridge's gateway, relaying to `upstreams` (the host's
    loopback resolvers), for container `container_id`, whose resolv.conf names the gateway; call
    from its monitor. The container is written down as a user of the server (its monitor's pid
    and start time, in `users/`) before the server is started, so that a `dns_tidy` of another
    container cannot stop it in between. No records: the default bridge has no names (as
    docker's); user networks bring their own records file."""
    run_dir = bridge_run_dir()
    users = run_dir / USERS
    users.mkdir(parents=True, exist_ok=True)
    records = run_dir / "records"
    me = os.getpid()
    with _locked(run_dir):
        _write_atomically(
            users / container_id,
            json.dumps({"pid": me, "start": _start_time(me)}) + "\n",
        )
        if not records.exists():
            write_records(records, [])
    return start(run_dir, str(net.network_address + 1), records, upstreams)  # the gateway


def _user_alive(path: Path) -> bool:
    try:
        raw = json.loads(path.read_text())
        start = int(raw["start"])
        return bool(start) and _start_time(int(raw["pid"])) == start
    except (OSError, ValueError, KeyError, TypeError):
        return False


def dns_tidy(root: StateRoot, *, exclude: str = "", stop: bool = True) -> bool:
    """Forget the default bridge's forwarder's users that are `exclude` (the caller's
    container, on its way out), stopped containers of `root`, or whose monitor is gone (killed
    with SIGKILL, of any state root); with `stop` (`network prune`), stop the server if none is
    left. Whether it stopped one. Call with the state lock held. Like the bridge, the forwarder
    outlives its last container (starting it costs ~55 ms, which would land on every lone `run
    --rm` on a host whose resolver is a loopback stub); containers that reach the host's
    servers through NAT never use it."""
    from .state import RUNNING

    run_dir = bridge_run_dir()
    users = run_dir / USERS
    if not (run_dir / PID_FILE).exists() and not users.is_dir():
        return False
    with _locked(run_dir):  # start_bridge_forwarder writes its user down under this lock
        stopped = {exclude} | {
            c.id for c in root.containers() if c.effective_state().status != RUNNING
        }
        try:
            names = os.listdir(users)
        except FileNotFoundError:
            names = []
        left = 0
        for name in names:
            if name in stopped or not _user_alive(users / name):
                with contextlib.suppress(FileNotFoundError):
                    (users / name).unlink()
            else:
                left += 1
        return False if left or not stop else _stop_locked(run_dir)


if __name__ == "__main__":
    sys.exit(_serve_main(sys.argv[1:]))
