"""A container's log: what it printed, line by line, with the time and the stream of each line.

The monitor reads the container's stdout and stderr (or its pty) and appends each line to
`ctr.log` as one record in the CRI log format that podman's k8s-file driver writes:

    2026-12-05T12:21:18.123456789Z stdout F a line
    2026-12-05T12:21:18.123500000Z stderr P a piece without its newline yet

(`F`: the line is full and its newline is implied; `P`: a partial line, continued by the next
record of that stream.) Text in, text out: `grep` and `tail` work on it, and podman reads it.
A log written before records existed (`log`: the bytes a detached container printed, as they
came) is still read, first, as stdout lines without a time.

`strata logs` (`show`) picks records as docker's `logs` does: the last `--tail N` lines, then
those `--since`/`--until` allow, stdout's to stdout and stderr's to stderr, with `-t` the time
first in docker's format.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from unionfs.errors import UsageError

from .state import RUNNING, ContainerDir, process_alive

LOG: Final = "ctr.log"  # the records
RAW_LOG: Final = "log"  # a log from before records: raw bytes of stdout and stderr together
STREAMS: Final = ("stdout", "stderr")


@dataclass(frozen=True, slots=True)
class Record:
    """One line (`full`) or a piece of one; `time` in ns since the epoch (None: a raw log's)."""

    time: int | None
    stream: str
    data: bytes
    full: bool


def timestamp(ns: int) -> str:
    """RFC 3339 with nanoseconds in UTC, as docker's `logs -t` prints (and the records keep)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    when = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


def records_of(chunk: bytes, stream: str, ns: int) -> bytes:
    """`chunk` (as the container wrote it) as records: one per line, the rest a partial one."""
    stamp = f"{timestamp(ns)} {stream} ".encode()
    lines = chunk.split(b"\n")
    tail = lines.pop()
    out = [stamp + b"F " + line + b"\n" for line in lines]
    if tail:
        out.append(stamp + b"P " + tail + b"\n")
    return b"".join(out)


class LogWriter:
    """Appends records to a container's log; `write` never raises (a full disk loses log lines,
    never the container's output to the terminal, nor the container)."""

    def __init__(self, path: Path) -> None:
        self.fd: int | None = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )

    def write(self, stream: str, data: bytes) -> None:
        if self.fd is None or not data:
            return
        try:
            os.write(self.fd, records_of(data, stream, time.time_ns()))
        except OSError:
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


_RECORD: Final = re.compile(rb"(\S+) (stdout|stderr) ([FP]) (.*)", re.DOTALL)


def parse_record(line: bytes) -> Record | None:
    """A record line as written above (None if it is not one)."""
    match = _RECORD.fullmatch(line.removesuffix(b"\n"))
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

_DURATION: Final = re.compile(r"(?:\d+(?:\.\d*)?(?:ns|us|µs|ms|s|m|h))+")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)")
_UNITS: Final = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_UNIX: Final = re.compile(r"(\d+)(?:\.(\d{1,9}))?")


def parse_rfc3339(text: str) -> int:
    """ns since the epoch of an RFC 3339 time (nanoseconds kept); ValueError otherwise."""
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
    if _DURATION.fullmatch(text):
        ago = sum(
            int(float(number) * _UNITS[unit]) for number, unit in _DURATION_PART.findall(text)
        )
        return now_ns - ago
    unix = _UNIX.fullmatch(text)
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

    def emit(rec: Record) -> None:
        if not selection.wants(rec):
            return
        sink = out[rec.stream]
        if selection.timestamps and rec.time is not None:
            sink.write(timestamp(rec.time).encode() + b" ")
        sink.write(rec.data + (b"\n" if rec.full else b""))

    path = cdir.sub(LOG)
    old = _raw_records(cdir.sub(RAW_LOG))
    try:
        f = open(path, "rb")  # noqa: SIM115 - read incrementally below, when following
    except FileNotFoundError:
        f = None
    new = _file_records(f) if f is not None else iter(())
    lines = _lines(_chain(old, new))
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


def _chain(*parts: Iterable[Record]) -> Iterator[Record]:
    for part in parts:
        yield from part


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
    "LOG",
    "RAW_LOG",
    "LogWriter",
    "Record",
    "Selection",
    "parse_record",
    "parse_tail",
    "parse_time",
    "records_of",
    "show",
    "show_to_stdio",
    "timestamp",
]
