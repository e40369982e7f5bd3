"""fuse-strata as podman's overlay `mount_program`: what a container engine does with it.

podman with a private store (under the test's tmp dir), runc and cgroupfs, as the bench's
podman row (bench.harness.private_podman), and the busybox test image, with fuse-strata
mounting by itself and through its mount server: run a container that
writes, deletes and chmods (the daemon in FUSE's no-open mode), `podman diff`, `podman
commit`, and a run of the committed image, whose files must hold what the container wrote and
kept.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.harness import PODMAN_RUN_FLAGS, empty_private_podman, private_podman
from strata import mountd
from tests.helpers.images import BUSYBOX_DOCKER_ARCHIVE
from tests.helpers.mounts import skip_unless_fuse, skip_unless_root

pytestmark = [pytest.mark.fuse, pytest.mark.root]


def run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd[:1] + cmd[-6:])}: {done.stderr.strip()}"
    return done.stdout


@pytest.fixture(params=[False, True], ids=["mounting-itself", "mount-server"])
def podman(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[str]]:
    """podman over fuse-strata, which mounts by itself or (the default outside the tests)
    through its resident mount server (strata.mountd), stopped at the end."""
    skip_unless_root()
    skip_unless_fuse()
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt install podman runc)")
    if not BUSYBOX_DOCKER_ARCHIVE.exists():
        pytest.skip(f"test image missing: {BUSYBOX_DOCKER_ARCHIVE}")
    fuse_strata = Path(sys.executable).parent / "fuse-strata"
    runroot = Path(tempfile.mkdtemp(prefix="strata-podman-"))  # podman wants <= 50 characters
    cmd = [*private_podman(tmp_path / "root", runroot, fuse_strata), "--events-backend", "none"]
    monkeypatch.setenv(mountd.ENV_SWITCH, "1" if request.param else "0")
    try:
        yield cmd
    finally:
        if request.param:
            mountd.stop_server()
        left = empty_private_podman(cmd, tmp_path, runroot)
        if not left:
            shutil.rmtree(runroot, ignore_errors=True)
        assert not left, f"podman left mounts behind: {left}"


def test_podman_runs_diffs_and_commits_a_container_on_fuse_strata(podman: list[str]) -> None:
    loaded = run([*podman, "load", "-i", str(BUSYBOX_DOCKER_ARCHIVE)])
    image = loaded.strip().splitlines()[-1].removeprefix("Loaded image: ").strip()
    script = "echo hi > /etc/newfile; rm /bin/ls; mkdir -p /opt/x; chmod 600 /etc/passwd; echo ok"
    out = run([*podman, "run", *PODMAN_RUN_FLAGS, "--name", "c1", image, "sh", "-c", script])
    assert out.strip() == "ok"
    diff = set(run([*podman, "diff", "c1"]).splitlines())
    assert {"A /etc/newfile", "D /bin/ls", "C /etc/passwd", "A /opt/x"} <= diff
    run([*podman, "commit", "--quiet", "c1", "localhost/strata-committed:1"])
    check = (
        "cat /etc/newfile; test -e /bin/ls || echo gone; stat -c %a /etc/passwd; ls -d /opt/x;"
        " head -c 5 /etc/passwd"  # the chmod'ed file kept its data
    )
    out = run(
        [
            *podman,
            "run",
            "--rm",
            *PODMAN_RUN_FLAGS,
            "localhost/strata-committed:1",
            "sh",
            "-c",
            check,
        ]
    )
    assert out.splitlines() == ["hi", "gone", "600", "/opt/x", "root:"]
