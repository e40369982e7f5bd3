"""`strata bench memory`: the FUSE daemon's resident memory over a big lower layer (issue 16).

A union daemon keeps a node for every object the kernel holds, and the kernel lets go of them
(FORGET) when it evicts its inodes: under memory pressure, or at `echo 3 > drop_caches`. What the
daemon keeps beyond that is memory no container gets back. This bench builds one lower layer of
200,000 small files spread over directories like a rootfs (once, under the data directory),
mounts each union over it the way `strata bench` does, walks the whole tree (`lstat` of every
entry) `passes` times with the caches dropped between walks, and reads the daemon's VmRSS from
/proc at the start, after each walk and after a final drop of the caches (once the FORGETs have
been served: RSS is read until it stops moving). Bytes per cached node is the largest growth
over the start divided by the entries walked.

Root only: dropping the caches needs it.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

from .backends import (
    BackendError,
    Mounted,
    backend_named,
    cpu_seconds,
    mounted_layers,
    remove_tree,
)

# A rootfs-like spread: 20 top directories x 25 x 20 directories of 20 files = 200,000 files.
FULL_SHAPE: Final = (20, 25, 20, 20)
QUICK_SHAPE: Final = (4, 10, 10, 50)  # 20,000 files
DEFAULT_PASSES: Final = 5
SETTLE_TIMEOUT: Final = 60.0  # seconds for the daemon to serve the FORGETs of a cache drop
SETTLE_QUIET: Final = 1.0  # RSS unchanged this long: the FORGETs are done
STAMP: Final = ".complete"
BACKENDS: Final = ("strata", "fuse-overlayfs")


def shape_files(shape: tuple[int, int, int, int]) -> int:
    return shape[0] * shape[1] * shape[2] * shape[3]


def build_lower(data_dir: Path, shape: tuple[int, int, int, int]) -> Path:
    """The lower layer for `shape` (built once, reused while its stamp says it is complete)."""
    root = data_dir / "memory" / "x".join(str(n) for n in shape)
    lower = root / "lower"
    if (root / STAMP).is_file():
        return lower
    if root.exists():
        remove_tree(root)  # an interrupted build: start afresh
    top, mid, low, files = shape
    for a in range(top):
        for b in range(mid):
            for c in range(low):
                directory = lower / f"usr{a:02d}" / f"share{b:02d}" / f"pkg{c:02d}"
                directory.mkdir(parents=True)
                for f in range(files):
                    # small files of a few sizes, as a rootfs holds (most are under 4 KiB)
                    size = (f * 37) % 600
                    (directory / f"file{f:03d}.py").write_bytes(b"x" * size)
    (root / STAMP).write_text(json.dumps({"shape": shape, "files": shape_files(shape)}) + "\n")
    return lower


def rss_kib(pid: int) -> int:
    """VmRSS of `pid` in KiB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def drop_caches() -> None:
    """Make the kernel evict its unused dentries and inodes (FUSE sends FORGET for each)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def settled_rss(pid: int) -> int:
    """RSS once the daemon is done with what it was sent: neither its RSS nor its CPU time
    moved for SETTLE_QUIET seconds (freeing nodes does not lower RSS until the trim at the end
    of a batch, so RSS alone would look settled while FORGETs are still being served)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last, since = (rss_kib(pid), cpu_seconds(pid)), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = (rss_kib(pid), cpu_seconds(pid))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE_QUIET:
            break
    return last[0]


def walk(root: Path) -> int:
    """lstat every entry under `root` (as `find -ls` or a layer diff does); entries seen."""
    seen = 0
    stack = [os.fspath(root)]
    while stack:
        path = stack.pop()
        with os.scandir(path) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                seen += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return seen


@dataclass(slots=True)
class Run:
    """The RSS figures of one backend, in KiB."""

    backend: str
    objects: int = 0
    start: int = 0
    walks: list[int] = field(default_factory=list)
    walk_seconds: list[float] = field(default_factory=list)
    after_drop: int = 0
    error: str | None = None

    def bytes_per_node(self) -> float:
        """Growth over the start per entry walked, at the walk that grew most: a cache drop by
        something else on the machine during a walk makes the kernel forget part of the tree
        (and that walk's figure low)."""
        if not self.walks or not self.objects:
            return 0.0
        return (max(self.walks) - self.start) * 1024 / self.objects


