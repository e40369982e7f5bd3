"""A private podman store for golden comparisons of builds: podman 4.3 with its own `--root` and
`--runroot`, the vfs driver, cgroupfs and no events, so a test touches nothing of the machine's
podman. (`podman run` fails on this machine's rlimits; builds, mounts and saves work.) Builds
with a RUN step take `--network host`: podman's default network would leave its CNI bridge
and firewall tables on the machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest


class PrivatePodman:
    """`with PrivatePodman(tmp) as podman:` — skips the test when podman is not installed;
    leaving unmounts its images and removes its store."""

    def __init__(self, tmp: Path) -> None:
        found = shutil.which("podman")
        if found is None:
            pytest.skip("podman is not installed")
        self.root = tmp / "podman"
        self.runroot = Path(tempfile.mkdtemp(prefix="strata-pr", dir="/tmp"))  # < 50 characters
        self.base = [
            found,
            *("--root", str(self.root), "--runroot", str(self.runroot)),
            *(
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ),
        ]
        self.tmp = tmp
        self.mounted = False

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.mounted:
            subprocess.run([*self.base, "image", "unmount", "-a"], capture_output=True, check=False)
        # (no `podman system reset`: it would also remove the host's podman networks)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.runroot, ignore_errors=True)

    def run(self, *args: str) -> str:
        """A podman command's stdout; the test fails with its stderr if it fails."""
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def mount(self, ref: str) -> Path:
        """The image's root, mounted (unmounted when the store goes)."""
        self.mounted = True
        return Path(self.run("image", "mount", ref).strip())

    def docker_config(self, ref: str) -> dict[str, object]:
        """The image's Docker config (`config` of the image JSON: Healthcheck and OnBuild are
        only there), read from a docker-archive save."""
        archive = self.tmp / "podman-saved.tar"
        self.run("save", "--format", "docker-archive", "-o", str(archive), ref)
        try:
            with tarfile.open(archive) as tar:
                manifest = tar.extractfile("manifest.json")
                assert manifest is not None
                name = json.load(manifest)[0]["Config"]
                member = tar.extractfile(name)
                assert member is not None
                image = json.load(member)
        finally:
            archive.unlink()
        config = image["config"]
        assert isinstance(config, dict)
        return config
