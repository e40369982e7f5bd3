"""The harness of `strata bench`: run every workload on every backend N times, summarize, report.

Order: repeat → workload → backend, so each repeat measures all backends of a workload close
together in time, and the machine's drifts (other people's jobs, the host's cache) hit them alike.
Every run mounts its backend fresh (a new empty upper), so no run inherits another's copy-ups or
cached dentries. One failing (workload, backend) pair is recorded as failed with its reason and
not retried; the rest of the run goes on. Ctrl-C unwinds through the mounts' `finally`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final, TextIO

from unionfs.mountinfo import read_mountinfo

from .backends import (
    Backend,
    BackendError,
    Mounted,
    cpu_seconds,
    interrupts_deferred,
    mounted,
    remove_tree,
    strata_command,
)
from .data import STAMP, DataSet
from .stats import (
    Cell,
    Summary,
    format_seconds,
    format_table,
    format_value,
    speed_factor,
    summarize,
)
from .workloads import PAGE_CACHE_MOUNTS, Workload

REPO: Final = Path(__file__).resolve().parent.parent
PODMAN_RUN_FLAGS: Final = (
    "--network=host",
    # podman's defaults ask for more open files and processes than this machine's hard limits
    "--ulimit=nofile=1024:1024",
    "--ulimit=nproc=1024:1024",
)


@dataclass(slots=True)
class Result:
    """Everything measured for one (workload, backend) pair.

    status: "ok", "skipped" (cannot run here), "n/a" (meaningless for this backend), "failed".
    """

    workload: str
    backend: str
    status: str = "ok"
    reason: str = ""
    samples: list[float] = field(default_factory=list)
    daemon_cpu: list[float] = field(default_factory=list)

    def summary(self) -> Summary | None:
        return summarize(self.samples) if self.status == "ok" and self.samples else None


@dataclass(frozen=True, slots=True)
class Plan:
    """What to run: the chosen workloads and backends, the data, the repeats."""

    workloads: Sequence[Workload]
    backends: Sequence[Backend]
    data: DataSet
    repeat: int
    scratch: Path
    state: Path


def is_root() -> bool:
    return os.geteuid() == 0


def run_plan(plan: Plan, *, progress: TextIO = sys.stderr) -> tuple[list[Result], bool]:
    """Measure every runnable pair `plan.repeat` times: (the results in plan order, whether
    Ctrl-C cut the run short). An interrupted run keeps what it measured, so a long run that
    has to be stopped still reports; pairs without a sample are marked skipped ("interrupted").
    """
    results: dict[tuple[str, str], Result] = {}
    for workload in plan.workloads:
        for backend in plan.backends:
            result = Result(workload.id, backend.name)
            reason = _why_not(workload, backend, plan.data)
            if reason is not None:
                result.status, result.reason = reason
            results[(workload.id, backend.name)] = result
    try:
        for index in range(plan.repeat):
            # each repeat starts with another backend, so no backend always runs first
            shift = index % max(1, len(plan.backends))
            rotated = [*plan.backends[shift:], *plan.backends[:shift]]
            for workload in plan.workloads:
                for backend in rotated:
                    result = results[(workload.id, backend.name)]
                    if result.status == "ok":
                        _sample(result, workload, backend, plan, index, progress)
    except KeyboardInterrupt:
        for result in results.values():
            if result.status == "ok" and not result.samples:
                result.status, result.reason = "skipped", "interrupted (Ctrl-C)"
        return list(results.values()), True
    return list(results.values()), False


def _sample(
    result: Result, workload: Workload, backend: Backend, plan: Plan, index: int, progress: TextIO
) -> None:
    """Add one sample to `result`, or mark it failed with the reason."""
    try:
        seconds, cpu = _measure(workload, backend, plan)
    except (BackendError, subprocess.SubprocessError, OSError) as exc:
        result.status, result.reason = "failed", _one_line(exc)
        print(f"  {workload.id} on {backend.name}: failed: {result.reason}", file=progress)
        return
    result.samples.append(seconds)
    if cpu is not None:
        result.daemon_cpu.append(cpu)
    cpu_text = f", daemon cpu {format_seconds(cpu)}" if cpu is not None else ""
    print(
        f"  [{index + 1}/{plan.repeat}] {workload.id:16} {backend.name:15} "
        f"{format_value(seconds, workload.unit)}{cpu_text}",
        file=progress,
        flush=True,
    )


def _why_not(workload: Workload, backend: Backend, data: DataSet) -> tuple[str, str] | None:
    """(status, reason) when the pair is not measured, else None."""
    reason = backend.unavailable()
    if reason is not None:
        return "skipped", reason
    reason = workload.unavailable(data, root=is_root())
    if reason is not None:
        return "skipped", reason
    if workload.kind == "container" and backend.name not in ("strata", "podman"):
        return "n/a", "no container runtime runs on this backend"
    if workload.kind == "pagecache" and backend.kind == "plain":
        return "n/a", "no mounts to share a page cache"
    if workload.kind != "container" and backend.kind == "container":
        return "n/a", "reference for container start-up only"
    return None


def _measure(workload: Workload, backend: Backend, plan: Plan) -> tuple[float, float | None]:
    """One timed run: (seconds, daemon CPU seconds or None)."""
    if workload.kind == "container":
        # Ctrl-C waits for a container start to finish: a runtime killed half-way leaves its
        # mounts behind (the runtimes run in sessions of their own, out of the terminal's reach)
        with interrupts_deferred():
            command = container_command(backend, plan)
            _run_checked(command)  # untimed: the first start pays for page cache and image checks
            started = time.perf_counter()
            _run_checked(command)
            return time.perf_counter() - started, None
    scratch = plan.scratch / f"{backend.name}-{os.getpid()}-{time.monotonic_ns()}"
    if workload.kind == "pagecache":
        return _page_cache_growth(workload, backend, plan, scratch), None
    plain_undo = backend.kind == "plain" and workload.undo is not None
    stamp = plan.data.root / STAMP
    if plain_undo:  # an interrupted run leaves the plain copy changed: make the data rebuild
        stamp.rename(stamp.with_suffix(".dirty"))
    with mounted(backend, plan.data, scratch) as mount:
        try:
            return _timed_run(workload, mount, plan.data)
        finally:
            if plain_undo and workload.undo is not None:
                with interrupts_deferred():
                    workload.undo(mount.root, plan.data)
                    stamp.with_suffix(".dirty").rename(stamp)


def _timed_run(workload: Workload, mount: Mounted, data: DataSet) -> tuple[float, float | None]:
    """Prepare as workloads.py's docstring says, then time one run; (seconds, daemon CPU)."""
    if workload.cold or workload.writes:
        # the host's cache warm, ours empty: the same start for every backend
        if workload.prewarm is not None:
            workload.prewarm(mount.root, data)
        elif not workload.writes:  # a writing workload cannot be its own warm-up
            (workload.warmup or workload.run)(mount.root, data)
        drop_caches()
    elif workload.prewarm is not None:
        workload.prewarm(mount.root, data)
    if workload.warm:
        (workload.warmup or workload.run)(mount.root, data)
    cpu_before = cpu_seconds(mount.daemon_pid) if mount.daemon_pid is not None else None
    started = time.perf_counter()
    workload.run(mount.root, data)
    elapsed = time.perf_counter() - started
    cpu_after = cpu_seconds(mount.daemon_pid) if mount.daemon_pid is not None else None
    if cpu_before is None or cpu_after is None:
        return elapsed, None
    return elapsed, cpu_after - cpu_before


