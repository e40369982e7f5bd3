"""Rootless networks (runtime.usernet): pasta by default, slirp4netns as the fallback, `-p` through
either, and no helper process left behind, also after SIGKILL of the monitor.

A rootless container's traffic leaves through the helper's ordinary sockets on the host, so "the
outside" is a network namespace the test makes, joined to the host by a veth on 198.19.248.0/30
(RFC 2544's benchmarking range, clear of the other network tests' TEST-NETs), with a web server
in it. The host's loopback is not reached from the container (`--no-map-gw`,
`--disable-host-loopback`, as podman's defaults); published ports are reached from the host's
loopback. Nothing else is talked to.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.state import process_start_time
from runtime.usernet import LOG, PASTA, RECORD, SLIRP4NETNS
from tests.helpers import netns
from tests.runtime.conftest import Strata, wait_for, wait_running
from tests.runtime.test_rootless import rootless  # noqa: F401 - the fixture

pytestmark = [pytest.mark.root, pytest.mark.fuse]

OUTSIDE_HOST = "198.19.248.1"
OUTSIDE = "198.19.248.2"
OUTSIDE_PORT = 8000
PROBE = Path(__file__).parent / "probes" / "udpecho.c"
Rootless = tuple[Strata, list[str], bool]


def need(mode: str) -> None:
    """Skip unless `mode`'s helper is installed and /dev/net/tun is usable by other users."""
    if shutil.which(mode) is None:
        pytest.skip(f"{mode} is not installed (apt install {'passt' if mode == PASTA else mode})")
    if os.stat("/dev/net/tun").st_mode & 0o006 != 0o006:
        pytest.skip("/dev/net/tun is not usable by other users (chmod 0666 /dev/net/tun)")


def helpers_of(root: Path) -> list[int]:
    """pasta and slirp4netns processes whose stderr is a log below `root` (a container's)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            err = os.readlink(f"/proc/{entry}/fd/2")
        except OSError:
            continue
        if comm in (PASTA, SLIRP4NETNS) and err.startswith(str(root)) and err.endswith(LOG):
            found.append(int(entry))
    return found


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def udp_echo(port: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(payload, ("127.0.0.1", port))
        try:
            return s.recv(1500)
        except OSError:
            return b""


@pytest.fixture(scope="session")
def udpecho_layer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A layer holding /udpecho (busybox's nc has no UDP), built with `gcc -static`."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is missing (apt install gcc libc6-dev)")
    layer = tmp_path_factory.mktemp("udpecho")
    subprocess.run(
        [gcc, "-static", "-O1", "-Wall", "-o", str(layer / "udpecho"), str(PROBE)],
        check=True,
        capture_output=True,
    )
    return layer


@pytest.fixture
def user_image(rootless: Rootless, udpecho_layer: Path) -> tuple[Strata, list[str]]:  # noqa: F811
    """The rootless user's `strata` and its busybox image with /udpecho on top (its own copy:
    pytest's base temp dir is private to root)."""
    strata, image, _ = rootless
    copy = strata.tmp / "udpecho"
    shutil.copytree(udpecho_layer, copy)
    assert strata.user is not None
    assert strata.group is not None
    for path in (copy, copy / "udpecho"):
        os.chown(path, strata.user, strata.group)
    return strata, ["--lower", str(copy), *image]


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[str]:
    """A network namespace on a veth from the host, serving /hello over HTTP; its URL."""
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's ip")
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello").write_text("hello from outside\n")
    with (
        netns.outside("spa", f"{OUTSIDE_HOST}/30", f"{OUTSIDE}/30") as ns,
        netns.http_server(ns, OUTSIDE, OUTSIDE_PORT, site) as url,
    ):
        yield url


