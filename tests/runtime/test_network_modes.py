"""Network modes as docker users expect them (issue 15): root's default is its own namespace on
the NAT'd bridge; `--network container:NAME` shares another container's network namespace, and
with it its hostname, /etc/hosts and resolv.conf; what would configure a network of one's own
conflicts with it. Only the bridge and loopback inside the containers are talked to."""

from __future__ import annotations

import pytest

from tests.runtime.conftest import Strata, wait_running

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def test_the_default_network_is_the_bridge(strata: Strata, busybox: list[str]) -> None:
    done = strata.run(
        "run", "--name", "d", *busybox, "/bin/sh", "-c", "ip -4 -o addr show eth0; ip route"
    )
    assert done.returncode == 0, done.stderr
    host_config = strata.inspect("d")["HostConfig"]
    assert isinstance(host_config, dict)
    assert host_config["NetworkMode"] == "bridge"
    assert done.stdout.split()[3].startswith("10.90.")  # inet 10.90.x.y/16 on eth0
    assert done.stdout.split()[3].endswith("/16")
    assert "default via 10.90.0.1 dev eth0" in done.stdout


def test_container_network_is_the_other_containers(strata: Strata, busybox: list[str]) -> None:
    serve = "mkdir /www && echo shared > /www/x && exec httpd -f -p 8081 -h /www"
    done = strata.run("run", "-d", "--name", "web", *busybox, "/bin/sh", "-c", serve)
    assert done.returncode == 0, done.stderr
    web = wait_running(strata, "web")
    probe = (
        "until wget -qO- http://127.0.0.1:8081/x; do sleep 0.05; done;"
        " hostname; ip -4 -o addr show eth0 | wc -l; cat /etc/hosts /etc/resolv.conf"
    )
    done = strata.run("run", "--rm", "--network", "container:web", *busybox, "/bin/sh", "-c", probe)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "shared"  # web's loopback is ours
    config = web["Config"]
    assert isinstance(config, dict)
    assert lines[1] == config["Hostname"]  # its hostname too
    assert lines[2] == "1"  # and its eth0
    own_files = strata.run("exec", "web", "/bin/sh", "-c", "cat /etc/hosts /etc/resolv.conf").stdout
    assert "\n".join(lines[3:]) + "\n" == own_files


@pytest.mark.parametrize(
    "flags",
    [
        ["-p", "8080:80"],
        ["--dns", "192.0.2.1"],
        ["--add-host", "a:192.0.2.1"],
        ["--hostname", "h"],
    ],
)
def test_container_network_conflicts_with_a_network_of_ones_own(
    strata: Strata, busybox: list[str], flags: list[str]
) -> None:
    done = strata.run("run", "-d", "--name", "web", *busybox, "/bin/sleep", "600")
    assert done.returncode == 0, done.stderr
    done = strata.run("run", "--rm", "--network", "container:web", *flags, *busybox, "/bin/true")
    assert done.returncode == 125
    assert done.stderr == (
        f"strata: --network container:web: conflicts with {flags[0]}"
        f"{'/--publish' if flags[0] == '-p' else ''} (the network is the other container's)\n"
    )
    assert len(strata.container_ids()) == 1  # nothing created


def test_container_network_needs_that_container_running(strata: Strata, busybox: list[str]) -> None:
    missing = strata.run("run", "--rm", "--network", "container:nope", *busybox, "/bin/true")
    assert missing.returncode == 125
    assert missing.stderr == "strata: --network container:nope: no such container: nope\n"
    assert strata.run("create", "--name", "idle", *busybox, "/bin/true").returncode == 0
    done = strata.run(
        "run", "--name", "joiner", "--network", "container:idle", *busybox, "/bin/true"
    )
    assert done.returncode == 125
    assert done.stderr == "strata: --network: container idle is not running\n"
