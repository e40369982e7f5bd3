"""`strata bench podman`: its arguments, its Containerfile and its table. The measurement
itself (podman builds on the Debian base over each mount program, ~30 minutes) is run by hand;
see bench/README.md."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.podman import CONTAINERFILE, table

STRATA = [sys.executable, "-c", "import sys; from strata.cli import main as m; sys.exit(m())"]


def strata(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STRATA, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quick"], "--quick does not apply"),
        (["--plot", "x.png"], "--plot does not apply"),
        (["--backends", "docker"], "unknown mount program 'docker'"),
        (["--backends", "old=/nonexistent/fuse-strata"], "is not an executable"),
        (["--repeat", "0"], "expected at least 1"),
        (["--json", "out.txt"], "expected a .json file name"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_125(args: list[str], message: str) -> None:
    done = strata("bench", "podman", *args)
    assert done.returncode == 125, done.stderr
    assert message in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""


def test_the_containerfile_has_16_instructions_and_no_network_step() -> None:
    instructions = [line.split()[0] for line in CONTAINERFILE.splitlines() if line.strip()]
    assert len(instructions) == 16
    assert instructions[0] == "FROM"
    assert {"RUN", "COPY", "ENV", "WORKDIR", "USER", "LABEL", "CMD"} <= set(instructions)
    for word in ("apt", "pip", "curl", "wget", "http"):
        assert word not in CONTAINERFILE


def test_table_gives_medians_ranges_and_factors_against_fuse_overlayfs() -> None:
    builds = {"fuse-overlayfs": [20.0, 24.0, 22.0], "fuse-strata": [44.0, 40.0, 60.0]}
    runs = {"fuse-overlayfs": [0.3, 0.4, 0.35], "fuse-strata": [0.35, 0.7, 0.5]}
    programs = {"fuse-overlayfs": "/usr/bin/fuse-overlayfs", "fuse-strata": "/x/fuse-strata"}
    lines = table(builds, runs, programs).splitlines()
    strata_line = next(line for line in lines if line.startswith("fuse-strata "))
    assert "44.00" in strata_line  # median build
    assert "(40.0-60.0)" in strata_line
    assert "2.00" in strata_line  # 44 / 22
    assert "500" in strata_line  # median run, ms
    assert "1.43" in strata_line  # 0.5 / 0.35
    assert "against fuse-overlayfs" in lines[-1]
