"""The workloads of `strata bench`: plain functions of the directory under test.

Each `run` takes the root to measure (a mount point, or the plain merged directory) and the data
set, and does the work once; the harness times it. Names are short, stable ids (they key the
JSON and `--only`). Heavy lifting runs in child processes (find, tar, rm, chroot) so that the
harness's Python is never the bottleneck; the reads use unbuffered os.read/os.pread, which cost
microseconds against the milliseconds a request takes.

How a run is prepared (by the harness, from the flags here):
- cold: the same work once, untimed, then `sync; echo 3 > /proc/sys/vm/drop_caches` (root
  only), then the timed run. Dropping empties this machine's caches but not the host's below
  its virtual disk; without the untimed run, whichever backend comes first after a while reads
  from the real disk and the next ones from the host's cache (the bimodal cold reads), so the
  order of the backends would decide the figures. With it, every backend starts from the same
  state: nothing cached here, everything in the host's cache.
- writes (copy-up, untar, rm -rf): `prewarm` reads the inputs (the big file, the tarball, the
  tree to remove) for the same reason, then caches are dropped, which also matters because on
  this disk mass deletes of earlier runs slow creates down until caches are dropped.
- warm: the same work once, untimed, right before the timed run, on the same mount.
- `undo` puts the plain directory back after a run that changed it (the unions get a fresh
  upper instead); an interrupted plain run invalidates the whole data set (the harness removes
  its stamp), since the plain copy was left changed.
"""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .data import BIG_FILE, BIG_MODE, RM_TREE, UNTAR_DEST, DataSet, copy_tree

READ_CHUNK: Final = 1 << 20
COMMAND_TIMEOUT: Final = 900.0  # seconds; the slowest full-data command takes about 30
PAGE: Final = 4096
WRITE_BLOCK: Final = 8192
NEW_FILE: Final = "bench-written"
# Mounts of one image in the page-cache row: containers sharing a base image.
PAGE_CACHE_MOUNTS: Final = 4

Action = Callable[[Path, DataSet], None]


@dataclass(frozen=True, slots=True)
class Workload:
    """One measured action; see the module docstring for `cold`, `warm`, `writes`."""

    id: str
    title: str
    how: str
    run: Action
    kind: str = "fs"  # "fs": runs on a directory; "container": starts a container
    cold: bool = False
    warm: bool = False
    writes: bool = False
    chroot: bool = False
    needs_python: bool = False
    prewarm: Action | None = None
    undo: Action | None = None
    warmup: Action | None = None  # what "warm" runs untimed, when not `run` itself
    baseline: str = "overlay"
    # What a sample is: "s" (seconds, the time of `run`) or "MiB" (kind "pagecache": how much
    # the page cache grew). Either way lower is better and the factor is baseline / backend.
    unit: str = "s"

    def unavailable(self, data: DataSet, *, root: bool) -> str | None:
        """Why this workload cannot run here at all, or None."""
        if self.cold and not root:
            return "cold unavailable: dropping caches needs root"
        if self.chroot and not root:
            return "chroot needs root"
        if self.kind == "pagecache" and not root:
            return "measuring the page cache needs root (drop_caches)"
        if self.kind == "container" and not root:
            return "strata run here needs root"
        if self.needs_python and not data.has_python:
            return "no python3 in this data set (quick data is busybox only)"
        return None


# ---------------------------------------------------------------------------------------------
# reads


def read_big_file(root: Path, data: DataSet) -> None:
    fd = os.open(root / BIG_FILE, os.O_RDONLY)
    try:
        while os.read(fd, READ_CHUNK):
            pass
    finally:
        os.close(fd)


def random_reads(root: Path, data: DataSet) -> None:
    """`random_reads` 4 KiB preads at page-aligned offsets from a fixed seed."""
    rng = random.Random(42)
    fd = os.open(root / BIG_FILE, os.O_RDONLY)
    try:
        pages = os.fstat(fd).st_size // PAGE
        for _ in range(data.scale.random_reads):
            os.pread(fd, PAGE, rng.randrange(pages) * PAGE)
    finally:
        os.close(fd)


def find_names(root: Path, data: DataSet) -> None:
    """`find` of the rootfs (the bench-* data trees pruned): readdir, hardly any stat."""
    _run([*_find_rootfs(root), "-print"])


def stat_walk(root: Path, data: DataSet) -> None:
    """lstat of every entry of the rootfs, by `find -printf` (size, mode, owner, mtime need it)."""
    _run([*_find_rootfs(root), "-printf", "%i %s %m %U %G %T@\\n"])