def measure(backend_name: str, lower: Path, scratch: Path, passes: int) -> Run:
    run = Run(backend_name)
    try:
        with mounted_layers(backend_named(backend_name), [lower], scratch) as mount:
            _measure_mounted(run, mount, passes)
    except (BackendError, OSError) as exc:
        run.error = str(exc)
    return run


def _measure_mounted(run: Run, mount: Mounted, passes: int) -> None:
    pid = mount.daemon_pid
    if pid is None:
        raise BackendError("no daemon process found")
    drop_caches()
    run.start = settled_rss(pid)
    for n in range(passes):
        if n:
            drop_caches()
        started = time.monotonic()
        run.objects = walk(mount.root)
        run.walk_seconds.append(time.monotonic() - started)
        run.walks.append(rss_kib(pid))
        print(
            f"{run.backend}: walk {n + 1}/{passes}: {run.objects} entries,"
            f" {run.walk_seconds[-1]:.1f}s, RSS {run.walks[-1] / 1024:.1f} MiB",
            file=sys.stderr,
        )
    drop_caches()
    run.after_drop = settled_rss(pid)


def table(runs: Sequence[Run], passes: int) -> str:
    mib = 1024
    lines = [
        f"daemon RSS (MiB): start, after each of {passes} walks (caches dropped between),"
        " after a final drop_caches; B/node = largest growth / entries; walk s = median",
        f"{'':16}{'start':>8}"
        + "".join(f"{'walk ' + str(n + 1):>9}" for n in range(passes))
        + f"{'dropped':>9}{'B/node':>8}{'walk s':>8}",
    ]
    for run in runs:
        if run.error is not None:
            lines.append(f"{run.backend:16}failed: {run.error}")
            continue
        walk_s = sorted(run.walk_seconds)[len(run.walk_seconds) // 2] if run.walk_seconds else 0
        lines.append(
            f"{run.backend:16}{run.start / mib:>8.1f}"
            + "".join(f"{w / mib:>9.1f}" for w in run.walks)
            + f"{run.after_drop / mib:>9.1f}{run.bytes_per_node():>8.0f}{walk_s:>8.1f}"
        )
    return "\n".join(lines)


def run_memory_bench(
    backends: Sequence[str],
    *,
    quick: bool,
    passes: int,
    data_dir: Path,
    json_path: Path | None,
    argv: Sequence[str],
) -> int:
    """Build (or reuse) the lower layer, measure each backend, print the table."""
    if os.geteuid() != 0:
        raise UsageError("strata bench memory needs root (dropping the caches does)", 1)
    for name in backends:
        if name not in BACKENDS:
            raise UsageError(
                f"bench memory: unknown backend {name!r} (known: {', '.join(BACKENDS)})"
            )
    shape = QUICK_SHAPE if quick else FULL_SHAPE
    print(f"lower layer: {shape_files(shape)} files ...", file=sys.stderr)
    lower = build_lower(data_dir, shape)
    runs: list[Run] = []
    for name in backends:
        unavailable = backend_named(name).unavailable()
        if unavailable is not None:
            runs.append(Run(name, error=f"skipped: {unavailable}"))
            continue
        runs.append(measure(name, lower, data_dir / "scratch" / f"memory-{os.getpid()}", passes))
    print(table(runs, passes))
    if json_path is not None:
        from .harness import machine_description

        document = {
            "meta": machine_description() | {"argv": list(argv), "files": shape_files(shape)},
            "runs": [
                {
                    "backend": r.backend,
                    "objects": r.objects,
                    "rss_kib_start": r.start,
                    "rss_kib_walks": r.walks,
                    "walk_seconds": r.walk_seconds,
                    "rss_kib_after_drop": r.after_drop,
                    "bytes_per_node": r.bytes_per_node(),
                    "error": r.error,
                }
                for r in runs
            ],
        }
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"JSON: {json_path}")
    return 1 if any(r.error is not None and not r.error.startswith("skipped") for r in runs) else 0
