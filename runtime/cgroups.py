"""Resource limits (`--memory`, `--pids-limit`, `--cpus`) with cgroups, v2 or v1, where we may use them.

A container's cgroup is made below the runtime's own (`<our cgroup>/strata-<id>`), so the
limits a host or an outer container sets stay in force. For each controller the v2 hierarchy is
used when it has the controller (enabled for our children through `cgroup.subtree_control`),
the v1 hierarchy of that controller otherwise (hybrid hosts have memory and pids in v1). Where
neither is possible (no such controller, no write access as a rootless user without a delegated
cgroup, v2's no-internal-processes rule) the limit is skipped with a warning: `Limits.apply()`
returns the warnings and the caller prints them.

The container's PID 1 is moved in before the command runs, so everything it starts is inside.
`Limits.remove()` removes the cgroups once the container has exited.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError
from unionfs.mountinfo import read_mountinfo

_SIZE: Final = re.compile(r"(\d+)([bkmg]?)b?", re.IGNORECASE)
_UNITS: Final = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MIN_MEMORY: Final = 6 << 20  # as Docker: below this a container cannot even start


def parse_memory(text: str) -> int:
    """`--memory`: bytes, or a number with k, m or g (binary units)."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"--memory {text}: expected a size such as 512m or 2g", 125)
    size = int(m[1]) * _UNITS[m[2].lower()]
    if size >= 2**63:
        raise UsageError(f"--memory {text}: too large", 125)
    if size < MIN_MEMORY:
        raise UsageError(f"--memory {text}: the minimum is 6m", 125)
    return size


@dataclass(frozen=True, slots=True)
class _Hierarchy:
    """Where one controller can be used: the mounted hierarchy and our cgroup in it."""

    version: int
    mountpoint: Path
    ours: str  # our cgroup's path inside the hierarchy

    def parent(self) -> Path:
        return self.mountpoint / self.ours.lstrip("/")


def _mounted_hierarchies() -> tuple[Path | None, dict[str, Path]]:
    """The cgroup2 mount point and the v1 mount point of each controller."""
    v2 = None
    v1: dict[str, Path] = {}
    for m in read_mountinfo():
        if m.fstype == "cgroup2" and v2 is None:
            v2 = m.mountpoint
        elif m.fstype == "cgroup":
            for option in m.super_options.split(","):
                v1.setdefault(option, m.mountpoint)
    return v2, v1


def _our_cgroups(pid: int | str = "self") -> tuple[str | None, dict[str, str]]:
    """Our (or `pid`'s) v2 cgroup path and v1 cgroup path per controller (/proc/PID/cgroup)."""
    v2 = None
    v1: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if not controllers:
                v2 = path
            for controller in controllers.split(","):
                v1[controller] = path
    return v2, v1


def _find(controller: str) -> _Hierarchy | None:
    v2_mount, v1_mounts = _mounted_hierarchies()
    v2_path, v1_paths = _our_cgroups()
    if v2_mount is not None and v2_path is not None:
        parent = v2_mount / v2_path.lstrip("/")
        with contextlib.suppress(OSError):
            if controller in (parent / "cgroup.controllers").read_text().split():
                return _Hierarchy(2, v2_mount, v2_path)
    if controller in v1_mounts and controller in v1_paths:
        return _Hierarchy(1, v1_mounts[controller], v1_paths[controller])
    return None


# controller -> (v1 file, v2 file)
_FILES: Final = {
    "memory": ("memory.limit_in_bytes", "memory.max"),
    "pids": ("pids.max", "pids.max"),
    "cpu": ("cpu.cfs_quota_us", "cpu.max"),
}
_FLAGS: Final = {"memory": "--memory", "pids": "--pids-limit", "cpu": "--cpus"}
CPU_PERIOD: Final = 100_000  # µs, the kernel's default CFS period, as docker's --cpus uses


def parse_cpus(text: str) -> int:
    """`--cpus 1.5`: the CFS quota in µs per CPU_PERIOD; at most the CPUs there are, as docker."""
    import os

    available = os.cpu_count() or 1
    try:
        cpus = float(text)
    except ValueError:
        cpus = -1.0
    if not 0.01 <= cpus <= available or text.lower() in ("nan", "inf"):
        raise UsageError(
            f"--cpus {text}: range of CPUs is from 0.01 to {available}.00, as there are only"
            f" {available} CPUs available",
            125,
        )
    return round(cpus * CPU_PERIOD)


