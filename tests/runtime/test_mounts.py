"""runtime.mounts without mounting: paths resolved inside a root."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import mounts


def test_resolve_in_root_keeps_symlinks_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "abs").symlink_to("/real")
    (root / "up").symlink_to("../../../../../etc")
    (root / "loop").symlink_to("loop")
    assert mounts.resolve_in_root(root, "/abs/x") == root / "real/x"
    assert mounts.resolve_in_root(root, "/up/hosts") == root / "etc/hosts"
    assert mounts.resolve_in_root(root, "/../../etc") == root / "etc"
    assert mounts.resolve_in_root(root, "/missing/deeper") == root / "missing/deeper"
    with pytest.raises(OSError, match="symbolic links"):
        mounts.resolve_in_root(root, "/loop/x")
