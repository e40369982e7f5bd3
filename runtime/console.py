"""`-t`: relay between the user's terminal and a pty allocated in the container.

The pty comes from the container's own devpts instance (its /dev/ptmx), so the container sees
/dev/pts/0 and nothing of the host's ptys. The runtime holds the master and copies bytes both ways;
the user's terminal is put in raw mode so that Ctrl-C, Ctrl-Z and line editing reach the
container's line discipline, and a SIGWINCH on our side is copied to the pty's window size.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import termios
import tty
from collections.abc import Callable, Iterator
from typing import Final

_CHUNK: Final = 65536


def copy_window_size(from_fd: int, to_fd: int) -> None:
    """Copy the terminal size of `from_fd` (if it is a terminal) to the pty `to_fd`."""
    try:
        size = fcntl.ioctl(from_fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return
    with contextlib.suppress(OSError):
        fcntl.ioctl(to_fd, termios.TIOCSWINSZ, size)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on `fd` while inside, if it is a terminal; the old mode is always restored."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        data = data[n:]


def relay(
    master: int,
    *,
    stdin: int | None,
    stdout: int,
    finished: Callable[[], bool],
) -> None:
    """Copy `stdin` -> `master` and `master` -> `stdout` until the pty has no reader left (EIO)
    and `finished()` says the container is done, or `finished()` and no more output is pending.

    A SIGCHLD interrupts the wait (a wakeup fd), so the end of the container is noticed at once.
    """
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    old_chld = signal.signal(signal.SIGCHLD, lambda *_: None)
    os.set_blocking(master, False)
    inputs = [master, wake_r] + ([stdin] if stdin is not None else [])
    try:
        while True:
            if finished():
                _drain(master, stdout)
                return
            try:
                ready, _, _ = select.select(inputs, [], [], 1.0)
            except InterruptedError:
                continue
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
            if master in ready:
                try:
                    data = os.read(master, _CHUNK)
                except BlockingIOError:
                    data = None
                except OSError as exc:  # EIO: every slave fd is closed
                    if exc.errno != errno.EIO:
                        raise
                    inputs.remove(master)
                    data = None
                if data == b"":
                    inputs.remove(master)
                elif data:
                    _write_all(stdout, data)
            if stdin is not None and stdin in ready:
                data = os.read(stdin, _CHUNK)
                if data:
                    _write_all(master, data)
                else:  # our input ended: stop reading it (the container may still print)
                    inputs.remove(stdin)
                    stdin = None
    finally:
        signal.signal(signal.SIGCHLD, old_chld)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)


def _drain(master: int, stdout: int) -> None:
    """Whatever the container printed last, before its pty went away."""
    while True:
        try:
            data = os.read(master, _CHUNK)
        except OSError:
            return
        if not data:
            return
        _write_all(stdout, data)
