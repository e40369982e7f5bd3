"""`-p/--publish` read as docker reads it (runtime.ports), the canonical text kept in
config.json, `-P`'s exposed ports, and what `inspect` and `strata port` make of them
(runtime.publish). No root needed: nothing is bound or forwarded here."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from runtime.ports import PortMapping, exposed_ports, parse_publish, parse_publish_all
from runtime.publish import check_mode, inspect_fields, port_lines, ps_ports, reserve, wanted
from runtime.state import (
    RUNNING,
    ContainerConfig,
    ContainerDir,
    ContainerState,
    now,
    process_start_time,
)
from unionfs.errors import UsageError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("80", [":0:80/tcp"]),
        ("8080:80", [":8080:80/tcp"]),
        ("8080:80/udp", [":8080:80/udp"]),
        ("8080:80/UDP", [":8080:80/udp"]),
        ("127.0.0.1:8080:80", ["127.0.0.1:8080:80/tcp"]),
        ("127.0.0.1::80", ["127.0.0.1:0:80/tcp"]),
        (":8080:80", [":8080:80/tcp"]),
        ("[::1]:8080:80", ["[::1]:8080:80/tcp"]),
        ("[::1]::80/udp", ["[::1]:0:80/udp"]),
        ("8000-8002:80-82", [":8000:80/tcp", ":8001:81/tcp", ":8002:82/tcp"]),
        ("80-81", [":0:80/tcp", ":0:81/tcp"]),
        ("8000-8010:80", [":8000-8010:80/tcp"]),  # docker's: the first free port of the range
        ("10.0.0.1:8000-8010:80/udp", ["10.0.0.1:8000-8010:80/udp"]),
        ("65535:1", [":65535:1/tcp"]),
    ],
)
def test_publish_specs_read_as_docker_reads_them(spec: str, expected: list[str]) -> None:
    mappings = parse_publish(spec)
    assert [m.text() for m in mappings] == expected
    # the canonical text (config.json) reads back to the same mapping
    assert [PortMapping.from_text(text) for text in expected] == list(mappings)


def test_a_bare_container_port_takes_a_free_host_port_on_every_address() -> None:
    (m,) = parse_publish("80")
    assert m == PortMapping("", 0, 80, "tcp")
    assert m.text() == ":0:80/tcp"
    assert m.key() == "80/tcp"


def test_a_host_range_for_one_port_keeps_the_range() -> None:
    (m,) = parse_publish("8000-8010:80")
    assert (m.host_port, m.host_port_last, m.container_port) == (8000, 8010, 80)
    assert list(m.host_ports()) == list(range(8000, 8011))
    assert PortMapping.from_text(m.text()) == m


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]"),
        ("8080:", "expected [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]"),
        ("1:2:3:4", "expected [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]"),
        ("80/sctp", "protocol 'sctp': expected tcp or udp"),
        ("80/", "protocol '': expected tcp or udp"),
        ("http", "container port 'http' is not a port or range"),
        ("0", "container port '0' is not within 1-65535"),
        ("65536", "container port '65536' is not within 1-65535"),
        ("8080:0", "container port '0' is not within 1-65535"),
        ("70000:80", "host port '70000' is not within 1-65535"),
        ("82-80", "container port '82-80' is not within 1-65535"),
        ("8000-8001:80-82", "the host and container ranges differ in length"),
        ("localhost:8080:80", "'localhost' is not an IP address"),
        ("300.1.1.1:8080:80", "'300.1.1.1' is not an IP address"),
        ("[::1:8080:80", "expected [IPv6]:HOST_PORT:CONTAINER_PORT"),
        ("[nope]:8080:80", "'nope' is not an IP address"),
    ],
)
def test_bad_publish_specs_are_one_line_and_125(spec: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_publish(spec)
    assert caught.value.exit_code == 125
    assert str(caught.value) == f"-p {spec}: {message}"


def test_a_host_port_published_twice_is_refused() -> None:
    with pytest.raises(UsageError) as caught:
        parse_publish_all(["8080:80", "127.0.0.1:8080:81"])
    assert str(caught.value) == "-p: host port 8080/tcp is published twice"
    assert caught.value.exit_code == 125


def test_the_same_host_port_on_other_addresses_or_protocols_is_fine() -> None:
    mappings = parse_publish_all(
        ["127.0.0.1:8080:80", "127.0.0.2:8080:80", "8080:80/udp", "80", "80", "9000-9009:80"]
    )
    assert len(mappings) == 6
    # ranges and free ports are not checked: each takes a port left free when it starts
    parse_publish_all(["9000-9009:80", "9000-9009:81", "9005:82"])


def test_exposed_ports_go_to_free_host_ports() -> None:
    assert exposed_ports(["80/tcp", "53/udp", "8000-8001/tcp", "9/sctp", "443"]) == (
        PortMapping("", 0, 80, "tcp"),
        PortMapping("", 0, 53, "udp"),
        PortMapping("", 0, 8000, "tcp"),
        PortMapping("", 0, 8001, "tcp"),
        PortMapping("", 0, 443, "tcp"),
    )


def _config(**changes: object) -> ContainerConfig:
    values: dict[str, object] = {
        "id": "c" * 64,
        "name": "web",
        "created": now(),
        "image": "img",
        "layers": (),
        "argv": ("/bin/true",),
        "env": (),
        "workdir": "/",
        "user": "",
        "hostname": "web",
        "network": "bridge",
    }
    return ContainerConfig(**(values | changes))  # type: ignore[arg-type]


def test_what_a_container_publishes() -> None:
    cfg = _config(ports=(":8080:80/tcp",), publish_all=True, exposed_ports=("80/tcp", "53/udp"))
    # -p names 80/tcp already: -P adds only 53/udp (docker's precedence)
    assert wanted(cfg) == (PortMapping("", 8080, 80), PortMapping("", 0, 53, "udp"))
    assert wanted(_config(exposed_ports=("80/tcp",))) == ()  # no -P
    assert wanted(_config(network="host", ports=(":8080:80/tcp",))) == ()
    assert wanted(_config(network="none", publish_all=True, exposed_ports=("80/tcp",))) == ()


def test_publishing_on_host_is_ignored_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    check_mode(parse_publish("8080:80"), False, "host")
    assert capsys.readouterr().err == (
        "strata: warning: published ports are discarded when using host network mode\n"
    )
    check_mode((), False, "none")  # nothing published: nothing to say
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("specs", "publish_all", "mode", "message"),
    [
        (["8080:80"], False, "none", "-p/-P: no ports can be published with --network none"),
        ([], True, "none", "-p/-P: no ports can be published with --network none"),
        (["80"], False, "container:a", "-p/-P: no ports can be published with --network container:a"),
        (["[::1]:8080:80"], False, "bridge",
         "-p [::1]:8080:80/tcp: IPv6 host addresses are not supported (the bridge is IPv4)"),
    ],
)  # fmt: skip
def test_publishing_without_a_network_of_its_own_is_refused(
    specs: list[str], publish_all: bool, mode: str, message: str
) -> None:
    with pytest.raises(UsageError) as caught:
        check_mode(parse_publish_all(specs), publish_all, mode)
    assert str(caught.value) == message
    assert caught.value.exit_code == 125


def _running(tmp_path: Path, cfg: ContainerConfig, ports: tuple[str, ...]) -> ContainerDir:
    """A container dir recorded as running, with this test process as its monitor."""
    cdir = ContainerDir(tmp_path, cfg)
    me = os.getpid()
    cdir.write_state(
        ContainerState(
            status=RUNNING, monitor_pid=me, monitor_start=process_start_time(me) or 0, ports=ports
        )
    )
    return cdir


def test_port_and_inspect_show_docker_s_forms(tmp_path: Path) -> None:
    cfg = _config(
        ports=(":8080:80/tcp", "127.0.0.1:0:80/tcp", ":9000-9009:53/udp"),
        publish_all=True,
        exposed_ports=("443/tcp",),
    )
    cdir = _running(
        tmp_path, cfg, (":8080:80/tcp", "127.0.0.1:40001:80/tcp", ":9003:53/udp", ":40002:443/tcp")
    )
    assert port_lines(cdir) == [
        "53/udp -> 0.0.0.0:9003",
        "80/tcp -> 0.0.0.0:8080",
        "80/tcp -> 127.0.0.1:40001",
        "443/tcp -> 0.0.0.0:40002",
    ]
    assert ps_ports(cdir) == (
        "0.0.0.0:9003->53/udp, 0.0.0.0:8080->80/tcp, 127.0.0.1:40001->80/tcp,"
        " 0.0.0.0:40002->443/tcp"
    )
    assert port_lines(cdir, "80") == ["0.0.0.0:8080", "127.0.0.1:40001"]
    assert port_lines(cdir, "53/udp") == ["0.0.0.0:9003"]
    with pytest.raises(UsageError) as caught:
        port_lines(cdir, "53")
    assert str(caught.value) == "no public port '53/tcp' published for web"
    assert caught.value.exit_code == 1
    with pytest.raises(UsageError):
        port_lines(cdir, "http")
    fields = inspect_fields(cdir)
    assert fields["ExposedPorts"] == {"443/tcp": {}, "53/udp": {}, "80/tcp": {}}
    assert fields["PortBindings"] == {
        "53/udp": [{"HostIp": "", "HostPort": "9000-9009"}],
        "80/tcp": [
            {"HostIp": "", "HostPort": "8080"},
            {"HostIp": "127.0.0.1", "HostPort": ""},
        ],
    }
    assert fields["Ports"] == {
        "443/tcp": [{"HostIp": "0.0.0.0", "HostPort": "40002"}],
        "53/udp": [{"HostIp": "0.0.0.0", "HostPort": "9003"}],
        "80/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "8080"},
            {"HostIp": "127.0.0.1", "HostPort": "40001"},
        ],
    }


def test_a_stopped_container_shows_no_ports(tmp_path: Path) -> None:
    cfg = _config(ports=(":8080:80/tcp",), exposed_ports=("443/tcp",))
    cdir = ContainerDir(tmp_path, cfg)
    cdir.write_state(ContainerState(status="exited", ports=()))
    assert port_lines(cdir) == []
    assert inspect_fields(cdir)["Ports"] == {}


def test_reserve_takes_free_ports_and_refuses_a_taken_one() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        held = reserve([PortMapping("127.0.0.1", 0, 80), PortMapping("127.0.0.1", 0, 53, "udp")])
        try:
            assert all(m.host_port for m in held.mappings)
            assert [m.protocol for m in held.mappings] == ["tcp", "udp"]
            # held: nobody else gets it
            with socket.socket() as other, pytest.raises(OSError, match="in use"):
                other.bind(("127.0.0.1", held.mappings[0].host_port))
        finally:
            held.close()
        with pytest.raises(UsageError) as caught:
            reserve([PortMapping("127.0.0.1", port, 80)])
        assert str(caught.value) == (
            f"-p 127.0.0.1:{port}:80/tcp: host port 127.0.0.1:{port}/tcp is already in use"
        )
        assert caught.value.exit_code == 125
        # a range skips the taken port
        held = reserve([PortMapping("127.0.0.1", port, 80, "tcp", port + 20)])
        try:
            assert port < held.mappings[0].host_port <= port + 20
            assert held.mappings[0].host_port_last == 0
        finally:
            held.close()
        with pytest.raises(UsageError) as caught:
            reserve([PortMapping("127.0.0.1", port, 80, "tcp", port)])
        assert str(caught.value) == (
            f"-p 127.0.0.1:{port}-{port}:80/tcp: no free host port in {port}-{port}/tcp"
            " on 127.0.0.1"
        )


def test_an_address_not_of_this_host_is_refused() -> None:
    with pytest.raises(UsageError) as caught:
        reserve([PortMapping("192.0.2.1", 0, 80)])  # TEST-NET-1: no host has it
    assert str(caught.value) == "-p 192.0.2.1:0:80/tcp: 192.0.2.1 is not an address of this host"


def test_the_image_config_carries_its_exposed_ports() -> None:
    from runtime.images import ImageConfig

    config = ImageConfig.from_oci({"config": {"ExposedPorts": {"80/tcp": {}, "53/udp": {}}}})
    assert config.exposed_ports == ("80/tcp", "53/udp")
    assert ImageConfig.from_json(config.to_json()) == config
    assert ImageConfig.from_oci({"config": {"ExposedPorts": None}}).exposed_ports == ()


def test_a_table_made_now_is_told_by_nfts_echo() -> None:
    """`nft -e` echoes a table the transaction made with its handle, an existing one without:
    the guard rule is added in the first case only (or when the echo is not understood)."""
    from runtime.publish import NFT_TABLE, _table_made

    made = {"nftables": [{"add": {"table": {"family": "ip", "name": NFT_TABLE, "handle": 7}}}]}
    there = {"nftables": [{"add": {"table": {"family": "ip", "name": NFT_TABLE}}}]}
    assert _table_made(made)
    assert not _table_made(there)
    assert _table_made(None)
    assert _table_made({"nftables": []})
