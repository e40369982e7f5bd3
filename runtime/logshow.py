"""`strata logs`: the lines of a container's log (runtime.logs writes it) that docker's `logs`
would pick: the last `--tail N` lines, then those `--since`/`--until` allow, stdout's to stdout
and stderr's to stderr, with `-t` the time first in docker's format. A log from before records
(`log`, raw bytes) comes first, as stdout lines without a time.
"""

from __future__ import annotations

import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from unionfs.errors import UsageError

from .logrotate import log_files
from .logs import LOG, RAW_LOG, timestamp
from .state import RUNNING, ContainerDir, process_alive


@dataclass(frozen=True, slots=True)
class Record:
    """One line (`full`) or a piece of one; `time` in ns since the epoch (None: a raw log's)."""

    time: int | None
    stream: str
    data: bytes
    full: bool


# Patterns, not compiled ones: the monitor (on `strata run`'s path) only writes; `re` compiles
# and caches them on first use.
_RECORD: Final = rb"(?s)(\S+) (stdout|stderr) ([FP]) (.*)"


def parse_record(line: bytes) -> Record | None:
    """A record line as written above (None if it is not one)."""
    match = re.fullmatch(_RECORD, line.removesuffix(b"\n"))
    if match is None:
        return None
    stamp, stream, flag, data = match.groups()
    try:
        ns = parse_rfc3339(stamp.decode())
    except ValueError:
        return None
    return Record(ns, stream.decode(), data, flag == b"F")


def _raw_records(path: Path) -> Iterator[Record]:
    try:
        with open(path, "rb") as f:
            for line in f:
                yield Record(None, "stdout", line.removesuffix(b"\n"), line.endswith(b"\n"))
    except FileNotFoundError:
        return


def _lines(records: Iterable[Record]) -> Iterator[Record]:
    """Whole lines: partial records joined to the rest of their line (per stream)."""
    pending: dict[str, Record] = {}
    for rec in records:
        first = pending.pop(rec.stream, None)
        if first is not None:
            rec = Record(first.time, rec.stream, first.data + rec.data, rec.full)
        if rec.full:
            yield rec
        else:
            pending[rec.stream] = rec
    yield from pending.values()  # the last piece of a stream that ended without a newline


# -- times, as docker's --since and --until take them --------------------------------------

_DURATION: Final = r"(?:\d+(?:\.\d*)?(?:ns|us|µs|ms|s|m|h))+"
_DURATION_PART: Final = r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)"
_UNITS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_UNIX: Final = r"(\d+)(?:\.(\d{1,9}))?"


def go_duration(text: str) -> int | None:
    """Nanoseconds of a Go duration (`10m`, `1h30m`, `1.5s`, `0`), as docker's flags take
    them (`--since`, a HEALTHCHECK's `--interval`); None for anything else."""
    if text == "0":
        return 0
    if not re.fullmatch(_DURATION, text):
        return None
    return sum(
        int(float(number) * _UNITS[unit]) for number, unit in re.findall(_DURATION_PART, text)
    )


def go_duration_text(ns: int) -> str:
    """A duration as Go's time.Duration prints it (`30s`, `1m30s`, `1h0m0s`, `500ms`), as in
    docker's "Health check exceeded timeout (1s)"."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)

    def fraction(value: int, digits: int) -> str:
        whole, rest = divmod(value, 10**digits)
        tail = f"{rest:0{digits}d}".rstrip("0")
        return f"{whole}.{tail}" if tail else str(whole)

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{fraction(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{fraction(ns, 6)}ms"
    hours, rest = divmod(ns, 3600 * 1_000_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000_000)
    text = f"{fraction(rest, 9)}s"
    if hours or minutes:
        text = f"{minutes}m{text}"
    if hours:
        text = f"{hours}h{text}"
    return sign + text


def parse_rfc3339(text: str) -> int:
    """ns since the epoch of an RFC 3339 time (nanoseconds kept); ValueError otherwise."""
    import datetime

    match = re.fullmatch(r"(.*?T\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)?", text)
    if match is None:
        when = datetime.datetime.fromisoformat(text)  # a date alone, "2026-12-05"
        nanos = 0
    else:
        base, fraction, zone = match.groups()
        when = datetime.datetime.fromisoformat(base + (zone or ""))
        nanos = int((fraction or "0").ljust(9, "0"))
    if when.tzinfo is None:  # as docker: a time without a zone is the local time
        when = when.astimezone()
    return int(when.timestamp()) * 1_000_000_000 + nanos


def parse_time(text: str, now_ns: int, option: str) -> int:
    """`--since`/`--until`: RFC 3339 (or a date), a Unix time (`1733400000.5`), or a duration
    before now (`10m`, `1h30m`), as docker takes them; ns since the epoch."""
    ago = go_duration(text)
    if ago is not None and text != "0":
        return now_ns - ago
    unix = re.fullmatch(_UNIX, text)
    if unix is not None:
        return int(unix.group(1)) * 1_000_000_000 + int((unix.group(2) or "0").ljust(9, "0"))
    try:
        return parse_rfc3339(text)
    except (ValueError, OverflowError):
        raise UsageError(
            f"{option} {text!r}: give an RFC 3339 time (2026-12-05T12:00:00Z), a Unix time"
            " or a duration (10m, 1h30m)",
            125,
        ) from None


def parse_tail(text: str) -> int | None:
    """`--tail N|all`: how many of the last lines (None: all). Negative is all, as docker's."""
    if text == "all":
        return None
    try:
        count = int(text)
    except ValueError:
        raise UsageError(f"--tail {text!r}: give a number of lines or 'all'", 125) from None
    return None if count < 0 else count


