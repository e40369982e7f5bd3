"""`run -it` and `exec -it` with no terminal on stdin (a pipe, a cron job, CI): docker's one
line, "the input device is not a TTY", status 1, and nothing created (issue 17)."""

from __future__ import annotations

import pytest

from tests.runtime.conftest import Strata

pytestmark = [pytest.mark.root, pytest.mark.fuse]

NO_TTY = "strata: the input device is not a TTY\n"


@pytest.mark.parametrize("flags", [["-it"], ["-ti"], ["-i", "-t"], ["--interactive", "--tty"]])
def test_run_it_without_a_terminal_is_refused(
    strata: Strata, busybox: list[str], flags: list[str]
) -> None:
    done = strata.run("run", "--rm", *flags, *busybox, "/bin/echo", "hi", input="")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", NO_TTY)
    done = strata.run("create", "--name", "later", *flags, *busybox, "/bin/sh")
    assert done.returncode == 0, done.stderr  # create attaches nothing: docker takes it
    assert strata.run("run", *flags, *busybox, "/bin/true").stderr == NO_TTY
    assert len(strata.container_ids()) == 1  # only `later`: the refused runs made nothing


def test_run_t_or_i_alone_needs_no_terminal(strata: Strata, busybox: list[str]) -> None:
    """`-t` alone passes no stdin on; `-i` alone passes a pipe on: docker runs both."""
    done = strata.run("run", "--rm", "-t", *busybox, "/bin/echo", "hi")
    assert (done.returncode, done.stdout.replace("\r", "")) == (0, "hi\n")
    done = strata.run("run", "--rm", "-i", *busybox, "/bin/cat", input="piped\n")
    assert (done.returncode, done.stdout) == (0, "piped\n")


def test_run_d_it_needs_no_terminal(strata: Strata, busybox: list[str]) -> None:
    """Detached, nothing is attached to our stdin: docker runs it."""
    done = strata.run("run", "-d", "-it", "--name", "bg", *busybox, "/bin/sh")
    assert done.returncode == 0, done.stderr
    assert strata.run("rm", "-f", "bg").returncode == 0


def test_exec_it_without_a_terminal_is_refused(strata: Strata, busybox: list[str]) -> None:
    strata.run("run", "-d", "--name", "bg", *busybox, "/bin/sleep", "60", check=True)
    done = strata.run("exec", "-it", "bg", "/bin/echo", "hi")
    assert (done.returncode, done.stdout, done.stderr) == (1, "", NO_TTY)
    done = strata.run("exec", "-t", "bg", "/bin/echo", "hi")
    assert (done.returncode, done.stdout.replace("\r", "")) == (0, "hi\n")
    # no such container comes first, as in docker
    done = strata.run("exec", "-it", "nosuch", "/bin/true")
    assert (done.returncode, done.stderr) == (1, "strata: no such container: nosuch\n")
    assert strata.run("rm", "-f", "bg").returncode == 0
