"""--log-opt max-size/max-file: docker's json-file rotation (runtime.logrotate), on real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.logrotate import log_files, parse_log_opts, rotate
from unionfs.errors import UsageError


def test_log_opts_are_dockers() -> None:
    assert parse_log_opts([]) == (0, 1)
    assert parse_log_opts(["max-size=10m", "max-file=3"]) == (10 << 20, 3)
    assert parse_log_opts(["max-size=100k"]) == (100 << 10, 1)
    assert parse_log_opts(["max-size=-1"]) == (0, 1)
    for bad, message in (
        (["max-size=lots"], "expected a size"),
        (["max-file=0", "max-size=1m"], "max-file cannot be less than 1"),
        (["max-file=2"], "needs max-size"),
        (["compress=true"], "unknown log opt 'compress'"),
        (["max-size"], "expected KEY=VALUE"),
    ):
        with pytest.raises(UsageError, match=message) as caught:
            parse_log_opts(bad)
        assert caught.value.exit_code == 125


def _append(path: Path, data: bytes, *, max_size: int, max_file: int) -> None:
    rotate(path, max_size=max_size, max_file=max_file, incoming=len(data))
    with open(path, "ab") as f:
        f.write(data)


def test_rotation_keeps_max_file_files_and_never_splits_a_write(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    for n in range(10):
        _append(log, f"line {n}\n".encode(), max_size=14, max_file=3)  # two lines a file
    files = log_files(log)
    assert [f.name for f in files] == ["ctr.log.2", "ctr.log.1", "ctr.log"]
    assert b"".join(f.read_bytes() for f in files) == b"".join(
        f"line {n}\n".encode() for n in range(4, 10)
    )
    assert all(f.stat().st_size <= 14 for f in files)


def test_one_file_is_emptied_and_no_limit_never_rotates(tmp_path: Path) -> None:
    log = tmp_path / "ctr.log"
    for n in range(5):
        _append(log, f"line {n}\n".encode(), max_size=10, max_file=1)
    assert log_files(log) == [log]
    assert log.read_bytes() == b"line 4\n"
    other = tmp_path / "other.log"
    for _ in range(100):
        _append(other, b"x" * 100, max_size=0, max_file=1)
    assert other.stat().st_size == 10_000
    assert log_files(tmp_path / "missing.log") == []
