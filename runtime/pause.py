"""Pausing a running container: `strata pause`/`unpause` (`freeze`, `thaw`) and while
`strata commit` reads its upper dir (`paused`, as `docker commit`); and the processes of a
container (its PID namespace), which `strata top` lists too.

Two ways, as runc has them:

- the container's own cgroup (`strata-<id>` below ours; the monitor puts PID 1 in one at start,
  runtime.cgroups `join_freezer`): v2, write 1 to its `cgroup.freeze` and wait for `frozen 1` in
  `cgroup.events`, thaw with 0; on a hybrid host without it, the v1 freezer hierarchy's
  `freezer.state` (FROZEN, THAWED);
- otherwise (a rootless user without a delegated cgroup) every process of the container's PID
  namespace gets SIGSTOP (PID 1 too: SIGSTOP is one of the two signals an ancestor namespace can
  always send to a namespace's init). Processes forked meanwhile are caught by scanning again
  once every process found so far is seen stopped, until such a scan finds none new: a fork
  under way when its parent gets SIGSTOP still completes (since Linux 4.20 a signal to one
  process no longer restarts it) and its child is not stopped, but a process seen stopped has
  finished its fork, so after that scan nothing is left to fork. `paused()` sends SIGCONT to
  exactly the processes it stopped; `thaw` to every process of the namespace.

`paused()` always resumes, also when the body (or the pausing itself) fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

from .cgroups import own_freezer

_TIMEOUT: Final = 10.0


def _set_v1(group: Path, state: str) -> None:
    (group / "freezer.state").write_text(f"{state}\n")
    deadline = time.monotonic() + _TIMEOUT
    while (group / "freezer.state").read_text().strip() != state:
        if time.monotonic() > deadline:
            raise UsageError(f"could not set the container's freezer cgroup to {state}", 125)
        time.sleep(0.005)


def freeze(init_pid: int, container_id: str) -> str:
    """`strata pause`: freeze the container's own cgroup (v2, else the v1 freezer's), or, with
    neither (rootless without a delegated cgroup), SIGSTOP every process of its PID namespace;
    how ("cgroup" or "signals")."""
    if _set_freezer(init_pid, container_id, frozen=True):
        return "cgroup"
    stopped: list[int] = []
    try:
        _stop_all(init_pid, stopped)
    except BaseException:
        _continue(stopped)
        raise
    return "signals"


def thaw(init_pid: int, container_id: str) -> None:
    """`strata unpause`: undo `freeze` (after signals: SIGCONT to every process of the
    container's PID namespace, so also to one that the container itself had stopped)."""
    if not _set_freezer(init_pid, container_id, frozen=False):
        _continue(container_pids(init_pid))


def _set_freezer(init_pid: int, container_id: str, *, frozen: bool) -> bool:
    """Freeze or thaw the container's own cgroup (v2's cgroup.freeze, else the v1 freezer's
    state); False when it has none."""
    found = own_freezer(init_pid, container_id)
    if found is None:
        return False
    version, group = found
    if version == 2:
        _freeze(group, 1 if frozen else 0)
    else:
        _set_v1(group, "FROZEN" if frozen else "THAWED")
    return True


def is_frozen(init_pid: int, container_id: str) -> bool:
    """Whether the container is paused: its cgroup frozen, or (without one) every process of
    its PID namespace stopped."""
    found = own_freezer(init_pid, container_id)
    if found is not None:
        version, group = found
        if version == 2:
            return "frozen 1" in (group / "cgroup.events").read_text()
        return (group / "freezer.state").read_text().strip() == "FROZEN"
    states = {_state(pid) for pid in container_pids(init_pid)}
    return bool(states) and states <= {"T", "t", "Z", "X"}


def _continue(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _pid_ns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return "X"  # gone
    return data[data.rindex(b")") + 2 :][:1].decode()


def container_pids(init_pid: int) -> list[int]:
    """Every process of the container whose PID 1 is `init_pid` (host pids, sorted): those of
    its PID namespace, `strata exec`'s included."""
    ns = _pid_ns(init_pid)
    return [] if ns is None else sorted(_members(ns))


def _members(ns: int) -> set[int]:
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit() and _pid_ns(int(name)) == ns:
            found.add(int(name))
    return found


def _stop_all(init_pid: int, stopped: list[int]) -> None:
    """SIGSTOP every process in `init_pid`'s PID namespace (appended to `stopped`)."""
    ns = _pid_ns(init_pid)
    if ns is None:
        raise UsageError("the container stopped while being paused", 125)
    deadline = time.monotonic() + _TIMEOUT
    while new := sorted(_members(ns) - set(stopped)):
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        # Only a scan made once all are stopped can be sure to see every child.
        for pid in stopped:
            while _state(pid) not in ("T", "t", "X", "Z"):
                if time.monotonic() > deadline:
                    raise UsageError(f"could not pause the container (process {pid})", 125)
                time.sleep(0.005)
        if time.monotonic() > deadline:
            raise UsageError("could not pause the container (it keeps forking)", 125)


def _freeze(group: Path, value: int) -> None:
    (group / "cgroup.freeze").write_text(f"{value}\n")
    if not value:
        return
    deadline = time.monotonic() + _TIMEOUT
    while "frozen 1" not in (group / "cgroup.events").read_text():
        if time.monotonic() > deadline:
            raise UsageError("could not freeze the container's cgroup", 125)
        time.sleep(0.005)


@contextlib.contextmanager
def paused(init_pid: int, container_id: str) -> Iterator[str]:
    """The container whose PID 1 is `init_pid` paused for the body; yields how ("cgroup" or
    "signals"). Always resumed."""
    if own_freezer(init_pid, container_id) is not None:
        freeze(init_pid, container_id)
        try:
            yield "cgroup"
        finally:
            thaw(init_pid, container_id)
        return
    stopped: list[int] = []
    try:
        _stop_all(init_pid, stopped)
        yield "signals"
    finally:
        _continue(stopped)
