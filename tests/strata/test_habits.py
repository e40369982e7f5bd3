"""docker's command-line habits (issue 17): global options before the command, pipes, `-it`
without a terminal."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers.commands import COMMAND_TIMEOUT, STRATA, assert_one_line_error, run
from tests.images.test_load import IMAGE_ID, _archive
from unionfs import command


def _load(root: Path) -> None:
    done = run(STRATA, "--root", str(root), "load", "-q", "-i", str(_archive("oci")))
    assert done.returncode == 0, done.stderr


def test_root_before_the_command_is_the_commands_own(tmp_path: Path) -> None:
    """`strata --root R images` as `podman --root R images`; the command's own `--root` (later
    on the line) wins, as the last of two options does."""
    one, two = tmp_path / "one", tmp_path / "two"
    _load(one)
    for argv in (
        ["--root", str(one), "images", "-q"],
        [f"--root={one}", "images", "-q"],
        ["--root", str(one), "image", "ls", "-q"],
        ["--root", str(two), "images", "--root", str(one), "-q"],
        ["--root", str(two), "image", "--root", str(one), "ls", "-q"],
        ["-D", "--root", str(one), "--log-level", "error", "images", "-q"],
    ):
        done = run(STRATA, *argv)
        assert (done.returncode, done.stdout, done.stderr) == (0, f"{IMAGE_ID[:12]}\n", ""), argv
    done = run(STRATA, "--root", str(one), "images", "--root", str(two), "-q")
    assert (done.returncode, done.stdout) == (0, "")
    assert not two.exists()


def test_a_global_option_a_command_lacks_is_ignored(tmp_path: Path) -> None:
    """As podman's commands ignore the global options they have no use for."""
    done = run(STRATA, "--root", str(tmp_path / "r"), "umount", "--help")
    assert done.returncode == 0, done.stderr
    assert "usage: strata umount" in done.stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--log-level", "loud", "images"], "argument --log-level: invalid choice: 'loud'"),
        (["--root"], "argument --root: expected one argument"),
        (["--no-such", "images"], "unrecognized arguments: --no-such"),
        (["-D"], "the following arguments are required: COMMAND"),
        (["--root", "/nonexistent", "nosuchcommand"], "invalid choice: 'nosuchcommand'"),
    ],
)
def test_bad_global_options_are_one_line_and_125(argv: list[str], message: str) -> None:
    done = run(STRATA, *argv)
    assert done.returncode == 125
    assert message in assert_one_line_error(done, "strata")


def _program(seen: list[object]) -> list[command.Subcommand]:
    """Two subcommands: `boom` fails as a bug would (after switching its own debug off, as
    subcommands without -D do), `level` records the logging level it runs at."""

    def boom(args: argparse.Namespace, runner: command.Runner) -> int:
        runner.debug = False
        raise RuntimeError("a bug")

    def level(args: argparse.Namespace, runner: command.Runner) -> int:
        seen.append(logging.getLogger().level)
        return 0

    return [
        command.Subcommand("boom", "fails", lambda p: None, boom),
        command.Subcommand("level", "the level", lambda p: None, level),
    ]


def test_debug_before_the_command_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRATA_DEBUG", raising=False)
    subs = _program([])
    assert command.dispatch("prog", "d", "1", subs, ["boom"]) == 125
    assert capsys.readouterr().err.startswith("prog: unexpected error: RuntimeError: a bug")
    for flag in ("-D", "--debug"):
        with pytest.raises(RuntimeError, match="a bug"):
            command.dispatch("prog", "d", "1", subs, [flag, "boom"])


def test_log_level_sets_the_level_of_the_command() -> None:
    seen: list[object] = []
    before = logging.getLogger().level
    try:
        for argv, level in (
            (["--log-level", "error", "level"], logging.ERROR),
            (["--log-level=warn", "level"], logging.WARNING),
            (["-D", "level"], logging.DEBUG),
            (["--debug", "--log-level", "info", "level"], logging.INFO),
        ):
            assert command.dispatch("prog", "d", "1", _program(seen), argv) == 0
            assert seen.pop() == level, argv
    finally:
        logging.getLogger().setLevel(before)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "x"],
        ["-D", "run"],
        ["--root", "run", "images"],
        ["--root=r", "--log-level", "debug", "run", "-it"],
        ["--debug", "-"],
        [],
        ["--root"],
    ],
)
def test_the_early_fork_finds_the_command_as_dispatch_does(argv: list[str]) -> None:
    """strata.entry forks the union daemon before anything is imported when the command is
    `run`; it finds the command after the global options as `dispatch` does."""
    from strata import cli, entry

    _head, rest = command.split_global_options(argv, cli.GLOBAL_OPTIONS)
    assert entry._command(argv) == (rest[0] if rest else None)


