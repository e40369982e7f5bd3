"""A quick side-by-side measurement: stat walk and sequential read of a big file.

Backends: the plain directory, kernel overlayfs, fuse-overlayfs and strata, each mounted fresh
over the same lower layer in one run (absolute times are noisy on shared machines; ratios taken
together are not). Needs root (kernel overlay, drop_caches). The full harness is `strata bench`
(issue 5); this is the first measurement of the union's speed.

    python -m bench.quick [--data DIR] [--repeat N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

BIG = 1 << 30


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def make_data(data: Path) -> Path:
    """A lower layer with a copy of /usr/share (about 50k entries) and one 1 GiB file."""
    lower = data / "lower"
    if (lower / ".complete").exists():
        return lower
    shutil.rmtree(lower, ignore_errors=True)
    (lower / "usr").mkdir(parents=True)
    subprocess.run(["cp", "-a", "/usr/share", str(lower / "usr/share")], check=True)
    with open(lower / "big", "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(BIG >> 20):
            f.write(block)
    (lower / ".complete").touch()
    return lower


def wait_mount(mnt: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
    for _ in range(200):
        if os.path.ismount(mnt):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon for {mnt} exited with {proc.returncode}")
        time.sleep(0.05)
    raise RuntimeError(f"{mnt} did not get mounted")


def unmount(mnt: Path) -> None:
    for cmd in (["umount", str(mnt)], ["umount", "-l", str(mnt)]):
        if subprocess.run(cmd, stderr=subprocess.DEVNULL).returncode == 0:
            return


@contextlib.contextmanager
def backend(name: str, lower: Path, scratch: Path) -> Iterator[Path]:
    """Mount one backend fresh (empty upper) and yield the directory to measure."""
    if name == "plain":
        yield lower
        return
    shutil.rmtree(scratch, ignore_errors=True)
    upper, work, mnt = scratch / "upper", scratch / "work", scratch / "mnt"
    for d in (upper, work, mnt):
        d.mkdir(parents=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    proc: subprocess.Popen[bytes] | None = None
    if name == "overlay":
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(mnt)], check=True)
    elif name == "fuse-overlayfs":
        subprocess.run(["fuse-overlayfs", "-o", opts, str(mnt)], check=True)
    elif name == "strata":
        cmd = [sys.executable, "-m", "unionfs", "--lower", str(lower), "--upper", str(upper)]
        proc = subprocess.Popen([*cmd, "--work", str(work), "-f", str(mnt)])
    wait_mount(mnt, proc)
    try:
        yield mnt
    finally:
        unmount(mnt)
        if proc is not None:
            proc.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


def stat_walk(root: Path) -> None:
    stack = [os.fsencode(root)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                st = os.lstat(e.path)
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                del st


def seq_read(root: Path) -> None:
    with open(root / "big", "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def timed(fn: Callable[[Path], None], root: Path) -> float:
    t = time.perf_counter()
    fn(root)
    return time.perf_counter() - t


WORKLOADS: dict[str, Callable[[Path], None]] = {"stat walk": stat_walk, "seq read 1 GiB": seq_read}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("/var/tmp/strata-bench"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--backends", default="plain,overlay,fuse-overlayfs,strata")
    args = p.parse_args(argv)
    lower = make_data(args.data)
    backends = args.backends.split(",")
    results: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(args.repeat):
        for wl_name, fn in WORKLOADS.items():
            for b in backends:
                drop_caches()
                with backend(b, lower, args.data / "scratch") as root:
                    results.setdefault((wl_name, "cold", b), []).append(timed(fn, root))
                    results.setdefault((wl_name, "warm", b), []).append(timed(fn, root))
    print(f"{'workload':24} " + " ".join(f"{b:>22}" for b in backends))
    for wl_name in WORKLOADS:
        for temp in ("cold", "warm"):
            base = (
                statistics.median(results[(wl_name, temp, "overlay")])
                if "overlay" in backends
                else None
            )
            cells = []
            for b in backends:
                med = statistics.median(results[(wl_name, temp, b)])
                ratio = f" ({base / med:4.2f}x)" if base else ""
                cells.append(f"{med:9.3f}s{ratio:>11}")
            print(f"{wl_name + ' ' + temp:24} " + " ".join(f"{c:>22}" for c in cells))
    print("(x) = speed factor against kernel overlayfs in the same run: >1 is faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
