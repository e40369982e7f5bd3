"""`strata bench memory` without mounts: its data layer, its figures and its argument checks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.memory import Run, build_lower, run_memory_bench, shape_files, table
from unionfs.errors import UsageError


def test_the_lower_layer_is_built_once_and_reused(tmp_path: Path) -> None:
    shape = (2, 2, 2, 3)
    lower = build_lower(tmp_path, shape)
    files = [p for p in lower.rglob("*") if p.is_file()]
    assert len(files) == shape_files(shape) == 24
    marker = lower / "usr00" / "share00" / "pkg00" / "file000.py"
    marker.write_bytes(b"kept")
    assert build_lower(tmp_path, shape) == lower
    assert marker.read_bytes() == b"kept"  # not rebuilt


def test_bytes_per_node_uses_the_walk_that_grew_most_and_the_table_shows_every_figure() -> None:
    run = Run("strata", objects=1024, start=10_000, walks=[10_500, 11_000, 10_200])
    run.walk_seconds = [3.0, 1.0, 2.0]
    run.after_drop = 10_100
    assert run.bytes_per_node() == 1000.0
    text = table([run, Run("fuse-overlayfs", error="skipped: not installed")], 3)
    row = next(line for line in text.splitlines() if line.startswith("strata"))
    assert row.split() == ["strata", "9.8", "10.3", "10.7", "10.0", "9.9", "1000", "2.0"]
    assert "fuse-overlayfs  failed: skipped: not installed" in text


def test_unknown_backends_are_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the root check comes first")
    with pytest.raises(UsageError, match="unknown backend 'overlay'"):
        run_memory_bench(
            ["overlay"], quick=True, passes=1, data_dir=tmp_path, json_path=None, argv=[]
        )