def _page_cache_growth(workload: Workload, backend: Backend, plan: Plan, scratch: Path) -> float:
    """MiB the page cache grows by while `workload.run` reads through each of
    PAGE_CACHE_MOUNTS mounts of `backend` over the same layers (containers of one image): the
    layer file's size once where mounts share the lower file's cache (kernel overlayfs, FUSE
    passthrough), once more per mount where each FUSE mount caches its own copy."""
    with contextlib.ExitStack() as stack:
        roots = [
            stack.enter_context(mounted(backend, plan.data, scratch / str(n))).root
            for n in range(PAGE_CACHE_MOUNTS)
        ]
        drop_caches()
        before = cached_bytes()
        for root in roots:
            workload.run(root, plan.data)
        return (cached_bytes() - before) / (1 << 20)


def cached_bytes() -> int:
    """Cached in /proc/meminfo (page cache, shmem included), in bytes."""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    raise OSError("no Cached line in /proc/meminfo")


def drop_caches() -> None:
    """`sync; echo 3 > /proc/sys/vm/drop_caches`, as root; a no-op otherwise (said in the report)."""
    if not is_root():
        return
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def container_command(backend: Backend, plan: Plan) -> list[str]:
    """The command that starts a container running /bin/true on the base layer."""
    base = plan.data.root / "base"
    if backend.name == "strata":
        state = plan.state / "strata"
        state.mkdir(parents=True, exist_ok=True)
        return [
            *strata_command(),
            "run",
            "--root",
            str(state),
            "--rm",
            "--network",
            "host",  # as podman's row (PODMAN_RUN_FLAGS); `strata bench network` compares networks
            "--lower",
            str(base),
            "/bin/true",
        ]
    if backend.name == "podman":
        podman = podman_command(plan)
        image = f"strata-bench-{plan.data.scale.name}"
        exists = subprocess.run([*podman, "image", "exists", image], check=False)
        if exists.returncode != 0:
            with subprocess.Popen(
                ["tar", "-C", str(base), "-cf", "-", "."],
                stdout=subprocess.PIPE,
                start_new_session=True,
            ) as tar:
                _run_checked([*podman, "import", "-", image], stdin=tar.stdout)
        return [*podman, "run", "--rm", *PODMAN_RUN_FLAGS, image, "/bin/true"]
    raise BackendError(f"{backend.name} does not start containers")


