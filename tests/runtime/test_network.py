"""runtime.network helpers: subnets, addresses, /etc files."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from runtime import network
from unionfs.errors import UsageError


def test_network_helpers() -> None:
    net = network.parse_subnet("10.90.0.0/16")
    assert network.gateway(net) == ipaddress.IPv4Address("10.90.0.1")
    assert network.allocate_address(net, []) == "10.90.0.2"
    assert network.allocate_address(net, ["10.90.0.2", "10.90.0.3"]) == "10.90.0.4"
    with pytest.raises(UsageError, match="no free address"):
        network.allocate_address(network.parse_subnet("10.0.0.0/30"), ["10.0.0.2"])
    with pytest.raises(UsageError):
        network.parse_subnet("10.0.0.0/31")
    assert network.hosts_file("box", "10.90.0.2").splitlines()[-1] == "10.90.0.2\tbox"
    assert network.hosts_file("box", None).splitlines()[-1] == "127.0.1.1\tbox"
    assert network.resolv_conf("none") == ""
    assert network.veth_name("a" * 64) == "vs" + "a" * 12


def test_hosts_file_names_the_container_and_adds_hosts() -> None:
    text = network.hosts_file(
        "box", "10.90.0.2", name="web", extra=[("db", "10.1.2.3"), ("v6", "2001:db8::1")]
    )
    assert text.splitlines()[2:] == ["10.90.0.2\tbox web", "10.1.2.3\tdb", "2001:db8::1\tv6"]
    assert network.hosts_file("box", None, name="box").splitlines()[-1] == "127.0.1.1\tbox"


@pytest.mark.parametrize(
    ("value", "name", "ip"),
    [
        ("db:10.1.2.3", "db", "10.1.2.3"),
        ("db=10.1.2.3", "db", "10.1.2.3"),
        ("v6:2001:db8::1", "v6", "2001:db8::1"),
        ("v6=[2001:db8::1]", "v6", "2001:db8::1"),
        ("gw:host-gateway", "gw", "host-gateway"),
    ],
)
def test_add_host_forms(value: str, name: str, ip: str) -> None:
    assert network.split_add_host(value) == (name, ip)
    assert network.parse_add_hosts([value], "bridge") == (value,)


def test_host_gateway_is_the_bridge_gateway_or_loopback() -> None:
    net = network.parse_subnet("10.90.0.0/16")
    assert network.host_gateway("bridge", net) == "10.90.0.1"
    assert network.host_gateway("host", None) == "127.0.0.1"


def test_resolv_conf_options_replace_the_hosts_lines() -> None:
    text = network.resolv_conf(
        "none", dns=["192.0.2.53", "2001:db8::53"], search=["a.test", "b.test"], options=["ndots:2"]
    )
    assert text.splitlines() == [
        "nameserver 192.0.2.53",
        "nameserver 2001:db8::53",
        "search a.test b.test",
        "options ndots:2",
    ]
    assert "search" not in network.resolv_conf("none", dns=["192.0.2.53"], search=["."])
    # --dns alone keeps the host's search and options lines but none of its servers
    kept = network.resolv_conf("host", dns=["192.0.2.53"])
    assert [ln for ln in kept.splitlines() if ln.startswith("nameserver")] == [
        "nameserver 192.0.2.53"
    ]


def test_nat_document_masquerades_each_network_and_isolates_them() -> None:
    doc: Any = network.nat_document(
        {
            "strata0": network.parse_subnet("10.90.0.0/16"),
            "stbr0123456789": network.parse_subnet("10.91.3.0/24"),
        }
    )

    def word(e: Any) -> str:
        if "match" not in e:
            return str(next(iter(e)))
        right = e["match"]["right"]
        if isinstance(right, dict):
            right = f"{right['prefix']['addr']}/{right['prefix']['len']}"
        return f"{e['match']['op']}{right}"

    shapes = [
        (c["add"]["rule"]["chain"], *(word(e) for e in c["add"]["rule"]["expr"]))
        for c in doc["nftables"]
        if "rule" in c.get("add", {})
    ]
    # traffic between two strata networks is dropped, both ways, before any accept
    assert sorted(shapes[:2]) == [
        ("forward", "==stbr0123456789", "==strata0", "drop"),
        ("forward", "==strata0", "==stbr0123456789", "drop"),
    ]
    assert ("postrouting", "==10.90.0.0/16", "!=strata0", "masquerade") in shapes
    assert ("postrouting", "==10.91.3.0/24", "!=stbr0123456789", "masquerade") in shapes
    assert ("forward", "==stbr0123456789", "==10.91.3.0/24", "accept") in shapes


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        ("strata0", True),
        ("stbr0123456789", True),
        ("stbr01234", False),
        ("stbrXYZ3456789", False),
        ("docker0", False),
    ],
)
def test_which_bridges_are_strata_s(name: str, ours: bool) -> None:
    assert network.is_strata_bridge(name) is ours
