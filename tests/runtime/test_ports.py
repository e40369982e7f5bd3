"""Published ports (`-p`, `-P`, `strata port`) on the bridge network, end to end: busybox httpd
in a container reached from the host over loopback and over a host address, from another
container and from itself (hairpin), UDP, a host port range, -P, a port in use, and the nft
rules going with the container (also after SIGKILL of its monitor).

Only local addresses are used: loopback, the bridge, and a veth the test adds on TEST-NET-3
(203.0.113.0/24) to a network namespace of its own: the host's end stands for "an address of the
host", the namespace for a client beyond the host. Host ports are
picked free by the test (or by strata: `-p 80`). The rules are looked for in
`nft -j list ruleset`: every chain of table `ip strata_ports` carries its container's id.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.network import BRIDGE, RUN_DIR, veth_name
from runtime.publish import NFT_FAMILY, NFT_TABLE
from tests.helpers import netns
from tests.helpers.images import DebianRootfs
from tests.runtime.conftest import Strata, wait_for, wait_running

pytestmark = [pytest.mark.root, pytest.mark.fuse]

HOST_ADDRESS = "203.0.113.77"  # on the test's veth: an address of the host
OUTSIDE = "203.0.113.78"  # the other end, in a network namespace: beyond the host
HTTPD = ["/bin/httpd", "-f", "-p", "80", "-h", "/www"]


def _port_chains() -> list[str]:
    """The chains of table ip strata_ports, from `nft -j list ruleset`."""
    done = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return sorted(
        e["chain"]["name"]
        for e in json.loads(done.stdout)["nftables"]
        if "chain" in e and e["chain"]["family"] == NFT_FAMILY and e["chain"]["table"] == NFT_TABLE
    )


def _chains_of(cid: str) -> list[str]:
    return [name for name in _port_chains() if name.endswith(cid)]


def _leases() -> list[str]:
    """The host-wide address leases (runtime.network), as text."""
    found = []
    for path in (RUN_DIR / "leases").glob("*/*"):
        with contextlib.suppress(OSError):
            found.append(path.read_text())
    return found


def _free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(host: str, port: int, timeout: float = 2.0) -> str | None:
    """The body of http://HOST:PORT/, or None if it cannot be had (yet)."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/", timeout=timeout) as reply:
            return str(reply.read().decode())
    except OSError:
        return None


def _serving(host: str, port: int) -> str:
    body: list[str] = []

    def answered() -> bool:
        got = _get(host, port, timeout=1.0)
        if got is not None:
            body.append(got)
        return got is not None

    wait_for(answered, f"http://{host}:{port}/ to answer")
    return body[0]


def _ports(strata: Strata, ref: str, *private: str) -> list[str]:
    done = strata.run("port", ref, *private)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture
def www(tmp_path: Path) -> list[str]:
    """A page for httpd, as `-v` arguments."""
    (tmp_path / "www").mkdir()
    (tmp_path / "www/index.html").write_text("hello from the container\n")
    return ["-v", f"{tmp_path / 'www'}:/www:ro"]


@pytest.fixture
def outside() -> Iterator[str]:
    """A network namespace (OUTSIDE) joined to the host by a veth on 203.0.113.0/24, the host's
    end holding HOST_ADDRESS: a client from beyond the host, and an address of the host that is
    not loopback. Yields the namespace's name."""
    with netns.outside("spt", f"{HOST_ADDRESS}/24", f"{OUTSIDE}/24") as ns:
        yield ns


@pytest.fixture
def host_address(outside: str) -> str:
    return HOST_ADDRESS


def _get_from(ns: str, host: str, port: int) -> str:
    """http://HOST:PORT/ fetched from network namespace `ns`."""
    fetch = (
        "import sys, urllib.request\n"
        f"sys.stdout.write(urllib.request.urlopen('http://{host}:{port}/', timeout=10)"
        ".read().decode())\n"
    )
    return _python_in(ns, fetch)


def _python_in(ns: str, code: str) -> str:
    """What Python `code` prints, run in network namespace `ns`."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def no_rules_left(strata: Strata) -> Iterator[None]:
    """After the test (and the removal of its containers): none of its containers' chains."""
    yield
    strata.cleanup()
    ours = [c for c in _port_chains() for cid in strata.seen if c.endswith(cid)]  # type: ignore[attr-defined]
    assert ours == [], f"left behind: {ours}"


@pytest.fixture(autouse=True)
def _remember_ids(strata: Strata, monkeypatch: pytest.MonkeyPatch) -> None:
    """Note every container id the test's root ever held (for `no_rules_left`)."""
    seen: set[str] = set()
    strata.seen = seen  # type: ignore[attr-defined]
    original = strata.container_ids

    def ids() -> list[str]:
        found = original()
        seen.update(found)
        return found

    monkeypatch.setattr(strata, "container_ids", ids)


