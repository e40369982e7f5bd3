"""runtime.cli parsing: volumes and signal names."""

from __future__ import annotations

import os

import pytest

from runtime.cli import _parse_volume, parse_signal
from unionfs.errors import UsageError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("/tmp:/data", ("/tmp", "/data", False)), ("/tmp:/data/:ro", ("/tmp", "/data", True))],
)
def test_volume_parsing(spec: str, expected: tuple[str, str, bool]) -> None:
    assert _parse_volume(spec) == (os.path.realpath(expected[0]), *expected[1:])


@pytest.mark.parametrize(
    "spec", ["/tmp", "/tmp:data", "tmp:/data", "/tmp:/", "/tmp:/x:rx", "/nonexistent:/x"]
)
def test_bad_volumes(spec: str) -> None:
    with pytest.raises(UsageError):
        _parse_volume(spec)


def test_signal_names() -> None:
    assert parse_signal("TERM") == parse_signal("sigterm") == parse_signal("15") == 15
    for bad in ("NOPE", "0", "999", ""):
        with pytest.raises(UsageError):
            parse_signal(bad)
