"""The daemon lets go of what the kernel forgets (issue 16).

`echo 2 > drop_caches` makes the kernel evict its dentries and inodes, and FUSE sends a FORGET
for each node. The daemon must then drop those nodes and what hangs off them: observable from
outside as the directory and file fds it cached for them (closed with the node), while the numbers
the nodes come back with stay the same. RSS is measured by `strata bench memory`, not here: at
test sizes the allocator keeps freed memory in partly used arenas, which says nothing about us.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.helpers.mounts import StrataMountFactory, UnionDirs, skip_unless_root

pytestmark = pytest.mark.fuse

DIRS, FILES = 40, 25
SETTLE_TIMEOUT = 30.0  # for the daemon to serve the FORGETs (asynchronous to drop_caches)


def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def walk(root: Path) -> dict[str, int]:
    """path -> st_ino of everything under root, reading each file (caches a file fd)."""
    found = {}
    for top, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(top, name)
            found[os.path.relpath(path, root)] = os.lstat(path).st_ino
            if name in filenames:
                with open(path, "rb") as f:
                    f.read()
    return found


def test_forgotten_nodes_release_their_fds_and_come_back_with_the_same_numbers(
    union_mount: StrataMountFactory, tmp_path: Path
) -> None:
    skip_unless_root()  # drop_caches
    dirs = UnionDirs.create(tmp_path, nlowers=1)
    for d in range(DIRS):
        directory = dirs.lowers[0] / f"d{d:02d}" / "sub"
        directory.mkdir(parents=True)
        for f in range(FILES):
            (directory / f"f{f:02d}").write_bytes(b"x" * f)
    with union_mount(dirs) as m:
        assert m.proc is not None
        pid = m.proc.pid
        drop_caches()
        idle = open_fds(pid)
        before = walk(m.mnt)
        assert len(before) == DIRS * (2 + FILES)
        held = open_fds(pid)
        assert held >= idle + DIRS, "the walk cached no fds: nothing to see released"
        drop_caches()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while open_fds(pid) > idle + 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_fds(pid) <= idle + 4, f"{idle} fds idle, {held} after the walk"
        assert walk(m.mnt) == before
