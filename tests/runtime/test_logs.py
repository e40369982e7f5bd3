"""`strata logs` as docker's (issue 17): every run logged (attached, `start -a`, detached, `-t`),
each line with its time and stream; `--tail`, `--since`, `--until`, `-t`; logs from before the
records still read."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest

from runtime import logs, logshow
from tests.runtime.conftest import Strata
from tests.runtime.test_lifecycle import wait_exited
from unionfs.errors import UsageError

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"


def test_records_round_trip_lines_and_pieces() -> None:
    ns = 1_733_400_000_123_456_789
    data = logs.records_of(b"one\ntwo\n\nthree", "stderr", ns)
    assert data == (
        b"2024-12-05T12:00:00.123456789Z stderr F one\n"
        b"2024-12-05T12:00:00.123456789Z stderr F two\n"
        b"2024-12-05T12:00:00.123456789Z stderr F \n"
        b"2024-12-05T12:00:00.123456789Z stderr P three\n"
    )
    records = [logshow.parse_record(line) for line in data.splitlines(keepends=True)]
    assert [(r.time, r.stream, r.data, r.full) for r in records if r is not None] == [
        (ns, "stderr", b"one", True),
        (ns, "stderr", b"two", True),
        (ns, "stderr", b"", True),
        (ns, "stderr", b"three", False),
    ]
    assert logshow.parse_record(b"not a record\n") is None
    assert logshow.parse_record(b"2024-13-45T00:00:00Z stdout F x\n") is None


def test_times_as_docker_takes_them() -> None:
    now = 1_733_400_000 * 10**9
    assert logshow.parse_time("10m", now, "--since") == now - 600 * 10**9
    assert logshow.parse_time("1h30m", now, "--since") == now - 5400 * 10**9
    assert logshow.parse_time("1.5s", now, "--since") == now - 1_500_000_000
    assert logshow.parse_time("1733400000", now, "--since") == now
    assert logshow.parse_time("1733400000.25", now, "--since") == now + 250_000_000
    assert logshow.parse_time("2024-12-05T12:00:00Z", now, "--since") == now
    assert logshow.parse_time("2024-12-05T13:00:00.5+01:00", now, "--since") == now + 500_000_000
    local = datetime.datetime(2024, 12, 5, 12, 0, 0).astimezone()  # no zone: local time
    assert (
        logshow.parse_time("2024-12-05T12:00:00", now, "--since") == int(local.timestamp()) * 10**9
    )
    assert logshow.parse_time("2024-12-05", now, "--until") == int(
        datetime.datetime(2024, 12, 5).astimezone().timestamp() * 10**9
    )
    for bad in ("yesterday", "10", "10x", "-5m", "2024-12-05T25:00:00Z", ""):
        if bad == "10":
            continue  # (a Unix time)
        with pytest.raises(UsageError, match="--since"):
            logshow.parse_time(bad, now, "--since")
    assert logshow.parse_tail("all") is None
    assert logshow.parse_tail("-1") is None
    assert logshow.parse_tail("0") == 0
    with pytest.raises(UsageError, match="--tail 'x'"):
        logshow.parse_tail("x")


def _container_dir(strata: Strata, name: str) -> Path:
    return Path(str(strata.inspect(name)["Path"]))


def test_attached_runs_and_start_a_are_logged(strata: Strata, busybox: list[str]) -> None:
    script = "echo out1; echo err1 >&2; echo out2; printf piece"
    done = strata.run("run", "--name", "a", *busybox, "/bin/sh", "-c", script)
    assert (done.returncode, done.stdout, done.stderr) == (0, "out1\nout2\npiece", "err1\n")
    shown = strata.run("logs", "a")
    assert (shown.returncode, shown.stdout, shown.stderr) == (0, "out1\nout2\npiece", "err1\n")
    assert strata.inspect("a")["LogPath"] == str(_container_dir(strata, "a") / "ctr.log")
    again = strata.run("start", "-a", "a")
    assert (again.returncode, again.stdout) == (0, "out1\nout2\npiece")
    shown = strata.run("logs", "a")
    assert shown.stdout == "out1\nout2\npieceout1\nout2\npiece"  # (a piece joins the next line)
    assert shown.stderr == "err1\nerr1\n"
    stamped = strata.run("logs", "-t", "a")
    assert re.fullmatch(rf"({STAMP} (out1|out2|pieceout1|piece)\n?)+", stamped.stdout)
    assert re.fullmatch(rf"({STAMP} err1\n)+", stamped.stderr)
    tail = strata.run("logs", "--tail", "1", "a")  # (the order of streams is the reads')
    assert tail.stdout.count("\n") + tail.stderr.count("\n") + tail.stdout.endswith("e") == 1


def test_since_and_until_pick_lines_by_their_time(strata: Strata, busybox: list[str]) -> None:
    script = "for i in 1 2 3; do echo line$i; sleep 0.05; done"
    strata.run("run", "--name", "s", *busybox, "/bin/sh", "-c", script, check=True)
    stamped = strata.run("logs", "-t", "s").stdout.splitlines()
    times = [line.split(" ")[0] for line in stamped]
    assert [line.split(" ")[1] for line in stamped] == ["line1", "line2", "line3"]
    assert strata.run("logs", "--since", times[1], "s").stdout == "line2\nline3\n"
    assert strata.run("logs", "--until", times[1], "s").stdout == "line1\nline2\n"
    assert strata.run("logs", "--since", times[1], "--until", times[1], "s").stdout == "line2\n"
    assert strata.run("logs", "--since", "1h", "s").stdout == "line1\nline2\nline3\n"
    assert strata.run("logs", "--until", "1h", "s").stdout == ""
    assert strata.run("logs", "--since", "1", "s").stdout == "line1\nline2\nline3\n"
    assert strata.run("logs", "--since", "2000-01-01", "--tail", "1", "s").stdout == "line3\n"
    assert strata.run("logs", "--tail", "2", "s").stdout == "line2\nline3\n"
    assert strata.run("logs", "-n", "0", "s").stdout == ""
    assert strata.run("logs", "--tail", "all", "s").stdout == "line1\nline2\nline3\n"
    assert strata.run("logs", "--tail", "-1", "s").stdout == "line1\nline2\nline3\n"


def test_a_log_from_before_the_records_is_still_read(strata: Strata, busybox: list[str]) -> None:
    """An older strata wrote a detached container's output raw to `log`: it comes first, with
    no time (so no line of it matches --since or --until)."""
    strata.run("run", "--name", "old", *busybox, "/bin/echo", "new", check=True)
    (_container_dir(strata, "old") / "log").write_bytes(b"old one\nold two\n")
    assert strata.run("logs", "old").stdout == "old one\nold two\nnew\n"
    assert strata.run("logs", "--tail", "2", "old").stdout == "old two\nnew\n"
    assert re.fullmatch(rf"old one\nold two\n{STAMP} new\n", strata.run("logs", "-t", "old").stdout)
    assert strata.run("logs", "--since", "1h", "old").stdout == "new\n"


def test_detached_and_tty_output_is_logged(strata: Strata, busybox: list[str]) -> None:
    strata.run("run", "-d", "--name", "d", *busybox, "/bin/sh", "-c", "echo o; echo e >&2")
    wait_exited(strata, "d")
    shown = strata.run("logs", "d")
    assert (shown.stdout, shown.stderr) == ("o\n", "e\n")
    strata.run("run", "-t", "--name", "t", *busybox, "/bin/sh", "-c", "echo o; echo e >&2")
    assert strata.run("logs", "t").stdout == "o\ne\n"  # one stream, the pty's (\r\n: text mode)


def test_log_opt_rotates_the_log(strata: Strata, busybox: list[str]) -> None:
    """`--log-opt max-size=1k,max-file=2`: the log never grows past two files of about 1 KiB,
    no record is split, and `logs` reads the rotated file, then the current one."""
    script = "i=0; while [ $i -lt 200 ]; do echo line-$i; i=$((i+1)); done"
    options = ["--log-opt", "max-size=1k", "--log-opt", "max-file=2"]
    strata.run("run", "--name", "r", *options, *busybox, "/bin/sh", "-c", script, check=True)
    cdir = _container_dir(strata, "r")
    assert sorted(p.name for p in cdir.glob("ctr.log*")) == ["ctr.log", "ctr.log.1"]
    for name in ("ctr.log", "ctr.log.1"):
        data = (cdir / name).read_bytes()
        assert 0 < len(data) <= 1024
        assert all(logshow.parse_record(line) for line in data.splitlines(keepends=True))
    shown = strata.run("logs", "r", check=True).stdout.splitlines()
    numbers = [int(line.removeprefix("line-")) for line in shown]
    assert numbers == list(range(numbers[0], 200))  # the newest lines, in order, none lost
    assert numbers[0] > 0


def test_follow_ends_when_until_has_passed(strata: Strata, busybox: list[str]) -> None:
    strata.run("run", "-d", "--name", "f", *busybox, "/bin/sh", "-c", "echo up; exec sleep 60")
    followed = strata.run("logs", "-f", "--until", "0s", "f", timeout=20)  # now: it returns
    assert followed.returncode == 0
    strata.run("rm", "-f", "f", check=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tail", "many"], "strata: --tail 'many': give a number of lines or 'all'"),
        (["--since", "yesterday"], "strata: --since 'yesterday': give an RFC 3339 time"),
        (["--until", "2024-13-01"], "strata: --until '2024-13-01': give an RFC 3339 time"),
    ],
)
def test_bad_logs_options_are_one_line(
    strata: Strata, busybox: list[str], args: list[str], message: str
) -> None:
    strata.run("create", "--name", "c", *busybox, "/bin/true", check=True)
    done = strata.run("logs", *args, "c")
    assert done.returncode == 125
    assert done.stderr.startswith(message)
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""
