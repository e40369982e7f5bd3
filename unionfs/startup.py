"""Start-up reports: how a forked child tells the process waiting for it that it has started, or
why it could not.

One line over a pipe, written once: `ok\\n`, or `<exit code> <message>\\n` on failure. The pipe
closing without a line means the child died before it could say anything (or, for a pipe the
child does not keep across exec, that it exec'd: `runtime.exec` relies on this).

    read_fd, write_fd = os.pipe()
    if os.fork() == 0:                       # the child
        os.close(read_fd)
        report = StartupReport(write_fd)
        try:
            start()                          # mount, start the container, ...
            report.ok()
            serve()
        except UsageError as exc:
            report.fail(exc.exit_code, str(exc))
        finally:
            report.fail(1, "stopped before starting")   # dropped if a report was sent
            os._exit(...)
    os.close(write_fd)
    failure = wait_for_start(read_fd, died="the child died before starting")  # closes read_fd
    if failure is not None:
        raise UsageError(failure.message, failure.code)

Used by the union daemon of `strata mount`, the container's union daemon (`runtime.rootfs`),
the detached monitor (`runtime.lifecycle`), `strata exec` (`runtime.exec`) and, with the same
line inside a control message, the container's PID 1 (`runtime.control`). The reader stops at
the first newline, not at end of file: the child's own children may inherit the write end (they
do not keep it across exec, but they fork) and keep it open long after the report.

Only `os` is imported, so that a process forked before its heavy imports can use it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Final

OK: Final = "ok"


@dataclass(frozen=True, slots=True)
class StartFailure:
    """Why the child did not start: the exit status the waiting command should return, and one
    line for the user."""

    code: int
    message: str


def format_failure(code: int, message: str) -> str:
    """The report line for a failure, without its newline (the message made one line)."""
    return f"{code} {' '.join(message.splitlines())}"


def parse_report(line: str, *, default_code: int = 1) -> StartFailure | None:
    """None for `ok`; the failure otherwise (`default_code` when the line has no code)."""
    line = line.strip()
    if line == OK:
        return None
    code, _, message = line.partition(" ")
    if not code.isdigit():
        return StartFailure(default_code, line)
    return StartFailure(int(code), message)


class StartupReport:
    """The child's end of a start-up pipe: the first report reaches the reader, later ones are
    dropped, so a `finally:` may report "stopped before starting" unconditionally. The pipe is
    closed after the first report (or by `close()`, which reports nothing: the reader then sees
    the child as dead). Write errors are ignored: a reader that is gone needs no report."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.sent = False

    def ok(self) -> None:
        """Started: the reader returns None."""
        self._send(f"{OK}\n")

    def fail(self, code: int, message: str) -> None:
        """Could not start: the reader gets `StartFailure(code, message)`."""
        self._send(f"{format_failure(code, message)}\n")

    def close(self) -> None:
        """Close the pipe without a report (nobody needs one, or the child execs)."""
        if not self.sent:
            self.sent = True
            os.close(self.fd)

    def _send(self, line: str) -> None:
        if self.sent:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, line.encode())
        self.close()


def read_report(fd: int) -> str | None:
    """Block until the report line arrives (returned without its newline) or the pipe closes
    without one (None); `fd` is closed either way."""
    chunks = []
    try:
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
            if b"\n" in chunk:
                break
    finally:
        os.close(fd)
    if not chunks:
        return None
    return b"".join(chunks).decode(errors="replace").partition("\n")[0]


def wait_for_start(fd: int, *, died: str | None, default_code: int = 1) -> StartFailure | None:
    """Wait for the child's report on `fd` (closed afterwards): None once it has started, its
    failure otherwise. A pipe closed without a report is the failure `(default_code, died)`, or
    a start when `died` is None (a child that execs with the pipe close-on-exec). A report without
    a code gets `default_code`."""
    line = read_report(fd)
    if line is None:
        return None if died is None else StartFailure(default_code, died)
    return parse_report(line, default_code=default_code)
