"""unionfs.startup: the one-line start-up report between a forked child and its waiting parent."""

from __future__ import annotations

import os

import pytest

from unionfs.startup import (
    StartFailure,
    StartupReport,
    format_failure,
    parse_report,
    wait_for_start,
)


def test_ok_is_a_start() -> None:
    read_fd, write_fd = os.pipe()
    StartupReport(write_fd).ok()
    assert wait_for_start(read_fd, died="died") is None


def test_only_the_first_report_counts_and_the_pipe_closes_after_it() -> None:
    read_fd, write_fd = os.pipe()
    report = StartupReport(write_fd)
    report.fail(126, "cannot run it")
    report.ok()  # dropped, as a `finally:` fallback is
    report.fail(1, "stopped before starting")
    assert report.sent
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(write_fd)  # closed after the first report
    assert wait_for_start(read_fd, died="died") == StartFailure(126, "cannot run it")


def test_end_of_file_without_a_report_is_a_death_or_an_exec() -> None:
    read_fd, write_fd = os.pipe()
    StartupReport(write_fd).close()
    assert wait_for_start(read_fd, died="it died", default_code=125) == StartFailure(125, "it died")
    read_fd, write_fd = os.pipe()
    os.close(write_fd)
    assert wait_for_start(read_fd, died=None) is None  # a close-on-exec pipe: it exec'd


def test_the_reader_stops_at_the_newline_while_others_hold_the_pipe() -> None:
    """A child's children may keep the write end open: the report's newline ends the wait."""
    read_fd, write_fd = os.pipe()
    held = os.dup(write_fd)
    try:
        StartupReport(write_fd).ok()
        assert wait_for_start(read_fd, died="died") is None
    finally:
        os.close(held)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ok", None),
        ("ok\n", None),
        ("125 no such image", StartFailure(125, "no such image")),
        ("no code here", StartFailure(7, "no code here")),
        (format_failure(1, "two\nlines"), StartFailure(1, "two lines")),
    ],
)
def test_report_lines(line: str, expected: StartFailure | None) -> None:
    assert parse_report(line, default_code=7) == expected
