"""The data `strata bench` measures on: built once, cached under the data directory.

Layout of `DATA_DIR/full` (or `DATA_DIR/quick`), each a directory of its own:

    base/      the rootfs: Debian bookworm minbase + python3 (quick: busybox and its applets)
    bigfile/   bench-big/big.bin, 1 GiB of real data (quick: 32 MiB), no holes
    small/     bench-small/rmtree (~10k entries, removed by rm-rf) and bench-small/keep (~10k)
    changes/   the "changes" layer on top: edited /etc files and a few new ones
    untar.tar  ~20k small files for the untar workload
    merged/    all layers copied into one plain directory: the plain (no union) backend; a
               copy, not hard links: links would raise every lower file's st_nlink, and a union
               treats a lower file with links as a hard-link group (strata copies its data on
               chmod instead of metadata only), so the unions would measure other semantics
    .complete  the stamp, written last (JSON: what was built); without it the tree is rebuilt

The union backends stack `changes, small, bigfile, base` (top first). Everything is written
before the stamp, so an interrupted build is detected and redone instead of measured.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CACHED_ROOTFS: Final = Path("/var/cache/strata-tests/bookworm-minbase-python3")
STAMP: Final = ".complete"
DATA_VERSION: Final = 3  # bump when the layout changes: older cached data is rebuilt
MIB: Final = 1 << 20

BIG_FILE: Final = "bench-big/big.bin"
RM_TREE: Final = "bench-small/rmtree"
BIG_MODE: Final = 0o644
UNTAR_DEST: Final = "bench-untar"


@dataclass(frozen=True, slots=True)
class Scale:
    """How much data and how many iterations: the full run or --quick."""

    name: str
    big_bytes: int
    rm_tree_dirs: int
    files_per_dir: int
    tar_files: int
    random_reads: int
    true_runs: int
    python_runs: int
    synthetic_base: bool


FULL: Final = Scale(
    name="full",
    big_bytes=1024 * MIB,
    rm_tree_dirs=100,
    files_per_dir=99,
    tar_files=20_000,
    random_reads=2000,
    true_runs=200,
    python_runs=50,
    synthetic_base=False,
)
QUICK: Final = Scale(
    name="quick",
    big_bytes=32 * MIB,
    rm_tree_dirs=20,
    files_per_dir=49,
    tar_files=1000,
    random_reads=200,
    true_runs=20,
    python_runs=0,
    synthetic_base=True,
)


class DataError(Exception):
    """The data cannot be built here (one line for the user)."""


@dataclass(frozen=True, slots=True)
class DataSet:
    """Paths of one built data set, and what it holds (for the JSON report)."""

    root: Path
    scale: Scale
    description: dict[str, object]

    @property
    def lowers(self) -> list[Path]:
        """The union's lower layers, top first."""
        return [
            self.root / "changes",
            self.root / "small",
            self.root / "bigfile",
            self.root / "base",
        ]

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def tarball(self) -> Path:
        return self.root / "untar.tar"

    @property
    def has_python(self) -> bool:
        return self.scale.python_runs > 0 and (self.merged / "usr/bin/python3").exists()


def prepare(data_dir: Path, scale: Scale, *, log: bool = True) -> DataSet:
    """The cached data set for `scale`, built first if its stamp is missing."""
    root = data_dir / scale.name
    stamp = root / STAMP
    if stamp.is_file():
        try:
            description = json.loads(stamp.read_text())
        except (OSError, ValueError):
            description = None
        if isinstance(description, dict) and description.get("version") == DATA_VERSION:
            return DataSet(root, scale, description)
    if log:
        print(f"strata bench: building the {scale.name} data set in {root} (once)", flush=True)
    started = time.monotonic()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    description = _build(root, scale)
    description["build_seconds"] = round(time.monotonic() - started, 1)
    stamp.write_text(json.dumps(description, indent=2) + "\n")
    return DataSet(root, scale, description)


def _build(root: Path, scale: Scale) -> dict[str, object]:
    """Write every layer, the tarball and the merged copy; return the description."""
    if scale.synthetic_base:
        base_source = _make_busybox_base(root / "base")
    else:
        base_source = _make_debian_base(root / "base")
    _make_big_layer(root / "bigfile", scale.big_bytes)
    _make_small_layer(root / "small", scale)
    _make_changes_layer(root / "changes")
    _make_tarball(root / "untar.tar", scale.tar_files)
    merged = root / "merged"
    merged.mkdir()
    for layer in ("base", "bigfile", "small", "changes"):  # bottom first: upper files win
        copy_tree(root / layer, merged)
    return {
        "version": DATA_VERSION,
        "scale": scale.name,
        "base": base_source,
        "base_entries": _count_entries(root / "base"),
        "big_file": f"/{BIG_FILE}, {scale.big_bytes // MIB} MiB of a repeated 1 MiB random block",
        "small_files": f"/{RM_TREE}: {_count_entries(root / 'small' / RM_TREE)} entries, "
        f"and as many in /bench-small/keep",
        "tarball": f"{scale.tar_files} files of 0-4 KiB in 100 directories",
        "layers_top_first": ["changes", "small", "bigfile", "base"],
        "plain": "merged/: a copy of the layers merged into one directory",
    }


