"""DNS that answers inside a bridge container (issue 15): through `--dns`, through the host's
resolv.conf when its server is reachable through NAT, and through strata's forwarder on the
gateway (runtime.dns) when the host's resolv.conf names only a loopback stub.

"The internet" is a network namespace the test makes (joined to the host by a veth on a /30 of
198.51.100.0/24, with no route back to the bridge's subnet), where Debian's dnsmasq answers for
the domain `test` only: `example.test` is 198.51.100.7 (A; AAAA is an empty answer, so that
busybox's nslookup, which asks both, succeeds), other names NXDOMAIN. The host's resolv.conf is
never touched: strata runs in a mount namespace of its own where a file of the test is
bind-mounted over /etc/resolv.conf. The loopback stub is dnsmasq again, on 127.0.N.54 in the
host's namespace, forwarding to the outside resolver (as systemd-resolved's 127.0.0.53 forwards
to the LAN's). Names are looked up in the container with busybox's nslookup.

The forwarder of the default bridge is one per host: a test skips while another run's is up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from runtime import dns as strata_dns
from runtime.network import DEFAULT_SUBNET, gateway, parse_subnet
from runtime.state import process_start_time
from tests.helpers import netns
from tests.runtime.conftest import STRATA, Strata, wait_for, wait_running

pytestmark = [pytest.mark.root, pytest.mark.fuse]

# A /30 of 198.51.100.0/24 and a loopback address per test process (not the first /30, which
# test_network_nat's /24 starts with), so that two checkouts' runs at once do not collide.
_SLICE = 4 * (1 + os.getpid() % 63)
OUTSIDE_HOST = f"198.51.100.{_SLICE + 1}"  # the host's end of the veth to "the internet"
RESOLVER = f"198.51.100.{_SLICE + 2}"  # dnsmasq in the outside namespace
STUB = f"127.0.{os.getpid() % 250}.54"  # the host's loopback stub (127.0.0.53 and the like)
ANSWER = "198.51.100.7"  # example.test
GATEWAY = str(gateway(parse_subnet(DEFAULT_SUBNET)))
LOOKUP = ["/bin/sh", "-c", "cat /etc/resolv.conf; nslookup example.test"]


def _dnsmasq() -> str:
    found = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin")
    if found is None:
        pytest.skip("needs dnsmasq (apt install dnsmasq-base)")
    return found


def _answers(server: str) -> bool:
    query = dns.message.make_query("example.test", "A")
    try:
        reply = dns.query.udp(query, server, timeout=1)
    except (OSError, dns.exception.Timeout):
        return False
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


@contextlib.contextmanager
def _dnsmasq_on(address: str, *flags: str, netns: str = "") -> Iterator[str]:
    """dnsmasq answering on ADDRESS:53 with `flags` (in network namespace `netns`, if given)
    until the block ends; yields ADDRESS once it answers."""
    enter = ["ip", "netns", "exec", netns] if netns else []
    server = subprocess.Popen(
        [*enter, _dnsmasq(), "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
         "--no-hosts", *flags, f"--listen-address={address}", "--bind-interfaces", "--pid-file="],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: _answers(address), f"dnsmasq on {address}")
        yield address
    finally:
        _stop(server)


def _forwarders() -> list[int]:
    """Pids of runtime.dns servers listening on the default bridge's gateway (by command line:
    `python -I -m runtime.dns SPEC READY_FD`, SPEC a JSON object)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError, TypeError, KeyError):
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            spec = json.loads(argv[argv.index(b"runtime.dns") + 1])
            if spec["listen"] == GATEWAY:
                found.append(int(name))
    return found


@pytest.fixture
def no_forwarder() -> Iterator[None]:
    """Skips while a bridge forwarder runs (another run's); afterwards checks none is left (and
    stops one that is, so that the next test starts clean)."""
    if strata_dns.running(strata_dns.bridge_run_dir()) or _forwarders():
        pytest.skip("a strata DNS forwarder already runs on this host")
    try:
        yield
    finally:
        left = _forwarders()
        strata_dns.stop(strata_dns.bridge_run_dir())
        assert left == [], f"DNS forwarder left running: {left}"


@pytest.fixture
def outside() -> Iterator[str]:
    """A network namespace standing for the internet, with dnsmasq answering example.test on
    RESOLVER:53; yields RESOLVER."""
    _dnsmasq()  # skips first if there is none
    with (
        netns.outside("sdn", f"{OUTSIDE_HOST}/30", f"{RESOLVER}/30") as ns,
        _dnsmasq_on(
            RESOLVER, f"--host-record=example.test,{ANSWER}", "--local=/test/", netns=ns
        ) as resolver,
    ):
        yield resolver


@pytest.fixture
def stub(outside: str) -> Iterator[str]:
    """A loopback stub resolver on STUB:53 in the host's namespace, forwarding to `outside`."""
    with _dnsmasq_on(STUB, f"--server={outside}") as stub:
        yield stub


def with_resolv_conf(strata: Strata, tmp_path: Path, text: str) -> Strata:
    """A `strata` that runs in a mount namespace of its own where /etc/resolv.conf is `text`."""
    conf = tmp_path / "resolv.conf"
    conf.write_text(text)
    wrapped = tmp_path / "strata-with-resolv-conf"
    wrapped.write_text(
        "#!/bin/sh\n"
        f"exec unshare --mount --propagation private /bin/sh -c "
        f'\'mount --bind {conf} /etc/resolv.conf && exec "$0" "$@"\' {STRATA} "$@"\n'
    )
    wrapped.chmod(0o755)
    return WrappedStrata(root=strata.root, tmp=strata.tmp, env=strata.env, program=str(wrapped))