def test_rootless_default_network_is_pasta_with_an_address_a_route_and_the_outside(
    rootless: Rootless,  # noqa: F811
    outside: str,
) -> None:
    need(PASTA)
    strata, image, _ = rootless
    usage = strata.run("run", "--help")
    assert "(default here: pasta)" in usage.stdout
    done = strata.run(
        "run", "--rm", *image, "/bin/sh", "-c",
        f"ip -4 -o addr show; ip route; wget -q -O - {outside}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    addresses = [ln.split()[1] for ln in done.stdout.splitlines() if " inet " in ln]
    assert [a for a in addresses if a != "lo"], done.stdout  # an interface beyond lo
    assert any(ln.startswith("default via ") for ln in done.stdout.splitlines()), done.stdout
    assert done.stdout.endswith("hello from outside\n")
    assert helpers_of(strata.root) == []


@pytest.mark.parametrize("mode", [PASTA, SLIRP4NETNS])
def test_rootless_publish_tcp_and_udp_then_the_helper_goes_with_the_container(
    user_image: tuple[Strata, list[str]], outside: str, mode: str
) -> None:
    need(mode)
    strata, image = user_image
    # UDP on the same port inside: Debian 12's pasta loses loopback UDP replies across a port
    # translation (runtime.usernet)
    tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    started = strata.run(
        "run", "-d", "--name", "web", "--network", mode,
        "-p", f"127.0.0.1:{tcp}:80", "-p", f"127.0.0.1:{udp}:{udp}/udp", *image, "/bin/sh", "-c",
        "mkdir /www && echo hi from the container > /www/index.html && httpd -p 80 -h /www"
        f" && exec /udpecho {udp}",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    # (not wait_running: root may not stat the exe of a process on the user's FUSE mount)
    record = strata.container_dir("web") / RECORD
    pid, start, recorded_mode = record.read_text().split()
    assert recorded_mode == mode
    assert process_start_time(int(pid)) == int(start)
    wait_for(lambda: http_get(f"http://127.0.0.1:{tcp}/") == "hi from the container\n", "TCP")
    wait_for(lambda: udp_echo(udp, b"ping") == b"echo:ping", "UDP")
    out = strata.run("run", "--rm", "--network", mode, *image, "wget", "-q", "-O", "-", outside)
    assert (out.returncode, out.stdout) == (0, "hello from outside\n"), out.stderr
    assert strata.run("stop", "-t", "2", "web").returncode == 0
    assert process_start_time(int(pid)) != int(start)
    assert not record.exists()
    assert helpers_of(strata.root) == []
    assert strata.run("rm", "web").returncode == 0


@pytest.mark.parametrize("mode", [PASTA, SLIRP4NETNS])
def test_rootless_sigkill_of_the_monitor_takes_the_helper_along(
    rootless: Rootless,  # noqa: F811
    mode: str,
) -> None:
    need(mode)
    strata, image, _ = rootless
    started = strata.run("run", "-d", "--name", "k", "--network", mode, *image, "sleep", "600")
    assert started.returncode == 0, started.stderr
    cdir = strata.container_dir("k")  # `run -d` returns once the helper runs
    pid, start, _ = (cdir / RECORD).read_text().split()
    monitor = json.loads((cdir / "state.json").read_text())["monitor_pid"]
    os.kill(monitor, signal.SIGKILL)
    wait_for(lambda: process_start_time(int(pid)) != int(start), f"{mode} to exit")
    assert strata.run("rm", "k").returncode == 0
    assert helpers_of(strata.root) == []


def test_a_stale_helper_is_killed_by_rm_only_if_its_start_time_matches(
    strata: Strata, busybox: list[str]
) -> None:
    """What a monitor killed with SIGKILL would leave, were the helper to outlive it: a record
    naming a live process. A record whose start time is not the process's (a reused pid) is
    dropped without a signal."""
    stand_in = subprocess.Popen(["sleep", "600"])
    try:
        start = process_start_time(stand_in.pid)
        assert start is not None
        for name, started in (("reused", start + 1), ("stale", start)):
            assert (
                strata.run(
                    "create", "--name", name, "--network", "none", *busybox, "true"
                ).returncode
                == 0
            )
            (strata.container_dir(name) / RECORD).write_text(f"{stand_in.pid} {started} pasta\n")
        assert strata.run("rm", "reused").returncode == 0
        assert stand_in.poll() is None
        assert strata.run("rm", "stale").returncode == 0
        assert stand_in.wait(timeout=10) == -signal.SIGKILL
    finally:
        stand_in.kill()
        stand_in.wait()


def test_root_may_use_pasta_with_publish(strata: Strata, busybox: list[str], outside: str) -> None:
    need(PASTA)
    port = free_port(socket.SOCK_STREAM)
    started = strata.run(
        "run", "-d", "--name", "rp", "--network", "pasta", "-p", f"127.0.0.1:{port}:80",
        *busybox, "/bin/sh", "-c",
        f"mkdir /www && wget -q -O /www/index.html {outside} && exec httpd -f -p 80 -h /www",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    wait_running(strata, "rp")
    wait_for(lambda: http_get(f"http://127.0.0.1:{port}/") == "hello from outside\n", "-p")
    assert strata.run("rm", "-f", "rp").returncode == 0
    assert helpers_of(strata.root) == []


def test_rootless_default_falls_back_to_slirp4netns_then_none(
    rootless: Rootless,  # noqa: F811
) -> None:
    """Without pasta on PATH the default is slirp4netns, without either none; --help says which."""
    need(SLIRP4NETNS)
    strata, image, _ = rootless
    bin_dir = strata.tmp / "bin"
    bin_dir.mkdir()
    for tool in ("newuidmap", "newgidmap"):
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    strata.env["PATH"] = str(bin_dir)
    assert "(default here: none (neither pasta nor slirp4netns is installed))" in " ".join(
        strata.run("run", "--help").stdout.split()
    )
    (bin_dir / SLIRP4NETNS).symlink_to(shutil.which(SLIRP4NETNS) or "")
    usage = " ".join(strata.run("run", "--help").stdout.split())
    assert "(default here: slirp4netns (pasta, from Debian's passt, is not installed))" in usage
    done = strata.run("run", "--rm", *image, "/bin/sh", "-c", "ip route; cat /etc/resolv.conf")
    assert done.returncode == 0, done.stderr
    assert "default via 10.0.2.2 dev tap0" in done.stdout
    assert "nameserver 10.0.2.3" in done.stdout


def test_rootless_network_prune_kills_a_stale_helper(
    rootless: Rootless,  # noqa: F811
) -> None:
    """Rootless, `strata network prune` has no bridge to prune, only the user's stale helpers."""
    strata, image, _ = rootless
    created = strata.run("create", "--name", "c", "--network", "none", *image, "true")
    assert created.returncode == 0, created.stderr
    stand_in = subprocess.Popen(["sleep", "600"], user=strata.user, group=strata.group)
    try:
        start = process_start_time(stand_in.pid)
        (strata.container_dir("c") / RECORD).write_text(f"{stand_in.pid} {start} pasta\n")
        pruned = strata.run("network", "prune")
        assert (pruned.returncode, pruned.stdout) == (0, "c: stale network helper\n"), pruned.stderr
        assert stand_in.wait(timeout=10) == -signal.SIGKILL
        assert not (strata.container_dir("c") / RECORD).exists()
    finally:
        stand_in.kill()
        stand_in.wait()


def test_rootless_publish_of_a_port_in_use_is_one_line_and_leaves_no_helper(
    rootless: Rootless,  # noqa: F811
) -> None:
    need(PASTA)
    strata, image, _ = rootless
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = strata.run("run", "--rm", "-p", f"127.0.0.1:{port}:80", *image, "true")
    assert done.returncode == 125
    assert done.stderr.count("\n") == 1
    assert str(port) in done.stderr
    assert helpers_of(strata.root) == []
    assert strata.container_ids() == []
