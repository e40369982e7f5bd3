"""`strata run` on real images: namespaces, the union as `/`, where writes land, exit statuses,
signals, and clean-up after every kind of ending (the `strata` fixture fails a test that leaves a
mount or a process behind)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.images import DebianRootfs
from tests.helpers.mounts import tree_snapshot
from tests.runtime.conftest import Strata, fuse_mounts_below, wait_for, wait_running

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def test_busybox_runs_as_pid_1_with_its_hostname_and_sees_only_its_processes(
    strata: Strata, busybox: list[str]
) -> None:
    script = "echo $$; hostname; ps -o pid,comm; cat /etc/motd; mount"
    done = strata.run("run", "--rm", "--hostname", "box1", *busybox, "/bin/sh", "-c", script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["1", "box1"]
    ps = [line.split() for line in lines[2:] if line.split()[0].isdigit()]
    assert [p[0] for p in ps][:1] == ["1"]
    assert {p[1] for p in ps} <= {"sh", "ps"}, ps  # nothing of the host's
    assert "reborn" in lines  # the merged view of the four layers
    mounts = [line.split() for line in lines if " on " in line]
    root = [m for m in mounts if m[2] == "/"]
    assert root[0][:5] == ["strata", "on", "/", "type", "fuse.strata"]
    assert any(m[2] == "/proc" and m[4] == "proc" for m in mounts)
    assert strata.container_ids() == []  # --rm


@pytest.mark.slow
def test_debian_rootfs_prints_pid_1_hostname_and_its_distribution(
    strata: Strata, debian_rootfs: DebianRootfs
) -> None:
    done = strata.run(
        "run", "--rm", "--hostname", "deb", str(debian_rootfs.path),
        "/bin/sh", "-c", "echo $$; hostname; cat /etc/os-release; python3 -c 'print(6*7)'",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["1", "deb"]
    assert 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"' in lines
    assert "42" in lines


@pytest.mark.slow
def test_debian_apt_and_dpkg_work_and_land_in_the_upper(
    strata: Strata, debian_rootfs: DebianRootfs
) -> None:
    done = strata.run(
        "run", "--name", "deb", str(debian_rootfs.path), "/bin/sh", "-c",
        "dpkg -l | grep -c '^ii'; echo x > /etc/added; rm /etc/debian_version; mv /usr/share/doc /usr/share/doc2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[0]) > 50
    upper = strata.container_dir("deb") / "upper"
    assert (upper / "etc/added").read_text() == "x\n"
    assert (debian_rootfs.path / "etc/debian_version").exists()
    assert (debian_rootfs.path / "usr/share/doc").is_dir()


def _is_whiteout(directory: Path, name: str) -> bool:
    try:
        st = os.lstat(directory / name)
    except FileNotFoundError:
        return (directory / f".wh.{name}").exists()
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_writes_land_in_the_upper_deletions_leave_whiteouts_and_lowers_stay_untouched(
    strata: Strata, busybox: list[str], busybox_layers: list[Path]
) -> None:
    before = [tree_snapshot(layer) for layer in busybox_layers]
    script = "echo new > /opt/new; echo changed >> /etc/passwd; rm /etc/motd; rm -r /opt/tree"
    done = strata.run("run", "--name", "w1", *busybox, "/bin/sh", "-c", script)
    assert done.returncode == 0, done.stderr
    upper = strata.container_dir("w1") / "upper"
    assert (upper / "opt/new").read_text() == "new\n"
    assert (upper / "etc/passwd").read_text().endswith("changed\n")
    assert _is_whiteout(upper / "etc", "motd")
    assert _is_whiteout(upper / "opt", "tree")
    assert [tree_snapshot(layer) for layer in busybox_layers] == before

    # a second container on the same image sees none of it
    done = strata.run(
        "run", "--rm", *busybox, "/bin/sh", "-c",
        "cat /etc/motd; ls /opt/tree; test -e /opt/new || echo no-new; tail -1 /etc/passwd",
    )  # fmt: skip
    assert done.stdout.split() == ["reborn", "n", "no-new", "appended"]

    # and the first one's changes are still there when it runs again: its deletions fail now
    done = strata.run("start", "-a", "w1")
    assert done.returncode == 1
    assert "can't remove '/etc/motd'" in done.stderr
    assert (upper / "opt/new").read_text() == "new\n"


def test_exit_status_propagates(strata: Strata, busybox: list[str]) -> None:
    assert strata.run("run", "--rm", *busybox, "/bin/sh", "-c", "exit 7").returncode == 7
    assert strata.run("run", "--rm", *busybox, "/bin/false").returncode == 1
    killed = strata.run("run", "--rm", "--init", *busybox, "/bin/sh", "-c", "kill -KILL $$")
    assert killed.returncode == 128 + signal.SIGKILL
    child = strata.run(
        "run", "--rm", *busybox, "/bin/sh", "-c", "sleep 10 & kill -TERM $!; wait $!"
    )
    assert child.returncode == 128 + signal.SIGTERM


@pytest.mark.parametrize("init", [False, True], ids=["command-is-pid-1", "tiny-init"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_strata_run_reaches_the_command(
    strata: Strata, busybox: list[str], sig: signal.Signals, init: bool
) -> None:
    """The command does not handle the signal: it dies of it (as PID 1 the kernel would drop it,
    so the runtime stands in with SIGKILL and reports 128+N)."""
    proc = strata.popen(
        "run", "--rm", "--name", "s1", *(["--init"] if init else []), *busybox, "/bin/sleep", "60",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_running(strata, "s1")
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 128 + sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_command_that_traps_sigterm_gets_it(strata: Strata, busybox: list[str]) -> None:
    proc = strata.popen(
        "run", "--rm", "--name", "t1", *busybox, "/bin/sh", "-c",
        "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.1; done",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        wait_running(strata, "t1")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert out == "got TERM\n"
        assert proc.returncode == 3
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_sigkill_of_the_containers_init_unmounts_everything(
    strata: Strata, busybox: list[str]
) -> None:
    proc = strata.popen(
        "run", "--rm", "--name", "k1", *busybox, "/bin/sleep", "60",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        info = wait_running(strata, "k1")
        state = info["State"]
        assert isinstance(state, dict)
        assert fuse_mounts_below(strata.tmp)  # mounted while it runs
        os.kill(int(state["Pid"]), signal.SIGKILL)
        assert proc.wait(timeout=20) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not fuse_mounts_below(strata.tmp)


def test_sigkill_of_strata_run_takes_the_container_and_the_mount_down(
    strata: Strata, busybox: list[str]
) -> None:
    proc = strata.popen(
        "run", "--name", "k2", *busybox, "/bin/sleep", "60",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_running(strata, "k2")
        proc.kill()
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: not fuse_mounts_below(strata.tmp), "the rootfs to be unmounted", 10)
    info = strata.inspect("k2")
    state = info["State"]
    assert isinstance(state, dict)
    assert state["Status"] == "exited"
    assert strata.run("rm", "k2").returncode == 0


def test_tiny_init_is_pid_1_reaps_orphans_and_runs_the_command_as_its_child(
    strata: Strata, busybox: list[str]
) -> None:
    # The orphan: `true`, whose parent exits at once. `$(...)` returns once both have closed
    # its pipe, i.e. exited; then the orphan's /proc entry goes when the init reaps it.
    script = (
        "echo $$; orphan=$(sh -c 'true & echo $!'); i=0;"
        " while [ -e /proc/$orphan ] && [ $i -lt 200 ]; do i=$((i + 1)); sleep 0.05; done;"
        " ps -o stat,comm | grep -c ^Z; true"
    )
    done = strata.run("run", "--rm", "--init", *busybox, "/bin/sh", "-c", script)
    assert done.returncode == 0, done.stderr
    pid, zombies = done.stdout.split()
    assert pid == "2"  # PID 1 is the init
    assert zombies == "0"  # the orphan was reaped


def test_env_workdir_and_user(strata: Strata, busybox: list[str], tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=yes\n\nB=file\n")
    done = strata.run(
        "run", "--rm", "-e", "A=1", "--env-file", str(env_file), "-e", "B=flag",
        "--hostname", "h", "-w", "/opt", "-u", "65534:65534", *busybox,
        "/bin/sh", "-c", "echo $A $B $FROM_FILE $HOSTNAME $PATH; pwd; id -u; id -g; echo $HOME",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "1 flag yes h /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "/opt",
        "65534",
        "65534",
        "/",
    ]
    named = strata.run("run", "--rm", "-u", "nobody", *busybox, "/bin/id", "-un")
    assert named.stdout == "nobody\n"


def test_stdin_is_passed_only_with_i(strata: Strata, busybox: list[str]) -> None:
    with_i = strata.run("run", "--rm", "-i", *busybox, "/bin/cat", input="hello\n")
    assert with_i.stdout == "hello\n"
    without = strata.run("run", "--rm", *busybox, "/bin/cat", input="hello\n")
    assert without.stdout == ""
    assert without.returncode == 0


def test_volumes_rw_and_ro(strata: Strata, busybox: list[str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in").write_text("from host\n")
    conf = tmp_path / "conf"
    conf.write_text("read only\n")
    done = strata.run(
        "run", "--rm", "-v", f"{data}:/data", "-v", f"{conf}:/etc/app.conf:ro", *busybox,
        "/bin/sh", "-c",
        "cat /data/in; echo out > /data/out; cat /etc/app.conf; echo x > /etc/app.conf || echo ro",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["from host", "read only", "ro"]
    assert (data / "out").read_text() == "out\n"
    assert conf.read_text() == "read only\n"


def test_read_only_rootfs(strata: Strata, busybox: list[str]) -> None:
    done = strata.run(
        "run", "--name", "ro", "--read-only", *busybox, "/bin/sh", "-c",
        "touch /x 2>&1 || echo refused; echo ok > /dev/shm/y && cat /dev/shm/y",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "refused" in done.stdout
    assert "ok" in done.stdout
    assert not (strata.container_dir("ro") / "upper").exists()


def test_dev_proc_and_sys(strata: Strata, busybox: list[str]) -> None:
    script = (
        "ls /dev | sort | tr '\\n' ' '; echo; ls /dev/pts; readlink /dev/fd;"
        " head -c 4 /dev/zero | od -An -tx1; touch /sys/x 2>/dev/null || echo sys-ro;"
        " grep -c . /proc/1/status >/dev/null && echo proc"
    )
    done = strata.run("run", "--rm", *busybox, "/bin/sh", "-c", script)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    names = set(lines[0].split())
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx"} <= names
    assert {"fd", "stdin", "stdout", "stderr", "mqueue"} <= names
    assert lines[1].split() == ["ptmx"]  # a fresh devpts: none of the host's terminals
    assert lines[2] == "/proc/self/fd"
    assert lines[3].split() == ["00", "00", "00", "00"]
    assert lines[4:] == ["sys-ro", "proc"]


def test_network_none_has_only_loopback_and_it_is_up(strata: Strata, busybox: list[str]) -> None:
    done = strata.run(
        "run", "--rm", "--network", "none", *busybox, "/bin/sh", "-c",
        "ls /sys/class/net; cat /sys/class/net/lo/operstate /sys/class/net/lo/flags",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert lines[0] == "lo"
    assert int(lines[-1], 16) & 1  # IFF_UP


def test_network_bridge_reaches_the_host_and_back(strata: Strata, busybox: list[str]) -> None:
    if not os.path.exists("/usr/sbin/ip") and not os.path.exists("/sbin/ip"):
        pytest.skip("iproute2 is not installed")
    done = strata.run(
        "run", "-d", "--name", "web", "--network", "bridge", *busybox,
        "/bin/httpd", "-f", "-p", "8080", "-h", "/opt/tree",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    info = wait_running(strata, "web")
    settings = info["NetworkSettings"]
    assert isinstance(settings, dict)
    address = str(settings["IPAddress"])
    assert address.startswith("10.90.")
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}:8080/n", timeout=2) as reply:
                assert reply.read() == b"new\n"
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    ping = strata.run(
        "run", "--rm", "--network", "bridge", *busybox, "/bin/sh", "-c",
        f"wget -q -O - http://{address}:8080/n; cat /etc/hosts | tail -1",
    )  # fmt: skip
    assert ping.stdout.splitlines()[0] == "new"
    assert strata.run("stop", "-t", "2", "web").returncode == 0


def test_memory_limit_kills_what_exceeds_it(strata: Strata, busybox: list[str]) -> None:
    from runtime.cgroups import _find

    if _find("memory") is None:
        pytest.skip("no usable memory cgroup controller")
    done = strata.run(
        "run", "--rm", "-m", "16m", *busybox, "/bin/sh", "-c",
        "dd if=/dev/zero of=/dev/null bs=64M count=1 2>/dev/null; echo dd=$?",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"dd={128 + signal.SIGKILL}\n"  # the OOM killer, in our cgroup only
    assert "warning" not in done.stderr


def test_pids_limit_stops_forks(strata: Strata, busybox: list[str]) -> None:
    from runtime.cgroups import _find

    if _find("pids") is None:
        pytest.skip("no usable pids cgroup controller")
    done = strata.run(
        "run", "--rm", "--pids-limit", "4", *busybox, "/bin/sh", "-c",
        "for i in 1 2 3 4 5 6; do sleep 1 & done; wait",
    )  # fmt: skip
    assert "can't fork" in done.stderr


def test_sigkill_of_the_union_daemon_stops_the_container_and_detaches_the_mount(
    strata: Strata, busybox: list[str]
) -> None:
    proc = strata.popen(
        "run", "--rm", "--name", "d1", *busybox, "/bin/sleep", "60",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        info = wait_running(strata, "d1")
        state = info["State"]
        assert isinstance(state, dict)
        os.kill(int(state["DaemonPid"]), signal.SIGKILL)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 128 + signal.SIGKILL
        assert err == "strata: the union daemon died (137); stopping the container\n"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert not fuse_mounts_below(strata.tmp)


def test_dns_options_and_added_hosts_reach_the_containers_files(
    strata: Strata, busybox: list[str]
) -> None:
    """--dns/--dns-search/--dns-option write resolv.conf, --add-host (host-gateway too) and the
    container's name land in /etc/hosts, as docker and podman write them. (Only files: no name
    is looked up, no packet leaves.)"""
    done = strata.run(
        "run", "--rm", "--name", "dnsbox", "--hostname", "box", "--network", "host",
        "--dns", "192.0.2.53", "--dns-search", "corp.test", "--dns-option", "ndots:2",
        "--add-host", "db:10.1.2.3", "--add-host", "gw=host-gateway",
        *busybox, "/bin/sh", "-c", "cat /etc/resolv.conf; echo --; cat /etc/hosts",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    resolv, hosts = done.stdout.split("--\n")
    assert resolv.splitlines() == ["nameserver 192.0.2.53", "search corp.test", "options ndots:2"]
    assert hosts.splitlines()[2:] == ["127.0.1.1\tbox dnsbox", "10.1.2.3\tdb", "127.0.0.1\tgw"]
