"""`-it`: an interactive shell driven through a real pty, as a user at a terminal would."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time

import pytest

from tests.runtime.conftest import STRATA, Strata, container_processes, wait_for, wait_running

pytestmark = [pytest.mark.root, pytest.mark.fuse]


class Terminal:
    """`strata ARGS` on the slave side of a pty we hold the master of."""

    def __init__(
        self, argv: list[str], *, rows: int = 24, cols: int = 80, as_user: Strata | None = None
    ) -> None:
        """`as_user`: run as its (rootless) user, with its environment."""
        pid, fd = pty.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                if as_user is not None and as_user.user is not None:
                    os.setgroups([])
                    os.setgid(as_user.group if as_user.group is not None else as_user.user)
                    os.setuid(as_user.user)
                    os.execve(argv[0], argv, as_user.env)
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = b""
        self.resize(rows, cols)

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def read_until(self, needle: bytes, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {needle!r} in {self.output!r}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:  # EIO: the other side is gone
                    data = b""
                if not data:
                    raise AssertionError(f"EOF before {needle!r} in {self.output!r}")
                self.output += data
        return self.output

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with_output = select.select([self.fd], [], [], 0.05)[0]
            if with_output:
                try:
                    self.output += os.read(self.fd, 4096)
                except OSError:
                    pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        raise AssertionError("strata did not exit")

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


def test_interactive_shell_through_a_pty(strata: Strata, busybox: list[str]) -> None:
    term = Terminal([STRATA, "run", "--root", str(strata.root), "--rm", "-it", *busybox, "/bin/sh"],
                    rows=30, cols=100)  # fmt: skip
    try:
        term.read_until(b"# ")
        term.type("tty; stty size; echo hi; exit 3\r")
        assert term.wait() == 3
        out = term.output.decode(errors="replace")
        assert "/dev/pts/0" in out  # the container's own devpts
        assert "30 100" in out  # our window size
        assert "\r\nhi\r\n" in out
    finally:
        term.close()


def test_window_size_changes_and_ctrl_c_reach_the_container(
    strata: Strata, busybox: list[str]
) -> None:
    term = Terminal(
        [
            STRATA,
            "run",
            "--root",
            str(strata.root),
            "--rm",
            "-it",
            "--name",
            "t",
            *busybox,
            "/bin/sh",
        ]
    )
    try:
        term.read_until(b"# ")
        term.resize(40, 120)
        os.kill(term.pid, signal.SIGWINCH)
        term.type("stty size\r")
        term.read_until(b"40 120")
        init_pid = int(wait_running(strata, "t")["State"]["Pid"])  # type: ignore[index]
        term.type("sleep 30\r")
        # Ctrl-C must find the sleep as the terminal's foreground job: exec'd, in its own group.
        wait_for(
            lambda: any(
                p.comm == "sleep" and p.pgrp == p.tpgid
                for p in container_processes(init_pid).values()
            ),
            "the sleep to be the foreground job",
        )
        started = time.monotonic()
        term.type("\x03")  # Ctrl-C: the pty's line discipline signals the foreground job
        term.type("echo status $?\r")
        term.read_until(b"status 130")
        assert time.monotonic() - started < 10
        term.type("exit\r")
        assert term.wait() == 0
    finally:
        term.close()


def test_exec_it_into_a_running_container(strata: Strata, busybox: list[str]) -> None:
    strata.run("run", "-d", "--name", "bg", *busybox, "/bin/sleep", "60", check=True)
    term = Terminal([STRATA, "exec", "--root", str(strata.root), "-it", "bg", "/bin/sh"])
    try:
        term.read_until(b"# ")
        term.type("tty; ps -o pid,comm | grep -c sleep; exit 5\r")
        assert term.wait() == 5
        assert b"/dev/pts/0" in term.output
    finally:
        term.close()


def test_run_it_detaches_on_the_detach_keys_and_attach_rejoins(
    strata: Strata, busybox: list[str]
) -> None:
    root = str(strata.root)
    term = Terminal(
        [STRATA, "run", "--root", root, "--rm", "-it", "--name", "d", *busybox, "/bin/sh"]
    )
    try:
        term.read_until(b"# ")
        term.type("echo one$((0+1))\r")
        term.read_until(b"one1")
        term.type("\x10\x11")  # ctrl-p ctrl-q: docker's default
        assert term.wait() == 0  # as docker's run: status 0, no message
        assert b"escape" not in term.output
    finally:
        term.close()
    assert strata.inspect("d")["State"]["Status"] == "running"  # type: ignore[index]
    again = Terminal([STRATA, "attach", "--root", root, "d"], rows=33, cols=90)
    try:
        again.type("stty size; echo two$((1+1))\r")
        again.read_until(b"two2")
        assert b"33 90" in again.output  # the pty took the new terminal's size
        again.type("exit 7\r")
        assert again.wait() == 7
    finally:
        again.close()
    wait_for(lambda: not strata.container_ids(), "--rm to remove the container")


def test_start_ai_detaches_on_its_detach_keys(strata: Strata, busybox: list[str]) -> None:
    root = str(strata.root)
    strata.run("create", "-it", "--name", "s", *busybox, "/bin/sh", check=True)
    argv = [STRATA, "start", "--root", root, "-ai", "--detach-keys", "ctrl-x,y", "s"]
    term = Terminal(argv)
    try:
        term.read_until(b"# ")
        term.type("\x10\x11echo three$((1+2))\r")  # not its keys: they reach the shell
        term.read_until(b"three3")
        term.type("\x18y")
        assert term.wait() == 0
    finally:
        term.close()
    assert strata.inspect("s")["State"]["Status"] == "running"  # type: ignore[index]
    done = strata.run("attach", "s", input="")  # our stdin is no terminal: refused
    assert (done.returncode, done.stderr) == (1, "strata: the input device is not a TTY\n")
    strata.run("stop", "-t", "1", "s", check=True)
    # `start -a` of a -t container without -i: its output and status, no input
    strata.run("create", "-t", "--name", "o", *busybox, "/bin/sh", "-c", "echo out; exit 4",
               check=True)  # fmt: skip
    done = strata.run("start", "-a", "o")
    assert (done.returncode, done.stdout, done.stderr) == (4, "out\n", "")  # (text mode: \r\n)


def test_detach_keys_bad_input(strata: Strata, busybox: list[str]) -> None:
    done = strata.run("run", "--detach-keys", "ctrl-1", *busybox, "/bin/true")
    assert (done.returncode, done.stderr) == (
        125,
        "strata: --detach-keys ctrl-1: invalid key 'ctrl-1'\n",
    )
    assert strata.container_ids() == []
    strata.run("create", "-it", "--name", "c", *busybox, "/bin/sh", check=True)
    done = strata.run("start", "-ai", "--detach-keys", "ctrl-é", "c")
    assert (done.returncode, done.stderr) == (
        125,
        "strata: --detach-keys ctrl-é: invalid key 'ctrl-é'\n",
    )
    assert strata.inspect("c")["State"]["Status"] == "created"  # type: ignore[index]


def test_run_it_of_a_missing_command_fails_and_removes_nothing_else(
    strata: Strata, busybox: list[str]
) -> None:
    root = str(strata.root)
    term = Terminal([STRATA, "run", "--root", root, "--rm", "-it", *busybox, "/nonexistent"])
    try:
        assert term.wait() == 127
        assert term.output.count(b"strata: ") == 1, term.output
        assert b"/nonexistent" in term.output
    finally:
        term.close()
    assert strata.container_ids() == []
