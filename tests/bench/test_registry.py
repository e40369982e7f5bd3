"""`strata bench registry`: its arguments and its table. The measurement itself (a 200 MB image
through a registry, podman and skopeo, a few minutes) is run by hand; see bench/README.md."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.registry import BEFORE_TOOL, Row, table

STRATA = [sys.executable, "-c", "import sys; from strata.cli import main as m; sys.exit(m())"]


def strata(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STRATA, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quick"], "--quick does not apply"),
        (["--only", "untar"], "--only does not apply"),
        (["--backends", "docker"], "unknown tool 'docker'"),
        (["--repeat", "0"], "expected at least 1"),
        (["--json", "out.txt"], "expected a .json file name"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_125(args: list[str], message: str) -> None:
    done = strata("bench", "registry", *args)
    assert done.returncode == 125, done.stderr
    assert message in done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""


def test_table_gives_medians_factors_against_podman_and_the_verdict() -> None:
    rows = [
        Row("pull", "strata", [5.0, 4.0, 6.0]),
        Row("pull", "podman", [4.0, 5.0, 4.5]),
        Row("pull", "skopeo", [1.0]),
        Row("pull", BEFORE_TOOL, [10.0, 9.0, 11.0]),
        Row("push", "strata", [], error="strata push: refused"),
    ]
    text = table(rows)
    lines = text.splitlines()
    pull_strata = next(line for line in lines if line.startswith("pull       strata  "))
    assert "5.00s" in pull_strata
    assert "1.11x" in pull_strata  # 5.0 / 4.5
    assert "4.00s 5.00s 4.50s" in next(
        line for line in lines if line.startswith("pull       podman")
    )
    assert "(download only)" in text
    assert "strata pull / strata-before: 0.50x" in text
    assert "failed" in next(line for line in lines if line.startswith("push"))
    assert "strata pull / podman pull: 1.11x (target <= 1.2x: met)" in text
