"""runtime.namespaces: subordinate id ranges and id maps."""

from __future__ import annotations

from pathlib import Path

from runtime import namespaces


def test_subordinate_ranges(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text("other:1:2\nalice:100000:65536\n1001:200000:10\nbroken\n")
    assert namespaces._subordinate_range(str(subuid), "alice", 1000) == (100000, 65536)
    assert namespaces._subordinate_range(str(subuid), "bob", 1001) == (200000, 10)
    assert namespaces._subordinate_range(str(subuid), "carol", 1002) is None
    assert namespaces._subordinate_range(str(tmp_path / "none"), "alice", 1000) is None
    single = namespaces.IdMap((namespaces.IdRange(0, 1000, 1),), (namespaces.IdRange(0, 1000, 1),))
    assert not single.needs_helpers
    assert single.to_json() == {"uids": [[0, 1000, 1]], "gids": [[0, 1000, 1]]}
