"""Fixtures for the runtime tests: a private state root per test, the `strata` command, and a
teardown that fails the test if anything is left behind.

Every test gets its own `--root` under its tmp dir. The teardown removes every container in it
(`strata rm -f`), then checks that nothing is mounted below the tmp dir and that no process is
left: none whose command line names the root (the runtime's own processes are forks of `strata`,
so they carry its arguments) and none in a PID namespace that appeared during the test. Only
processes the test started are ever killed (by removing its containers).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from tests.helpers.mounts import skip_unless_fuse, skip_unless_root

BIN: Final = Path(sys.executable).parent
STRATA: Final = str(BIN / "strata")
TIMEOUT: Final = 60.0


def _pid_namespaces() -> dict[int, int]:
    """pid -> pid namespace inode of every process we can see (zombies excluded)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            if stat[stat.rindex(b")") + 2 :].startswith(b"Z"):
                continue
            found[int(name)] = os.stat(f"/proc/{name}/ns/pid").st_ino
        except (OSError, ValueError):
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def fuse_mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split(" ")[4]
            point = point.replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return found


@dataclass
class Strata:
    """Runs `strata` subcommands against one state root."""

    root: Path
    tmp: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    user: int | None = None  # run as this uid (rootless tests)
    group: int | None = None

    def argv(self, command: str, *args: str) -> list[str]:
        return [STRATA, command, "--root", str(self.root), *args]

    def run(
        self,
        command: str,
        *args: str,
        input: str | None = None,
        timeout: float = TIMEOUT,
        check: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            self.argv(command, *args),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            user=self.user,
            group=self.group,
            extra_groups=[] if self.user is not None else None,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            pytest.fail(
                f"strata {command} {' '.join(args)} exited {done.returncode}\n"
                f"--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}",
                pytrace=False,
            )
        return done

    def popen(self, command: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            self.argv(command, *args),
            text=True,
            env=self.env,
            user=self.user,
            group=self.group,
            extra_groups=[] if self.user is not None else None,
            **kwargs,
        )

    def containers_dir(self) -> Path:
        return self.root / "containers"

    def container_ids(self) -> list[str]:
        with contextlib.suppress(FileNotFoundError):
            return sorted(n for n in os.listdir(self.containers_dir()) if not n.startswith("."))
        return []

    def container_dir(self, ref: str) -> Path:
        matches = [c for c in self.container_ids() if c.startswith(ref)]
        if len(matches) != 1:
            import json

            for c in self.container_ids():
                config = json.loads((self.containers_dir() / c / "config.json").read_text())
                if config["name"] == ref:
                    return self.containers_dir() / c
            raise AssertionError(f"no single container {ref!r} in {self.container_ids()}")
        return self.containers_dir() / matches[0]

    def inspect(self, ref: str) -> dict[str, object]:
        import json

        done = self.run("inspect", ref, check=True)
        (info,) = json.loads(done.stdout)
        assert isinstance(info, dict)
        return info

    def daemon_errors(self) -> list[str]:
        """The union daemon logs (of the containers still there) that show a traceback."""
        bad = []
        for cid in self.container_ids():
            log = self.containers_dir() / cid / "union.log"
            with contextlib.suppress(OSError):
                text = log.read_text(errors="replace")
                if "Traceback" in text or "ERROR" in text:
                    bad.append(f"{log}:\n{text[-2000:]}")
        return bad

    def cleanup(self) -> None:
        errors = self.daemon_errors()
        ids = self.container_ids()
        if ids:
            self.run("rm", "-f", *ids, timeout=60)
        if errors:
            pytest.fail("union daemon errors:\n" + "\n".join(errors), pytrace=False)


@dataclass(frozen=True, slots=True)
class Proc:
    """One process of a container, as /proc/PID/stat shows it from the host."""

    pid: int
    comm: str
    state: str  # R, S, T, Z, ...
    pgrp: int
    tpgid: int  # the foreground process group of its terminal (-1 without one)


def container_processes(init_pid: int) -> dict[int, Proc]:
    """Every process in the PID namespace whose init is `init_pid` (host pid), zombies too."""
    ns = os.stat(f"/proc/{init_pid}/ns/pid").st_ino
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{name}/ns/pid").st_ino != ns:
                continue
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")
        fields = data[data.rindex(b")") + 2 :].decode().split()
        found[int(name)] = Proc(int(name), comm, fields[0], int(fields[2]), int(fields[5]))
    return found


def runs_its_command(init_pid: int) -> bool:
    """Whether the container's command has been exec'd: one of its processes runs a program
    other than this Python (strata's PID 1 is a fork of it until `go`, --init's stays one)."""
    python = os.stat(sys.executable)
    for pid in container_processes(init_pid):
        try:
            exe = os.stat(f"/proc/{pid}/exe")
        except OSError:
            continue  # a zombie, or gone
        if (exe.st_dev, exe.st_ino) != (python.st_dev, python.st_ino):
            return True
    return False


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll `condition` until it holds (AssertionError naming `what` after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def wait_running(strata: Strata, ref: str, timeout: float = 20.0) -> dict[str, object]:
    """The container's inspect data once its command runs (exec'd, not only recorded)."""
    info: dict[str, object] = {}

    def started() -> bool:
        nonlocal info
        if not strata.container_ids():
            return False
        done = strata.run("inspect", ref)
        if done.returncode != 0:
            return False
        (info,) = json.loads(done.stdout)
        state = info["State"]
        assert isinstance(state, dict)
        return bool(state["Running"] and state["Pid"]) and runs_its_command(int(state["Pid"]))

    wait_for(started, f"container {ref} to run its command", timeout)
    return info


def lowers_args(layers_base_first: Sequence[Path]) -> list[str]:
    """`--lower` arguments, top first, for layers listed base first."""
    args = []
    for layer in reversed(layers_base_first):
        args += ["--lower", str(layer)]
    return args


@pytest.fixture
def strata(tmp_path: Path) -> Iterator[Strata]:
    """`strata` against a fresh state root; the test fails if it leaves a mount or a process."""
    skip_unless_root()
    skip_unless_fuse()
    before = _pid_namespaces()
    own = os.stat("/proc/self/ns/pid").st_ino
    handle = Strata(root=tmp_path / "state", tmp=tmp_path)
    try:
        yield handle
    finally:
        try:
            handle.cleanup()
        finally:
            check_no_leftovers(tmp_path, handle.root, before, own)


def check_no_leftovers(tmp: Path, root: Path, before: dict[int, int], own: int) -> None:
    """Nothing mounted below `tmp`, no process naming `root`, no new PID namespace's process."""
    deadline = time.monotonic() + 5.0
    while True:
        mounts = fuse_mounts_below(tmp)
        procs = {
            pid: _cmdline(pid)
            for pid, ns in _pid_namespaces().items()
            if pid != os.getpid()
            and (
                str(root) in _cmdline(pid)
                or (ns != own and pid not in before and ns not in before.values())
            )
        }
        if not mounts and not procs:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    pytest.fail(f"left behind: mounts {mounts}, processes {procs}", pytrace=False)


@pytest.fixture
def busybox(busybox_layers: list[Path]) -> list[str]:
    """The busybox test image as `--lower` arguments (top first)."""
    return lowers_args(busybox_layers)
