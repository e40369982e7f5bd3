"""Bad input: one clear line on stderr, a non-zero exit, no mount left, the state root unchanged."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.runtime.conftest import Strata, fuse_mounts_below

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def listing(root: Path) -> list[str]:
    """Every path under the state root but its lock and the cache of compiled seccomp programs
    (content-addressed, filled by any start, and no part of a container)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and "seccomp" in dirnames:
            dirnames.remove("seccomp")
        dirnames.sort()
        names = sorted(dirnames + filenames)
        found += [os.path.relpath(os.path.join(dirpath, n), root) for n in names if n != "lock"]
    return found


CASES = [
    # (name, arguments after the image part; "{img}" = the busybox --lower args, code, message)
    ("missing image", ["nosuchimage", "/bin/true"], 125, "no such image: nosuchimage"),
    ("image not a dir", ["/etc/passwd", "/bin/true"], 125, "not a directory"),
    ("missing layer", ["--lower", "/nonexistent", "/bin/true"], 125, "layer /nonexistent"),
    ("missing command", ["{img}", "/nonexistent"], 127, "/nonexistent: no such file"),
    ("command not in PATH", ["{img}", "nosuchcmd"], 127, "nosuchcmd: not found in $PATH"),
    ("command not executable", ["{img}", "/etc/passwd"], 126, "/etc/passwd: permission denied"),
    ("no command", ["{img}"], 125, "no command given"),
    ("no image", [], 125, "no image given"),
    ("bad -v syntax", ["-v", "/a:/b:ro:x", "{img}", "/bin/true"], 125, "expected [HOST-DIR|NAME:]"),
    ("bad -v host", ["-v", "/nonexistent:/x", "{img}", "/bin/true"], 125, "does not exist"),
    ("bad -v mode", ["-v", "/tmp:/x:rx", "{img}", "/bin/true"], 125, "invalid mode: rx"),
    ("relative -v", ["-v", "./tmp:/x", "{img}", "/bin/true"], 125, "must be absolute"),
    ("bad volume name", ["-v", "a$:/x", "{img}", "/bin/true"], 125, "invalid characters"),
    ("bad -u syntax", ["-u", "a:b:c", "{img}", "/bin/true"], 125, "-u a:b:c"),
    ("unknown user", ["-u", "nosuchuser", "{img}", "/bin/true"], 125, "unable to find user"),
    ("unknown group", ["-u", "0:nogrp", "{img}", "/bin/true"], 125, "unable to find group"),
    ("missing workdir", ["-w", "/nonexistent", "{img}", "/bin/true"], 125, "working directory"),
    ("relative workdir", ["-w", "opt", "{img}", "/bin/true"], 125, "must be absolute"),
    ("bad env", ["-e", "=x", "{img}", "/bin/true"], 125, "expected NAME=VALUE"),
    ("bad env file", ["--env-file", "/nonexistent", "{img}", "/bin/true"], 125, "--env-file"),
    ("bad hostname", ["--hostname", "a b", "{img}", "/bin/true"], 125, "--hostname"),
    ("bad subnet", ["--network", "bridge", "--subnet", "10.0.0.0/33", "{img}", "/bin/true"], 125,
     "--subnet"),
    ("bad --dns", ["--dns", "resolver.example", "{img}", "/bin/true"], 125, "--dns"),
    ("bad --dns-search", ["--dns-search", "a b", "{img}", "/bin/true"], 125, "--dns-search"),
    ("bad --dns-option", ["--dns-option", "a b", "{img}", "/bin/true"], 125, "--dns-option"),
    ("bad --add-host", ["--add-host", "nocolon", "{img}", "/bin/true"], 125, "--add-host"),
    ("bad --add-host ip", ["--add-host", "db:300.1.1.1", "{img}", "/bin/true"], 125,
     "not an IP address"),
    ("host-gateway without a network", ["--network", "none", "--add-host", "gw:host-gateway",
     "{img}", "/bin/true"], 125, "host-gateway needs"),
    ("unknown option", ["--frobnicate", "{img}", "/bin/true"], 125, "unrecognized arguments"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_run_input_is_one_line_and_changes_nothing(
    strata: Strata, busybox: list[str], args: list[str], code: int, message: str
) -> None:
    strata.run("create", "--name", "existing", *busybox, "/bin/true", check=True)
    before = listing(strata.root)
    argv: list[str] = []
    for arg in args:
        argv += busybox if arg == "{img}" else [arg]
    assert_refused(strata, strata.run("run", "--rm", *argv), code, message, before)


def assert_refused(
    strata: Strata,
    done: subprocess.CompletedProcess[str],
    code: int,
    message: str,
    before: list[str],
) -> None:
    """`done` failed with `code` and one line holding `message`, and the state root is as it
    was (`before`, from `listing()`) with nothing mounted."""
    assert done.returncode == code, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("strata: ")
    assert message in done.stderr
    assert listing(strata.root) == before
    assert not fuse_mounts_below(strata.tmp)


def test_a_name_clash_changes_nothing(strata: Strata, busybox: list[str]) -> None:
    strata.run("create", "--name", "taken", *busybox, "/bin/true", check=True)
    before = listing(strata.root)
    for command in ("run", "create"):
        done = strata.run(command, "--name", "taken", *busybox, "/bin/true")
        assert done.returncode == 125
        assert "the name 'taken' is already in use" in done.stderr
        assert done.stderr.count("\n") == 1
    assert listing(strata.root) == before


def test_a_start_that_fails_leaves_the_container_as_it_was(
    strata: Strata, busybox: list[str]
) -> None:
    strata.run("create", "--name", "bad", "-w", "/nonexistent", *busybox, "/bin/true", check=True)
    before = listing(strata.root)
    state_before = (strata.container_dir("bad") / "state.json").read_text()
    done = strata.run("start", "-a", "bad")
    assert done.returncode == 125
    assert done.stderr == "strata: working directory /nonexistent: No such file or directory\n"
    assert (strata.container_dir("bad") / "state.json").read_text() == state_before
    added = set(listing(strata.root)) - set(before)
    # only the union daemon's log and the scratch it keeps in the work dir
    assert all(p.endswith("/union.log") or "/work/" in p for p in added), added
    assert set(before) <= set(listing(strata.root))
    detached = strata.run("start", "bad")
    assert detached.returncode == 125
    assert "working directory" in detached.stderr
    assert not fuse_mounts_below(strata.tmp)


def test_commands_on_missing_or_stopped_containers(strata: Strata, busybox: list[str]) -> None:
    strata.run("create", "--name", "idle", *busybox, "/bin/true", check=True)
    for argv in (["stop", "nope"], ["kill", "nope"], ["rm", "nope"], ["logs", "nope"],
                 ["exec", "nope", "ls"], ["start", "nope"]):  # fmt: skip
        done = strata.run(*argv)
        assert done.returncode != 0
        assert done.stderr == "strata: no such container: nope\n"
    assert strata.run("exec", "idle", "ls").stderr == "strata: container idle is not running\n"
    assert strata.run("kill", "idle").stderr == "strata: container idle is not running\n"
    bad_signal = strata.run("kill", "-s", "NOPE", "idle")
    assert bad_signal.stderr == "strata: unknown signal 'NOPE'\n"
