"""Docker's lifecycle: create, start, run -d, exec, ps, stop, kill, rm, logs, inspect; the state
root under its lock; containers whose processes died unseen."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.runtime.conftest import Strata, fuse_mounts_below, wait_for, wait_running

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def ps(strata: Strata, *args: str) -> list[dict[str, object]]:
    done = strata.run("ps", "--format", "json", *args, check=True)
    rows = json.loads(done.stdout)
    assert isinstance(rows, list)
    return rows


def wait_exited(strata: Strata, ref: str, timeout: float = 20.0) -> dict[str, object]:
    wait_for(lambda: status(strata, ref) == "exited", f"container {ref} to exit", timeout)
    state = strata.inspect(ref)["State"]
    assert isinstance(state, dict)
    return state


def status(strata: Strata, ref: str) -> object:
    state = strata.inspect(ref)["State"]
    assert isinstance(state, dict)
    return state["Status"]


def test_create_start_ps_inspect_rm(strata: Strata, busybox: list[str]) -> None:
    created = strata.run("create", "--name", "c1", *busybox, "/bin/sh", "-c", "echo hi", check=True)
    cid = created.stdout.strip()
    assert len(cid) == 64
    assert int(cid, 16) >= 0
    assert ps(strata) == []
    (row,) = ps(strata, "-a")
    assert (row["Id"], row["Names"], row["State"]) == (cid, ["c1"], "created")
    table = strata.run("ps", "-a", check=True).stdout.splitlines()
    assert table[0].split()[:2] == ["CONTAINER", "ID"]
    assert table[1].split()[0] == cid[:12]

    started = strata.run("start", "-a", "c1")
    assert (started.returncode, started.stdout) == (0, "hi\n")
    info = strata.inspect(cid[:5])
    state = info["State"]
    assert isinstance(state, dict)
    assert (state["Status"], state["ExitCode"]) == ("exited", 0)
    assert info["Name"] == "c1"

    assert strata.run("rm", "c1", check=True).stdout == "c1\n"
    assert strata.run("ps", "-a", "-q").stdout == ""
    assert strata.container_ids() == []


def test_detached_container_logs_exec_stop_restart_kill_rm(
    strata: Strata, busybox: list[str]
) -> None:
    script = "echo started; echo x >> /count; while :; do sleep 0.1; done"
    done = strata.run("run", "-d", "--name", "d1", *busybox, "/bin/sh", "-c", script)
    assert done.returncode == 0, done.stderr
    cid = done.stdout.strip()
    wait_running(strata, "d1")
    (row,) = ps(strata)
    assert (row["Id"], row["State"]) == (cid, "running")

    wait_for(lambda: "started" in strata.run("logs", "d1").stdout, "the log line", 10)

    inside = strata.run("exec", "d1", "/bin/sh", "-c", "echo $$; ps -o pid,comm; hostname")
    assert inside.returncode == 0, inside.stderr
    lines = inside.stdout.split()
    assert lines[0] != "1"
    assert "1" in lines  # the container's PID 1 is visible, and nothing of the host's
    assert lines[-1] == cid[:12]
    assert strata.run("exec", "-u", "65534", "d1", "/bin/id", "-u").stdout == "65534\n"
    assert strata.run("exec", "-i", "d1", "/bin/cat", input="piped\n").stdout == "piped\n"
    assert strata.run("exec", "d1", "/bin/sh", "-c", "exit 4").returncode == 4
    missing = strata.run("exec", "d1", "/nonexistent")
    assert missing.returncode == 127
    assert missing.stderr.count("\n") == 1

    started = time.monotonic()
    assert strata.run("stop", "-t", "5", "d1", check=True).stdout == "d1\n"
    assert time.monotonic() - started < 5  # sh did not trap SIGTERM: no need to wait for KILL
    state = strata.inspect("d1")["State"]
    assert isinstance(state, dict)
    assert (state["Status"], state["ExitCode"]) == ("exited", 128 + signal.SIGTERM)
    assert not fuse_mounts_below(strata.tmp)

    # restart: the writable layer is kept
    strata.run("start", "d1", check=True)
    wait_running(strata, "d1")
    counted = strata.run("exec", "d1", "/bin/sh", "-c", "wc -l < /count")
    assert counted.stdout.strip() == "2"
    strata.run("kill", "-s", "USR1", "d1", check=True)
    state = wait_exited(strata, "d1")
    assert state["ExitCode"] == 128 + signal.SIGUSR1

    strata.run("start", "d1", check=True)
    wait_running(strata, "d1")
    refused = strata.run("rm", "d1")
    assert refused.returncode != 0
    assert "running" in refused.stderr
    assert strata.run("rm", "-f", "d1").returncode == 0
    assert strata.container_ids() == []


def test_logs_follow_until_the_container_stops(strata: Strata, busybox: list[str]) -> None:
    strata.run(
        "run", "-d", "--name", "f1", *busybox, "/bin/sh", "-c",
        "for i in 1 2 3; do echo line$i; sleep 0.2; done", check=True,
    )  # fmt: skip
    followed = strata.run("logs", "-f", "f1", timeout=20)
    assert followed.stdout.split() == ["line1", "line2", "line3"]
    assert wait_exited(strata, "f1")["ExitCode"] == 0


def test_stop_escalates_to_sigkill_after_the_timeout(strata: Strata, busybox: list[str]) -> None:
    strata.run(
        "run", "-d", "--name", "stubborn", *busybox, "/bin/sh", "-c",
        "trap '' TERM; while :; do sleep 0.1; done", check=True,
    )  # fmt: skip
    wait_running(strata, "stubborn")
    started = time.monotonic()
    strata.run("stop", "-t", "1", "stubborn", check=True)
    assert 0.9 < time.monotonic() - started < 10
    state = strata.inspect("stubborn")["State"]
    assert isinstance(state, dict)
    assert state["ExitCode"] == 128 + signal.SIGKILL


def test_a_container_whose_processes_were_killed_shows_exited_and_can_restart(
    strata: Strata, busybox: list[str]
) -> None:
    """kill -9 of the monitor, the union daemon and the container's PID 1 at once (as a crash
    would): no unmount happens, yet the container shows as exited, restarts and is removed."""
    strata.run("run", "-d", "--name", "z1", *busybox, "/bin/sh", "-c",
               "cat /kept 2>/dev/null && exit 0; echo kept > /kept; sleep 60", check=True)  # fmt: skip
    info = wait_running(strata, "z1")
    state = info["State"]
    assert isinstance(state, dict)
    pids = [int(state[k]) for k in ("MonitorPid", "DaemonPid", "Pid")]
    assert all(pids)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: status(strata, "z1") == "exited", "z1 to show as exited", 10)
    assert [r["State"] for r in ps(strata, "-a")] == ["exited"]

    restarted = strata.run("start", "-a", "z1", timeout=30)  # the dead mount is detached first
    assert (restarted.returncode, restarted.stdout) == (0, "kept\n"), restarted.stderr
    assert strata.run("rm", "z1").returncode == 0
    assert not fuse_mounts_below(strata.tmp)


def test_names_are_unique_even_when_created_concurrently(
    strata: Strata, busybox: list[str]
) -> None:
    def create(_: int) -> subprocess.CompletedProcess[str]:
        return strata.run("create", "--name", "same", *busybox, "/bin/true")

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(create, range(6)))
    assert sorted(r.returncode for r in results) == [0, 125, 125, 125, 125, 125]
    assert len(strata.container_ids()) == 1
    assert all("already in use" in r.stderr for r in results if r.returncode)


def test_container_refs_by_name_id_and_prefix(strata: Strata, busybox: list[str]) -> None:
    cid = strata.run("create", "--name", "n1", *busybox, "/bin/true", check=True).stdout.strip()
    for ref in ("n1", cid, cid[:12], cid[:3]):
        assert strata.inspect(ref)["Id"] == cid
    missing = strata.run("inspect", "nope")
    assert missing.returncode == 1
    assert missing.stderr == "strata: no such container: nope\n"
