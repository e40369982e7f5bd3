"""The control messages between a container's monitor and its PID 1 (and the ns parent).

They talk over a SOCK_SEQPACKET pair, one message a record: `pid N` (PID 1's host pid, from the
ns parent), `net` (the bridge is ready, to PID 1), `ready` (from PID 1, with the pty master
attached under -t), `go` (to PID 1), and `error CODE MESSAGE` (a start-up failure, the line of
`unionfs.startup`). End of file after `go` means the command was exec'd: the socket is
close-on-exec.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from typing import Final

from unionfs.errors import UsageError
from unionfs.startup import format_failure, parse_report

START_FAILED: Final = 125
ERROR: Final = "error "


class StartError(UsageError):
    """The container could not be started (nothing ran); `exit_code` as Docker's: 125 for the
    runtime, 126/127 for a command that cannot be run or does not exist."""

    def __init__(self, message: str, exit_code: int = START_FAILED) -> None:
        super().__init__(message, exit_code)


def send(sock: socket.socket, text: str, fds: Sequence[int] = ()) -> None:
    """One message (with `fds` attached); a peer that is gone is not an error here: the other
    side learns of it from its own end of file."""
    with contextlib.suppress(OSError):
        if fds:
            socket.send_fds(sock, [text.encode()], list(fds))
        else:
            sock.send(text.encode())


def send_error(sock: socket.socket, code: int, message: str) -> None:
    """Report a failed start: the monitor raises StartError(message, code)."""
    send(sock, ERROR + format_failure(code, message))


def recv(sock: socket.socket) -> tuple[str | None, list[int]]:
    """One message (None at end of file) and the fds that came with it."""
    msg, fds, _, _ = socket.recv_fds(sock, 4096, 4)
    return (msg.decode(errors="replace") if msg else None), fds


def check_error(msg: str) -> None:
    """Raise StartError if `msg` is an `error` message."""
    if msg.startswith(ERROR):
        failure = parse_report(msg[len(ERROR) :], default_code=START_FAILED)
        assert failure is not None, "an error message is never ok"
        raise StartError(failure.message, failure.code)
