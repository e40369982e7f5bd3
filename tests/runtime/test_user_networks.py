"""User networks (issue 15): `strata network create|ls|inspect|rm|prune`, containers that find
each other by name, short id and `--network-alias` through the network's DNS server, isolation
between networks, bad input, and what a monitor killed with SIGKILL leaves.

Only local addresses: the user networks' bridges (10.91.0.0/16) and strata0. Names looked up
from a container are the network's own (answered by the gateway's server, never forwarded) or
fully qualified in `dns.strata` (NXDOMAIN from the server itself): nothing leaves the host.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import dns, network, networks
from runtime.network import RUN_DIR
from runtime.networks import NetworkDef
from runtime.state import StateRoot
from tests.runtime.conftest import Strata, _cmdline, wait_for, wait_running
from unionfs.errors import UsageError

PORT = 8080
SERVE = [
    "/bin/sh",
    "-c",
    f"mkdir -p /www && hostname > /www/name && exec httpd -f -p {PORT} -h /www",
]


# -- unit tests (no root)


def test_pick_subnet_takes_the_first_free_24() -> None:
    pool = ipaddress.IPv4Network("10.91.0.0/16")
    used = [ipaddress.IPv4Network(n) for n in ("10.91.0.0/24", "10.91.1.128/25", "10.0.0.0/8")]
    assert networks.pick_subnet(used[:2], pool) == ipaddress.IPv4Network("10.91.2.0/24")
    assert networks.pick_subnet([], pool) == ipaddress.IPv4Network("10.91.0.0/24")
    with pytest.raises(UsageError) as exc:
        networks.pick_subnet(used, pool)  # a host route covering the whole pool
    assert exc.value.exit_code == 125
    assert "--subnet" in str(exc.value)


@pytest.mark.parametrize("name", ["sun-a", "a", "A_b.c-d", "x" * 128])
def test_good_network_names(name: str) -> None:
    networks.check_name(name)


@pytest.mark.parametrize(
    "name", ["", "-a", ".a", "a b", "a/b", "a:b", "x" * 129, "bridge", "host", "none"]
)
def test_bad_network_names(name: str) -> None:
    with pytest.raises(UsageError) as exc:
        networks.check_name(name)
    assert exc.value.exit_code == 125
    assert "\n" not in str(exc.value)


def test_gateway_must_be_a_host_address_of_the_subnet() -> None:
    net = ipaddress.IPv4Network("10.91.7.0/24")
    assert str(networks.parse_gateway("10.91.7.254", net)) == "10.91.7.254"
    for bad in ("10.91.8.1", "10.91.7.0", "10.91.7.255", "nonsense"):
        with pytest.raises(UsageError):
            networks.parse_gateway(bad, net)


def test_resolv_conf_names_the_gateway_and_dns_strata_first() -> None:
    host = "nameserver 127.0.0.53\nsearch example.test lan\noptions edns0\n"
    assert networks.resolv_conf("10.91.0.1", host=host) == (
        "nameserver 10.91.0.1\nsearch dns.strata example.test lan\noptions edns0\n"
    )
    assert networks.resolv_conf(
        "10.91.0.1", dns=["10.91.0.9"], search=["."], options=["ndots:2"], host=host
    ) == ("nameserver 10.91.0.1\nnameserver 10.91.0.9\nsearch dns.strata\noptions ndots:2\n")
    assert networks.host_nameservers(host + "nameserver ::1\nnameserver bad\n") == [
        "127.0.0.53",
        "::1",
    ]


def test_no_network_reaches_another_networks_gateway() -> None:
    """nft's input chain: from each bridge, the other bridges' subnets (their gateways) drop."""
    nets = {
        "strata0": ipaddress.IPv4Network("10.90.0.0/16"),
        "stbr0123456789": ipaddress.IPv4Network("10.91.0.0/24"),
    }
    doc = network.nat_document(nets)["nftables"]
    assert isinstance(doc, list)
    drops = sorted(
        (e[0]["match"]["right"], e[1]["match"]["right"]["prefix"]["addr"])
        for e in (c["add"]["rule"]["expr"] for c in doc if "rule" in c.get("add", {}))
        if len(e) == 3 and e[2] == {"drop": None} and "payload" in e[1]["match"]["left"]
    )
    assert drops == [("stbr0123456789", "10.90.0.0"), ("strata0", "10.91.0.0")]
    one = network.nat_document({"strata0": nets["strata0"]})["nftables"]
    assert isinstance(one, list)
    assert not [c for c in one if "drop" in json.dumps(c)]


def test_network_definitions_and_lookup(tmp_path: Path) -> None:
    root = StateRoot(tmp_path)
    (tmp_path / "networks").mkdir()
    defs = [
        NetworkDef("sun-a", "ab" * 32, "2026-01-01T00:00:00Z", "10.91.0.0/24", "10.91.0.1"),
        NetworkDef("sun-b", "ac" * 32, "2026-01-02T00:00:00Z", "10.91.1.0/24", "10.91.1.254"),
    ]
    for d in defs:
        (tmp_path / "networks" / f"{d.name}.json").write_text(json.dumps(d._asdict()))
    assert networks.definitions(root) == defs
    assert networks.find(root, "sun-b") == defs[1]
    assert networks.find(root, "ab" * 32) == defs[0]
    assert networks.find(root, "aba") == defs[0]  # a unique id prefix
    assert networks.find(root, "a") is None  # ambiguous
    assert networks.find(root, "sun-c") is None
    assert defs[0].bridge == "stbr" + "ab" * 5
    rows = networks.listing(root)
    assert [r[1] for r in rows] == ["bridge", "host", "none", "sun-a", "sun-b"]
    assert rows[3] == ("ab" * 6, "sun-a", "bridge", "local")


# -- on the host (root, fuse)


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _nft_rules_naming(words: list[str]) -> list[str]:
    done = subprocess.run(["nft", "-j", "list", "ruleset"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rules = [json.dumps(e) for e in json.loads(done.stdout)["nftables"] if "rule" in e]
    return [r for r in rules if any(w in r for w in words)]


def _pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _definition_files(strata: Strata) -> list[str]:
    try:
        return sorted(os.listdir(strata.root / "networks"))
    except FileNotFoundError:
        return []


def _create(strata: Strata, name: str, *args: str) -> NetworkDef:
    done = strata.run("network", "create", *args, name)
    assert done.returncode == 0, done.stderr
    defn = networks.find(StateRoot(strata.root), name)
    assert defn is not None
    assert done.stdout.strip() == defn.id
    return defn


@pytest.fixture
def nets(strata: Strata) -> Iterator[list[NetworkDef]]:
    """Collects the networks a test makes (append them); afterwards removes its containers and
    networks and checks that none of their bridges, nft rules or DNS servers is left."""
    made: list[NetworkDef] = []
    yield made
    strata.cleanup()
    done = strata.run("network", "prune")
    leftovers = []
    for d in made:
        if d.bridge in _links():
            leftovers.append(d.bridge)
            subprocess.run(["ip", "link", "del", d.bridge], check=False)
        if dns.running(d.dns_dir):
            leftovers.append(f"DNS server of {d.name}")
            dns.stop(d.dns_dir)
        if d.dns_dir.exists():
            leftovers.append(str(d.dns_dir))
    leftovers += _nft_rules_naming([d.bridge for d in made])
    assert done.returncode == 0, done.stderr
    assert not leftovers, f"left behind: {leftovers}"


@pytest.mark.root
@pytest.mark.fuse
def test_create_ls_inspect_rm_round_trip(
    strata: Strata, busybox: list[str], nets: list[NetworkDef]
) -> None:
    a = _create(strata, "sun-a")
    nets.append(a)
    b = _create(strata, "sun-b", "--subnet", "10.91.200.0/24", "--gateway", "10.91.200.254")
    nets.append(b)
    assert ipaddress.IPv4Network(a.subnet).subnet_of(networks.POOL)
    assert (b.subnet, b.gateway) == ("10.91.200.0/24", "10.91.200.254")
    assert _definition_files(strata) == ["sun-a.json", "sun-b.json"]

    listed = strata.run("network", "ls", check=True).stdout.splitlines()
    assert listed[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    rows = {line.split()[1]: line.split() for line in listed[1:]}
    assert sorted(rows) == ["bridge", "host", "none", "sun-a", "sun-b"]
    assert rows["sun-a"] == [a.id[:12], "sun-a", "bridge", "local"]
    assert rows["none"][2] == "null"
    quiet = strata.run("network", "ls", "-q", check=True).stdout.split()
    assert a.id[:12] in quiet

    done = strata.run("network", "inspect", "sun-a", b.id[:12], check=True)
    shown = json.loads(done.stdout)
    assert [n["Name"] for n in shown] == ["sun-a", "sun-b"]
    assert shown[0]["Id"] == a.id
    assert shown[0]["Driver"] == "bridge"
    assert shown[0]["Internal"] is False
    assert shown[0]["Containers"] == {}
    assert shown[1]["IPAM"]["Config"] == [{"Subnet": "10.91.200.0/24", "Gateway": "10.91.200.254"}]
    unknown = strata.run("network", "inspect", "sun-nope")
    assert unknown.returncode == 1
    assert len(unknown.stderr.splitlines()) == 1

    # the bridge carries the gateway (it may have been pruned by a concurrent test meanwhile)
    addrs = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "dev", b.bridge], capture_output=True, text=True
    )
    if addrs.returncode == 0:
        (link,) = json.loads(addrs.stdout)
        assert [i["local"] for i in link["addr_info"]] == ["10.91.200.254"]

    # a container on sun-b routes through its --gateway, and is named by its server there
    done = strata.run(
        "run", "--rm", "--name", "sun-c", "--network", "sun-b", *busybox, "/bin/sh", "-c",
        "ip route; nslookup sun-c",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "default via 10.91.200.254 dev eth0" in done.stdout
    assert "Address: 10.91.200.1\n" in done.stdout

    done = strata.run("network", "rm", "sun-a", "sun-b")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["sun-a", "sun-b"]
    assert _definition_files(strata) == []
    assert not {a.bridge, b.bridge} & _links()
    assert _nft_rules_naming([a.bridge, b.bridge]) == []
    assert strata.run("network", "rm", "sun-a").returncode == 1


def _bad(strata: Strata, *args: str) -> None:
    """`strata ARGS` fails with one line and exit 125."""
    done = strata.run(*args)
    assert done.returncode == 125, (done.stdout, done.stderr)
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.root
@pytest.mark.fuse
def test_bad_network_input_is_one_line_and_creates_nothing(
    strata: Strata, busybox: list[str], nets: list[NetworkDef]
) -> None:
    nets.append(_create(strata, "sun-a", "--subnet", "10.91.210.0/24"))
    before = _links()
    for args in (
        ["sun-a"],  # name in use
        ["--subnet", "10.91.300.0/24", "sun-b"],  # bad CIDR
        ["--subnet", "nonsense", "sun-b"],
        ["--subnet", "10.91.5.7/24", "sun-b"],  # host bits set
        ["--subnet", "10.91.210.128/25", "sun-b"],  # overlaps sun-a
        ["--subnet", "10.90.5.0/24", "sun-b"],  # overlaps strata0's 10.90.0.0/16
        ["--subnet", "10.91.211.0/24", "--gateway", "10.91.212.1", "sun-b"],
        ["--gateway", "10.91.211.1", "sun-b"],  # a gateway without a subnet
        ["bridge"],  # a built-in network's name
        ["bad/name"],
    ):
        _bad(strata, "network", "create", *args)
    assert _definition_files(strata) == ["sun-a.json"]
    assert not {n for n in _links() - before if n.startswith("stbr")}

    _bad(strata, "run", "--rm", "--network", "sun-nope", *busybox, "/bin/true")
    _bad(
        strata, "run", "--rm", "--network-alias", "x", "--network", "bridge", *busybox, "/bin/true"
    )
    _bad(strata, "create", "--network-alias", "x", "--network", "none", *busybox, "/bin/true")
    _bad(strata, "run", "--rm", "--network", "sun-a", "--subnet", "10.91.9.0/24", *busybox, "true")
    assert strata.container_ids() == []

    # in use by a container that does not run: refused, the network stays
    done = strata.run("create", "--name", "sun-c", "--network", "sun-a", *busybox, "/bin/true")
    assert done.returncode == 0, done.stderr
    _bad(strata, "network", "rm", "sun-a")
    assert _definition_files(strata) == ["sun-a.json"]
    assert "sun-a" not in strata.run("network", "prune", check=True).stdout.split()
    assert _definition_files(strata) == ["sun-a.json"]  # prune keeps a network in use


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return str(reply.read().decode())


def _serve(strata: Strata, busybox: list[str], name: str, network: str, *extra: str) -> str:
    """Run an httpd container on `network`; its address once it answers."""
    done = strata.run("run", "-d", "--name", name, "--network", network, *extra, *busybox, *SERVE)
    assert done.returncode == 0, done.stderr
    info = wait_running(strata, name)
    address = str(info["NetworkSettings"]["IPAddress"])  # type: ignore[index]

    def answers() -> bool:
        try:
            return bool(_fetch(f"http://{address}:{PORT}/name"))
        except OSError:
            return False

    wait_for(answers, f"{name}'s httpd")
    return address


@pytest.mark.root
@pytest.mark.fuse
def test_names_on_one_network_and_isolation_from_others(
    strata: Strata, busybox: list[str], nets: list[NetworkDef]
) -> None:
    a = _create(strata, "sun-a")
    nets.append(a)
    b = _create(strata, "sun-b")
    nets.append(b)
    address = _serve(strata, busybox, "sun-x", "sun-a", "--network-alias", "sun-web")
    x = strata.inspect("sun-x")
    short = str(x["Id"])[:12]
    assert x["NetworkSettings"]["Networks"] == {  # type: ignore[index]
        "sun-a": {"NetworkID": a.id, "IPAddress": address, "Aliases": ["sun-web"]}
    }
    shown = json.loads(strata.run("network", "inspect", "sun-a", check=True).stdout)[0]
    assert shown["Containers"] == {
        x["Id"]: {
            "Name": "sun-x",
            "IPv4Address": f"{address}/{a.net.prefixlen}",
            "IPv6Address": "",
        }
    }
    assert dns.running(a.dns_dir)

    script = " && ".join(
        [
            "cat /etc/resolv.conf",
            *(f"wget -q -O - http://{n}:{PORT}/name" for n in ("sun-x", "sun-web", short)),
            "nslookup sun-x",
            "nslookup sun-web.dns.strata",
        ]
    )
    done = strata.run("run", "--rm", "--network", "sun-a", *busybox, "/bin/sh", "-c", script)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"nameserver {a.gateway}\n" in out
    assert "search dns.strata" in out
    assert out.count(f"{short}\n") == 3  # the hostname httpd served, by name, alias and id
    assert out.count(f"Address: {address}") == 2  # nslookup, twice

    # another user network: no route through (nft drops between bridges), no names, and no
    # way to ask sun-a's server on sun-a's gateway (busybox's wget -T crashes on a failed
    # connect: nc -w instead)
    cut = strata.run(
        "run", "--rm", "--network", "sun-b", *busybox, "/bin/sh", "-c",
        f"nc -w 2 {address} {PORT} </dev/null; echo nc=$?;"
        " nslookup sun-x.dns.strata.; echo nslookup=$?;"
        f" nslookup -timeout=1 -retry=1 sun-x.dns.strata. {a.gateway}; echo other=$?",
    )  # fmt: skip
    assert cut.returncode == 0, cut.stderr
    assert "nc=1" in cut.stdout
    assert "nslookup=1" in cut.stdout
    assert "other=1" in cut.stdout
    assert short not in cut.stdout
    assert address not in cut.stdout.split("nc=1")[1]  # no answer for sun-x
    # the default bridge: no route either
    cut = strata.run(
        "run", "--rm", "--network", "bridge", *busybox, "/bin/sh", "-c",
        f"nc -w 2 {address} {PORT} </dev/null; echo nc=$?",
    )  # fmt: skip
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout.strip() == "nc=1"

    # sun-x's records go with it; the server stays, like the bridge, until rm or prune
    assert strata.run("stop", "-t", "1", "sun-x").returncode == 0
    assert dns.running(a.dns_dir)
    assert "sun-x" not in (a.dns_dir / "records").read_text()


@pytest.mark.root
@pytest.mark.fuse
@pytest.mark.parametrize("collector", [["rm", "sun-x"], ["network", "prune"]])
def test_what_a_killed_monitor_left_of_dns_is_collected(
    strata: Strata, busybox: list[str], nets: list[NetworkDef], collector: list[str]
) -> None:
    a = _create(strata, "sun-a")
    nets.append(a)
    done = strata.run(
        "run", "-d", "--name", "sun-x", "--network", "sun-a", *busybox, "/bin/sleep", "600"
    )
    assert done.returncode == 0, done.stderr
    info = wait_running(strata, "sun-x")
    os.kill(int(info["State"]["MonitorPid"]), signal.SIGKILL)  # type: ignore[index]

    def stopped() -> bool:
        state = strata.inspect("sun-x")["State"]
        return isinstance(state, dict) and not state["Running"]

    wait_for(stopped, "sun-x to be seen stopped")
    assert dns.running(a.dns_dir)  # nobody was left to stop it
    assert "sun-x" in (a.dns_dir / "records").read_text()
    done = strata.run(*collector)
    assert done.returncode == 0, done.stderr
    if collector[0] == "rm":  # the dead container's records go; the server stays until prune
        assert "sun-x" not in (a.dns_dir / "records").read_text()
        done = strata.run("network", "prune")
    assert not dns.running(a.dns_dir)
    assert not a.dns_dir.exists()
    if collector[0] == "network":
        assert "DNS server of sun-a" in done.stdout.splitlines()
        assert _definition_files(strata) == ["sun-a.json"]  # sun-x still uses it


@pytest.mark.root
@pytest.mark.fuse
def test_after_network_rm_and_prune_nothing_of_it_remains(
    strata: Strata, busybox: list[str], nets: list[NetworkDef]
) -> None:
    a = _create(strata, "sun-a")
    nets.append(a)
    p = _create(strata, "sun-p")
    nets.append(p)
    done = strata.run("run", "--rm", "--network", a.id[:12], *busybox, "/bin/hostname", "-i")
    assert done.returncode == 0, done.stderr  # a network by id prefix, as by name
    assert ipaddress.IPv4Address(done.stdout.strip()) in a.net
    assert strata.run("network", "rm", "sun-a").stdout.split() == ["sun-a"]
    done = strata.run("network", "prune", "-f")
    assert done.returncode == 0, done.stderr
    assert "sun-p" in done.stdout.splitlines()
    assert _definition_files(strata) == []
    assert not {a.bridge, p.bridge} & _links()
    assert _nft_rules_naming([a.bridge, p.bridge]) == []
    assert not a.dns_dir.exists()
    assert not (RUN_DIR / "leases" / a.bridge).exists()
    assert not (RUN_DIR / "leases" / p.bridge).exists()
    assert not [pid for pid in _pids() if str(a.dns_dir) in _cmdline(pid)]  # no DNS server


@pytest.mark.root
@pytest.mark.fuse
def test_a_port_published_from_a_user_network(
    strata: Strata, busybox: list[str], nets: list[NetworkDef]
) -> None:
    """-p works on a user network as on the default bridge (runtime.publish, its bridge)."""
    nets.append(_create(strata, "sun-a"))
    _serve(strata, busybox, "sun-x", "sun-a", "-p", f"127.0.0.1::{PORT}")
    done = strata.run("port", "sun-x", f"{PORT}/tcp", check=True)
    host = done.stdout.split()[0]  # 127.0.0.1:PORT
    assert host.startswith("127.0.0.1:")
    short = str(strata.inspect("sun-x")["Id"])[:12]
    assert _fetch(f"http://{host}/name") == f"{short}\n"
