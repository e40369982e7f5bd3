"""The `strata` program as a whole (strata.cli and the Runner every command runs in): docker's
exit statuses in every subcommand, one line per error, a quiet Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Final

import pytest

from tests.helpers.commands import (
    COMMAND_TIMEOUT,
    STRATA,
    assert_one_line_error,
    run,
)
from unionfs import command


def test_an_unexpected_error_is_one_line_with_status_125(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug still ends in one line (issue 12: it named a `-d` flag most commands lack); the
    traceback is there with STRATA_DEBUG=1."""

    def broken() -> int:
        raise RuntimeError("a bug")

    monkeypatch.delenv("STRATA_DEBUG", raising=False)
    assert command.Runner("strata").run(broken) == 125
    assert capsys.readouterr().err == (
        "strata: unexpected error: RuntimeError: a bug (STRATA_DEBUG=1 shows the traceback)\n"
    )
    monkeypatch.setenv("STRATA_DEBUG", "1")
    with pytest.raises(RuntimeError, match="a bug"):
        command.Runner("strata").run(broken)


SUBCOMMANDS: Final = (
    "mount", "umount", "run", "create", "start", "exec", "ps", "stop", "kill", "rm", "logs",
    "inspect", "load", "save", "import", "commit", "build", "images", "rmi", "tag", "history",
    "image", "bench", "network", "volume", "container", "system",
)  # fmt: skip


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_usage_errors_exit_125_in_every_subcommand(command: str) -> None:
    """docker's convention (issue 12, finding 9: argparse's 2 in some, 125 promised)."""
    result = run(STRATA, command, "--no-such-option")
    assert result.returncode == 125, result.stderr
    assert assert_one_line_error(result, "strata").startswith("strata: ")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["rm", "nosuch"], 1, "no such container: nosuch"),
        (["stop", "nosuch"], 1, "no such container: nosuch"),
        (["kill", "nosuch"], 1, "no such container: nosuch"),
        (["logs", "nosuch"], 1, "no such container: nosuch"),
        (["start", "nosuch"], 1, "no such container: nosuch"),
        (["exec", "nosuch", "true"], 1, "no such container: nosuch"),
        (["rmi", "nosuch:1"], 1, "no such image: nosuch:1"),
        (["history", "nosuch:1"], 1, "no such image: nosuch:1"),
        (["tag", "nosuch:1", "other:1"], 1, "no such image: nosuch:1"),
        (["run", "nosuch:1"], 125, "no such image: nosuch:1"),
        (["create", "nosuch:1"], 125, "no such image: nosuch:1"),
    ],
)
def test_not_found_exits_as_docker_does(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    """A name that is not there: 1 in the management commands, 125 when run or create cannot
    make a container, as docker answers."""
    root = ["--root", str(tmp_path / "state")]
    result = run(STRATA, args[0], *root, *args[1:])
    assert result.returncode == code, result.stderr
    assert message in assert_one_line_error(result, "strata")


def test_ctrl_c_while_strata_starts_is_quiet(tmp_path: Path) -> None:
    """SIGINT while strata is still importing its modules (issue 12: a Python traceback): exit
    status 130 and no traceback. Python's verbose import log is the readiness signal: the
    signal goes out as the command line module starts to load."""
    env = dict(os.environ, PYTHONVERBOSE="1")
    proc = subprocess.Popen(
        [str(STRATA), "images", "--root", str(tmp_path / "state")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    seen = []
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        seen.append(line)
        if "unionfs/cli.py" in line or "import 'unionfs.cli'" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.wait(timeout=COMMAND_TIMEOUT)
    assert any("unionfs/cli" in line for line in seen)
    assert "Traceback" not in rest
    assert proc.returncode == 130
