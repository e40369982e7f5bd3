"""`strata stats`: a live table of the containers' resource use, with docker's columns.

    CONTAINER ID   NAME   CPU %   MEM USAGE / LIMIT   MEM %   NET I/O   BLOCK I/O   PIDS

Where each figure comes from (the container's own cgroup where it has one, runtime.cgroups,
otherwise its processes, found by its PID namespace):

- CPU %: CPU time used between two readings over the time between them, x 100 (so up to
  100 x the number of CPUs, as docker's): the cgroup v2 `cpu.stat` usage_usec (every v2 cgroup
  has it), else the sum of utime + stime of the container's processes (time of processes that
  exited between two readings is then missed);
- MEM USAGE: the memory cgroup's usage less its inactive file pages (docker's figure), else the
  sum of the processes' resident sets; LIMIT: `--memory`, else the host's memory;
- NET I/O: bytes received / sent on the container's interfaces but lo (its network namespace's
  /proc/net/dev; `--network host` shows the host's);
- BLOCK I/O: bytes the processes read from / wrote to storage (/proc/PID/io; root only);
- PIDS: the pids cgroup's count, else the number of the processes' threads.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unionfs.mountinfo import read_mountinfo

from .pause import container_pids
from .state import RUNNING, ContainerDir, process_alive

_TICKS: Final = os.sysconf("SC_CLK_TCK")
_PAGE: Final = os.sysconf("SC_PAGE_SIZE")
INTERVAL: Final = 1.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one container."""

    when: float  # time.monotonic()
    cpu: float  # CPU seconds used so far
    memory: int
    limit: int
    net_rx: int
    net_tx: int
    block_read: int
    block_write: int
    pids: int


