"""docker's smaller container commands: diff, wait, rename, top (and their bad input)."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from tests.runtime.conftest import Strata, wait_for, wait_running

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def test_diff_lists_added_changed_and_deleted(strata: Strata, busybox: list[str]) -> None:
    script = (
        "echo changed >> /etc/passwd; mkdir -p /new/dir; touch /new/dir/f; rm /bin/true;"
        " rm -rf /opt; mkdir /opt; touch /opt/fresh"
    )
    strata.run("run", "--name", "d1", *busybox, "/bin/sh", "-c", script, check=True)
    lines = strata.run("diff", "d1", check=True).stdout.splitlines()
    # whatever else the run copied up (this image's /etc/group comes up with /etc/passwd)
    upper_etc = {p.name for p in (strata.container_dir("d1") / "upper/etc").iterdir()}
    lines = [
        line
        for line in lines
        if not line.startswith("C /etc/") or line[7:] not in upper_etc - {"passwd"}
    ]
    assert lines == [
        "C /bin",
        "D /bin/true",
        "C /etc",
        "C /etc/passwd",
        "A /new",
        "A /new/dir",
        "A /new/dir/f",
        "D /opt",  # opaque now: what the image had there is gone
        "A /opt/fresh",
    ]


def test_diff_of_an_unchanged_and_a_read_only_container(strata: Strata, busybox: list[str]) -> None:
    strata.run("create", "--name", "fresh", *busybox, "true", check=True)
    assert strata.run("diff", "fresh", check=True).stdout == ""
    strata.run("create", "--name", "ro", "--read-only", *busybox, "true", check=True)
    assert strata.run("diff", "ro", check=True).stdout == ""
    done = strata.run("diff", "nosuch")
    assert (done.returncode, done.stderr) == (1, "strata: no such container: nosuch\n")


def test_wait_prints_each_exit_code(strata: Strata, busybox: list[str]) -> None:
    strata.run("run", "--name", "done", *busybox, "/bin/sh", "-c", "exit 3")
    strata.run("create", "--name", "later", *busybox, "/bin/sh", "-c", "exit 7", check=True)
    waiter = strata.popen("wait", "done", "later", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert waiter.stdout is not None
    assert waiter.stdout.readline() == "3\n"  # an exited container: at once
    strata.run("start", "later", check=True)  # a created one: once it has run
    out, err = waiter.communicate(timeout=60)
    assert (waiter.returncode, out, err) == (0, "7\n", "")
    done = strata.run("wait", "done", "nosuch")
    assert (done.returncode, done.stdout) == (1, "3\n")
    assert done.stderr == "strata: no such container: nosuch\n"


def test_wait_for_a_running_container_killed(strata: Strata, busybox: list[str]) -> None:
    strata.run("run", "-d", "--name", "r", *busybox, "/bin/sleep", "60", check=True)
    wait_running(strata, "r")
    waiter = strata.popen("wait", "r", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    strata.run("kill", "r", check=True)
    out, _ = waiter.communicate(timeout=60)
    assert (waiter.returncode, out) == (0, "137\n")


def test_rename(strata: Strata, busybox: list[str]) -> None:
    cid = strata.run("create", "--name", "old", *busybox, "true", check=True).stdout.strip()
    strata.run("create", "--name", "other", *busybox, "true", check=True)
    assert strata.run("rename", "old", "new", check=True).stdout == ""
    assert strata.inspect(cid)["Name"] == "new"
    assert strata.run("inspect", "old").returncode == 1
    for args, words in (
        (("new", "other"), "already in use"),
        (("new", "new"), "already has the name"),
        (("new", "bad name"), "invalid container name"),
        (("nosuch", "x"), "no such container"),
    ):
        done = strata.run("rename", *args)
        assert done.returncode == 1, args
        assert words in done.stderr
        assert done.stderr.count("\n") == 1
    assert strata.inspect(cid)["Name"] == "new"
    assert strata.run("rename", "new").returncode == 125  # usage


def test_top_lists_the_container_processes(strata: Strata, busybox: list[str]) -> None:
    strata.run(
        "run", "-d", "--name", "t", *busybox, "/bin/sh", "-c", "sleep 61 & sleep 62", check=True
    )
    info = wait_running(strata, "t")
    state = info["State"]
    assert isinstance(state, dict)
    lines = strata.run("top", "t", check=True).stdout.splitlines()
    assert lines[0].split() == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    commands = sorted(" ".join(line.split()[7:]) for line in lines[1:])
    assert "sleep 61" in commands
    assert "sleep 62" in commands
    assert all(c.startswith(("sleep", "/bin/sh")) for c in commands)  # nothing of the host's
    assert str(state["Pid"]) in [line.split()[1] for line in lines[1:]]
    custom = strata.run("top", "t", "-o", "pid,comm", check=True).stdout.splitlines()
    assert custom[0].split() == ["PID", "COMMAND"]
    assert sorted(line.split()[1] for line in custom[1:]) == ["sleep", "sleep"] or len(custom) >= 3
    done = strata.run("top", "t", "-o", "comm")
    assert (done.returncode, done.stderr) == (
        1,
        "strata: ps -o comm: no PID column in its output\n",
    )


def test_top_of_a_stopped_container(strata: Strata, busybox: list[str]) -> None:
    strata.run("create", "--name", "c", *busybox, "true", check=True)
    done = strata.run("top", "c")
    assert (done.returncode, done.stderr) == (1, "strata: container c is not running\n")


def test_pause_and_unpause(strata: Strata, busybox: list[str]) -> None:
    from runtime.pause import is_frozen

    cid = strata.run("run", "-d", "--name", "p", *busybox, "/bin/sleep", "60", check=True)
    cid_text = cid.stdout.strip()
    info = wait_running(strata, "p")
    pid = int(info["State"]["Pid"])  # type: ignore[index]
    assert strata.run("pause", "p", check=True).stdout == "p\n"
    assert is_frozen(pid, cid_text)
    state = strata.inspect("p")["State"]
    assert isinstance(state, dict)
    assert (state["Status"], state["Running"], state["Paused"]) == ("paused", True, True)
    assert "(Paused)" in strata.run("ps", check=True).stdout
    for command, words in (
        (("pause", "p"), "already paused"),
        (("exec", "p", "true"), "unpause the container before exec"),
    ):
        done = strata.run(*command)
        assert done.returncode == 1
        assert words in done.stderr
    assert strata.run("unpause", "p", check=True).stdout == "p\n"
    assert not is_frozen(pid, cid_text)
    assert strata.run("exec", "p", "true").returncode == 0
    done = strata.run("unpause", "p")
    assert (done.returncode, done.stderr) == (1, "strata: container p is not paused\n")
    # a paused container still stops (thawed once signalled)
    strata.run("pause", "p", check=True)
    strata.run("stop", "-t", "5", "p", check=True)
    state = strata.inspect("p")["State"]
    assert isinstance(state, dict)
    assert (state["Status"], state["Paused"], state["ExitCode"]) == ("exited", False, 143)


def test_pause_of_a_stopped_container(strata: Strata, busybox: list[str]) -> None:
    strata.run("create", "--name", "c", *busybox, "true", check=True)
    done = strata.run("pause", "c", "nosuch")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "strata: container c is not running",
        "strata: no such container: nosuch",
    ]


def _state(strata: Strata, ref: str) -> dict[str, object]:
    info = strata.inspect(ref)
    state = info["State"]
    assert isinstance(state, dict)
    return {**state, "RestartCount": info["RestartCount"]}


def test_restart_policy_on_failure_with_a_maximum(strata: Strata, busybox: list[str]) -> None:
    strata.run(
        "run", "-d", "--name", "f", "--restart", "on-failure:2", *busybox,
        "/bin/sh", "-c", "echo ran; exit 3", check=True,
    )  # fmt: skip

    def settled() -> bool:
        state = _state(strata, "f")
        return state["RestartCount"] == 2 and state["Status"] == "exited"

    wait_for(settled, "two restarts, then the end", timeout=60)
    assert _state(strata, "f")["ExitCode"] == 3
    assert strata.run("logs", "f", check=True).stdout == "ran\n" * 3
    info = strata.inspect("f")["HostConfig"]
    assert isinstance(info, dict)
    assert info["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}


def test_restart_policy_on_failure_leaves_a_success_alone(
    strata: Strata, busybox: list[str]
) -> None:
    done = strata.run("run", "--name", "ok", "--restart", "on-failure", *busybox, "true")
    assert done.returncode == 0
    assert strata.run("wait", "ok", check=True).stdout == "0\n"
    state = _state(strata, "ok")
    assert (state["Status"], state["RestartCount"]) == ("exited", 0)


def test_restart_policy_always_until_stopped_by_hand(strata: Strata, busybox: list[str]) -> None:
    # a foreground run returns the first status; the restarts go on in the background
    done = strata.run(
        "run", "--name", "a", "--restart", "always", *busybox, "/bin/sh", "-c", "exit 4"
    )
    assert done.returncode == 4
    wait_for(lambda: int(_state(strata, "a")["RestartCount"]) >= 2, "two restarts")  # type: ignore[call-overload]
    strata.run("stop", "-t", "1", "a", check=True)
    state = _state(strata, "a")
    assert state["Status"] == "exited"
    assert state["Restarting"] is False
    # no monitor is left to start it again

    def monitor_gone() -> bool:
        return not any(
            str(strata.root) in _cmdline(pid) for pid in os.listdir("/proc") if pid.isdigit()
        )

    wait_for(monitor_gone, "the monitor to give up")
    assert _state(strata, "a")["Status"] == "exited"


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def test_restart_command(strata: Strata, busybox: list[str]) -> None:
    strata.run("run", "-d", "--name", "r", *busybox, "/bin/sleep", "60", check=True)
    first = wait_running(strata, "r")["State"]
    assert isinstance(first, dict)
    assert strata.run("restart", "-t", "1", "r", check=True).stdout == "r\n"
    second = wait_running(strata, "r")["State"]
    assert isinstance(second, dict)
    assert second["Pid"] != first["Pid"]
    assert second["StartedAt"] > first["StartedAt"]
    # a stopped container is started
    strata.run("create", "--name", "c", *busybox, "/bin/sleep", "60", check=True)
    strata.run("restart", "c", check=True)
    wait_running(strata, "c")
    done = strata.run("restart", "nosuch")
    assert (done.returncode, done.stderr) == (1, "strata: no such container: nosuch\n")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--restart", "bogus"), "invalid restart policy"),
        (("--restart", "always:3"), "cannot be used with restart policy 'always'"),
        (("--restart", "on-failure:-1"), "must be a number"),
        (("--restart", "always", "--rm"), "conflicting options: --restart and --rm"),
    ],
)
def test_restart_policy_bad_input(
    strata: Strata, busybox: list[str], args: tuple[str, ...], words: str
) -> None:
    done = strata.run("create", *args, *busybox, "true")
    assert done.returncode == 125
    assert words in done.stderr
    assert done.stderr.count("\n") == 1
    assert strata.container_ids() == []


def test_stats_no_stream(strata: Strata, busybox: list[str]) -> None:
    strata.run(
        "run", "-d", "--name", "busy", "-m", "64m", *busybox,
        "/bin/sh", "-c", "sleep 60 & while true; do :; done", check=True,
    )  # fmt: skip
    wait_running(strata, "busy")
    strata.run("create", "--name", "idle", *busybox, "true", check=True)
    lines = strata.run("stats", "--no-stream", check=True).stdout.splitlines()
    assert [c.strip() for c in lines[0].split("   ") if c.strip()] == [
        "CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O",
        "PIDS",
    ]  # fmt: skip
    assert len(lines) == 2  # only running containers without -a
    cells = [c.strip() for c in lines[1].split("   ") if c.strip()]
    assert cells[1] == "busy"
    assert float(cells[2].rstrip("%")) > 0  # a busy loop uses CPU
    assert cells[3].endswith(" / 64MiB")
    assert int(cells[7]) >= 2  # the shell and its sleep
    everything = strata.run("stats", "--no-stream", "-a", check=True).stdout.splitlines()
    idle = next(line for line in everything if " idle " in line)
    assert idle.split()[2:4] == ["--", "--"]
    done = strata.run("stats", "--no-stream", "nosuch")
    assert (done.returncode, done.stderr) == (1, "strata: no such container: nosuch\n")


def test_attach_passes_input_and_returns_the_exit_status(
    strata: Strata, busybox: list[str]
) -> None:
    script = "read line; echo got $line; exit 5"
    strata.run("run", "-d", "-i", "--name", "a", *busybox, "/bin/sh", "-c", script, check=True)
    wait_running(strata, "a")
    attach = strata.popen(
        "attach", "a", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = attach.communicate("bye\n", timeout=60)
    assert (attach.returncode, out, err) == (5, "got bye\n", "")
    done = strata.run("attach", "a")
    assert (done.returncode, done.stderr) == (
        1,
        "strata: you cannot attach to a stopped container, start it first\n",
    )


@pytest.mark.parametrize(("keys", "typed"), [(None, "\x10\x11"), ("ctrl-a,x", "\x01x")])
def test_attach_detach_keys_leave_it_running(
    strata: Strata, busybox: list[str], keys: str | None, typed: str
) -> None:
    script = "while read line; do echo got $line; done"
    strata.run("run", "-d", "-i", "--name", "a", *busybox, "/bin/sh", "-c", script, check=True)
    wait_running(strata, "a")
    args = ["--detach-keys", keys] if keys is not None else []
    attach = strata.popen(
        "attach", *args, "a", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert attach.stdin is not None
    assert attach.stdout is not None
    attach.stdin.write("one\n")
    attach.stdin.flush()
    assert attach.stdout.readline() == "got one\n"
    attach.stdin.write(typed)
    attach.stdin.flush()
    out, err = attach.communicate(timeout=60)
    assert (attach.returncode, out, err) == (1, "", "read escape sequence\n")
    assert strata.inspect("a")["State"]["Status"] == "running"  # type: ignore[index]
    # its input stayed open: a second attach goes on
    again = strata.popen(
        "attach", *args, "a", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert again.stdin is not None
    assert again.stdout is not None
    again.stdin.write("two\n")
    again.stdin.flush()
    assert again.stdout.readline() == "got two\n"
    again.stdin.write(typed)
    again.stdin.flush()
    again.communicate(timeout=60)
    assert again.returncode == 1


def test_attach_to_a_tty_container(strata: Strata, busybox: list[str]) -> None:
    strata.run("run", "-d", "-it", "--name", "t", *busybox, "/bin/sh", check=True)
    wait_running(strata, "t")
    done = strata.run("attach", "t", input="exit\n")
    assert (done.returncode, done.stderr) == (1, "strata: the input device is not a TTY\n")
    master, slave = os.openpty()
    try:
        attach = strata.popen("attach", "t", stdin=slave, stdout=subprocess.PIPE)
        assert attach.stdout is not None
        os.write(master, b"echo hi$((40+2))\r")
        seen = ""
        while "hi42" not in seen:
            line = attach.stdout.readline()
            assert line, seen
            seen += line
        os.write(master, b"exit 3\r")
        attach.communicate(timeout=60)
        assert attach.returncode == 3
    finally:
        os.close(master)
        os.close(slave)


def test_attach_bad_input(strata: Strata, busybox: list[str]) -> None:
    strata.run("run", "-d", "-i", "--name", "p", *busybox, "/bin/sleep", "60", check=True)
    wait_running(strata, "p")
    done = strata.run("attach", "--detach-keys", "ctrl-1", "p")
    assert (done.returncode, done.stderr) == (
        125,
        "strata: --detach-keys ctrl-1: invalid key 'ctrl-1'\n",
    )
    strata.run("pause", "p", check=True)
    done = strata.run("attach", "p")
    assert done.returncode == 1
    assert "unpause it first" in done.stderr
    strata.run("unpause", "p", check=True)
    done = strata.run("attach", "nosuch")
    assert (done.returncode, done.stderr) == (1, "strata: no such container: nosuch\n")


def _own_cgroups(pid: int) -> list[str]:
    """The container's own cgroup directories (strata-<id>), as /proc/PID/cgroup names them."""
    found = []
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            path = line.rstrip("\n").split(":", 2)[2]
            if os.path.basename(path).startswith("strata-"):
                found.append(path)
    return found