def _detached(strata: Strata, *args: str) -> str:
    done = strata.run("run", "-d", "--network", "bridge", *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_http_from_the_host_outside_and_other_containers(
    strata: Strata,
    busybox: list[str],
    www: list[str],
    outside: str,
    host_address: str,
    no_rules_left: None,
) -> None:
    port, local_port = _free_port(), _free_port()
    cid = _detached(
        strata, "--name", "web", "-p", f"{port}:80", "-p", f"127.0.0.1:{local_port}:80",
        "-p", "80", *www, *busybox, *HTTPD,
    )  # fmt: skip
    info = wait_running(strata, "web")
    lines = _ports(strata, "web")
    picked = next(
        int(p)
        for p in (x.rpartition(":")[2] for x in lines)
        if int(p) != port and int(p) != local_port
    )
    low, high = sorted([port, picked])
    assert lines == [
        f"80/tcp -> 0.0.0.0:{low}",
        f"80/tcp -> 0.0.0.0:{high}",
        f"80/tcp -> 127.0.0.1:{local_port}",
    ]
    assert sorted(_ports(strata, "web", "80/tcp")) == sorted(
        [f"0.0.0.0:{port}", f"0.0.0.0:{picked}", f"127.0.0.1:{local_port}"]
    )
    settings = info["NetworkSettings"]
    assert isinstance(settings, dict)
    assert sorted(settings["Ports"]["80/tcp"], key=lambda b: (b["HostIp"], int(b["HostPort"]))) == [
        {"HostIp": "0.0.0.0", "HostPort": str(p)} for p in sorted([port, picked])
    ] + [{"HostIp": "127.0.0.1", "HostPort": str(local_port)}]
    assert sorted(_chains_of(cid)) == [f"out-{cid}", f"post-{cid}", f"pre-{cid}"]

    page = "hello from the container\n"
    assert _serving("127.0.0.1", port) == page  # the host, over loopback
    assert _get("127.0.0.1", picked) == page
    assert _get("127.0.0.1", local_port) == page
    assert _get(host_address, port) == page  # the host, over another of its addresses
    assert _get(host_address, local_port) is None  # published on 127.0.0.1 only
    gateway = str(info["NetworkSettings"]["IPAddress"]).rsplit(".", 1)[0] + ".1"  # type: ignore[index]
    assert _get(gateway, port) == page  # the bridge's address is the host's too

    assert _get_from(outside, host_address, port) == page  # from beyond the host
    # another container, through the host's address (hairpin), then through the gateway
    for address in (host_address, gateway):
        done = strata.run(
            "run", "--rm", "--network", "bridge", *busybox,
            "/bin/wget", "-q", "-O", "-", f"http://{address}:{port}/",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout == page


def test_a_container_reaches_its_own_published_port(
    strata: Strata, busybox: list[str], www: list[str], host_address: str, no_rules_left: None
) -> None:
    port = _free_port()
    script = f"httpd -p 80 -h /www && wget -q -O - http://{host_address}:{port}/"
    done = strata.run(
        "run", "--rm", "--network", "bridge", "-p", f"{port}:80", *www, *busybox,
        "/bin/sh", "-c", script,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from the container\n"


UDP_ECHO = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('0.0.0.0', 5353))\n"
    "while True:\n"
    "    data, peer = s.recvfrom(512)\n"
    "    s.sendto(b'echo: ' + data, peer)\n"
)


def test_udp(
    strata: Strata, debian_rootfs: DebianRootfs, host_address: str, no_rules_left: None
) -> None:
    port = _free_port(socket.SOCK_DGRAM)
    _detached(strata, "--name", "udp", "-p", f"{port}:5353/udp", str(debian_rootfs.path),
              "python3", "-c", UDP_ECHO)  # fmt: skip
    wait_running(strata, "udp")
    assert _ports(strata, "udp") == [f"5353/udp -> 0.0.0.0:{port}"]
    for address in ("127.0.0.1", host_address):
        replies: list[bytes] = []

        def echoed(address: str = address, replies: list[bytes] = replies) -> bool:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.5)
                with contextlib.suppress(OSError):  # no answer (yet)
                    s.sendto(b"datagram", (address, port))
                    replies.append(s.recv(512))
            return bool(replies)

        wait_for(echoed, f"an answer from udp://{address}:{port}")
        assert replies == [b"echo: datagram"]


