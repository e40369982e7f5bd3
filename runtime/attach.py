"""`strata attach CONTAINER`: the terminal joins a detached container's input and output.

A detached container's output goes to its log (`containers/<id>/ctr.log`, runtime.logs: the
pty's output with `-t`, stdout and stderr without), and a detached container with `-i` reads its input from a
FIFO, `containers/<id>/stdin`, that its monitor holds open for reading and writing (so the
container's stdin never ends while no one is attached, as docker keeps it open): with `-t` the
monitor relays it to the pty, without `-t` it is the container's stdin itself. `attach`
follows the log from its end (each record's text to our stdout or stderr, as it was printed)
and writes what the terminal types into the FIFO, in raw mode for
a `-t` container, until the container stops (then its exit status is ours, as docker's) or the
detach keys are typed (default ctrl-p ctrl-q; then "read escape sequence" and status 1, as
docker's). As docker, a key that starts the sequence is held back until the next one shows
whether the sequence follows; then both go to the container. Without `-t`, SIGINT and SIGTERM
are passed to the container (`--sig-proxy`, default true); with `-t`, ctrl-c is a key like
any other.

`run -it` and `start -a` of a `-t` container are an attach too (`run_in_terminal`): the
container runs under a detached monitor, so that the detach keys can leave it running (docker's
run and start then return 0, silently). The exit status reaches each client through a FIFO of
its own (`exit_listener`), since --rm removes the state with the container.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Final

from unionfs import libc
from unionfs.errors import UsageError

from . import console
from .logs import LOG
from .logshow import parse_record
from .state import EXIT_FIFO, EXITED, RUNNING, ContainerDir, StateRoot, process_alive

DEFAULT_DETACH_KEYS: Final = "ctrl-p,ctrl-q"
_CHUNK: Final = 1 << 16
_POLL: Final = 0.05


def parse_detach_keys(text: str) -> bytes:
    """docker's `--detach-keys`: comma-separated keys, each one character or `ctrl-X` (X a
    letter or one of @ [ \\ ] ^ _); UsageError (125) otherwise. Empty: no detaching."""
    keys = bytearray()
    for key in text.split(",") if text else []:
        if len(key) == 1:
            keys.append(ord(key))
            continue
        name = key.lower()
        if name.startswith("ctrl-") and len(name) == 6:
            char = name[5]
            if "a" <= char <= "z":
                keys.append(ord(char) - ord("a") + 1)
                continue
            if char in "@[\\]^_":
                keys.append(ord(char.upper()) - 64 if char != "@" else 0)
                continue
        raise UsageError(f"--detach-keys {text}: invalid key {key!r}", 125)
    return bytes(keys)


class _Detach(Exception):
    """The detach keys were typed."""


class _KeyScanner:
    """Passes keys through, holding back a prefix of the detach sequence until it is
    complete (`_Detach`) or broken (then the held keys go too)."""

    def __init__(self, sequence: bytes) -> None:
        self.sequence = sequence
        self.held = b""

    def feed(self, data: bytes) -> bytes:
        if not self.sequence:
            return data
        out = bytearray()
        for byte in data:
            candidate = self.held + bytes([byte])
            if self.sequence.startswith(candidate):
                if candidate == self.sequence:
                    raise _Detach
                self.held = candidate
                continue
            out += candidate
            self.held = b""
        return bytes(out)


def attach(cdir: ContainerDir, *, detach_keys: bytes, no_stdin: bool, sig_proxy: bool) -> int:
    """See the module doc; the container's exit status, or 1 after the detach keys."""
    state = cdir.effective_state()
    if state.status != RUNNING or not process_alive(state.init_pid, state.init_start):
        raise UsageError("you cannot attach to a stopped container, start it first", 1)
    if state.paused:
        raise UsageError("you cannot attach to a paused container, unpause it first", 1)
    stdin = input_of(cdir, no_stdin=no_stdin)
    with LogTail(cdir.sub(LOG)) as log, exit_listener(cdir) as exit_fd:
        code = follow(
            cdir, log, stdin=stdin, detach_keys=detach_keys, sig_proxy=sig_proxy, exit_fd=exit_fd
        )
    if code is None:
        print("read escape sequence", file=sys.stderr, flush=True)
        return 1
    return code