def test_the_freezer_cgroup_goes_with_the_container(strata: Strata, busybox: list[str]) -> None:
    from runtime.cgroups import _mounted_hierarchies

    v2, v1 = _mounted_hierarchies()
    mounts = [p for p in [v2, v1.get("freezer")] if p is not None]
    strata.run("run", "-d", "--name", "g", *busybox, "/bin/sleep", "60", check=True)
    state = wait_running(strata, "g")["State"]
    assert isinstance(state, dict)
    groups = _own_cgroups(int(state["Pid"]))
    assert groups  # as root on this host: v2 or the v1 freezer
    dirs = [m / g.lstrip("/") for g in groups for m in mounts if (m / g.lstrip("/")).is_dir()]
    assert dirs
    # a monitor killed with SIGKILL cannot remove them: rm does
    os.kill(int(state["MonitorPid"]), signal.SIGKILL)
    wait_for(lambda: _state(strata, "g")["Status"] == "exited", "the container to be seen exited")
    strata.run("rm", "g", check=True)
    assert not [d for d in dirs if d.exists()]


def test_attach_to_a_rm_container_gets_its_exit_status(strata: Strata, busybox: list[str]) -> None:
    script = "read line; exit 6"
    strata.run("run", "-d", "-i", "--rm", "--name", "r", *busybox, "/bin/sh", "-c", script,
               check=True)  # fmt: skip
    wait_running(strata, "r")
    attach = strata.popen(
        "attach", "r", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = attach.communicate("bye\n", timeout=60)
    assert (attach.returncode, out, err) == (6, "", "")  # told before --rm took the state
    wait_for(lambda: not strata.container_ids(), "--rm to remove the container")
