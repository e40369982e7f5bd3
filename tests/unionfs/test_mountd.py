"""`fuse-strata` through the resident mount server (strata.mountd): the mount a server's worker
makes is the one a `fuse-strata` process makes (same files, same errors, same exit status,
the daemon detached the same way), and `STRATA_MOUNT_SERVER=0` keeps the server out.

The rest of the suite runs with the server off (tests/conftest.py), so that every other test
sees one path only; here each test starts from no server and stops the one it used.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata import mountd
from tests.helpers.commands import FUSE_STRATA, assert_one_line_error
from tests.helpers.mounts import skip_unless_fuse
from tests.unionfs.test_cli import (
    EXIT_TIMEOUT,
    Layers,
    alive,
    daemon_pids,
    mounts_at,
    unmounted_afterwards,
    wait_for,
)

pytestmark = pytest.mark.fuse


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    return Layers.create(tmp_path)


def fuse_strata(*args: str | Path, server: bool) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, **{mountd.ENV_SWITCH: "1" if server else "0"})
    return subprocess.run(
        [str(FUSE_STRATA), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )


def server_pids() -> set[int]:
    """The processes listening at this code's server address."""
    name = mountd.server_address()[1:].decode()
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if b"strata.mountd\0" in cmdline and name.encode() in cmdline:
                found.add(int(entry.name))
    return found


@pytest.fixture
def server() -> Iterator[None]:
    """No server of this code at the start; the one the test made is stopped at the end."""
    mountd.stop_server()
    wait_for(lambda: not server_pids(), EXIT_TIMEOUT, "an earlier server to exit")
    try:
        yield
    finally:
        mountd.stop_server()
        wait_for(lambda: not server_pids(), EXIT_TIMEOUT, "the server to exit")


def start_server(layers: Layers) -> None:
    """A first mount starts the server (and mounts by itself); wait until the server listens."""
    first = layers.root / "first"
    first.mkdir()
    with unmounted_afterwards(first):
        result = fuse_strata("-o", f"lowerdir={layers.lower2}", first, server=True)
        assert result.returncode == 0, result.stderr
        assert "strata.mountd" not in cmdline(next(iter(daemon_pids(first))))
    wait_for(lambda: bool(server_pids()), EXIT_TIMEOUT, "the server to listen")


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_a_mount_through_the_server_serves_the_union_as_a_mount_of_its_own(
    layers: Layers, server: None
) -> None:
    skip_unless_fuse()
    start_server(layers)
    with unmounted_afterwards(layers.mnt):
        result = fuse_strata("-o", layers.rw_options, layers.mnt, server=True)
        assert result.returncode == 0, result.stderr
        assert (result.stdout, result.stderr) == ("", "")
        (pid,) = daemon_pids(layers.mnt)
        assert "strata.mountd" in cmdline(pid)  # a fork of the server, not a process of its own
        assert os.getsid(pid) != os.getsid(0)
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{pid}/fd/{fd}") == os.devnull
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
        assert (layers.mnt / "both").read_text() == "from lower1\n"
        assert (layers.mnt / "upper-only").read_text() == "upper\n"
        (layers.mnt / "new").write_text("through the server's daemon\n")
        assert (layers.upper / "new").read_text() == "through the server's daemon\n"
        done = subprocess.run(["fusermount3", "-u", str(layers.mnt)], check=False)
        assert done.returncode == 0
        assert not mounts_at(layers.mnt)
        wait_for(lambda: not alive(pid), EXIT_TIMEOUT, "the daemon to exit")
    assert server_pids()  # the server outlives its mounts, until idle


def test_relative_paths_and_errors_come_out_as_from_fuse_strata_itself(
    layers: Layers, server: None
) -> None:
    skip_unless_fuse()
    start_server(layers)
    with unmounted_afterwards(layers.mnt):
        relative = subprocess.run(
            [str(FUSE_STRATA), "-o", "lowerdir=lower1:lower2", "mnt"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=layers.root,
            env=dict(os.environ, **{mountd.ENV_SWITCH: "1"}),
        )
        assert relative.returncode == 0, relative.stderr
        assert "strata.mountd" in cmdline(next(iter(daemon_pids(layers.mnt))))
        assert (layers.mnt / "base-only").read_text() == "base\n"
    missing = layers.root / "nomnt"
    by_server = fuse_strata("-o", layers.rw_options, missing, server=True)
    by_itself = fuse_strata("-o", layers.rw_options, missing, server=False)
    assert assert_one_line_error(by_server, "fuse-strata") == assert_one_line_error(
        by_itself, "fuse-strata"
    )
    assert by_server.returncode == by_itself.returncode


def test_strata_mount_server_0_mounts_in_a_process_of_its_own(layers: Layers, server: None) -> None:
    skip_unless_fuse()
    start_server(layers)
    with unmounted_afterwards(layers.mnt):
        result = fuse_strata("-o", layers.rw_options, layers.mnt, server=False)
        assert result.returncode == 0, result.stderr
        (pid,) = daemon_pids(layers.mnt)
        assert "strata.mountd" not in cmdline(pid)
        assert (layers.mnt / "both").read_text() == "from lower1\n"


def test_a_client_with_fewer_capabilities_mounts_by_itself(layers: Layers, server: None) -> None:
    """The server's workers act with the server's capabilities: a client of the same uid that
    holds fewer (root with CAP_SYS_ADMIN dropped, as in a container sharing our network
    namespace) is turned away and mounts by itself, with its own, which here is not enough."""
    skip_unless_fuse()
    if os.geteuid() != 0:
        pytest.skip("needs root (a root client without CAP_SYS_ADMIN)")
    start_server(layers)
    with unmounted_afterwards(layers.mnt):
        result = subprocess.run(
            [
                "setpriv",
                "--inh-caps=-sys_admin",
                "--bounding-set=-sys_admin",
                "--",
                str(FUSE_STRATA),
                "-o",
                layers.rw_options,
                str(layers.mnt),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=dict(os.environ, **{mountd.ENV_SWITCH: "1"}),
        )
        # Through the server it would have been mounted with the server's CAP_SYS_ADMIN; by
        # itself it cannot mount (nor can fusermount3 under that bounding set).
        assert result.returncode != 0
        assert "cannot mount" in result.stderr
        assert not mounts_at(layers.mnt)
        assert server_pids()  # the server was there, and turned the client away
