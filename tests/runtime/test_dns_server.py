"""runtime.dns, the DNS server strata runs on a bridge's gateway: answers from the records file,
forwarding, start and stop, exercised on loopback addresses (127.53.N.x, port 53) as root; and
the bridge's resolv.conf, which names the gateway when the host has only a loopback stub.

The upstream is a tiny DNS server in the test (threads, dnspython): it answers `example.test`
with 198.51.100.7 and `big.test` with more TXT than 512 bytes hold (truncated over UDP, whole over
TCP), and counts the questions it got per transport. A "dead" upstream is a loopback address
where nothing listens: the kernel refuses at once (ICMP port unreachable), no timeout is waited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from runtime import dns as strata_dns
from runtime import network
from runtime.state import process_start_time
from unionfs.errors import UsageError

NET = f"127.53.{os.getpid() % 250}"
LISTEN = f"{NET}.1"
UPSTREAM = f"{NET}.2"
DEAD = f"{NET}.3"
BIG_TXT = [f'"{"x" * 200} {i}"' for i in range(8)]  # about 1.6 kB: more than plain UDP's 512


root = pytest.mark.root  # the tests that run a server: they bind port 53


@pytest.fixture
def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("binds port 53")


@dataclass
class Upstream:
    """The test's upstream DNS server on UPSTREAM:53."""

    address: str
    asked: Counter[str] = field(default_factory=Counter)  # "udp"/"tcp" -> questions

    def reply(self, wire: bytes, transport: str) -> bytes:
        query = dns.message.from_wire(wire)
        self.asked[transport] += 1
        reply = dns.message.make_response(query)
        name = query.question[0].name.to_text(omit_final_dot=True).lower()
        if name == "example.test" and query.question[0].rdtype == dns.rdatatype.A:
            reply.answer.append(dns.rrset.from_text("example.test.", 60, "IN", "A", "198.51.100.7"))
        elif name == "big.test":
            reply.answer.append(dns.rrset.from_text("big.test.", 60, "IN", "TXT", *BIG_TXT))
        elif name != "example.test":
            reply.set_rcode(dns.rcode.NXDOMAIN)
        if transport == "udp":
            try:
                return reply.to_wire(max_size=512)
            except dns.exception.TooBig:
                reply.answer.clear()
                reply.flags |= dns.flags.TC
        return reply.to_wire()


@pytest.fixture
def upstream(needs_root: None) -> Iterator[Upstream]:
    server = Upstream(UPSTREAM)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind((UPSTREAM, 53))
    tcp.bind((UPSTREAM, 53))
    tcp.listen(8)
    stopping = threading.Event()

    def serve_udp() -> None:
        while not stopping.is_set():
            with contextlib.suppress(OSError):
                wire, client = udp.recvfrom(65535)
                if not stopping.is_set():
                    udp.sendto(server.reply(wire, "udp"), client)

    def serve_tcp() -> None:
        while not stopping.is_set():
            with contextlib.suppress(OSError):
                conn, _ = tcp.accept()
                with conn:
                    size = int.from_bytes(conn.recv(2), "big")
                    wire = b""
                    while len(wire) < size:
                        wire += conn.recv(size - len(wire))
                    answer = server.reply(wire, "tcp")
                    conn.sendall(len(answer).to_bytes(2, "big") + answer)

    threads = [threading.Thread(target=f, daemon=True) for f in (serve_udp, serve_tcp)]
    for t in threads:
        t.start()
    try:
        yield server
    finally:
        stopping.set()
        for s in (udp, tcp):  # wakes recvfrom and accept (ENOTCONN for UDP, which still wakes)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(10)
        udp.close()
        tcp.close()


@dataclass
class Running:
    run_dir: Path
    records: Path
    pid: int


def _gone(pid: int, start: int) -> bool:
    return process_start_time(pid) != start


@pytest.fixture
def server(tmp_path: Path, upstream: Upstream) -> Iterator[Running]:
    """The server on LISTEN, with records for `web`/`www` and `db`, forwarding to a dead
    upstream and then the test's; stopped (and checked gone) afterwards."""
    run_dir = tmp_path / "run"
    records = tmp_path / "records"
    strata_dns.write_records(records, [("10.1.2.3", ["web", "www"]), ("10.1.2.4", ["db"])])
    pid = strata_dns.start(run_dir, LISTEN, records, [DEAD, upstream.address])
    start = process_start_time(pid)
    assert start is not None
    try:
        yield Running(run_dir, records, pid)
    finally:
        strata_dns.stop(run_dir)
        assert _gone(pid, start), f"DNS server {pid} left running"


def ask(name: str, kind: str = "A", *, tcp: bool = False, payload: int = 0) -> dns.message.Message:
    query = dns.message.make_query(name, kind, use_edns=payload > 0, payload=payload or 1232)
    if tcp:
        return dns.query.tcp(query, LISTEN, timeout=10)
    return dns.query.udp(query, LISTEN, timeout=10, ignore_trailing=False)


