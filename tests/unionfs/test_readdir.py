"""Merged listings (unionfs/readdir.py): dedup, whiteouts hidden, stable positions, rmdir emptiness."""

from __future__ import annotations

import errno
from pathlib import Path

from tests.helpers.mounts import is_chardev_whiteout
from tests.unionfs.helpers import (
    Layers,
    UnionFactory,
    chardev_whiteout,
    create,
    exists,
    listdir,
    put,
    raises_errno,
    rmdir,
    unlink,
)
from unionfs.inodes import ROOT


async def test_readdir_merges_upper_then_lowers_without_duplicates(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    l0, l1, l2 = layers.lowers
    put(upper / "a"), put(upper / "c")
    chardev_whiteout(upper / "w1")
    put(upper / ".wh.w2")
    put(l0 / "a"), put(l0 / "b"), put(l0 / "w1"), put(l0 / "w2")
    chardev_whiteout(l0 / "w3")
    put(l1 / "b"), put(l1 / "e"), put(l1 / "w3"), put(l1 / "d" / "x")
    put(l2 / "d" / "y"), put(l2 / "e")
    fs = union()
    fh = await fs.opendir(ROOT)
    entries = list(fs.readdir(fh, 0))
    await fs.releasedir(fh)
    names = [n for n, _, _ in entries]
    assert names[:2] == [b".", b".."]
    assert sorted(names[2:]) == [b"a", b"b", b"c", b"d", b"e"]
    assert len(set(names)) == len(names)
    assert set(names[2:4]) == {b"a", b"c"}  # upper first
    # d_ino is st_ino; the next position is strictly increasing
    for name, a, _ in entries[2:]:
        assert a.nodeid == (await fs.lookup(ROOT, name)).nodeid
    positions = [pos for _, _, pos in entries]
    assert positions == sorted(set(positions))


async def test_readdir_positions_stay_valid_while_entries_are_removed(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    for i in range(10):
        put(upper / f"u{i}")
    for i in range(20):
        put(layers.lowers[0] / f"l{i:02}")
    fs = union()
    full = await listdir(fs)
    assert len(full) == 30

    fh = await fs.opendir(ROOT)
    first = []
    pos = 0
    for name, _, pos in fs.readdir(fh, 0):  # noqa: B007 - pos is used after the loop
        first.append(name)
        if len(first) == 14:  # ".", "..", and 12 entries
            break
    seen = [n for n in first if n not in (b".", b"..")]
    not_seen = [n for n in full if n not in seen]
    removed_seen, removed_later = seen[3:5], not_seen[2:6]
    for name in (*removed_seen, *removed_later):
        await fs.unlink(ROOT, name)
    await create(fs, "added-meanwhile")
    rest = [name for name, _, _ in fs.readdir(fh, pos)]
    await fs.releasedir(fh)

    assert len(set(seen + rest)) == len(seen + rest), "an entry was returned twice"
    expected_rest = [n for n in not_seen if n not in removed_later]
    assert [n for n in rest if n != b"added-meanwhile"] == expected_rest
    # rewinding takes a new snapshot
    assert sorted(await listdir(fs)) == sorted(
        [n for n in full if n not in removed_seen + removed_later] + [b"added-meanwhile"]
    )


async def test_directory_with_only_whiteouts_is_empty_for_rmdir(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "d" / "a")
    put(layers.lowers[1] / "d" / "b")
    put(layers.lowers[0] / "full" / "keep")
    fs = union()
    await raises_errno(errno.ENOTEMPTY, rmdir(fs, "d"))
    await unlink(fs, "d/a")
    await unlink(fs, "d/b")
    assert await listdir(fs, "d") == []
    assert is_chardev_whiteout(upper / "d" / "a")
    await rmdir(fs, "d")
    assert not await exists(fs, "d")
    assert is_chardev_whiteout(upper / "d")
    await raises_errno(errno.ENOTEMPTY, rmdir(fs, "full"))
    await raises_errno(errno.ENOTDIR, rmdir(fs, "full/keep"))
    await raises_errno(errno.EISDIR, unlink(fs, "full"))
