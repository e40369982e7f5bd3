"""runtime.network helpers: subnets, addresses, /etc files."""

from __future__ import annotations

import ipaddress

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
