"""`-t`: relay between the user's terminal and a pty allocated in the container (and, with or
without `-t`, the container's output to the user and to its log: `relay`).

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
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

_CHUNK: Final = 65536
WINDOW_SIZE: Final = "winsize"  # containers/<id>/winsize: save_window_size, resize_pty


def copy_window_size(from_fd: int, to_fd: int) -> None:
    """Copy the terminal size of `from_fd` (if it is a terminal) to the pty `to_fd`."""
    size = _window_size(from_fd)
    if size is not None:
        with contextlib.suppress(OSError):
            fcntl.ioctl(to_fd, termios.TIOCSWINSZ, size)


def _window_size(fd: int) -> bytes | None:
    try:
        return fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return None


def save_window_size(path: Path) -> bool:
    """For a monitor with no terminal of its own (a detached one, which `strata attach` and
    `run -it` talk to): our terminal's size (stdout's, as docker takes it, else stdin's) into
    `path` (atomically), which `resize_pty` reads. False if neither is a terminal."""
    size = _window_size(sys.stdout.fileno())
    if size is None:
        size = _window_size(sys.stdin.fileno())
    if size is None:
        return False
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, size)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    return True


def resize_pty(master: int, size_file: Path | None) -> None:
    """The pty gets our terminal's size when our stdin is a terminal (a foreground monitor),
    else the size the last attached client saved in `size_file` (`save_window_size`)."""
    stdin = sys.stdin.fileno()
    if os.isatty(stdin) or size_file is None:
        copy_window_size(stdin, master)
        return
    try:
        size = size_file.read_bytes()
    except OSError:
        return
    if len(size) == 8:
        with contextlib.suppress(OSError):
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)


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


Sink = Callable[[bytes], bool]  # takes output; False: stop reading that source (nobody wants it)


def relay(
    sources: dict[int, Sink],
    *,
    stdin: int | None,
    master: int | None,
    finished: Callable[[], bool],
) -> None:
    """Copy each source (the pty's master, or the container's stdout and stderr pipes) to its
    sink and `stdin` to `master`, until the sources have ended (EOF, or EIO: the pty has no
    reader left) and `finished()` says the container is done, or `finished()` and no more output
    is pending. The sources are closed on return (a source whose sink gave up, at once: the
    container's next write to it fails, as it would into a pipe nobody reads).

    A SIGCHLD interrupts the wait (a wakeup fd), so the end of the container is noticed at once.
    """
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    old_chld = signal.signal(signal.SIGCHLD, lambda *_: None)
    live = dict(sources)
    for fd in live:
        os.set_blocking(fd, False)

    def stop(fd: int) -> None:
        del live[fd]
        os.close(fd)

    try:
        while True:
            if finished():
                for fd, sink in list(live.items()):
                    _drain(fd, sink)
                return
            inputs = [*live, wake_r] + ([stdin] if stdin is not None else [])
            try:
                ready, _, _ = select.select(inputs, [], [], 1.0)
            except InterruptedError:
                continue
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
            for fd in [fd for fd in ready if fd in live]:
                try:
                    data = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                except OSError as exc:  # EIO: every slave fd of the pty is closed
                    if exc.errno != errno.EIO:
                        raise
                    data = b""
                if not data or not live[fd](data):
                    stop(fd)
            if stdin is not None and stdin in ready:
                data = os.read(stdin, _CHUNK)
                if data and master is not None and master in live:
                    _write_all(master, data)
                else:  # our input ended: stop reading it (the container may still print)
                    stdin = None
    finally:
        for fd in live:
            os.close(fd)
        signal.signal(signal.SIGCHLD, old_chld)
        signal.set_wakeup_fd(old_wakeup)
        os.close(wake_r)
        os.close(wake_w)


def _drain(fd: int, sink: Sink) -> None:
    """Whatever the container printed last, before it went away."""
    while True:
        try:
            data = os.read(fd, _CHUNK)
        except OSError:
            return
        if not data or not sink(data):
            return


def write_all(fd: int, data: bytes) -> bool:
    """A sink's write to one of our own stdout and stderr: False once nobody reads it."""
    try:
        _write_all(fd, data)
    except BrokenPipeError:
        return False
    return True
