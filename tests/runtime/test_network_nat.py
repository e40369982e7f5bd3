"""NAT for `--network bridge` (issue 15): a container reaches an address beyond the host only
through strata's masquerade; its veth and its address lease go with it (after a monitor killed
with SIGKILL, with the next `rm`, start or `strata network prune`); the bridge, its nft table and
the IPv4 forwarding strata switched on stay, as docker0 does, until `strata network prune`.

"Beyond the host" is a network namespace the test makes, joined to the host by a veth on
198.51.100.0/24 (TEST-NET-2) and given no route back to the bridge's 10.90.0.0/16: only a reply
to the host's own address (the masqueraded source) finds its way back. Nothing else is talked to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from runtime.network import (
    BRIDGE,
    IP_FORWARD,
    NFT_FAMILY,
    NFT_TABLE,
    RUN_DIR,
    is_strata_bridge,
    veth_name,
)
from tests.helpers import netns
from tests.runtime.conftest import Strata, wait_for, wait_running

pytestmark = [pytest.mark.root, pytest.mark.fuse]

OUTSIDE_HOST = "198.51.100.1"
OUTSIDE = "198.51.100.2"
PORT = 8000


def _nft_tables() -> list[tuple[str, str]]:
    done = subprocess.run(["nft", "-j", "list", "tables"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)["nftables"]
    return [(e["table"]["family"], e["table"]["name"]) for e in entries if "table" in e]


def _has_table() -> bool:
    return (NFT_FAMILY, NFT_TABLE) in _nft_tables()


def _strata_links() -> list[str]:
    """strata's bridges and host-side veths, as netlink (pyroute2) lists the host's links."""
    with IPRoute() as ipr:
        names = [str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()]
    return sorted(n for n in names if is_strata_bridge(n) or (n.startswith("vs") and len(n) == 14))


def _wait_for_links(expected: list[str]) -> None:
    """Until strata's links are `expected`: a veth goes when the kernel tears its container's
    network namespace down, just after the container's last process."""
    wait_for(lambda: _strata_links() == expected, f"strata's links to be {expected}")


def _ip_forward() -> str:
    return IP_FORWARD.read_text().strip()


def _leases() -> list[str]:
    """The addresses leased on strata0 (host-wide, /run/strata/leases/strata0/IP)."""
    try:
        return sorted(n for n in os.listdir(RUN_DIR / "leases" / BRIDGE) if not n.startswith("."))
    except FileNotFoundError:
        return []