def addresses(reply: dns.message.Message) -> list[str]:
    return sorted(r.to_text() for rrset in reply.answer for r in rrset)


@root
def test_a_from_records_with_or_without_the_search_domain(server: Running) -> None:
    for name in ("web", "WWW", "web.dns.strata", "Db.DNS.Strata."):
        reply = ask(name)
        assert reply.rcode() == dns.rcode.NOERROR, name
        assert addresses(reply) == (["10.1.2.4"] if name.lower().startswith("db") else ["10.1.2.3"])
        assert reply.flags & dns.flags.AA


@root
def test_aaaa_of_a_known_name_is_an_empty_answer(server: Running, upstream: Upstream) -> None:
    reply = ask("web", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert upstream.asked == Counter()  # answered here, not forwarded


@root
def test_ptr_from_records(server: Running) -> None:
    reply = ask("3.2.1.10.in-addr.arpa", "PTR")
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == ["web.dns.strata."]


@root
def test_unknown_name_in_the_search_domain_is_nxdomain(server: Running, upstream: Upstream) -> None:
    reply = ask("nothere.dns.strata")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert upstream.asked == Counter()


@root
def test_rewritten_records_are_answered_at_once(server: Running) -> None:
    assert addresses(ask("web")) == ["10.1.2.3"]
    strata_dns.write_records(server.records, [("10.1.2.9", ["web"]), ("10.1.2.10", ["cache"])])
    assert addresses(ask("web")) == ["10.1.2.9"]
    assert addresses(ask("cache")) == ["10.1.2.10"]
    assert ask("db.dns.strata").rcode() == dns.rcode.NXDOMAIN
    server.records.unlink()  # a missing file is an empty one
    assert ask("web.dns.strata").rcode() == dns.rcode.NXDOMAIN


@root
def test_other_names_are_forwarded_past_a_dead_upstream(
    server: Running, upstream: Upstream
) -> None:
    reply = ask("example.test")
    assert reply.rcode() == dns.rcode.NOERROR
    assert addresses(reply) == ["198.51.100.7"]
    assert ask("nothere.test").rcode() == dns.rcode.NXDOMAIN  # the upstream's answer, relayed
    assert upstream.asked == Counter(udp=2)


@root
def test_no_upstream_answering_is_servfail(tmp_path: Path, needs_root: None) -> None:
    records = tmp_path / "records"
    strata_dns.write_records(records, [("10.1.2.3", ["web"])])
    run_dir = tmp_path / "run"
    strata_dns.start(run_dir, LISTEN, records, [DEAD])
    try:
        assert ask("example.test").rcode() == dns.rcode.SERVFAIL
        assert ask("example.test", tcp=True).rcode() == dns.rcode.SERVFAIL
        assert addresses(ask("web")) == ["10.1.2.3"]  # the records still answer
    finally:
        assert strata_dns.stop(run_dir)


@root
def test_tcp_queries_are_answered_and_forwarded_over_tcp(
    server: Running, upstream: Upstream
) -> None:
    assert addresses(ask("web", tcp=True)) == ["10.1.2.3"]
    assert addresses(ask("example.test", tcp=True)) == ["198.51.100.7"]
    assert upstream.asked == Counter(tcp=1)
    big = ask("big.test", "TXT", tcp=True)
    assert len(addresses(big)) == len(BIG_TXT)


@root
def test_a_truncated_answer_is_fetched_over_tcp(server: Running, upstream: Upstream) -> None:
    # the client takes 4096 bytes over UDP: the whole answer, fetched by TCP upstream, fits
    whole = ask("big.test", "TXT", payload=4096)
    assert not whole.flags & dns.flags.TC
    assert len(addresses(whole)) == len(BIG_TXT)
    assert upstream.asked == Counter(udp=1, tcp=1)
    # a plain 512-byte client gets the truncated answer, and would ask again over TCP
    cut = ask("big.test", "TXT")
    assert cut.flags & dns.flags.TC
    assert cut.answer == []


@root
def test_a_malformed_query_gets_formerr_and_the_server_goes_on(server: Running) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff", (LISTEN, 53))
        reply = s.recv(512)
    assert reply[:2] == b"\x12\x34"
    assert reply[2] & 0x80  # a response
    assert reply[3] & 0x0F == dns.rcode.FORMERR
    assert addresses(ask("web")) == ["10.1.2.3"]


@root
def test_the_server_is_detached(server: Running) -> None:
    # a session of its own (its leader, the process that bound the sockets and forked it,
    # has exited: the server cannot regain a controlling terminal)
    assert os.getsid(server.pid) not in (os.getsid(0), server.pid)
    assert os.readlink(f"/proc/{server.pid}/cwd") == "/"
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{server.pid}/fd/{fd}") == "/dev/null"
    with open(f"/proc/{server.pid}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    assert ppid != os.getpid()  # not our child: a wait(-1) of strata's monitor never meets it


@root
def test_start_is_idempotent_and_replaces_a_server_with_other_upstreams(
    server: Running, upstream: Upstream
) -> None:
    assert strata_dns.running(server.run_dir)
    again = strata_dns.start(server.run_dir, LISTEN, server.records, [DEAD, upstream.address])
    assert again == server.pid
    start = process_start_time(server.pid)
    assert start is not None
    other = strata_dns.start(server.run_dir, LISTEN, server.records, [upstream.address])
    try:
        assert other != server.pid
        assert _gone(server.pid, start)
        assert addresses(ask("example.test")) == ["198.51.100.7"]
    finally:
        strata_dns.stop(server.run_dir)


@root
def test_an_address_in_use_is_a_usage_error(server: Running, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        strata_dns.start(tmp_path / "other", LISTEN, server.records, [])
    assert caught.value.exit_code == 125
    assert "\n" not in str(caught.value)
    assert "in use" in str(caught.value)
    assert not strata_dns.running(tmp_path / "other")
    assert addresses(ask("web")) == ["10.1.2.3"]  # the first server is untouched


@root
def test_stop_ends_the_server_and_removes_its_pid_file(server: Running) -> None:
    start = process_start_time(server.pid)
    assert start is not None
    assert strata_dns.stop(server.run_dir)
    assert _gone(server.pid, start)
    assert not (server.run_dir / strata_dns.PID_FILE).exists()
    assert not strata_dns.running(server.run_dir)
    assert not strata_dns.stop(server.run_dir)


def test_stop_never_signals_a_pid_with_another_start_time(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    me = os.getpid()
    start = process_start_time(me)
    assert start is not None
    (run_dir / strata_dns.PID_FILE).write_text(
        f'{{"pid": {me}, "start": {start + 1}, "listen": "{LISTEN}", "records": "x",'
        ' "upstreams": []}\n'
    )
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        assert not strata_dns.running(run_dir)
        assert not strata_dns.stop(run_dir)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == []
    assert not (run_dir / strata_dns.PID_FILE).exists()


def test_records_parse_names_case_insensitively_and_skip_what_is_not_a_record() -> None:
    records = strata_dns.Records.parse(
        "# comment\n10.1.2.3 Web www # trailing\nnot-an-ip name\n10.1.2.4\n10.1.2.5 web\n"
    )
    assert records.addresses == {"web": ("10.1.2.3", "10.1.2.5"), "www": ("10.1.2.3",)}
    assert records.names == {"10.1.2.3": "Web", "10.1.2.5": "web"}


def test_write_records_refuses_what_it_could_not_read_back(tmp_path: Path) -> None:
    for bad in [("web", ["web"]), ("10.1.2.3", []), ("10.1.2.3", ["two words"])]:
        with pytest.raises(ValueError):  # noqa: PT011 - ipaddress's or ours
            strata_dns.write_records(tmp_path / "records", [bad])
    assert list(tmp_path.iterdir()) == []


def test_bridge_resolv_conf_names_the_gateway_only_when_the_host_has_a_stub_only() -> None:
    stub = "# systemd-resolved\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n"
    assert network.bridge_dns_upstreams(stub) == ("127.0.0.53",)
    text = network.resolv_conf("bridge", host=stub, forwarder="10.90.0.1")
    assert text.splitlines() == [
        "# systemd-resolved",
        "options edns0 trust-ad",
        "search lan",
        "nameserver 10.90.0.1",
    ]
    # a server reachable through NAT: the container gets it, and no forwarder is wanted
    mixed = "nameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"
    assert network.bridge_dns_upstreams(mixed) == ()
    assert network.resolv_conf("bridge", host=mixed).splitlines() == ["nameserver 192.0.2.53"]
    # IPv6 only (the bridge has no IPv6): relayed through the forwarder as well
    assert network.bridge_dns_upstreams("nameserver ::1\nnameserver 2001:db8::53\n") == (
        "::1",
        "2001:db8::53",
    )
    assert network.bridge_dns_upstreams("") == ()
    # --dns wins over the forwarder; host networking keeps the host's file as it is
    assert "10.90.0.1" not in network.resolv_conf(
        "bridge", dns=["192.0.2.1"], host=stub, forwarder="10.90.0.1"
    )
    assert network.resolv_conf("host", host=stub) == stub


def test_strata_run_does_not_import_dnspython() -> None:
    """Only the server process imports dnspython: `strata run`'s modules (and runtime.dns
    itself, which the monitor imports to start the server) must not."""
    probe = (
        "import sys, runtime.cli, runtime.monitor, runtime.lifecycle, runtime.dns; "
        "print(sorted(m for m in sys.modules if m == 'dns' or m.startswith('dns.')))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", probe], capture_output=True, text=True, check=True
    )
    assert done.stdout == "[]\n"