def podman_command(plan: Plan) -> list[str]:
    """podman with a private store under the data directory (the machine's own is untouched)
    and fuse-overlayfs as its mount program."""
    store = plan.state / "podman"
    return private_podman(store / "root", store / "run", "/usr/bin/fuse-overlayfs")


def private_podman(root: Path, runroot: Path, mount_program: str | Path) -> list[str]:
    """podman with its own store (`root`, `runroot`: podman wants the latter <= 50 characters)
    over `mount_program`, and runc with cgroupfs (crun refuses this machine's hybrid cgroups).
    tests/fuse/test_podman.py runs fuse-strata through it."""
    return [
        "podman",
        "--root",
        str(root),
        "--runroot",
        str(runroot),
        "--storage-driver",
        "overlay",
        "--storage-opt",
        f"overlay.mount_program={mount_program}",
        "--runtime",
        "runc",
        "--cgroup-manager",
        "cgroupfs",
    ]


def empty_private_podman(podman: Sequence[str], *dirs: Path) -> list[str]:
    """Remove every container and image of a private podman store (`podman`, as
    `private_podman` makes it); the mount points still under `dirs` after that (the store and
    its runroot), which must be none. bench/podman.py and tests/fuse/test_podman.py end with it."""
    subprocess.run([*podman, "rm", "--all", "--force"], capture_output=True, check=False)
    subprocess.run([*podman, "rmi", "--all", "--force"], capture_output=True, check=False)
    return [
        str(m.mountpoint) for m in read_mountinfo() if any(d in m.mountpoint.parents for d in dirs)
    ]


def _run_checked(command: list[str], *, stdin: int | IO[bytes] | None = subprocess.DEVNULL) -> None:
    """Run a command; on failure raise BackendError with the last line it printed."""
    result = subprocess.run(
        command,
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
        start_new_session=True,
    )
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit status {result.returncode}"
        raise BackendError(f"{Path(command[0]).name} {command[1]}...: {detail}")


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        command = exc.cmd if isinstance(exc.cmd, list) else [str(exc.cmd)]
        return f"{' '.join(str(c) for c in command[:3])}... exited with {exc.returncode}"
    if isinstance(exc, subprocess.TimeoutExpired):
        command = exc.cmd if isinstance(exc.cmd, list) else [str(exc.cmd)]
        return f"{' '.join(str(c) for c in command[:3])}... timed out after {exc.timeout:g}s"
    return " ".join(str(exc).split()) or type(exc).__name__


def cleanup_scratch(plan: Plan) -> None:
    """Remove what is left in scratch/ (nothing, unless a run was killed hard)."""
    remove_tree(plan.scratch)


# ---------------------------------------------------------------------------------------------
# report


def ratios(
    results: Sequence[Result], workloads: Sequence[Workload]
) -> dict[tuple[str, str], float | None]:
    """Speed factor of each measured pair against its workload's baseline (same run)."""
    baselines = {w.id: w.baseline for w in workloads}
    medians = {(r.workload, r.backend): s.median for r in results if (s := r.summary()) is not None}
    out: dict[tuple[str, str], float | None] = {}
    for (workload, backend), median in medians.items():
        base = medians.get((workload, baselines.get(workload, "overlay")))
        out[(workload, backend)] = None if base is None else speed_factor(base, median)
    return out


def ratio_ranges(
    results: Sequence[Result], workloads: Sequence[Workload]
) -> dict[tuple[str, str], tuple[float, float]]:
    """The speed factor over the backend's spread (baseline median / high .. / low): the
    whiskers of the chart."""
    baselines = {w.id: w.baseline for w in workloads}
    summaries = {(r.workload, r.backend): s for r in results if (s := r.summary()) is not None}
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for (workload, backend), summary in summaries.items():
        base = summaries.get((workload, baselines.get(workload, "overlay")))
        if base is None or summary.low <= 0 or base.median <= 0:
            continue
        out[(workload, backend)] = (base.median / summary.high, base.median / summary.low)
    return out


def absolute_notes(results: Sequence[Result], workloads: Sequence[Workload]) -> dict[str, str]:
    """For rows not compared with overlay (container start-up): each backend's median time,
    since there the absolute figure is what people compare ("podman 130 ms")."""
    notes: dict[str, str] = {}
    for workload in workloads:
        if workload.baseline == "overlay":
            continue
        parts = [
            f"{r.backend} {format_seconds(s.median)}"
            for r in results
            if r.workload == workload.id and (s := r.summary()) is not None
        ]
        if parts:
            notes[workload.id] = ", ".join(parts)
    return notes