@dataclass
class WrappedStrata(Strata):
    """`Strata` run through another program (the mount-namespace wrapper)."""

    program: str = STRATA

    def argv(self, command: str, *args: str) -> list[str]:
        return [self.program, *super().argv(command, *args)[1:]]


def nameservers(output: str) -> list[str]:
    return [line.split()[1] for line in output.splitlines() if line.startswith("nameserver ")]


def test_dns_flag_reaches_an_outside_resolver_through_nat(
    strata: Strata, busybox: list[str], outside: str, no_forwarder: None
) -> None:
    done = strata.run("run", "--rm", "--network", "bridge", "--dns", outside, *busybox, *LOOKUP)
    assert done.returncode == 0, done.stderr
    assert nameservers(done.stdout) == [outside]
    assert ANSWER in done.stdout
    assert _forwarders() == []  # a reachable server needs no forwarder


def test_host_resolver_reachable_through_nat_is_the_containers(
    strata: Strata, busybox: list[str], outside: str, no_forwarder: None, tmp_path: Path
) -> None:
    host = with_resolv_conf(strata, tmp_path, f"nameserver {STUB}\nnameserver {outside}\n")
    done = host.run("run", "--rm", "--network", "bridge", *busybox, *LOOKUP)
    assert done.returncode == 0, done.stderr
    assert nameservers(done.stdout) == [outside]  # the loopback one is dropped
    assert ANSWER in done.stdout
    assert _forwarders() == []


def test_a_loopback_stub_is_reached_through_the_forwarder_on_the_gateway(
    strata: Strata, busybox: list[str], stub: str, no_forwarder: None, tmp_path: Path
) -> None:
    host = with_resolv_conf(strata, tmp_path, f"# a stub\nnameserver {stub}\noptions edns0\n")
    done = host.run("run", "--rm", "--network", "bridge", *busybox, *LOOKUP)
    assert done.returncode == 0, done.stderr
    assert nameservers(done.stdout) == [GATEWAY]
    assert "options edns0" in done.stdout  # the rest of the host's file is kept
    assert ANSWER in done.stdout
    assert len(_forwarders()) == 1  # it stays with the bridge, for the next container
    assert "DNS forwarder" in strata.run("network", "prune").stdout.splitlines()
    assert _forwarders() == []
    assert not strata_dns.running(strata_dns.bridge_run_dir())


def test_the_forwarder_is_shared_and_stays_until_prune(
    strata: Strata, busybox: list[str], stub: str, no_forwarder: None, tmp_path: Path
) -> None:
    host = with_resolv_conf(strata, tmp_path, f"nameserver {stub}\n")
    done = host.run(
        "run", "-d", "--name", "a", "--network", "bridge", *busybox, "/bin/sleep", "600"
    )
    assert done.returncode == 0, done.stderr
    wait_running(strata, "a")
    (pid,) = _forwarders()
    start = process_start_time(pid)
    assert strata_dns.running(strata_dns.bridge_run_dir())
    # a second container shares it, and its exit leaves it to the first
    done = host.run("run", "--rm", "--network", "bridge", *busybox, *LOOKUP)
    assert done.returncode == 0, done.stderr
    assert ANSWER in done.stdout
    assert _forwarders() == [pid]
    users = strata_dns.bridge_run_dir() / strata_dns.USERS
    assert os.listdir(users) == [str(wait_running(strata, "a")["Id"])]
    # a's own lookups, through `exec`
    done = strata.run("exec", "a", "nslookup", "example.test")
    assert done.returncode == 0, done.stderr
    assert ANSWER in done.stdout
    assert strata.run("stop", "-t", "1", "a").returncode == 0
    assert _forwarders() == [pid]  # the bridge's, like the bridge: until prune
    assert os.listdir(users) == []
    # the next container reuses it: no start cost
    done = host.run("run", "--rm", "--network", "bridge", *busybox, *LOOKUP)
    assert ANSWER in done.stdout
    assert _forwarders() == [pid]
    pruned = strata.run("network", "prune")
    assert "DNS forwarder" in pruned.stdout.splitlines()
    assert _forwarders() == []
    assert process_start_time(pid) != start
    assert not (strata_dns.bridge_run_dir() / strata_dns.PID_FILE).exists()


def test_prune_stops_a_forwarder_a_killed_monitor_left(
    strata: Strata, busybox: list[str], stub: str, no_forwarder: None, tmp_path: Path
) -> None:
    host = with_resolv_conf(strata, tmp_path, f"nameserver {stub}\n")
    done = host.run(
        "run", "-d", "--name", "a", "--network", "bridge", *busybox, "/bin/sleep", "600"
    )
    assert done.returncode == 0, done.stderr
    state = wait_running(strata, "a")["State"]
    assert isinstance(state, dict)
    os.kill(int(state["MonitorPid"]), signal.SIGKILL)  # our own child's child

    def stopped() -> bool:
        info = strata.inspect("a")["State"]
        return isinstance(info, dict) and not info["Running"]

    wait_for(stopped, "the container to be seen stopped")
    assert len(_forwarders()) == 1  # nobody was left to stop it
    pruned = strata.run("network", "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "DNS forwarder" in pruned.stdout.splitlines()
    assert _forwarders() == []