@dataclass
class Limits:
    """The cgroups of one container run."""

    container_id: str
    memory: int = 0
    pids: int = 0
    cpu_quota: int = 0  # µs per CPU_PERIOD (--cpus)
    made: list[Path] = field(default_factory=list)

    def wanted(self) -> dict[str, int]:
        pairs = (("memory", self.memory), ("pids", self.pids), ("cpu", self.cpu_quota))
        return {k: v for k, v in pairs if v}

    def apply(self, pid: int) -> list[str]:
        """Make the cgroups, set the limits, move `pid` in; the warnings for what was skipped."""
        warnings = []
        for controller, value in self.wanted().items():
            try:
                self._apply_one(controller, value, pid)
            except OSError as exc:
                warnings.append(
                    f"{_FLAGS[controller]} ignored:"
                    f" {controller} cgroup not usable here ({exc.strerror or exc})"
                )
        return warnings

    def join_freezer(self, pid: int) -> None:
        """Put `pid` into a cgroup of the container's own that can be frozen (`strata pause`,
        runtime.pause): the v2 one (`cgroup.freeze` is in every non-root v2 cgroup, with no
        controller to enable), else the v1 freezer hierarchy's. Where neither can be made (a
        rootless user without a delegated cgroup) nothing is done: pausing then stops the
        processes with signals."""
        v2_mount, v1_mounts = _mounted_hierarchies()
        v2_path, v1_paths = _our_cgroups()
        candidates = []
        if v2_mount is not None and v2_path is not None:
            candidates.append(v2_mount / v2_path.lstrip("/"))
        if "freezer" in v1_mounts and "freezer" in v1_paths:
            candidates.append(v1_mounts["freezer"] / v1_paths["freezer"].lstrip("/"))
        for parent in candidates:
            group = parent / f"strata-{self.container_id[:12]}"
            try:
                group.mkdir(exist_ok=True)
                if group not in self.made:
                    self.made.append(group)
                (group / "cgroup.procs").write_text(str(pid))
            except OSError:
                continue
            if (group / "cgroup.freeze").exists() or (group / "freezer.state").exists():
                return

    def _apply_one(self, controller: str, value: int, pid: int) -> None:
        where = _find(controller)
        if where is None:
            raise OSError(0, "the controller is not available")
        parent = where.parent()
        if where.version == 2:
            _enable_in_subtree(parent, controller)
        group = parent / f"strata-{self.container_id[:12]}"
        if group not in self.made:
            group.mkdir(exist_ok=True)
            self.made.append(group)
        text = str(value)
        if controller == "cpu" and where.version == 2:
            text = f"{value} {CPU_PERIOD}"
        elif controller == "cpu":
            (group / "cpu.cfs_period_us").write_text(str(CPU_PERIOD))
        (group / _FILES[controller][where.version - 1]).write_text(text)
        (group / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        """rmdir each cgroup (retrying briefly while the kernel still counts exiting tasks)."""
        for group in reversed(self.made):
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        break
                    time.sleep(0.01)
        self.made.clear()


def own_freezer(pid: int, container_id: str) -> tuple[int, Path] | None:
    """The container's own cgroup that `join_freezer` put `pid` in and that can be frozen:
    (2, its v2 directory), else (1, its directory in the v1 freezer hierarchy); None when `pid`
    is in neither (runtime.pause then uses signals)."""
    try:
        v2_path, v1_paths = _our_cgroups(pid)
    except OSError:
        return None
    name = f"strata-{container_id[:12]}"
    v2_mount, v1_mounts = _mounted_hierarchies()
    if v2_path is not None and os.path.basename(v2_path) == name and v2_mount is not None:
        group = v2_mount / v2_path.lstrip("/")
        if (group / "cgroup.freeze").exists():
            return 2, group
    v1_path = v1_paths.get("freezer")
    if v1_path is not None and os.path.basename(v1_path) == name and "freezer" in v1_mounts:
        group = v1_mounts["freezer"] / v1_path.lstrip("/")
        if (group / "freezer.state").exists():
            return 1, group
    return None


def remove_stale(container_id: str) -> None:
    """rmdir the container's cgroups that a monitor killed with SIGKILL left (empty by now: its
    processes died with it), in every hierarchy `Limits` may have used; called by `rm`."""
    v2_mount, v1_mounts = _mounted_hierarchies()
    v2_path, v1_paths = _our_cgroups()
    parents = []
    if v2_mount is not None and v2_path is not None:
        parents.append(v2_mount / v2_path.lstrip("/"))
    parents.extend(
        v1_mounts[c] / v1_paths[c].lstrip("/")
        for c in ("memory", "pids", "freezer")
        if c in v1_mounts and c in v1_paths
    )
    for parent in parents:
        with contextlib.suppress(OSError):
            (parent / f"strata-{container_id[:12]}").rmdir()


def _enable_in_subtree(parent: Path, controller: str) -> None:
    control = parent / "cgroup.subtree_control"
    if controller not in control.read_text().split():
        control.write_text(f"+{controller}")