def _cgroup_dirs(pid: int) -> dict[str, Path]:
    """The container's own cgroups (named strata-<id>) by controller ('' for v2)."""
    mounts: dict[str, Path] = {}
    for m in read_mountinfo():
        if m.fstype == "cgroup2":
            mounts.setdefault("", m.mountpoint)
        elif m.fstype == "cgroup":
            for option in m.super_options.split(","):
                mounts.setdefault(option, m.mountpoint)
    found = {}
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if not os.path.basename(path).startswith("strata-"):
            continue
        for controller in controllers.split(",") if controllers else [""]:
            if controller in mounts:
                found[controller] = mounts[controller] / path.lstrip("/")
    return found


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _keyed(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def _host_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * _PAGE


def sample(cdir: ContainerDir) -> Sample | None:
    """A reading of the container now; None if it is not running."""
    state = cdir.effective_state()
    if state.status != RUNNING or not process_alive(state.init_pid, state.init_start):
        return None
    pids = container_pids(state.init_pid)
    groups = _cgroup_dirs(state.init_pid)
    stats = [_proc_stat(pid) for pid in pids]
    cpu = sum(s[0] for s in stats)
    v2 = groups.get("")
    v2_cpu = _keyed(_read(v2 / "cpu.stat")) if v2 is not None else {}
    if "usage_usec" in v2_cpu:
        cpu = v2_cpu["usage_usec"] / 1e6
    memory = sum(s[1] for s in stats)
    if v2 is not None and (current := _read(v2 / "memory.current")) is not None:
        inactive = _keyed(_read(v2 / "memory.stat")).get("inactive_file", 0)
        memory = max(0, int(current) - inactive)
    elif "memory" in groups and (usage := _read(groups["memory"] / "memory.usage_in_bytes")):
        inactive = _keyed(_read(groups["memory"] / "memory.stat")).get("total_inactive_file", 0)
        memory = max(0, int(usage) - inactive)
    count = sum(s[2] for s in stats)
    for group in (v2, groups.get("pids")):
        if group is not None and (current := _read(group / "pids.current")) is not None:
            count = int(current)
            break
    rx, tx = _net(state.init_pid)
    reads = writes = 0
    for pid in pids:
        io = _keyed((_read(Path(f"/proc/{pid}/io")) or "").replace(":", ""))
        reads += io.get("read_bytes", 0)
        writes += io.get("write_bytes", 0)
    return Sample(
        when=time.monotonic(),
        cpu=cpu,
        memory=memory,
        limit=cdir.config.memory or _host_memory(),
        net_rx=rx,
        net_tx=tx,
        block_read=reads,
        block_write=writes,
        pids=count,
    )


def _proc_stat(pid: int) -> tuple[float, int, int]:
    """CPU seconds (utime + stime), resident bytes and threads of one process."""
    raw = _read(Path(f"/proc/{pid}/stat"))
    if raw is None:
        return 0.0, 0, 0
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields from 3 on: utime 14, stime 15, num_threads 20, rss 24 (1-based in proc(5))
    return (int(fields[11]) + int(fields[12])) / _TICKS, int(fields[21]) * _PAGE, int(fields[17])


def _net(pid: int) -> tuple[int, int]:
    rx = tx = 0
    for line in (_read(Path(f"/proc/{pid}/net/dev")) or "").splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == "lo":
            continue
        values = rest.split()
        if len(values) >= 9:
            rx += int(values[0])
            tx += int(values[8])
    return rx, tx


def human(n: float, *, binary: bool = False) -> str:
    """docker's sizes: 1.5MiB (binary, memory) or 1.5MB (decimal, I/O)."""
    base = 1024.0 if binary else 1000.0
    units = ("B", "KiB", "MiB", "GiB", "TiB") if binary else ("B", "kB", "MB", "GB", "TB")
    for unit in units[:-1]:
        if abs(n) < base:
            return f"{n:.4g}{unit}"
        n /= base
    return f"{n:.4g}{units[-1]}"


HEADER: Final = (
    "CONTAINER ID",
    "NAME",
    "CPU %",
    "MEM USAGE / LIMIT",
    "MEM %",
    "NET I/O",
    "BLOCK I/O",
    "PIDS",
)


def row(
    cdir: ContainerDir, before: Sample | None, now: Sample | None, *, full: bool
) -> tuple[str, ...]:
    """One line of the table (`--` for a container that is not running, as docker)."""
    cid = cdir.id if full else cdir.id[:12]
    if now is None:
        return (cid, cdir.name, "--", "-- / --", "--", "--", "--", "--")
    cpu = 0.0
    if before is not None and now.when > before.when:
        cpu = max(0.0, (now.cpu - before.cpu) / (now.when - before.when) * 100)
    return (
        cid,
        cdir.name,
        f"{cpu:.2f}%",
        f"{human(now.memory, binary=True)} / {human(now.limit, binary=True)}",
        f"{now.memory / now.limit * 100 if now.limit else 0:.2f}%",
        f"{human(now.net_rx)} / {human(now.net_tx)}",
        f"{human(now.block_read)} / {human(now.block_write)}",
        str(now.pids),
    )


def table(rows: Sequence[tuple[str, ...]]) -> str:
    lines = [HEADER, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "".join(
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def show(
    containers: Sequence[ContainerDir],
    *,
    stream: bool,
    full: bool,
    template: str | None = None,
    given: Sequence[str] | None = None,
) -> None:
    """Print the table once after one interval (`--no-stream`), or every interval, the
    terminal cleared first, until interrupted. template: `--format` (runtime.formats), each
    container's `.Container` the name it was `given` by."""
    from .formats import STATS_HEADERS, stats_fields
    from .gotemplate import render

    before = {c.id: sample(c) for c in containers}
    while True:
        time.sleep(INTERVAL)
        now = {c.id: sample(c) for c in containers}
        rows = [row(c, before[c.id], now[c.id], full=full) for c in containers]
        if template is None:
            text = table(rows)
        else:
            names = given or [""] * len(rows)
            fields = [stats_fields(n, r) for n, r in zip(names, rows, strict=True)]
            text = render(template, fields, STATS_HEADERS)
        if stream and sys.stdout.isatty():
            text = "\033[2J\033[H" + text
        sys.stdout.write(text)
        sys.stdout.flush()
        if not stream:
            return
        before = now