def test_a_host_port_range_takes_its_first_free_port(
    strata: Strata, busybox: list[str], www: list[str], no_rules_left: None
) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        first = int(busy.getsockname()[1])
        cid = _detached(
            strata, "--name", "web", "-p", f"{first}-{first + 5}:80", *www, *busybox, *HTTPD
        )
        wait_running(strata, "web")
        (line,) = _ports(strata, "web")
        taken = int(line.rpartition(":")[2])
        assert first < taken <= first + 5
        assert _serving("127.0.0.1", taken) == "hello from the container\n"
        host_config = strata.inspect("web")["HostConfig"]
        assert isinstance(host_config, dict)
        assert host_config["PortBindings"] == {
            "80/tcp": [{"HostIp": "", "HostPort": f"{first}-{first + 5}"}]
        }
    assert strata.run("stop", "-t", "1", cid).returncode == 0
    assert _chains_of(cid) == []


def test_publish_all_publishes_the_exposed_ports(strata: Strata, no_rules_left: None) -> None:
    from tests.images.test_load import _archive

    strata.run("load", "-q", "-i", str(_archive("oci")), check=True)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM uniontest:1\nEXPOSE 80 53/udp\n")
    strata.run("build", "-q", "-t", "exposing:1", str(ctx), check=True)
    port = _free_port()
    _detached(strata, "--name", "all", "-P", "-p", f"{port}:80", "exposing:1",
              "/bin/sleep", "600")  # fmt: skip
    info = wait_running(strata, "all")
    lines = _ports(strata, "all")
    assert lines[1] == f"80/tcp -> 0.0.0.0:{port}"  # -p wins over -P for 80/tcp
    assert lines[0].startswith("53/udp -> 0.0.0.0:")
    assert len(lines) == 2
    config = info["Config"]
    host_config = info["HostConfig"]
    assert isinstance(config, dict)
    assert isinstance(host_config, dict)
    assert config["ExposedPorts"] == {"53/udp": {}, "80/tcp": {}}
    assert host_config["PublishAllPorts"] is True


