"""Health checks (runtime.health): HEALTHCHECK and `--health-*` run by the container's monitor
as docker's daemon runs them, `State.Health` in inspect, ps's STATUS and `--filter health=`,
`strata healthcheck run` (podman's), `--no-healthcheck`, and bad flags.

Intervals are short so the tests stay quick; no fixed sleeps: inspect is polled with a deadline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.health import (
    Settings,
    _interval,
    merge,
    parse_flags,
    probe_argv,
)
from runtime.logshow import go_duration_text

from .conftest import Strata, container_processes, wait_for, wait_running
from .test_rootless import rootless  # noqa: F401 (a fixture)

FLAGS = {
    "cmd": "",
    "interval": "",
    "timeout": "",
    "retries": 0,
    "start_period": "",
    "start_interval": "",
    "no_healthcheck": False,
}


def test_flags_merge_and_go_durations() -> None:
    assert parse_flags(**FLAGS) is None  # type: ignore[arg-type]
    assert parse_flags(**FLAGS | {"no_healthcheck": True}) == {"Test": ["NONE"]}  # type: ignore[arg-type]
    ours = parse_flags(**FLAGS | {"interval": "1m30s", "retries": 2})  # type: ignore[arg-type]
    assert ours == {"Test": [], "Interval": 90_000_000_000, "Retries": 2}
    image = {"Test": ["CMD", "true"], "Timeout": 3_000_000_000, "Retries": 5}
    assert merge(ours, image) == {
        "Test": ["CMD", "true"],
        "Interval": 90_000_000_000,
        "Timeout": 3_000_000_000,
        "Retries": 2,
    }
    assert merge(None, image) == image
    assert probe_argv({"Test": ["CMD-SHELL", "exit 1"]}, ()) == ("/bin/sh", "-c", "exit 1")
    assert probe_argv({"Test": ["CMD-SHELL", "x"]}, ("/bin/ash", "-e", "-c")) == (
        "/bin/ash",
        "-e",
        "-c",
        "x",
    )
    assert probe_argv({"Test": ["NONE"]}, ()) is None
    assert probe_argv({"Test": []}, ()) is None
    for ns, text in (
        (0, "0s"),
        (500_000_000, "500ms"),
        (1_500_000_000, "1.5s"),
        (90_000_000_000, "1m30s"),
        (3_600_000_000_000, "1h0m0s"),
        (1_500, "1.5µs"),
    ):
        assert go_duration_text(ns) == text
    # docker's getInterval: the start interval while starting in the start period, never past
    # its end; the interval after it
    second = 1_000_000_000
    timing = Settings(
        interval=30 * second,
        timeout=second,
        start_period=60 * second,
        start_interval=second,
        retries=3,
    )
    assert _interval(timing, 0.0, "starting") == second
    assert _interval(timing, 0.0, "healthy") == 30 * second
    assert _interval(timing, 50.0, "healthy") == 30 * second
    assert _interval(timing, 61.0, "starting") == 30 * second


def test_an_image_check_is_taken_only_when_well_formed() -> None:
    """A loaded image's odd Healthcheck is left out (as if it had none), never trusted."""
    from runtime.images import ImageConfig

    def check(value: object) -> object:
        return ImageConfig.from_oci({"config": {"Healthcheck": value, "Shell": ["/bin/ash", "-c"]}})

    good = {"Test": ["CMD", "true"], "Interval": 1_000_000_000, "Retries": 0}
    config = check(good)
    assert isinstance(config, ImageConfig)
    assert config.healthcheck == {"Test": ["CMD", "true"], "Interval": 1_000_000_000}
    assert config.shell == ("/bin/ash", "-c")
    for bad in ("CMD true", {"Test": "true"}, {"Test": [1]}, {"Interval": -1}, {"Retries": True}):
        assert check(bad).healthcheck is None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--health-interval", "1"], 'time: invalid duration "1"'),
        (["--health-timeout", "soon"], 'time: invalid duration "soon"'),
        (["--health-interval=-1s"], "--health-interval cannot be negative"),
        (["--health-start-period=-5m"], "--health-start-period cannot be negative"),
        (["--health-retries", "-1"], "--health-retries cannot be negative"),
        (["--health-timeout", "500us"], "Timeout in Healthcheck cannot be less than 1ms"),
        (["--health-start-interval", "10ns"], "StartInterval in Healthcheck cannot be less than"),
        (["--health-retries", "x"], "--health-retries"),
        (["--no-healthcheck", "--health-cmd", "true"], "conflicts with --health-* options"),
    ],
)
def test_bad_flags_are_one_line_and_125(
    strata: Strata, busybox: list[str], flags: list[str], message: str
) -> None:
    done = strata.run("create", *flags, *busybox, "/bin/true")
    assert done.returncode == 125, done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert message in done.stderr
    assert strata.container_ids() == []