def run_in_terminal(
    root: StateRoot, cdir: ContainerDir, *, detach_keys: bytes, stdin: bool, remove_on_failure: bool
) -> int:
    """`run -it` and `start -a` of a `-t` container: the container runs under a detached
    monitor, as with -d, and we attach to it, so that the detach keys leave it
    running, as docker's; then `strata attach` joins it again and --rm still removes it when it
    exits. After the detach keys the status is 0, silently, as docker's run and start."""
    from .lifecycle import start_detached

    stdin_fd = input_of(cdir, no_stdin=not stdin)
    # before the start: all that the container prints is shown, its exit status reaches us
    with LogTail(cdir.sub(LOG)) as log, exit_listener(cdir) as exit_fd:
        console.save_window_size(cdir.sub(console.WINDOW_SIZE))
        start_detached(root, cdir, remove_on_failure=remove_on_failure)
        code = follow(
            cdir, log, stdin=stdin_fd, detach_keys=detach_keys, sig_proxy=False, exit_fd=exit_fd
        )
    return 0 if code is None else code


def input_of(cdir: ContainerDir, *, no_stdin: bool) -> int | None:
    """Our stdin, if the container takes input and we pass it on; docker's refusal of a `-t`
    container's input from something that is no terminal."""
    cfg = cdir.config
    stdin = None if no_stdin or not cfg.interactive else sys.stdin.fileno()
    if stdin is not None and cfg.tty and not os.isatty(stdin):
        raise UsageError("the input device is not a TTY", 1)
    return stdin