# -- strata logs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    """What `strata logs` shows: its options, parsed."""

    tail: int | None = None
    since: int | None = None
    until: int | None = None
    timestamps: bool = False
    details: bool = False  # --details: the --log-opt labels/env attributes before each line

    def wants(self, rec: Record) -> bool:
        if self.since is None and self.until is None:
            return True
        if rec.time is None:  # a raw log's line: when it was printed is not known
            return False
        if self.since is not None and rec.time < self.since:
            return False
        return self.until is None or rec.time <= self.until


def show(
    cdir: ContainerDir,
    selection: Selection,
    *,
    follow: bool,
    stdout: BinaryIO,
    stderr: BinaryIO,
) -> None:
    """Write the chosen lines of the container's log; with `follow`, then what it prints until
    it stops (or `--until` has passed)."""
    out = {"stdout": stdout, "stderr": stderr}
    details = b""
    if selection.details:
        cfg = cdir.config
        details = details_prefix(log_attributes(cfg.log_attr_opts, cfg.labels, cfg.env))

    def emit(rec: Record) -> None:
        if not selection.wants(rec):
            return
        sink = out[rec.stream]
        if selection.timestamps and rec.time is not None:
            sink.write(timestamp(rec.time).encode() + b" ")
        sink.write(details + rec.data + (b"\n" if rec.full else b""))

    path = cdir.sub(LOG)
    old = _raw_records(cdir.sub(RAW_LOG))
    rotated = _rotated_records([p for p in log_files(path) if p != path])
    try:
        f = open(path, "rb")  # noqa: SIM115 - read incrementally below, when following
    except FileNotFoundError:
        f = None
    new = _file_records(f) if f is not None else iter(())
    lines = _lines(_chain(old, rotated, new))
    chosen: Iterable[Record] = (
        lines if selection.tail is None else deque(lines, maxlen=selection.tail)
    )
    for rec in chosen:
        emit(rec)
    stdout.flush()
    stderr.flush()
    if not follow:
        if f is not None:
            f.close()
        return
    if f is None:  # a container that has printed nothing yet
        if not _wait_for_file(cdir, path, selection):
            return
        f = open(path, "rb")  # noqa: SIM115
    with f:
        _follow(cdir, f, selection, emit, (stdout, stderr))


def log_attributes(
    opts: Mapping[str, str], labels: Mapping[str, str], env: Iterable[str]
) -> dict[str, str]:
    """docker's extra attributes of a log line (its logger.Info.ExtraAttributes): the labels
    named by `--log-opt labels=A,B` or matched by `labels-regex`, the environment variables
    named by `env=X,Y` or matched by `env-regex` (a search, as Go's MatchString)."""
    variables = dict(item.split("=", 1) for item in env if "=" in item)
    found: dict[str, str] = {}
    for key, values in (("labels", labels), ("env", variables)):
        for name in filter(None, opts.get(key, "").split(",")):
            if name in values:
                found[name] = values[name]
        pattern = opts.get(f"{key}-regex")
        if pattern:
            found |= {k: v for k, v in values.items() if re.search(pattern, k)}
    return found


def details_prefix(attributes: Mapping[str, str]) -> bytes:
    """What `logs --details` writes before each line: the attributes as `k=v,k2=v2` (keys and
    values query-escaped, as docker), sorted here, and a space (a space alone without any)."""
    from urllib.parse import quote_plus

    pairs = (f"{quote_plus(k)}={quote_plus(v)}" for k, v in sorted(attributes.items()))
    return (",".join(pairs) + " ").encode()


def _chain(*parts: Iterable[Record]) -> Iterator[Record]:
    for part in parts:
        yield from part


def _rotated_records(paths: Iterable[Path]) -> Iterator[Record]:
    """The records of the files `--log-opt max-size` rotated away, oldest first."""
    for path in paths:
        try:
            f = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:  # rotated away meanwhile
            continue
        with f:
            yield from _file_records(f)


def _file_records(f: BinaryIO) -> Iterator[Record]:
    """The records of the log as it is now (a last line still being written is left for
    `_follow`: the reader stops before it)."""
    while True:
        start = f.tell()
        line = f.readline()
        if not line.endswith(b"\n"):
            f.seek(start)
            return
        rec = parse_record(line)
        if rec is not None:
            yield rec


def _still_running(cdir: ContainerDir) -> bool:
    state = cdir.read_state()
    return state.status == RUNNING and process_alive(state.monitor_pid, state.monitor_start)


def _past(selection: Selection) -> bool:
    return selection.until is not None and time.time_ns() > selection.until


def _wait_for_file(cdir: ContainerDir, path: Path, selection: Selection) -> bool:
    while not path.exists():
        if not _still_running(cdir) or _past(selection):
            return path.exists()
        time.sleep(0.1)
    return True


def _follow(
    cdir: ContainerDir,
    f: BinaryIO,
    selection: Selection,
    emit: Callable[[Record], None],
    sinks: tuple[BinaryIO, BinaryIO],
) -> None:
    while True:
        running = _still_running(cdir)  # (before reading: what it printed last is then read)
        got = False
        for rec in _lines(_file_records(f)):
            emit(rec)
            got = True
        if got:
            for sink in sinks:
                sink.flush()
        if not running or _past(selection):
            return
        time.sleep(0.1)


def show_to_stdio(cdir: ContainerDir, selection: Selection, *, follow: bool) -> None:
    show(cdir, selection, follow=follow, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)


__all__ = [
    "Record",
    "Selection",
    "details_prefix",
    "go_duration",
    "log_attributes",
    "parse_record",
    "parse_tail",
    "parse_time",
    "show",
    "show_to_stdio",
]
