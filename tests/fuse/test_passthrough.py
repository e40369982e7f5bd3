"""FUSE passthrough (`-o passthrough=auto|on|off`): opens of regular files handed to the kernel
with the layer file as their backing file.

What it is for: every mount over a layer shares the layer file's page cache, as kernel overlayfs
does, instead of each FUSE mount caching its own copy. What it must keep: the union's data
(copy-up at an open for writing, reads and writes and mmap through the backing file), and a clear
refusal of `passthrough=on` where the kernel would not allow it.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import pytest

from bench.harness import cached_bytes, drop_caches
from tests.helpers.mounts import StrataMountFactory, UnionDirs, skip_unless_root
from unionfs.mount import passthrough_unavailable
from unionfs.ops import FEATURES, PASSTHROUGH_MIN_SIZE

pytestmark = pytest.mark.fuse

MIB = 1 << 20
BIG = 96 * MIB
MOUNTS = 4


def _skip_unless_passthrough() -> None:
    skip_unless_root()
    why = passthrough_unavailable()
    if why is not None:
        pytest.skip(why)


def _read_all(path: Path) -> int:
    total = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, MIB):
            total += len(chunk)
    finally:
        os.close(fd)
    return total


@pytest.fixture
def big_lower(tmp_path: Path) -> Path:
    lower = tmp_path / "image"
    lower.mkdir()
    block = os.urandom(MIB)
    with open(lower / "big", "wb") as f:
        for _ in range(BIG // MIB):
            f.write(block)
    return lower


def _growth_through_mounts(
    union_mount: StrataMountFactory, tmp_path: Path, lower: Path, options: str
) -> int:
    """Bytes the page cache grows by while the big file is read through MOUNTS unions over
    the same lower layer, each with its own upper (containers of one image)."""
    with ExitStack() as stack:
        mounts = []
        for n in range(MOUNTS):
            upper, work = tmp_path / f"{options}-u{n}", tmp_path / f"{options}-w{n}"
            upper.mkdir()
            work.mkdir()
            mounts.append(
                stack.enter_context(
                    union_mount(lowers=[lower], upper=upper, work=work, extra_args=["-o", options])
                )
            )
        drop_caches()
        before = cached_bytes()
        for m in mounts:
            assert _read_all(m.mnt / "big") == BIG
        return cached_bytes() - before


def test_mounts_of_one_layer_share_its_page_cache(
    union_mount: StrataMountFactory, tmp_path: Path, big_lower: Path
) -> None:
    """With passthrough the file is cached once (the layer file's pages); without it, once per
    mount on top of that: the differential shows the measure sees what it claims."""
    _skip_unless_passthrough()
    shared = _growth_through_mounts(union_mount, tmp_path, big_lower, "passthrough=on")
    separate = _growth_through_mounts(union_mount, tmp_path, big_lower, "passthrough=off")
    # Generous bounds: other processes on the machine move Cached by a few MiB too.
    assert shared <= 1.5 * BIG, (
        f"page cache grew {shared / MIB:.0f} MiB for a {BIG // MIB} MiB file"
    )
    assert separate >= 3 * BIG, f"without passthrough it grew only {separate / MIB:.0f} MiB"


# A file big enough to be passed through (smaller ones get cached opens: PASSTHROUGH_MIN_SIZE).
LOWER = b"lower data\n" + b"-" * PASSTHROUGH_MIN_SIZE


def _passthrough_dirs(tmp_path: Path, data: bytes = LOWER) -> UnionDirs:
    dirs = UnionDirs.create(tmp_path, nlowers=1)
    (dirs.lowers[0] / "f").write_bytes(data)
    return dirs


def test_a_writer_of_a_lower_file_open_elsewhere_gets_etxtbsy(
    union_mount: StrataMountFactory, tmp_path: Path
) -> None:
    """While passthrough opens of an inode exist, the kernel wants every open of it on the same
    backing file; a copy-up would need another. So an open for writing of a lower file that is
    open elsewhere fails with ETXTBSY (as writing to a running program does), without changing
    the union, and works once the other open is closed."""
    _skip_unless_passthrough()
    dirs = _passthrough_dirs(tmp_path)
    upper_data = b"UPPER" + LOWER[5:]
    with union_mount(dirs, extra_args=["-o", "passthrough=on"]) as m:
        path = m.mnt / "f"
        with open(path, "rb") as reader:
            for mode in ("r+b", "wb", "ab"):
                with pytest.raises(OSError, match="Text file busy") as caught:
                    open(path, mode).close()
                assert caught.value.errno == errno.ETXTBSY, mode
            assert path.read_bytes() == LOWER
            assert reader.read() == LOWER
        with open(path, "r+b") as writer:
            writer.write(b"UPPER")
        assert path.read_bytes() == upper_data
        assert (dirs.upper / "f").read_bytes() == upper_data  # type: ignore[operator]
        assert (dirs.lowers[0] / "f").read_bytes() == LOWER
        with open(path, "rb") as reader, open(path, "ab") as writer:  # both on the upper file
            writer.write(b"more\n")
            writer.flush()
            assert reader.read() == upper_data + b"more\n"
        assert path.stat().st_size == len(upper_data + b"more\n")


def test_small_files_get_cached_opens(union_mount: StrataMountFactory, tmp_path: Path) -> None:
    """A file under PASSTHROUGH_MIN_SIZE is opened as without passthrough: a writer of it while
    a reader holds it copies it up, and the reader reads the new data, as on overlayfs."""
    _skip_unless_passthrough()
    dirs = _passthrough_dirs(tmp_path, b"old data")
    with union_mount(dirs, extra_args=["-o", "passthrough=on"]) as m:
        path = m.mnt / "f"
        with open(path, "rb", buffering=0) as reader:
            assert reader.read() == b"old data"
            with open(path, "r+b", buffering=0) as writer:
                writer.write(b"NEW")
            assert os.pread(reader.fileno(), 100, 0) == b"NEW data"
        assert (dirs.lowers[0] / "f").read_bytes() == b"old data"


def test_a_copy_up_by_chmod_while_a_lower_file_is_open(
    union_mount: StrataMountFactory, tmp_path: Path
) -> None:
    """Without metacopy a chmod copies the data up while a reader holds the lower file: later
    opens for reading get the reader's backing file (the same data) until it is closed."""
    _skip_unless_passthrough()
    dirs = _passthrough_dirs(tmp_path)
    with union_mount(dirs, extra_args=["-o", "passthrough=on,metacopy=off"]) as m:
        path = m.mnt / "f"
        with open(path, "rb") as reader:
            path.chmod(0o600)
            assert (dirs.upper / "f").read_bytes() == LOWER  # type: ignore[operator]
            assert path.read_bytes() == LOWER
            assert reader.read() == LOWER
        with open(path, "ab") as writer:
            writer.write(b"appended\n")
        assert path.read_bytes() == LOWER + b"appended\n"
        assert path.stat().st_mode & 0o777 == 0o600


def test_mmap_reads_and_shared_writes_go_through_the_backing_file(
    union_mount: StrataMountFactory, tmp_path: Path
) -> None:
    _skip_unless_passthrough()
    dirs = _passthrough_dirs(tmp_path)
    mapped = b"MAPPD" + LOWER[5:]
    with union_mount(dirs, extra_args=["-o", "passthrough=on"]) as m:
        path = m.mnt / "f"
        with open(path, "rb") as reader, mmap.mmap(reader.fileno(), 0, prot=mmap.PROT_READ) as ro:
            assert ro[:5] == b"lower"
        with open(path, "r+b") as writer, mmap.mmap(writer.fileno(), 0) as rw:
            rw[:5] = b"MAPPD"
            rw.flush()
        assert path.read_bytes() == mapped
        assert (dirs.upper / "f").read_bytes() == mapped  # type: ignore[operator]
        assert (dirs.lowers[0] / "f").read_bytes() == LOWER


def test_truncate_and_create_with_passthrough(
    union_mount: StrataMountFactory, tmp_path: Path
) -> None:
    _skip_unless_passthrough()
    dirs = _passthrough_dirs(tmp_path)
    with union_mount(dirs, extra_args=["-o", "passthrough=on"]) as m:
        with open(m.mnt / "f", "wb") as f:  # O_TRUNC of a lower file: copied up empty
            f.write(b"new\n")
        assert (m.mnt / "f").read_bytes() == b"new\n"
        with open(m.mnt / "g", "xb") as f:  # create: the new upper file
            f.write(LOWER)
        assert (m.mnt / "g").read_bytes() == LOWER
        assert (dirs.upper / "g").read_bytes() == LOWER  # type: ignore[operator]
        assert (dirs.lowers[0] / "f").read_bytes() == LOWER


def test_passthrough_on_is_refused_without_cap_sys_admin() -> None:
    """`passthrough=on` where the kernel would not allow backing files: one line, exit non-zero,
    nothing mounted (here: a user without capabilities)."""
    skip_unless_root()
    top = Path(tempfile.mkdtemp(prefix="strata-pt-"))  # outside root's private pytest dir
    try:
        dirs = UnionDirs.create(top, nlowers=1)
        for d in (top, *dirs.lowers, dirs.upper, dirs.work, dirs.mnt):
            assert d is not None
            os.chown(d, 65534, 65534)
        done = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                sys.executable,
                "-m",
                "unionfs",
                *dirs.cli_args(),
                "-o",
                "passthrough=on",
                "-f",
                str(dirs.mnt),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "passthrough=on" in lines[0]
        # the stock pyfuse3 cannot pass through at all: that is the reason it gives first
        assert ("CAP_SYS_ADMIN" if FEATURES.passthrough else "pyfuse3") in lines[0]
        assert not os.path.ismount(dirs.mnt)
    finally:
        shutil.rmtree(top)