def test_a_port_in_use_refuses_the_start_and_creates_nothing(
    strata: Strata, busybox: list[str], no_rules_left: None
) -> None:
    links = set(os.listdir("/sys/class/net"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = int(busy.getsockname()[1])
        done = strata.run(
            "run", "--network", "bridge", "-p", f"127.0.0.1:{port}:80", *busybox, "/bin/true"
        )
        assert done.returncode == 125
        assert done.stderr == (
            f"strata: -p 127.0.0.1:{port}:80/tcp: host port 127.0.0.1:{port}/tcp"
            " is already in use\n"
        )
        assert strata.container_ids() == []
        # every address clashes with one of them
        done = strata.run("run", "--network", "bridge", "-p", f"{port}:80", *busybox, "/bin/true")
        assert done.returncode == 125
        assert "is already in use" in done.stderr
        assert strata.container_ids() == []
        # a created container stays as it was
        created = strata.run(
            "create", "--name", "c", "--network", "bridge", "-p", f"{port}:80", *busybox,
            "/bin/true",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        cid = created.stdout.strip()
        state_file = strata.containers_dir() / cid / "state.json"
        before = state_file.read_text()
        done = strata.run("start", "c")
        assert done.returncode == 125
        assert done.stderr.count("\n") == 1
        assert "is already in use" in done.stderr
        assert json.loads(state_file.read_text()) == json.loads(before)
        assert _chains_of(cid) == []
        assert veth_name(cid) not in os.listdir("/sys/class/net")
        assert not any(cid in lease for lease in _leases())  # not even an address lease
    assert not {n for n in set(os.listdir("/sys/class/net")) - links if n.startswith("vs")}


def test_rules_go_when_the_container_exits(
    strata: Strata, busybox: list[str], www: list[str], no_rules_left: None
) -> None:
    cid = _detached(strata, "--name", "web", "-p", "80", *www, *busybox, *HTTPD)
    wait_running(strata, "web")
    (line,) = _ports(strata, "web")
    port = int(line.rpartition(":")[2])
    assert _serving("127.0.0.1", port)
    assert len(_chains_of(cid)) == 3
    (row,) = json.loads(strata.run("ps", "--format", "json", check=True).stdout)
    assert row["Ports"] == f"0.0.0.0:{port}->80/tcp"
    assert f"0.0.0.0:{port}->80/tcp" in strata.run("ps", check=True).stdout
    assert strata.run("stop", "-t", "1", "web").returncode == 0
    assert _chains_of(cid) == []
    assert _ports(strata, "web") == []
    state = json.loads((strata.containers_dir() / cid / "state.json").read_text())
    assert state["ports"] == []
    settings = strata.inspect("web")["NetworkSettings"]
    assert isinstance(settings, dict)
    assert settings["Ports"] == {}
    # and the port is free again
    with socket.socket() as s:
        s.bind(("0.0.0.0", port))


@pytest.mark.parametrize("collector", [["rm", "web"], ["network", "prune"], ["start", "web"]])
def test_rules_a_killed_monitor_left_are_collected(
    strata: Strata, busybox: list[str], www: list[str], no_rules_left: None, collector: list[str]
) -> None:
    cid = _detached(strata, "--name", "web", "-p", "80", *www, *busybox, *HTTPD)
    state = wait_running(strata, "web")["State"]
    assert isinstance(state, dict)
    os.kill(int(state["MonitorPid"]), signal.SIGKILL)

    def stopped() -> bool:
        info = strata.inspect("web")["State"]
        return isinstance(info, dict) and not info["Running"]

    wait_for(stopped, "the container to be seen stopped")
    assert len(_chains_of(cid)) == 3  # nobody was left to remove them
    done = strata.run(*collector)
    assert done.returncode == 0, done.stderr
    if collector[0] == "start":  # its new run replaced them; they go with its stop
        assert len(_chains_of(cid)) == 3
        assert strata.run("stop", "-t", "1", "web").returncode == 0
    assert _chains_of(cid) == []


def test_publishing_with_host_or_none(strata: Strata, busybox: list[str]) -> None:
    done = strata.run("run", "--rm", "--network", "host", "-p", "80", *busybox, "/bin/true")
    assert done.returncode == 0
    assert done.stderr == (
        "strata: warning: published ports are discarded when using host network mode\n"
    )
    done = strata.run("run", "--rm", "--network", "none", "-p", "80", *busybox, "/bin/true")
    assert done.returncode == 125
    assert done.stderr == "strata: -p/-P: no ports can be published with --network none\n"
    done = strata.run("run", "--rm", "--network", "bridge", "-p", "80/sctp", *busybox, "/bin/true")
    assert done.returncode == 125
    assert done.stderr == "strata: -p 80/sctp: protocol 'sctp': expected tcp or udp\n"
    assert strata.container_ids() == []


def test_publishing_nothing_makes_no_rules(
    strata: Strata, busybox: list[str], no_rules_left: None
) -> None:
    cid = _detached(strata, "--name", "plain", *busybox, "/bin/sleep", "600")
    wait_running(strata, "plain")
    assert _chains_of(cid) == []
    assert _ports(strata, "plain") == []


@pytest.fixture
def rogue(strata: Strata) -> Iterator[str]:
    """A network namespace plugged into strata's bridge as a container would be, with its own
    lo down and a route sending 127.0.0.0/8 to the bridge's gateway: what a container with
    CAP_NET_ADMIN could set up. Yields the namespace's name (the bridge must exist)."""
    done = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", BRIDGE], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    (info,) = [a for link in json.loads(done.stdout) for a in link["addr_info"]]
    net = ipaddress.IPv4Interface(f"{info['local']}/{info['prefixlen']}").network
    ns, link = f"spt-rogue-{os.getpid()}", f"sptr{os.getpid() % 10**8}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", ns)
    try:
        ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", link, "master", BRIDGE, "up")
        ip("-n", ns, "addr", "add", f"{net.broadcast_address - 1}/{net.prefixlen}", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        subprocess.run(
            ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1"],
            check=True,
        )
        ip("-n", ns, "route", "add", "127.0.0.0/8", "via", info["local"], "dev", "eth0")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        if os.path.exists(f"/sys/class/net/{link}"):
            subprocess.run(["ip", "link", "del", link], check=False)


def test_route_localnet_does_not_open_the_hosts_loopback_to_containers(
    strata: Strata, busybox: list[str], no_rules_left: None, request: pytest.FixtureRequest
) -> None:
    """The bridge gets route_localnet (for the host's connections to 127.0.0.1:PORT), which
    would let a container send to the host's 127.0.0.1 through its gateway; the guard drops
    that (CVE-2020-8558, kube-proxy's): a service on the host's loopback stays out of reach."""
    _detached(strata, "--name", "pub", "-p", "80", *busybox, "/bin/sleep", "600")
    wait_running(strata, "pub")
    assert Path(f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet").read_text() == "1\n"
    ns = request.getfixturevalue("rogue")  # once the bridge is there
    with socket.socket() as service:
        service.bind(("127.0.0.1", 0))
        service.listen()
        port = int(service.getsockname()[1])
        probe = (
            "import socket\n"
            "s = socket.socket()\n"
            "s.settimeout(2)\n"
            "try:\n"
            f"    s.connect(('127.0.0.1', {port}))\n"
            "    print('reached')\n"
            "except OSError as exc:\n"
            "    print(type(exc).__name__)\n"
        )
        assert _python_in(ns, probe) == "TimeoutError\n"  # dropped, not even refused