def copy_tree(source: Path, dest: Path) -> None:
    """Copy the tree `source` into `dest` (directories made, existing names replaced)."""
    dest.mkdir(parents=True, exist_ok=True)
    command = ["cp", "-a", "--remove-destination", "--", f"{source}/.", str(dest)]
    subprocess.run(command, check=True)


def _make_debian_base(dest: Path) -> str:
    """A Debian bookworm minbase rootfs with python3: the tests' cached one, else mmdebstrap."""
    if (CACHED_ROOTFS / "usr/bin/python3").exists():
        subprocess.run(["cp", "-a", "--", str(CACHED_ROOTFS), str(dest)], check=True)
        return f"copy of {CACHED_ROOTFS} (mmdebstrap --variant=minbase --include=python3 bookworm)"
    if shutil.which("mmdebstrap") is None:
        raise DataError(f"no {CACHED_ROOTFS} and no mmdebstrap: apt-get install mmdebstrap")
    if os.geteuid() != 0:
        raise DataError("building the Debian base with mmdebstrap needs root (or use --quick)")
    command = ["mmdebstrap", "--variant=minbase", "--include=python3", "bookworm", str(dest)]
    subprocess.run(command, check=True)
    return " ".join(command[:-1])


def _make_busybox_base(dest: Path) -> str:
    """A tiny rootfs: busybox-static with one symlink per applet and a few thousand files."""
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        raise DataError("the quick data needs /bin/busybox: apt-get install busybox-static")
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(busybox, dest / "bin/busybox")
    applets = subprocess.run(
        [str(busybox), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox" and "/" not in applet:
            os.symlink("busybox", dest / "bin" / applet)
    (dest / "etc").mkdir()
    (dest / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (dest / "etc/group").write_text("root:x:0:\n")
    (dest / "etc/hostname").write_text("base\n")
    for sub in ("tmp", "root", "proc", "dev", "sys"):
        (dest / sub).mkdir()
    _write_small_files(dest / "usr/share/bench", dirs=30, per_dir=60, seed=1)
    return f"busybox-static ({len(applets)} applets) and 1800 small files in /usr/share/bench"


def _make_big_layer(layer: Path, size: int) -> None:
    """One big file of real blocks (a repeated 1 MiB random block, not holes)."""
    path = layer / BIG_FILE
    path.parent.mkdir(parents=True)
    block = random.Random(5).randbytes(MIB)
    with path.open("wb") as f:
        for _ in range(size // MIB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
    path.chmod(BIG_MODE)


def _make_small_layer(layer: Path, scale: Scale) -> None:
    """Two trees of ~`rm_tree_dirs * (files_per_dir + 1)` entries each: rmtree and keep."""
    dirs, per_dir = scale.rm_tree_dirs, scale.files_per_dir
    _write_small_files(layer / RM_TREE, dirs=dirs, per_dir=per_dir, seed=2)
    _write_small_files(layer / "bench-small/keep", dirs=dirs, per_dir=per_dir, seed=3)


def _make_changes_layer(layer: Path) -> None:
    """What a container's earlier changes look like: edited /etc files, a small app in /opt."""
    (layer / "etc").mkdir(parents=True)
    (layer / "etc/hostname").write_text("changed\n")
    (layer / "etc/bench-motd").write_text("this file is only in the changes layer\n")
    _write_small_files(layer / "opt/app", dirs=5, per_dir=20, seed=4)


def _write_small_files(top: Path, *, dirs: int, per_dir: int, seed: int) -> None:
    rng = random.Random(seed)
    for d in range(dirs):
        directory = top / f"d{d:03d}"
        directory.mkdir(parents=True)
        for i in range(per_dir):
            (directory / f"f{i:04d}").write_bytes(rng.randbytes(rng.randrange(4096)))


def _make_tarball(path: Path, files: int) -> None:
    """A tar of `files` small files in 100 directories, written from memory (no temp tree)."""
    rng = random.Random(6)
    per_dir = max(1, files // 100)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for n in range(files):
            if n % per_dir == 0:
                info = tarfile.TarInfo(f"t{n // per_dir:03d}")
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            data = rng.randbytes(rng.randrange(4096))
            info = tarfile.TarInfo(f"t{n // per_dir:03d}/f{n:05d}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def _count_entries(top: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(top))