def table(results: Sequence[Result], workloads: Sequence[Workload], backends: Sequence[str]) -> str:
    """The terminal table, the daemon CPU table and the reasons for empty cells."""
    factor = ratios(results, workloads)
    units = {w.id: w.unit for w in workloads}
    cells: dict[tuple[str, str], Cell] = {}
    reasons: dict[str, str] = {}
    for r in results:
        summary = r.summary()
        if summary is not None:
            cells[(r.workload, r.backend)] = Cell(
                summary, factor.get((r.workload, r.backend)), unit=units[r.workload]
            )
        else:
            cells[(r.workload, r.backend)] = Cell(note=r.status)
            if r.status in ("skipped", "failed"):
                reasons.setdefault(f"{r.status}: {r.reason}", f"{r.backend} / {r.workload}")
    ids = [w.id for w in workloads]
    lines = [
        format_table(ids, backends, cells, baselines={w.id: w.baseline for w in workloads}),
        "cell: median, ±half the spread in % of it (IQR for n >= 4, else min-max), speed factor",
        "= overlay time / backend time in this run (> 1 is faster than kernel overlayfs)",
    ]
    fuse = [b for b in backends if any(r.backend == b and r.daemon_cpu for r in results)]
    if fuse:
        cpu_cells = {
            (r.workload, r.backend): Cell(summarize(r.daemon_cpu))
            for r in results
            if r.daemon_cpu and r.status == "ok"
        }
        lines += [
            "",
            "FUSE daemon CPU (utime + stime, 10 ms ticks) per run: median ±half-spread %:",
        ]
        lines.append(format_table(ids, fuse, cpu_cells))
    if reasons:
        lines.append("")
        lines += [f"{reason} (e.g. {example})" for reason, example in reasons.items()]
    return "\n".join(lines)


def report(
    results: Sequence[Result],
    plan: Plan,
    *,
    argv: Sequence[str],
    elapsed: float,
    interrupted: bool = False,
) -> dict[str, object]:
    """Everything as JSON-ready data: raw samples, summaries, ratios, daemon CPU, the machine."""
    factor = ratios(results, plan.workloads)
    baselines = {w.id: w.baseline for w in plan.workloads}
    rows: list[dict[str, object]] = []
    for r in results:
        summary = r.summary()
        cpu = summarize(r.daemon_cpu) if r.daemon_cpu else None
        rows.append(
            {
                "workload": r.workload,
                "backend": r.backend,
                "status": r.status,
                "reason": r.reason,
                "samples": r.samples,
                "median": None if summary is None else summary.median,
                "spread": None
                if summary is None
                else {"kind": summary.spread_kind, "low": summary.low, "high": summary.high},
                "baseline": baselines[r.workload],
                "ratio": factor.get((r.workload, r.backend)),
                "daemon_cpu_samples": r.daemon_cpu,
                "daemon_cpu_median": None if cpu is None else cpu.median,
            }
        )
    return {
        "meta": machine_description()
        | {
            "argv": list(argv),
            "elapsed_seconds": round(elapsed, 1),
            "repeat": plan.repeat,
            "interrupted": interrupted,
            "cold_caches_dropped": is_root(),
        },
        "data": plan.data.description | {"path": str(plan.data.root)},
        "backends": [
            {"name": b.name, "description": b.description, "skipped": b.unavailable()}
            for b in plan.backends
        ],
        "workloads": [
            {"id": w.id, "title": w.title, "how": w.how, "baseline": w.baseline, "unit": w.unit}
            for w in plan.workloads
        ],
        "results": rows,
    }


def machine_description() -> dict[str, object]:
    """Kernel, Python, git revision, date, cores, memory and the peers' versions."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "kernel": f"{platform.system()} {platform.release()} {platform.version()}",
        "python": sys.version.split()[0],
        "git_sha": _output(["git", "-C", str(REPO), "rev-parse", "HEAD"]),
        "git_dirty": bool(
            _output(["git", "-C", str(REPO), "status", "--porcelain", "--", "unionfs"])
        ),
        "cpu_count": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "machine": platform.machine(),
        "fuse_overlayfs": _version_line(["fuse-overlayfs", "--version"], "fuse-overlayfs"),
        "unionfs_fuse": _version_line(["unionfs", "--version"], "unionfs-fuse"),
        "podman": _output(["podman", "--version"]),
    }


def _output(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (result.stdout or result.stderr).strip()


def _version_line(command: list[str], name: str) -> str:
    """The line naming `name` in a `--version` output that also lists fusermount and libfuse."""
    lines = _output(command).splitlines()
    return next((line for line in lines if line.startswith(name)), lines[0] if lines else "")


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def write_json(data: dict[str, object], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
