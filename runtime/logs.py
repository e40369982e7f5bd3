"""A container's log: what it printed, line by line, with the time and the stream of each line.

The monitor reads the container's stdout and stderr (or its pty) and appends each line to
`ctr.log` as one record in the CRI log format that podman's k8s-file driver writes:

    2026-12-05T12:21:18.123456789Z stdout F a line
    2026-12-05T12:21:18.123500000Z stderr P a piece without its newline yet

(`F`: the line is full and its newline is implied; `P`: a partial line, continued by the next
record of that stream.) Text in, text out: `grep` and `tail` work on it, and podman reads it.
A log written before records existed (`log`: the bytes a detached container printed, as they
came) is still read (runtime.logshow).

This module is the writing side, on the path of every `strata run`: small, with nothing to
build at import; `strata logs` reads with runtime.logshow.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Final

from .logrotate import rotate

LOG: Final = "ctr.log"  # the records
RAW_LOG: Final = "log"  # a log from before records: raw bytes of stdout and stderr together
STREAMS: Final = ("stdout", "stderr")


def timestamp(ns: int) -> str:
    """RFC 3339 with nanoseconds in UTC, as docker's `logs -t` prints (and the records keep)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{nanos:09d}Z"


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
    """Appends records to a container's log, made at the first line (a start that fails leaves
    none); `write` never raises (a full disk loses log lines, never the container's output to
    the terminal, nor the container)."""

    def __init__(self, path: Path, *, max_size: int = 0, max_file: int = 1) -> None:
        self.path = path
        self.max_size, self.max_file = max_size, max_file  # --log-opt (runtime.logrotate)
        self.fd: int | None = None
        self.broken = False

    def write(self, stream: str, data: bytes) -> None:
        if self.broken or not data:
            return
        records = records_of(data, stream, time.time_ns())
        try:
            if not self.max_size:
                self._append(records)
                return
            # one record at a time, so a file passes max-size only by a record longer than it
            for record in records.splitlines(keepends=True):
                if rotate(
                    self.path, max_size=self.max_size, max_file=self.max_file, incoming=len(record)
                ):
                    self.close()
                self._append(record)
        except OSError:
            self.broken = True
            self.close()

    def _append(self, data: bytes) -> None:
        if self.fd is None:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
            self.fd = os.open(self.path, flags, 0o600)
        os.write(self.fd, data)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


__all__ = ["LOG", "RAW_LOG", "STREAMS", "LogWriter", "records_of", "timestamp"]