def _prune(strata: Strata) -> list[str]:
    done = strata.run("network", "prune")
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.fixture
def clean_host(strata: Strata) -> Iterator[str]:
    """Skips unless nft and ip are there; prunes what earlier tests left (their containers are
    gone: prune removes only what no container uses), skips if a strata bridge is still in use
    (another state root's running container); yields ip_forward as it was, and checks (then
    restores, whatever happened) that the host is as it was after this test's own prune."""
    if shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("needs nftables' nft and iproute2's ip")
    _prune(strata)
    if _has_table() or _strata_links():
        pytest.skip("a strata bridge network is in use on this host")
    before = _ip_forward()
    leftovers: list[str] = []
    try:
        yield before
    finally:
        strata.cleanup()  # rm -f of every container
        strata.run("network", "prune")
        if _has_table():
            leftovers.append("nft table")
            subprocess.run(["nft", "delete", "table", NFT_FAMILY, NFT_TABLE], check=False)
        for link in _strata_links():
            leftovers.append(link)
            subprocess.run(["ip", "link", "del", link], check=False)
        if _ip_forward() != before:
            leftovers.append(f"ip_forward={_ip_forward()}")
            IP_FORWARD.write_text(before + "\n")
    assert not leftovers, f"left behind: {leftovers}"


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[str]:
    """A network namespace with an HTTP server on 198.51.100.2:8000 serving /hello, joined to
    the host by a veth and with no route to the bridge's subnet; yields the URL."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello").write_text("hello from outside\n")
    with (
        netns.outside("sno", f"{OUTSIDE_HOST}/24", f"{OUTSIDE}/24") as ns,
        netns.http_server(ns, OUTSIDE, PORT, www) as url,
    ):
        yield url


def test_bridge_reaches_beyond_the_host_only_through_masquerade(
    strata: Strata, busybox: list[str], clean_host: str, outside: str
) -> None:
    fetch = ["/bin/wget", "-q", "-O", "-", outside]
    done = strata.run("run", "--rm", "--network", "bridge", *busybox, *fetch)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hello from outside\n"
    cut_off = strata.run("run", "--rm", "--network", "none", *busybox, *fetch)
    assert cut_off.returncode != 0
    assert cut_off.stdout == ""
    # the container's veth and lease went with it; the bridge, table and forwarding stay
    _wait_for_links([BRIDGE])  # the veth goes with the namespace
    assert _leases() == []
    assert _has_table()
    assert _ip_forward() == "1"
    removed = _prune(strata)
    assert BRIDGE in removed
    assert not _has_table()
    assert _strata_links() == []
    assert _ip_forward() == clean_host


def test_a_containers_veth_and_lease_live_as_long_as_it(
    strata: Strata, busybox: list[str], clean_host: str
) -> None:
    done = strata.run(
        "run", "-d", "--name", "a", "--network", "bridge", *busybox, "/bin/sleep", "600"
    )
    assert done.returncode == 0, done.stderr
    info = wait_running(strata, "a")
    cid = str(info["Id"])
    settings = info["NetworkSettings"]
    assert isinstance(settings, dict)
    assert _leases() == [settings["IPAddress"]]
    assert _has_table()
    assert _ip_forward() == "1"
    assert _strata_links() == sorted([BRIDGE, veth_name(cid)])
    assert strata.run("stop", "-t", "1", "a").returncode == 0
    _wait_for_links([BRIDGE])  # the veth goes with the namespace
    assert _leases() == []
    assert _has_table()


@pytest.mark.parametrize("collector", [["rm", "a"], ["network", "prune"], ["run"]])
def test_what_a_killed_monitor_left_is_collected(
    strata: Strata, busybox: list[str], clean_host: str, collector: list[str]
) -> None:
    done = strata.run(
        "run", "-d", "--name", "a", "--network", "bridge", *busybox, "/bin/sleep", "600"
    )
    assert done.returncode == 0, done.stderr
    info = wait_running(strata, "a")
    state, settings = info["State"], info["NetworkSettings"]
    assert isinstance(state, dict)
    assert isinstance(settings, dict)
    address = str(settings["IPAddress"])
    os.kill(int(state["MonitorPid"]), signal.SIGKILL)  # our own child's child: strata run -d

    def stopped() -> bool:
        info = strata.inspect("a")["State"]
        return isinstance(info, dict) and not info["Running"]

    wait_for(stopped, "the container to be seen stopped")
    assert _leases() == [address]  # nobody was left to clean up
    if collector == ["run"]:  # the next bridge start gets the address the dead one held
        collector = ["run", "--rm", "--network", "bridge", *busybox, "/bin/hostname", "-i"]
    done = strata.run(*collector)
    assert done.returncode == 0, done.stderr
    if collector[0] == "run":
        assert done.stdout.split() == [address]
    assert _leases() == []
    assert not [link for link in _strata_links() if link != BRIDGE]
    if collector == ["network", "prune"]:
        assert not _has_table()
        assert _strata_links() == []
        assert _ip_forward() == clean_host


def test_prune_keeps_what_a_running_container_uses(
    strata: Strata, busybox: list[str], clean_host: str
) -> None:
    done = strata.run(
        "run", "-d", "--name", "a", "--network", "bridge", *busybox, "/bin/sleep", "600"
    )
    assert done.returncode == 0, done.stderr
    wait_running(strata, "a")
    before = _strata_links()
    assert _prune(strata) == []
    assert _strata_links() == before
    assert _has_table()
    assert strata.run("stop", "-t", "1", "a").returncode == 0
    _wait_for_links([BRIDGE])  # the veth goes with the namespace
    assert sorted(_prune(strata)) == sorted(
        [BRIDGE, f"nft table {NFT_FAMILY} {NFT_TABLE}"]
        + (["net.ipv4.ip_forward=1"] if clean_host == "0" else [])
    )


def test_two_state_roots_share_the_bridge_and_never_one_address(
    strata: Strata, busybox: list[str], clean_host: str, tmp_path: Path
) -> None:
    other = Strata(root=tmp_path / "other-state", tmp=tmp_path)
    sleep = ["--network", "bridge", *busybox, "/bin/sleep", "600"]
    try:
        assert strata.run("run", "-d", "--name", "a", *sleep).returncode == 0
        a = wait_running(strata, "a")
        done = other.run("run", "-d", "--name", "b", *sleep)
        assert done.returncode == 0, done.stderr
        b = wait_running(other, "b")
        ips = [x["NetworkSettings"]["IPAddress"] for x in (a, b)]  # type: ignore[index]
        assert ips[0] != ips[1]  # leases are host-wide
        assert _leases() == sorted(ips)
        assert len(_strata_links()) == 3  # the bridge, a's veth, b's
        assert other.run("stop", "-t", "1", "b").returncode == 0
        assert _prune(strata) == []  # a's port stays, so does the bridge
        wait_for(lambda: veth_name(str(b["Id"])) not in _strata_links(), "b's veth to go")
        assert BRIDGE in _strata_links()
        assert _has_table()
    finally:
        other.cleanup()
    assert strata.run("stop", "-t", "1", "a").returncode == 0
    _prune(strata)
    assert _strata_links() == []
    assert not _has_table()
    assert _ip_forward() == clean_host


def test_a_second_subnet_on_the_bridge_is_refused(
    strata: Strata, busybox: list[str], clean_host: str
) -> None:
    """The bridge serves one subnet (read back from `ip -j addr`) until it is pruned: a
    container asking for another gets one line, exit 125, and the bridge keeps its own."""
    done = strata.run(
        "run", "-d", "--name", "a", "--network", "bridge", *busybox, "/bin/sleep", "600"
    )
    assert done.returncode == 0, done.stderr
    wait_running(strata, "a")
    other = strata.run(
        "run", "--rm", "--network", "bridge", "--subnet", "10.91.0.0/16", *busybox, "/bin/true"
    )
    assert other.returncode == 125, other.stderr
    assert other.stderr == (
        f"strata: bridge {BRIDGE} already serves 10.90.0.0/16, not 10.91.0.0/16\n"
    )
    assert strata.run("stop", "-t", "1", "a").returncode == 0
    _prune(strata)
    assert _strata_links() == []
