"""Running strata's installed commands (`strata`, `fuse-strata`) as an engine or a user would:
in child processes, next to the test interpreter (`pip install -e .`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

BIN: Final = Path(sys.executable).parent
FUSE_STRATA: Final = BIN / "fuse-strata"
STRATA: Final = BIN / "strata"
COMMAND_TIMEOUT: Final = 30.0


def run(*cmd: str | Path, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; returning at all means its stdout and stderr reached EOF."""
    if Path(cmd[0]) in (FUSE_STRATA, STRATA) and not Path(cmd[0]).exists():
        pytest.fail(f"{cmd[0]} is missing: run `{BIN / 'pip'} install -e .` first")
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], prog: str) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: "), lines[0]
    assert result.stdout == ""
    return lines[0]
