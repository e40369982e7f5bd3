"""runtime.cli parsing: volumes and signal names."""

from __future__ import annotations

import os

import pytest

from runtime.cli import parse_signal
from runtime.volumes import BIND, VOLUME, MountSpec, parse_volume_flag
from unionfs.errors import UsageError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("/tmp:/data", ("/tmp", "/data", False)), ("/tmp:/data/:ro", ("/tmp", "/data", True))],
)
def test_volume_parsing(spec: str, expected: tuple[str, str, bool]) -> None:
    assert parse_volume_flag(spec) == MountSpec(BIND, os.path.realpath(expected[0]), *expected[1:])


def test_volume_flag_names_a_volume_or_makes_an_anonymous_one() -> None:
    assert parse_volume_flag("data:/srv:ro,nocopy") == MountSpec(
        VOLUME, "data", "/srv", read_only=True, nocopy=True
    )
    assert parse_volume_flag("/srv/") == MountSpec(VOLUME, "", "/srv")


@pytest.mark.parametrize(
    "spec",
    ["/tmp:data", "./tmp:/data", "/tmp:/", "/tmp:/x:rx", "/nonexistent:/x", "a:/x", "b$d:/x",
     "a:b:c:d", ":/x", "/tmp:/x:nocopy"],
)  # fmt: skip
def test_bad_volumes(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_volume_flag(spec)


def test_signal_names() -> None:
    assert parse_signal("TERM") == parse_signal("sigterm") == parse_signal("15") == 15
    for bad in ("NOPE", "0", "999", ""):
        with pytest.raises(UsageError):
            parse_signal(bad)