def _find_rootfs(root: Path) -> list[str]:
    return ["find", str(root), "-name", "bench-*", "-prune", "-o"]


def tar_usr(root: Path, data: DataSet) -> None:
    """`tar c usr` into a pipe we drain: GNU tar skips reading file data when writing straight
    to /dev/null, which would measure only the stat walk."""
    with subprocess.Popen(
        ["tar", "-C", str(root), "-cf", "-", "usr"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as tar:
        assert tar.stdout is not None
        fd = tar.stdout.fileno()
        while os.read(fd, READ_CHUNK):
            pass
    if tar.returncode != 0:
        raise subprocess.CalledProcessError(tar.returncode, tar.args)


# ---------------------------------------------------------------------------------------------
# writes


def append_big_file(root: Path, data: DataSet) -> None:
    """Open the 1 GiB lower file for append and write 4 KiB: the union copies it up first."""
    fd = os.open(root / BIG_FILE, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"x" * PAGE)
    finally:
        os.close(fd)


def undo_append(root: Path, data: DataSet) -> None:
    os.truncate(root / BIG_FILE, data.scale.big_bytes)


def chmod_big_file(root: Path, data: DataSet) -> None:
    """chmod the 1 GiB lower file: a metadata change; without metacopy it copies the data up."""
    os.chmod(root / BIG_FILE, 0o600)


def undo_chmod(root: Path, data: DataSet) -> None:
    os.chmod(root / BIG_FILE, BIG_MODE)


def untar(root: Path, data: DataSet) -> None:
    dest = root / UNTAR_DEST
    dest.mkdir()
    _run(["tar", "-C", str(dest), "-xf", str(data.tarball)])


def prewarm_big_file(root: Path, data: DataSet) -> None:
    read_big_file(root, data)


def prewarm_tarball(root: Path, data: DataSet) -> None:
    _run(["cat", str(data.tarball)])


def write_new_file(root: Path, data: DataSet) -> None:
    """Write a new file of a quarter of the big file's size in 8 KiB writes (stdio's buffer
    size, what most programs' output comes in), then close it."""
    block = b"w" * WRITE_BLOCK
    fd = os.open(root / NEW_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for _ in range(data.scale.big_bytes // 4 // WRITE_BLOCK):
            os.write(fd, block)
    finally:
        os.close(fd)


def undo_write_new_file(root: Path, data: DataSet) -> None:
    os.unlink(root / NEW_FILE)


def undo_untar(root: Path, data: DataSet) -> None:
    _run(["rm", "-rf", "--", str(root / UNTAR_DEST)])


def remove_tree(root: Path, data: DataSet) -> None:
    """rm -rf of a lower tree: a whiteout (or a deletion, on plain) per entry."""
    _run(["rm", "-rf", "--", str(root / RM_TREE)])


def prewarm_tree(root: Path, data: DataSet) -> None:
    _run(["find", str(data.root / "small" / RM_TREE), "-printf", ""])
    _run(["find", str(root / RM_TREE), "-printf", ""])


def undo_remove_tree(root: Path, data: DataSet) -> None:
    _run(["rm", "-rf", "--", str(root / RM_TREE)])
    copy_tree(data.root / "small" / RM_TREE, root / RM_TREE)


# ---------------------------------------------------------------------------------------------
# processes in a chroot, containers


def python_runs(root: Path, data: DataSet) -> None:
    _chroot_loop(root, "/usr/bin/python3 -c pass", data.scale.python_runs)


def python_once(root: Path, data: DataSet) -> None:
    _chroot_loop(root, "/usr/bin/python3 -c pass", 1)


def true_runs(root: Path, data: DataSet) -> None:
    _chroot_loop(root, "/bin/true", data.scale.true_runs)


def true_once(root: Path, data: DataSet) -> None:
    _chroot_loop(root, "/bin/true", 1)


def _chroot_loop(root: Path, command: str, times: int) -> None:
    """One chroot, then the rootfs's own shell runs `command` `times` times: what is measured is
    the exec of the command from the union, not a chroot per run."""
    script = f"i=0; while [ $i -lt {times} ]; do {command} || exit 1; i=$((i+1)); done"
    _run(["chroot", str(root), "/bin/sh", "-c", script])


def container_start(root: Path, data: DataSet) -> None:
    """Placeholder: the harness runs the backend's own container command instead."""
    raise NotImplementedError("container start-up is run by the harness per backend")


def _run(command: list[str]) -> None:
    """Run a workload's command; a hung mount makes it time out (a failed cell) instead of
    stopping the whole run."""
    subprocess.run(
        command,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        timeout=COMMAND_TIMEOUT,
    )


WORKLOADS: Final[tuple[Workload, ...]] = (
    Workload(
        "seq-read-cold",
        "sequential read of the big file, cold",
        "os.read 1 MiB at a time to EOF after an untimed read and drop_caches",
        read_big_file,
        cold=True,
    ),
    Workload(
        "seq-read-warm",
        "sequential read of the big file, warm",
        "the same, after one untimed read on the same mount",
        read_big_file,
        warm=True,
    ),
    Workload(
        "rand-read-cold",
        "random 4 KiB reads of the big file, cold",
        "os.pread of 4 KiB at random page offsets (fixed seed); untimed run, drop_caches first",
        random_reads,
        cold=True,
    ),
    Workload(
        "find-cold",
        "find of the rootfs, cold",
        "find ROOT -name 'bench-*' -prune -o -print; untimed run, drop_caches first",
        find_names,
        cold=True,
    ),
    Workload(
        "find-warm",
        "find of the rootfs, warm",
        "the same, after one untimed find on the same mount",
        find_names,
        warm=True,
    ),
    Workload(
        "stat-cold",
        "lstat of every rootfs entry, cold",
        "find ROOT ... -printf '%i %s %m %U %G %T@' (lstat each); untimed run, drop_caches first",
        stat_walk,
        cold=True,
    ),
    Workload(
        "stat-warm",
        "lstat of every rootfs entry, warm",
        "the same, after one untimed walk on the same mount",
        stat_walk,
        warm=True,
    ),
    Workload(
        "append-copyup",
        "first append to the big lower file",
        "open O_APPEND + write 4 KiB + close (a full copy-up in a union)",
        append_big_file,
        writes=True,
        prewarm=prewarm_big_file,
        undo=undo_append,
    ),
    Workload(
        "chmod-copyup",
        "chmod of the big lower file",
        "os.chmod 0600 (a metadata copy-up)",
        chmod_big_file,
        writes=True,
        prewarm=prewarm_big_file,
        undo=undo_chmod,
    ),
    Workload(
        "write-small",
        "a new file written in 8 KiB writes",
        "os.write of 8 KiB blocks, a quarter of the big file's size, then close",
        write_new_file,
        writes=True,
        undo=undo_write_new_file,
    ),
    Workload(
        "untar",
        "untar of the small-file tarball",
        "tar -xf into a new directory of the mount (tarball read from cache)",
        untar,
        writes=True,
        prewarm=prewarm_tarball,
        undo=undo_untar,
    ),
    Workload(
        "rm-rf",
        "rm -rf of a lower tree",
        "rm -rf /bench-small/rmtree (a whiteout per entry in a union)",
        remove_tree,
        writes=True,
        prewarm=prewarm_tree,
        undo=undo_remove_tree,
    ),
    Workload(
        "python-chroot",
        "python3 -c pass, repeatedly, chrooted",
        "chroot ROOT /bin/sh -c 'loop: /usr/bin/python3 -c pass' (after one untimed run)",
        python_runs,
        warm=True,
        chroot=True,
        needs_python=True,
        warmup=python_once,
    ),
    Workload(
        "true-chroot",
        "/bin/true, repeatedly, chrooted",
        "chroot ROOT /bin/sh -c 'loop: /bin/true' (after one untimed run)",
        true_runs,
        warm=True,
        chroot=True,
        warmup=true_once,
    ),
    Workload(
        "tar-usr-cold",
        "tar c /usr, cold",
        "tar -C ROOT -cf - usr into a drained pipe; untimed run, drop_caches first",
        tar_usr,
        cold=True,
    ),
    Workload(
        "tar-usr-warm",
        "tar c /usr, warm",
        "the same, after one untimed tar on the same mount",
        tar_usr,
        warm=True,
    ),
    Workload(
        "page-cache",
        f"page cache for {PAGE_CACHE_MOUNTS} containers of one image",
        f"growth of Cached in /proc/meminfo while the big file is read through each of "
        f"{PAGE_CACHE_MOUNTS} mounts over the same layers (fresh uppers), after drop_caches",
        read_big_file,
        kind="pagecache",
        unit="MiB",
    ),
    Workload(
        "container-start",
        "container start-up running /bin/true",
        "strata run --rm --lower BASE /bin/true; podman run --rm IMAGE /bin/true "
        "(fuse-overlayfs) as the reference; one untimed start first",
        container_start,
        kind="container",
        warm=True,
        baseline="podman",
    ),
)
WORKLOAD_IDS: Final = tuple(w.id for w in WORKLOADS)