def _health(strata: Strata, ref: str) -> dict[str, object]:
    state = strata.inspect(ref)["State"]
    assert isinstance(state, dict)
    health = state.get("Health")
    return health if isinstance(health, dict) else {}


def _wait_health(strata: Strata, ref: str, what: str, condition: object) -> dict[str, object]:
    """Poll inspect until `condition(health)` holds; that health."""
    found: dict[str, object] = {}

    def check() -> bool:
        nonlocal found
        found = _health(strata, ref)
        return bool(condition(found))  # type: ignore[operator]

    wait_for(check, what, timeout=30)
    return found


def _ps(strata: Strata, *filters: str) -> list[dict[str, object]]:
    args = [f"--filter={f}" for f in filters]
    done = strata.run("ps", "-a", "--format", "json", *args, check=True)
    rows = json.loads(done.stdout)
    assert isinstance(rows, list)
    return rows


def _names(strata: Strata, *filters: str) -> list[str]:
    return [str(row["Names"][0]) for row in _ps(strata, *filters)]  # type: ignore[index]


def test_becomes_healthy_once_ready_and_start_period_failures_do_not_count(
    strata: Strata, busybox: list[str]
) -> None:
    strata.run(
        "run", "-d", "--name", "web",
        "--health-cmd", "echo probing; test -e /ready",
        "--health-interval", "1h", "--health-start-period", "1h",
        "--health-start-interval", "100ms",
        *busybox, "sleep", "1000",
    )  # fmt: skip
    wait_running(strata, "web")
    # failures in the start period: logged, not counted; still starting
    starting = _wait_health(
        strata, "web", "two failed checks", lambda h: len(h.get("Log", [])) >= 2
    )
    assert starting["Status"] == "starting"
    assert starting["FailingStreak"] == 0
    log = starting["Log"]
    assert isinstance(log, list)
    assert log[0]["ExitCode"] == 1
    assert log[0]["Output"] == "probing\n"
    assert set(log[0]) == {"Start", "End", "ExitCode", "Output"}
    (row,) = _ps(strata)
    assert str(row["Status"]).endswith(" (health: starting)")
    assert _names(strata, "health=starting") == ["web"]

    strata.run("exec", "web", "touch", "/ready", check=True)
    healthy = _wait_health(strata, "web", "healthy", lambda h: h.get("Status") == "healthy")
    assert healthy["FailingStreak"] == 0
    log = healthy["Log"]
    assert isinstance(log, list)
    assert 1 <= len(log) <= 5
    assert log[-1]["ExitCode"] == 0
    (row,) = _ps(strata)
    assert str(row["Status"]).startswith("Up ")
    assert str(row["Status"]).endswith(" (healthy)")
    table = strata.run("ps", check=True).stdout
    assert "(healthy)" in table
    assert _names(strata, "health=healthy") == ["web"]
    assert _names(strata, "health=starting") == []
    assert _names(strata, "health=none") == []
    config = strata.inspect("web")["Config"]
    assert isinstance(config, dict)
    assert config["Healthcheck"] == {
        "Test": ["CMD-SHELL", "echo probing; test -e /ready"],
        "Interval": 3_600_000_000_000,
        "StartPeriod": 3_600_000_000_000,
        "StartInterval": 100_000_000,
    }
    # the checks' output never reaches the container's log
    assert "probing" not in strata.run("logs", "web", check=True).stdout


