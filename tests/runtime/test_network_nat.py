"""NAT for `--network bridge` (issue 15): a container reaches an address beyond the host only
through strata's masquerade, and the bridge, its nft table and the IPv4 forwarding strata switched
on go with the last bridge container, or, after a monitor killed with SIGKILL, with the next `rm`
or `strata network prune`.

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
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.network import BRIDGE, IP_FORWARD, NFT_FAMILY, NFT_TABLE, veth_name
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
    """strata's bridge and host-side veths, as /sys/class/net lists them."""
    return sorted(
        n
        for n in os.listdir("/sys/class/net")
        if n == BRIDGE or (n.startswith("vs") and len(n) == 14)
    )


def _ip_forward() -> str:
    return IP_FORWARD.read_text().strip()


@pytest.fixture
def clean_host(strata: Strata) -> Iterator[str]:
    """Skips unless nft and ip are there and no strata bridge is up; yields ip_forward as it was,
    and checks (then restores, whatever happened) that the host is as it was afterwards."""
    if shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("needs nftables' nft and iproute2's ip")
    if _has_table() or _strata_links():
        pytest.skip("a strata bridge network is already up on this host")
    before = _ip_forward()
    leftovers: list[str] = []
    try:
        yield before
    finally:
        strata.cleanup()  # rm -f of every container: the last bridge container takes it all
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
    ns = f"strata-out-{os.getpid()}"
    host_end = f"so{os.getpid() % 10**8}"
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello").write_text("hello from outside\n")
    server: subprocess.Popen[bytes] | None = None

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", ns)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("addr", "add", f"{OUTSIDE_HOST}/24", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("-n", ns, "addr", "add", f"{OUTSIDE}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", str(PORT),
             "--bind", OUTSIDE, "--directory", str(www)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://{OUTSIDE}:{PORT}/hello"

        def serving() -> bool:
            try:
                with urllib.request.urlopen(url, timeout=2) as reply:
                    return bool(reply.read() == b"hello from outside\n")
            except OSError:
                return False

        wait_for(serving, "the outside HTTP server")
        yield url
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)  # takes the veth pair with it
        if os.path.exists(f"/sys/class/net/{host_end}"):
            subprocess.run(["ip", "link", "del", host_end], check=False)


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
    # the last bridge container took the bridge, the table and the forwarding with it
    assert not _has_table()
    assert _strata_links() == []
    assert _ip_forward() == clean_host


def test_table_and_forwarding_live_as_long_as_a_bridge_container(
    strata: Strata, busybox: list[str], clean_host: str
) -> None:
    done = strata.run(
        "run", "-d", "--name", "a", "--network", "bridge", *busybox, "/bin/sleep", "600"
    )
    assert done.returncode == 0, done.stderr
    cid = str(wait_running(strata, "a")["Id"])
    assert _has_table()
    assert _ip_forward() == "1"
    assert _strata_links() == sorted([BRIDGE, veth_name(cid)])
    assert strata.run("stop", "-t", "1", "a").returncode == 0
    assert not _has_table()
    assert _strata_links() == []
    assert _ip_forward() == clean_host


@pytest.mark.parametrize("collector", [["rm", "a"], ["network", "prune"], ["run"]])
def test_what_a_killed_monitor_left_is_collected(
    strata: Strata, busybox: list[str], clean_host: str, collector: list[str]
) -> None:
    done = strata.run(
        "run", "-d", "--name", "a", "--network", "bridge", *busybox, "/bin/sleep", "600"
    )
    assert done.returncode == 0, done.stderr
    state = wait_running(strata, "a")["State"]
    assert isinstance(state, dict)
    os.kill(int(state["MonitorPid"]), signal.SIGKILL)  # our own child's child: strata run -d

    def stopped() -> bool:
        info = strata.inspect("a")["State"]
        return isinstance(info, dict) and not info["Running"]

    wait_for(stopped, "the container to be seen stopped")
    assert _has_table()  # nobody was left to clean up
    assert BRIDGE in _strata_links()
    if collector == ["run"]:  # the next bridge start, and its stop
        collector = ["run", "--rm", "--network", "bridge", *busybox, "/bin/true"]
    done = strata.run(*collector)
    assert done.returncode == 0, done.stderr
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
    pruned = strata.run("network", "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout == ""
    assert _strata_links() == before
    assert _has_table()
    assert strata.run("stop", "-t", "1", "a").returncode == 0
    assert _strata_links() == []


def test_the_bridge_stays_while_another_state_roots_container_uses_it(
    strata: Strata, busybox: list[str], clean_host: str, tmp_path: Path
) -> None:
    other = Strata(root=tmp_path / "other-state", tmp=tmp_path)
    sleep = ["--network", "bridge", *busybox, "/bin/sleep", "600"]
    try:
        assert strata.run("run", "-d", "--name", "a", *sleep).returncode == 0
        wait_running(strata, "a")
        done = other.run("run", "-d", "--name", "b", *sleep)
        assert done.returncode == 0, done.stderr
        b = str(wait_running(other, "b")["Id"])
        # b's start (which tidies its own root) took nothing of a's away: bridge, a's, b's
        assert len(_strata_links()) == 3
        assert other.run("stop", "-t", "1", "b").returncode == 0
        assert strata.run("network", "prune").stdout == ""  # a's port stays
        assert veth_name(b) not in _strata_links()
        assert BRIDGE in _strata_links()
        assert _has_table()
    finally:
        other.cleanup()
    assert strata.run("stop", "-t", "1", "a").returncode == 0
    assert _strata_links() == []
    assert not _has_table()
    assert _ip_forward() == clean_host


def test_a_second_subnet_on_the_running_bridge_is_refused(
    strata: Strata, busybox: list[str], clean_host: str
) -> None:
    """The bridge serves one subnet at a time (read back from `ip -j addr`): a container asking
    for another while it runs gets one line, exit 125, and the bridge keeps its own."""
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
    assert _strata_links() == []