@contextlib.contextmanager
def exit_listener(cdir: ContainerDir) -> Iterator[int | None]:
    """A FIFO of ours in the container's directory, `exit.<pid>`, that its monitor writes the
    exit status to (ContainerDir.tell_exit) before --rm removes the directory and its state;
    open here for reading and writing, so that it stays readable after. None if it cannot be
    made (a directory not ours): then only the state tells."""
    path = cdir.sub(f"{EXIT_FIFO}{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):  # a dead client's of the same pid
        os.unlink(path)
    try:
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def follow(
    cdir: ContainerDir,
    log: LogTail,
    *,
    stdin: int | None,
    detach_keys: bytes,
    sig_proxy: bool,
    exit_fd: int | None = None,
) -> int | None:
    """Relay `log` (opened before, at the point to show from) to our stdout and stderr and
    `stdin` into the container's input FIFO until the container stops (its exit status) or
    the detach keys are typed (None). `exit_fd`: our `exit_listener`, which has the status
    when --rm has taken the state. A `-t` container's pty gets our terminal's size, now and
    at each SIGWINCH (through its monitor)."""
    cfg = cdir.config
    fifo: int | None = None
    previous: dict[signal.Signals, object] = {}
    try:
        if stdin is not None:
            fifo = os.open(cdir.sub("stdin"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.set_blocking(fifo, True)
        if sig_proxy and not cfg.tty:
            from .lifecycle import signal_container

            def proxy(signum: int, frame: FrameType | None) -> None:
                with contextlib.suppress(UsageError):
                    signal_container(cdir, signum)

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, proxy)
        if cfg.tty and _share_window_size(cdir):
            previous[signal.SIGWINCH] = signal.signal(
                signal.SIGWINCH, lambda _s, _f: _share_window_size(cdir)
            )
        with (
            console.raw_terminal(stdin)
            if stdin is not None and cfg.tty
            else contextlib.nullcontext()
        ):
            return _relay(cdir, log, stdin, fifo, _KeyScanner(detach_keys), exit_fd)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        if fifo is not None:
            os.close(fifo)


def _share_window_size(cdir: ContainerDir) -> bool:
    """Our terminal's size for the container's pty: saved where its (detached) monitor reads
    it, which a SIGWINCH tells to (console.resize_pty). False if we have no terminal."""
    try:
        if not console.save_window_size(cdir.sub(console.WINDOW_SIZE)):
            return False
        state = cdir.read_state()
    except (OSError, ValueError):
        return False
    if state.status == RUNNING and process_alive(state.monitor_pid, state.monitor_start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.monitor_pid, signal.SIGWINCH)
    return True


def _relay(
    cdir: ContainerDir,
    log: LogTail,
    stdin: int | None,
    fifo: int | None,
    keys: _KeyScanner,
    exit_fd: int | None,
) -> int | None:
    while True:
        stopped = _exit_status(cdir, exit_fd)
        log.pump()
        if stopped is not None:
            return stopped
        waiting = [fd for fd in (stdin, exit_fd, log.watch) if fd is not None]
        try:
            ready, _, _ = select.select(waiting, [], [], _POLL)
        except InterruptedError:
            continue
        if log.watch is not None and log.watch in ready:
            log.events()
        if stdin is not None and stdin in ready:
            data = os.read(stdin, _CHUNK)
            if not data:  # our input ended: the container's stays open (the FIFO)
                stdin = None
                continue
            try:
                data = keys.feed(data)
            except _Detach:
                log.pump()
                return None
            if data and fifo is not None:
                try:
                    console_write(fifo, data)
                except BrokenPipeError:
                    stdin = None


def _exit_status(cdir: ContainerDir, exit_fd: int | None) -> int | None:
    """The container's exit status once it has stopped, else None: what its monitor told our
    FIFO, else what its state says (looked at before the FIFO again, which the monitor writes
    before it removes a --rm container)."""
    told = _told(exit_fd)
    if told is not None:
        return told
    stopped = _stopped(cdir)
    if stopped is None:
        return None
    told = _told(exit_fd)
    return stopped if told is None else told


def _told(exit_fd: int | None) -> int | None:
    if exit_fd is None:
        return None
    try:
        data = os.read(exit_fd, 64)
    except BlockingIOError:
        return None
    first = data.split(b"\n")[0]
    return int(first) if first.isdigit() else None


def console_write(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data) :]


class LogTail:
    """The container's log from where it ends at attach: each complete record's text goes to
    our stdout or stderr as the container printed it. A log not made yet (nothing printed so
    far) is read from its start once it appears; one that `--log-opt max-size` rotated away
    (runtime.logrotate: renamed, or emptied in place with max-file=1) is read to its end, then
    the new one from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None
        self.pending = b""
        # readable when the log's directory changes (a record written, the log made or
        # rotated), so output is relayed at once rather than at the next poll; None where
        # inotify is unavailable (then the poll interval bounds the delay)
        self.watch: int | None = None
        with contextlib.suppress(OSError):
            self.watch = libc.inotify_watch(
                path.parent, libc.IN_MODIFY | libc.IN_CREATE | libc.IN_MOVED_TO
            )
        self._open(at_end=True)

    def events(self) -> None:
        """Forget the inotify events that woke us (pump() reads what they announced)."""
        if self.watch is not None:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.watch, _CHUNK):
                    pass

    def _open(self, *, at_end: bool) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        if at_end:
            os.lseek(self.fd, 0, os.SEEK_END)

    def pump(self) -> None:
        if self.fd is None:
            self._open(at_end=False)
            if self.fd is None:
                return
        self._drain()
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return
        mine = os.fstat(self.fd)
        if current.st_ino != mine.st_ino:  # rotated: the rest is in the new file
            self.close()
            self._open(at_end=False)
            self._drain()
        elif mine.st_size < os.lseek(self.fd, 0, os.SEEK_CUR):  # emptied in place
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.pending = b""
            self._drain()

    def _drain(self) -> None:
        assert self.fd is not None
        while chunk := os.read(self.fd, _CHUNK):
            self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            rec = parse_record(line + b"\n")
            if rec is not None:
                fd = sys.stdout.fileno() if rec.stream == "stdout" else sys.stderr.fileno()
                console_write(fd, rec.data + (b"\n" if rec.full else b""))

    def __enter__(self) -> LogTail:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
        if self.watch is not None:
            os.close(self.watch)
            self.watch = None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.pending = b""


def _stopped(cdir: ContainerDir) -> int | None:
    """The container's exit status once it has stopped (its monitor gone), else None."""
    if not cdir.path.exists():  # removed (run -d --rm): its status went with it
        return 0
    try:
        state = cdir.read_state()
    except (OSError, ValueError):
        return 0
    if state.status == EXITED:
        return state.exit_code if state.exit_code is not None else 0
    if state.status == RUNNING and not process_alive(state.monitor_pid, state.monitor_start):
        return state.exit_code if state.exit_code is not None else 128 + signal.SIGKILL
    return None