def test_unhealthy_after_retries_and_after_stop(strata: Strata, busybox: list[str]) -> None:
    strata.run(
        "run", "-d", "--name", "sick",
        "--health-cmd", "echo out; echo err >&2; exit 2",
        "--health-interval", "100ms", "--health-retries", "2",
        *busybox, "sh", "-c", "echo main; exec sleep 1000",
    )  # fmt: skip
    sick = _wait_health(strata, "sick", "unhealthy", lambda h: h.get("Status") == "unhealthy")
    streak = sick["FailingStreak"]
    assert isinstance(streak, int)
    assert streak >= 2
    log = sick["Log"]
    assert isinstance(log, list)
    assert log[-1]["ExitCode"] == 2  # docker's "reserved" 2 counts as a failure
    assert log[-1]["Output"] == "out\nerr\n"
    assert str(_ps(strata)[0]["Status"]).endswith(" (unhealthy)")
    assert _names(strata, "health=unhealthy") == ["sick"]
    _wait_health(strata, "sick", "at most 5 results", lambda h: len(h.get("Log", [])) == 5)
    assert len(_health(strata, "sick")["Log"]) == 5  # type: ignore[arg-type]
    assert strata.run("logs", "sick", check=True).stdout == "main\n"
    # stopped: still in inspect, unhealthy (as docker's)
    strata.run("stop", "-t", "0", "sick", check=True)
    assert _health(strata, "sick")["Status"] == "unhealthy"
    assert _names(strata, "health=unhealthy") == ["sick"]
    assert "(unhealthy)" not in str(_ps(strata)[0]["Status"])


def test_a_check_that_hangs_is_killed_after_its_timeout(strata: Strata, busybox: list[str]) -> None:
    strata.run(
        "run", "-d", "--name", "slow",
        "--health-cmd", "echo waiting; exec sleep 999",
        "--health-timeout", "200ms", "--health-interval", "100ms", "--health-retries", "1",
        *busybox, "sleep", "1000",
    )  # fmt: skip
    info = wait_running(strata, "slow")
    pid = int(info["State"]["Pid"])  # type: ignore[index]
    slow = _wait_health(strata, "slow", "a result", lambda h: h.get("Status") == "unhealthy")
    log = slow["Log"]
    assert isinstance(log, list)
    assert log[0]["ExitCode"] == -1
    assert log[0]["Output"] == "Health check exceeded timeout (200ms): waiting\n"
    # the killed checks are gone: at most the one running now is left
    sleepers = [p for p in container_processes(pid).values() if p.comm == "sleep"]
    assert len(sleepers) <= 2  # the container's own sleep, and the current check's
    assert strata.inspect("slow")["State"]["Running"] is True  # type: ignore[index]


def test_no_healthcheck_and_none(strata: Strata, busybox: list[str]) -> None:
    strata.run(
        "run", "-d", "--name", "plain", "--no-healthcheck", *busybox, "sleep", "1000", check=True
    )
    strata.run("create", "--name", "other", *busybox, "true", check=True)
    wait_running(strata, "plain")
    info = strata.inspect("plain")
    assert "Health" not in info["State"]  # type: ignore[operator]
    assert info["Config"]["Healthcheck"] == {"Test": ["NONE"]}  # type: ignore[index]
    assert "Healthcheck" not in strata.inspect("other")["Config"]  # type: ignore[operator]
    assert _names(strata, "health=none") == ["plain", "other"]
    assert "(" not in str(_ps(strata, "name=plain")[0]["Status"])
    done = strata.run("healthcheck", "run", "plain")
    assert (done.returncode, done.stdout) == (125, "")
    assert "has no defined healthcheck" in done.stderr
    assert len(done.stderr.splitlines()) == 1
    bad = strata.run("ps", "--filter", "health=great")
    assert (bad.returncode, len(bad.stderr.splitlines())) == (125, 1)


