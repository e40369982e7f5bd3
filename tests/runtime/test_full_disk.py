"""A full disk under the state root (issue 12, finding 6): `strata run --rm` reported "No space
left on device" (rc 1) instead of the command's status, left the container "running" with
`.state.json.*.tmp` files, and `rm -f` failed with ENOSPC until files were deleted by hand.

The state root (and so every container's writable layer) is on a small tmpfs of the test's own.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.conftest import Strata

pytestmark = [pytest.mark.root, pytest.mark.fuse]

FILL = "dd if=/dev/zero of=/fill bs=1M 2>/dev/null; exit 3"


@pytest.fixture
def small_root(strata: Strata, tmp_path: Path) -> Iterator[Strata]:
    """The `strata` fixture with its state root on a 16 MiB tmpfs (unmounted afterwards)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], check=True)
    strata.root = disk / "state"
    try:
        yield strata
    finally:
        try:
            strata.cleanup()
        finally:
            subprocess.run(["umount", str(disk)], check=True)


def litter(root: Path) -> list[str]:
    return [
        os.path.join(d, n) for d, _, names in os.walk(root) for n in names if n.endswith(".tmp")
    ]


def test_run_rm_on_a_full_disk_reports_the_commands_status_and_removes_it(
    small_root: Strata, busybox: list[str]
) -> None:
    strata = small_root
    done = strata.run("run", "--rm", *busybox, "/bin/sh", "-c", FILL)
    assert done.returncode == 3, done.stderr
    assert strata.container_ids() == []
    assert litter(strata.root) == []
    vfs = os.statvfs(strata.root)
    assert vfs.f_bavail > vfs.f_blocks // 2  # the layer's data is gone


def test_rm_f_works_on_a_full_disk(small_root: Strata, busybox: list[str]) -> None:
    strata = small_root
    done = strata.run("run", "--name", "full", *busybox, "/bin/sh", "-c", FILL)
    assert done.returncode == 3, done.stderr
    assert litter(strata.root) == []
    state = strata.run("inspect", "full", check=True)
    assert '"Running": false' in state.stdout
    assert strata.run("rm", "-f", "full").returncode == 0
    assert strata.container_ids() == []
    assert litter(strata.root) == []
