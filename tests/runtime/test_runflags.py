"""docker's run flags that shape the container's process: --label/--label-file (inspect, ps
--filter), --cidfile, --stop-signal and --stop-timeout (used by `strata stop`, also through
--init), --ulimit, --shm-size, --group-add, --userns, --platform; and bad input for each."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from runtime.runflags import parse_signal, parse_size, parse_ulimit
from unionfs.errors import UsageError

from .conftest import Strata, wait_running


def test_ulimit_syntax_is_dockers() -> None:
    assert parse_ulimit("nofile=1024:2048") == "nofile=1024:2048"
    assert parse_ulimit("core=0") == "core=0:0"
    assert parse_ulimit("memlock=-1:-1") == "memlock=-1:-1"
    assert parse_ulimit("stack=1024:-1") == "stack=1024:-1"
    for bad in ("nofile", "bogus=1", "nofile=a:b", "nofile=2048:1024", "nofile=-1:10", "=1"):
        with pytest.raises(UsageError) as caught:
            parse_ulimit(bad)
        assert caught.value.exit_code == 125
    with pytest.raises(UsageError, match="soft limit must be less than or equal to hard"):
        parse_ulimit("nofile=2048:1024")


def test_signals_and_sizes() -> None:
    assert parse_signal("SIGRTMIN+3") == signal.SIGRTMIN + 3
    assert parse_signal("usr1") == signal.SIGUSR1
    assert parse_size("64m", "--shm-size") == 64 << 20
    assert parse_size("1g", "--shm-size") == 1 << 30
    for bad in ("0", "big", "-1m", "1t"):
        with pytest.raises(UsageError):
            parse_size(bad, "--shm-size")


def test_labels_show_in_inspect_and_filter_ps(
    strata: Strata, busybox: list[str], tmp_path: Path
) -> None:
    labels = tmp_path / "labels"
    labels.write_text("# a comment\n\ntier=db\nowner=ops\n")
    cid_file = tmp_path / "cid"
    strata.run(
        "create", "--name", "l1", "--label-file", str(labels), "-l", "owner=me", "--label",
        "flag", "--cidfile", str(cid_file), *busybox, "/bin/true", check=True,
    )  # fmt: skip
    strata.run("create", "--name", "l2", "-l", "tier=web", *busybox, "/bin/true", check=True)
    info = strata.inspect("l1")
    config = info["Config"]
    assert isinstance(config, dict)
    assert config["Labels"] == {"tier": "db", "owner": "me", "flag": ""}
    assert cid_file.read_text() == info["Id"]

    def ps(*filters: str) -> list[str]:
        args = [f"--filter={f}" for f in filters]
        done = strata.run("ps", "-a", "--format", "json", *args, check=True)
        return [row["Names"][0] for row in json.loads(done.stdout)]

    assert ps("label=tier") == ["l1", "l2"]
    assert ps("label=tier=db") == ["l1"]
    assert ps("label=tier", "label=flag") == ["l1"]
    assert ps("label=nothing") == []
    assert ps("name=l2") == ["l2"]
    assert ps("status=created") == ["l1", "l2"]
    bad = strata.run("ps", "--filter", "colour=red")
    assert (bad.returncode, len(bad.stderr.splitlines())) == (125, 1)
    # the cidfile exists now: docker refuses to overwrite it, and nothing is created
    again = strata.run("create", "--cidfile", str(cid_file), *busybox, "/bin/true")
    assert again.returncode == 125
    assert "container ID file found" in again.stderr
    assert len(strata.container_ids()) == 2


@pytest.mark.parametrize("init", [False, True])
def test_stop_sends_the_stop_signal_and_waits_the_stop_timeout(
    strata: Strata, busybox: list[str], init: bool
) -> None:
    # the command traps USR1 (the stop signal) and exits 3: through --init's init too
    script = "trap 'echo got usr1; exit 3' USR1; echo ready; while :; do sleep 0.05; done"
    extra = ["--init"] if init else []
    strata.run(
        "run", "-d", "--name", "s1", *extra, "--stop-signal", "USR1", "--stop-timeout", "30",
        *busybox, "/bin/sh", "-c", script, check=True,
    )  # fmt: skip
    wait_running(strata, "s1")
    info = strata.inspect("s1")
    config = info["Config"]
    assert isinstance(config, dict)
    assert (config["StopSignal"], config["StopTimeout"]) == ("USR1", 30)
    strata.run("stop", "s1", check=True)
    state = strata.inspect("s1")["State"]
    assert isinstance(state, dict)
    assert state["ExitCode"] == 3
    assert "got usr1" in strata.run("logs", "s1", check=True).stdout


def test_stop_signal_outside_the_forwarded_set_reaches_the_command_under_init(
    strata: Strata, busybox: list[str]
) -> None:
    # SIGRTMIN+3 (systemd's) goes straight to PID 1: the tiny init must pass it on
    # (by number: busybox's RTMIN is the kernel's 32, the C library's and Python's 34)
    script = f"trap 'exit 4' {signal.SIGRTMIN + 3}; while :; do sleep 0.05; done"
    strata.run(
        "run", "-d", "--name", "s2", "--init", "--stop-signal", "SIGRTMIN+3", *busybox,
        "/bin/sh", "-c", script, check=True,
    )  # fmt: skip
    wait_running(strata, "s2")
    strata.run("stop", "-t", "30", "s2", check=True)
    state = strata.inspect("s2")["State"]
    assert isinstance(state, dict)
    assert state["ExitCode"] == 4


def test_ulimit_shm_size_and_group_add_reach_the_command(
    strata: Strata, busybox: list[str]
) -> None:
    done = strata.run(
        "run", "--rm", "--ulimit", "nofile=100:200", "--ulimit", "core=0", "--shm-size", "8m",
        "--group-add", "nogroup", "--group-add", "1234", *busybox, "/bin/sh", "-c",
        "ulimit -Sn; ulimit -Hn; ulimit -c; df -k /dev/shm | tail -1; id -G",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    soft, hard, core, shm, groups = done.stdout.splitlines()
    assert (soft, hard, core) == ("100", "200", "0")
    assert shm.split()[1] == "8192"
    assert sorted(groups.split(), key=int) == [
        "0",
        "1234",
        "65534",
    ]  # nogroup: the image's /etc/group
    strata.run("run", "-d", "--name", "g1", "--group-add", "1234", "--ulimit", "nofile=50:60",
               *busybox, "/bin/sleep", "60", check=True)  # fmt: skip
    wait_running(strata, "g1")
    assert "1234" in strata.run("exec", "g1", "/bin/id", "-G", check=True).stdout.split()
    assert strata.run("exec", "g1", "/bin/sh", "-c", "ulimit -n").stdout == "50\n"
    strata.run("rm", "-f", "g1", check=True)
    missing = strata.run("run", "--rm", "--group-add", "wheel", *busybox, "/bin/true")
    assert missing.returncode == 125
    assert "unable to find group wheel" in missing.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ulimit", "nofile=2:1"], "soft limit"),
        (["--ulimit", "colour=1"], "--ulimit colour=1"),
        (["--stop-signal", "SIGNOPE"], "--stop-signal unknown signal"),
        (["--stop-timeout", "-5"], "--stop-timeout -5"),
        (["--shm-size", "lots"], "--shm-size lots"),
        (["--group-add", "a b"], "--group-add"),
        (["--label", "=v"], "--label"),
        (["--label-file", "/nonexistent"], "--label-file /nonexistent"),
        (["--userns", "keep-id"], "--userns keep-id: keep-id is only supported in rootless mode"),
        (["--userns", "auto"], "--userns auto: only host and keep-id are supported"),
        (["--platform", "linux/s390x"], "--platform linux/s390x"),
        (["--platform", "windows/amd64"], "no emulation"),
    ],
)
def test_bad_run_flags_are_one_line_and_125_and_create_nothing(
    strata: Strata, busybox: list[str], args: list[str], message: str
) -> None:
    done = strata.run("run", "--rm", *args, *busybox, "/bin/true")
    assert done.returncode == 125
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert strata.container_ids() == []


def test_userns_host_and_this_platform_are_accepted(strata: Strata, busybox: list[str]) -> None:
    import platform

    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    done = strata.run(
        "run", "--rm", "--userns", "host", "--platform", f"linux/{arch}", *busybox, "/bin/true"
    )
    assert done.returncode == 0, done.stderr


def test_cpus_sets_the_cfs_quota_of_the_containers_cgroup(
    strata: Strata, busybox: list[str]
) -> None:
    from runtime.cgroups import _find

    where = _find("cpu")
    if where is None:
        pytest.skip("no usable cpu cgroup controller")
    strata.run("run", "-d", "--name", "c1", "--cpus", "0.5", *busybox, "/bin/sleep", "60",
               check=True)  # fmt: skip
    info = wait_running(strata, "c1")
    host_config = info["HostConfig"]
    assert isinstance(host_config, dict)
    assert host_config["NanoCpus"] == 500_000_000
    group = where.parent() / f"strata-{str(info['Id'])[:12]}"
    if where.version == 2:
        assert (group / "cpu.max").read_text().split() == ["50000", "100000"]
    else:
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (group / "cpu.cfs_period_us").read_text().strip() == "100000"
    state = info["State"]
    assert isinstance(state, dict)
    assert str(state["Pid"]) in (group / "cgroup.procs").read_text().split()
    strata.run("rm", "-f", "c1", check=True)
    bad = strata.run("run", "--rm", "--cpus", "999", *busybox, "/bin/true")
    assert bad.returncode == 125
    assert "range of CPUs is from 0.01 to" in bad.stderr


def test_device_is_bound_into_dev(strata: Strata, busybox: list[str]) -> None:
    done = strata.run(
        "run", "--rm", "--device", "/dev/zero:/dev/myzero", "--device", "/dev/full:/dev/f:rw",
        *busybox, "/bin/sh", "-c",
        "head -c 3 /dev/myzero | od -An -tx1; echo x > /dev/f 2>/dev/null || echo full;"
        " ls -l /dev/myzero",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["00", "00", "00"]
    assert lines[1] == "full"  # /dev/full's ENOSPC: the device itself answered
    assert lines[2].startswith("c")
    for bad, message in (
        ("/dev/nonexistent", "error gathering device information"),
        ("/etc/passwd", "not a device node"),
        ("/dev/zero:/x:rwx", "expected HOST[:CONTAINER][:rwm]"),
        ("/dev/zero:/x:r", "cannot be enforced without a device cgroup"),
        ("dev/zero", "must be absolute"),
    ):
        failed = strata.run("run", "--rm", "--device", bad, *busybox, "/bin/true")
        assert failed.returncode == 125, bad
        assert message in failed.stderr, failed.stderr
    assert strata.container_ids() == []


def test_log_opt_is_recorded_and_bad_ones_refused(strata: Strata, busybox: list[str]) -> None:
    strata.run("create", "--name", "lo", "--log-opt", "max-size=1m", "--log-opt", "max-file=2",
               *busybox, "/bin/true", check=True)  # fmt: skip
    host_config = strata.inspect("lo")["HostConfig"]
    assert isinstance(host_config, dict)
    assert host_config["LogConfig"]["Config"] == {"max-size": str(1 << 20), "max-file": "2"}
    bad = strata.run("create", "--log-opt", "tag=x", *busybox, "/bin/true")
    assert (bad.returncode, len(bad.stderr.splitlines())) == (125, 1)
    assert "unknown log opt 'tag'" in bad.stderr


def test_stop_uses_the_images_stopsignal_and_its_labels(strata: Strata, tmp_path: Path) -> None:
    from tests.helpers.images import BUSYBOX_DOCKER_ARCHIVE

    if not BUSYBOX_DOCKER_ARCHIVE.exists():
        pytest.skip(f"{BUSYBOX_DOCKER_ARCHIVE} missing")
    strata.run("load", "-i", str(BUSYBOX_DOCKER_ARCHIVE), check=True)
    (image,) = json.loads(strata.run("images", "--format", "json", check=True).stdout)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {image['RepoTags'][0]}\nSTOPSIGNAL SIGUSR2\nLABEL tier=image owner=image\n"
    )
    strata.run("build", "-q", "-t", "stopper", str(context), check=True, timeout=300)
    strata.run(
        "run", "-d", "--name", "st", "-l", "owner=me", "stopper", "/bin/sh", "-c",
        "trap 'exit 5' USR2; while :; do sleep 0.05; done", check=True,
    )  # fmt: skip
    info = wait_running(strata, "st")
    config = info["Config"]
    assert isinstance(config, dict)
    assert config["StopSignal"] == "SIGUSR2"
    labels = config["Labels"]
    assert isinstance(labels, dict)
    assert (labels["tier"], labels["owner"]) == ("image", "me")  # --label over the image's
    strata.run("stop", "st", check=True)
    state = strata.inspect("st")["State"]
    assert isinstance(state, dict)
    assert state["ExitCode"] == 5