# -- pipes -------------------------------------------------------------------------------------


def _strata_into(stdout: int, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(STRATA), *argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )


def test_save_writes_to_a_pipe_and_load_reads_one(tmp_path: Path) -> None:
    """`strata save IMAGE | strata load` (and `-o -`): the same bytes as `-o FILE`."""
    one, two = tmp_path / "one", tmp_path / "two"
    _load(one)
    file = tmp_path / "saved.tar"
    done = run(STRATA, "--root", str(one), "save", "uniontest:1", "-o", str(file))
    assert done.returncode == 0, done.stderr
    for dash in ([], ["-o", "-"], ["--output=-"]):
        piped = subprocess.run(
            f"{STRATA} --root {one} save uniontest:1 {' '.join(dash)} | {STRATA} --root {two} load",
            shell=True,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert (piped.returncode, piped.stderr) == (0, ""), dash
        assert piped.stdout == "Loaded image: localhost/uniontest:1\n"
        out = tmp_path / "out.tar"
        with out.open("wb") as f:
            done = _strata_into(f.fileno(), "--root", str(one), "save", "uniontest:1", *dash)
        assert (done.returncode, done.stderr) == (0, "")
        assert out.read_bytes() == file.read_bytes()
    assert not (tmp_path / "-").exists()
    assert run(STRATA, "--root", str(two), "images", "-q").stdout == f"{IMAGE_ID[:12]}\n"


def test_save_refuses_a_terminal_as_docker_does(tmp_path: Path) -> None:
    _load(tmp_path / "root")
    primary, secondary = os.openpty()
    try:
        for dash in ([], ["-o", "-"]):
            done = _strata_into(
                secondary, "--root", str(tmp_path / "root"), "save", "uniontest:1", *dash
            )
            assert done.returncode == 1
            assert done.stderr == (
                "strata: cowardly refusing to save to a terminal. Use the -o flag or redirect\n"
            )
    finally:
        os.close(primary)
        os.close(secondary)


def test_save_of_a_missing_image_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.tar"
    with out.open("wb") as f:
        done = _strata_into(f.fileno(), "--root", str(tmp_path / "root"), "save", "nosuch:1")
    assert done.returncode == 1
    assert done.stderr == "strata: no such image: nosuch:1\n"
    assert out.read_bytes() == b""


def _closed_pipe() -> tuple[int, int]:
    """A pipe whose reader is already gone, as `| head` leaves it once head has exited."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return read_end, write_end


@pytest.mark.parametrize(
    "argv",
    [["images"], ["ps", "-a"], ["--help"], ["save", "uniontest:1"], ["history", "uniontest:1"]],
)
def test_a_reader_that_went_away_ends_the_command_quietly(tmp_path: Path, argv: list[str]) -> None:
    """`strata ... | head`: no "Broken pipe" line, and 141, the status of a command SIGPIPE
    ended, as docker's CLI ends when head has gone before it wrote."""
    _load(tmp_path / "root")
    _gone, write_end = _closed_pipe()
    try:
        done = _strata_into(write_end, "--root", str(tmp_path / "root"), *argv)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_head_after_the_output_is_written_leaves_status_0(tmp_path: Path) -> None:
    """The usual case: a short listing is written whole (one write, as docker's table) before
    head exits. (Not with PYTHONUNBUFFERED, which makes each line a write of its own.)"""
    _load(tmp_path / "root")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run(
        f"{STRATA} --root {tmp_path / 'root'} images | head -1; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        env=env,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    assert done.stdout.splitlines()[0].startswith("REPOSITORY")
    assert (done.stdout.splitlines()[1], done.stderr) == ("0", "")


def test_an_error_writing_stdout_is_one_line() -> None:
    """Not a broken pipe: a full disk is an error like any other."""
    with open("/dev/full", "wb") as full:
        done = _strata_into(full.fileno(), "--help")
    assert (done.returncode, done.stderr) == (125, "strata: No space left on device\n")
