"""Network namespaces the tests make: an "outside" that stands for the internet, and an HTTP
server in it. The only addresses tests talk to are loopback, strata's bridges and these.

`outside(tag, host, inside)` joins a new namespace to the host by a veth pair: the host's end
holds `host`, the namespace's `eth0` holds `inside` (both CIDR, on a documentation subnet), and
the namespace has no route back to strata's subnets, so that only masqueraded traffic (from the
host's own address) gets answers. Both go when the block ends, also on failure.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@contextmanager
def outside(tag: str, host: str, inside: str) -> Iterator[str]:
    """A namespace `TAG-out-RANDOM` joined to the host as above; yields its name."""
    suffix = secrets.token_hex(3)
    ns, host_end = f"{tag}-out-{suffix}", f"{tag}o{suffix}"  # link names: at most 15 characters
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("addr", "add", host, "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("-n", ns, "addr", "add", inside, "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)  # takes the veth pair with it
        if os.path.exists(f"/sys/class/net/{host_end}"):
            subprocess.run(["ip", "link", "del", host_end], check=False)


def http_get(url: str) -> str | None:
    """The body at `url`, or None if it cannot be fetched (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return bytes(reply.read()).decode()
    except OSError:
        return None


@contextmanager
def http_server(ns: str, address: str, port: int, directory: Path) -> Iterator[str]:
    """`python -m http.server` in namespace `ns` on ADDRESS:PORT serving `directory`, which
    must hold `hello`; yields its URL once it answers (reached from the host)."""
    from tests.runtime.conftest import wait_for  # the runtime tests' poll, the one caller

    server = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", str(port),
         "--bind", address, "--directory", str(directory)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://{address}:{port}/hello"
        expected = (directory / "hello").read_text()
        wait_for(lambda: http_get(url) == expected, "the outside HTTP server")
        yield url
    finally:
        server.kill()
        server.wait()