def test_healthcheck_run_now_and_records_it(strata: Strata, busybox: list[str]) -> None:
    strata.run(
        "run", "-d", "--name", "manual",
        "--health-cmd", "test -e /ok || { yes | head -c 5000; exit 1; }",
        "--health-interval", "1h", *busybox, "sleep", "1000", check=True,
    )  # fmt: skip
    wait_running(strata, "manual")
    failed = strata.run("healthcheck", "run", "manual")
    assert (failed.returncode, failed.stdout) == (1, "unhealthy\n")
    health = _health(strata, "manual")
    assert (health["Status"], health["FailingStreak"]) == ("starting", 1)
    assert health["Log"][0]["Output"] == "y\n" * 2048 + "..."  # type: ignore[index]
    strata.run("exec", "manual", "touch", "/ok", check=True)
    passed = strata.run("healthcheck", "run", "manual")
    assert (passed.returncode, passed.stdout, passed.stderr) == (0, "", "")
    health = _health(strata, "manual")
    assert (health["Status"], health["FailingStreak"]) == ("healthy", 0)
    assert [r["ExitCode"] for r in health["Log"]] == [1, 0]  # type: ignore[attr-defined]
    missing = strata.run("healthcheck", "run", "nothing")
    assert (missing.returncode, len(missing.stderr.splitlines())) == (125, 1)
    strata.run("stop", "-t", "0", "manual", check=True)
    stopped = strata.run("healthcheck", "run", "manual")
    assert (stopped.returncode, len(stopped.stderr.splitlines())) == (125, 1)
    assert "is not running" in stopped.stderr


def test_image_healthcheck_under_the_run_flags(strata: Strata, tmp_path: Path) -> None:
    from tests.images.test_build import _load

    _load(strata)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        'FROM uniontest:1\nHEALTHCHECK --interval=100ms --retries=1 CMD ["nosuchcheck", "-x"]\n'
    )
    strata.run("build", "-q", "-t", "checked:1", str(ctx), check=True)
    strata.run(
        "run", "-d", "--name", "img", "--health-retries", "2", "checked:1", "sleep", "1000",
        check=True,
    )  # fmt: skip
    config = strata.inspect("img")["Config"]
    assert config["Healthcheck"] == {  # type: ignore[index]
        "Test": ["CMD", "nosuchcheck", "-x"],
        "Interval": 100_000_000,
        "Retries": 2,
    }
    sick = _wait_health(strata, "img", "unhealthy", lambda h: h.get("Status") == "unhealthy")
    streak = sick["FailingStreak"]
    assert isinstance(streak, int)
    assert streak >= 2
    # a check that cannot start: docker's -1, with the reason as its output
    assert sick["Log"][-1]["ExitCode"] == -1  # type: ignore[index]
    assert sick["Log"][-1]["Output"] == "nosuchcheck: not found in $PATH"  # type: ignore[index]


def test_attached_run_checks_in_the_container_and_keeps_its_output(
    strata: Strata, busybox: list[str]
) -> None:
    """The check runs in the container's mount namespace (its file is what the command waits
    for), while the container's output stays its own."""
    done = strata.run(
        "run", "--name", "att", "--health-cmd", "echo CHECK; touch /tmp/checked",
        "--health-interval", "50ms", *busybox,
        "sh", "-c", "until [ -e /tmp/checked ]; do sleep 0.05; done; echo done",
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr
    health = _health(strata, "att")
    assert health["Status"] == "unhealthy"  # stopped, as docker's
    log = health["Log"]
    assert isinstance(log, list)
    assert log[0]["Output"] == "CHECK\n"
    assert strata.run("logs", "att", check=True).stdout == "done\n"


def test_rootless_health_checks(
    rootless: tuple[Strata, list[str], bool],  # noqa: F811
) -> None:
    strata, image, _ = rootless
    strata.run(
        "run", "-d", "--name", "rl", "--network", "none", "--health-cmd", "test -e /tmp/ok",
        "--health-interval", "100ms", "--health-retries", "1000", *image, "/bin/sleep", "60",
        check=True,
    )  # fmt: skip
    failed = strata.run("healthcheck", "run", "rl")
    assert (failed.returncode, failed.stdout) == (1, "unhealthy\n"), failed.stderr
    strata.run("exec", "rl", "touch", "/tmp/ok", check=True)
    _wait_health(strata, "rl", "healthy", lambda h: h.get("Status") == "healthy")
    assert strata.run("healthcheck", "run", "rl").returncode == 0
    strata.run("stop", "-t", "0", "rl", check=True)
