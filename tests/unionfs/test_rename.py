"""rename (unionfs/rename.py): directories materialized, whiteouts and opacity, flags, errors."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.helpers.mounts import is_chardev_whiteout
from tests.unionfs.helpers import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    Layers,
    UnionFactory,
    attr,
    create,
    exists,
    listdir,
    mkdir,
    node,
    put,
    raises_errno,
    read,
    rename,
    rmdir,
    unlink,
)
from unionfs.config import WhiteoutFormat


async def test_rename_to_a_name_of_255_bytes(union: UnionFactory, upper: Path) -> None:
    fs = union()
    await create(fs, "f", b"data")
    await mkdir(fs, "d")
    await rename(fs, "f", "b" * 255)
    await rename(fs, "d", "e" * 255)
    assert sorted(os.listdir(upper)) == ["b" * 255, "e" * 255]
    assert await read(fs, "b" * 255) == b"data"


@pytest.mark.root
async def test_rename_of_lower_directory_materializes_it(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    lower = layers.lowers[0]
    put(lower / "d" / "x", b"x")
    put(lower / "d" / "sub" / "y", b"y")
    os.symlink("x", lower / "d" / "lnk")
    fs = union()
    ino = (await attr(fs, "d")).nodeid
    await rename(fs, "d", "e")
    assert not await exists(fs, "d")
    assert sorted(await listdir(fs, "e")) == [b"lnk", b"sub", b"x"]
    assert await read(fs, "e/sub/y") == b"y"
    assert await fs.readlink(await node(fs, "e/lnk")) == b"x"
    assert (await attr(fs, "e")).nodeid == ino
    assert is_chardev_whiteout(upper / "d")
    # materialized as metacopy files: the data stays at the old path below
    assert os.getxattr(upper / "e" / "sub" / "y", "trusted.strata.metacopy") == b"d/sub/y"
    fs = union.remount(fs)
    assert await read(fs, "e/sub/y") == b"y"
    assert sorted(await listdir(fs, "e")) == [b"lnk", b"sub", b"x"]
    assert await listdir(fs) == [b"e"]
    assert (await attr(fs, "e")).nodeid == ino


@pytest.mark.parametrize("whiteout_inside", [False, True], ids=["plain", "whiteout-inside"])
async def test_rename_of_merged_directory_keeps_every_layer(
    union: UnionFactory, layers: Layers, upper: Path, whiteout_inside: bool
) -> None:
    l0, l1, _ = layers.lowers
    put(upper / "d" / "u", b"u")
    put(l0 / "d" / "x", b"x")
    put(l0 / "d" / "gone", b"gone")
    put(l1 / "d" / "y", b"y")
    put(l1 / "d" / "sub" / "z", b"z")
    put(l0 / "e" / "old", b"old")  # the target name was a lower dir, now deleted
    fs = union()
    expected = [b"gone", b"sub", b"u", b"x", b"y"]
    if whiteout_inside:
        await unlink(fs, "d/gone")
        expected.remove(b"gone")
    await unlink(fs, "e/old")
    await rmdir(fs, "e")
    await rename(fs, "d", "e")
    assert sorted(await listdir(fs, "e")) == expected
    assert await read(fs, "e/sub/z") == b"z"
    await raises_errno(errno.ENOENT, node(fs, "e/old"))
    assert not await exists(fs, "d")
    fs = union.remount(fs)
    assert sorted(await listdir(fs, "e")) == expected
    assert sorted(await listdir(fs)) == [b"e"]


async def test_rename_into_deleted_lower_name_and_back(union: UnionFactory, layers: Layers) -> None:
    put(layers.lowers[0] / "a", b"a")
    put(layers.lowers[0] / "b", b"b")
    fs = union()
    await rename(fs, "a", "b")
    assert await read(fs, "b") == b"a"
    assert not await exists(fs, "a")
    await rename(fs, "b", "a")
    assert await read(fs, "a") == b"a"
    assert not await exists(fs, "b")
    fs = union.remount(fs)
    assert await listdir(fs) == [b"a"]


async def test_rename_of_new_directory_onto_deleted_lower_directory_hides_it(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "e" / "old", b"old")
    fs = union()
    await mkdir(fs, "new")
    await create(fs, "new/f", b"f")
    await unlink(fs, "e/old")
    await rmdir(fs, "e")
    await rename(fs, "new", "e")
    assert await listdir(fs, "e") == [b"f"]
    fs = union.remount(fs)
    assert await listdir(fs, "e") == [b"f"]
    assert await listdir(fs) == [b"e"]


async def test_rename_in_wh_format_moves_the_markers(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "a", b"a")
    put(layers.lowers[0] / "b", b"b")
    put(layers.lowers[0] / "d" / "x", b"x")
    fs = union(whiteout=WhiteoutFormat.WH)
    await unlink(fs, "b")
    await rename(fs, "a", "b")
    await rename(fs, "d", "e")
    assert sorted(os.listdir(upper)) == [".wh.a", ".wh.d", "b", "e"]
    assert sorted(await listdir(fs)) == [b"b", b"e"]
    assert await read(fs, "b") == b"a"
    fs = union.remount(fs, whiteout=WhiteoutFormat.WH)
    assert sorted(await listdir(fs)) == [b"b", b"e"]
    assert await listdir(fs, "e") == [b"x"]


async def test_rename_exchange_swaps_lower_file_and_lower_directory(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "a", b"A")
    put(layers.lowers[1] / "d" / "x", b"x")
    put(layers.lowers[2] / "d" / "y", b"y")
    fs = union()
    a_ino, d_ino = (await attr(fs, "a")).nodeid, (await attr(fs, "d")).nodeid
    await rename(fs, "a", "d", RENAME_EXCHANGE)
    assert await read(fs, "d") == b"A"
    assert sorted(await listdir(fs, "a")) == [b"x", b"y"]
    assert (await attr(fs, "d")).nodeid == a_ino
    assert (await attr(fs, "a")).nodeid == d_ino
    fs = union.remount(fs)
    assert await read(fs, "d") == b"A"
    assert sorted(await listdir(fs, "a")) == [b"x", b"y"]
    await raises_errno(errno.ENOENT, rename(fs, "d", "missing", RENAME_EXCHANGE))


async def test_rename_noreplace(union: UnionFactory, layers: Layers, upper: Path) -> None:
    put(layers.lowers[0] / "a", b"a")
    put(layers.lowers[0] / "b", b"b")
    fs = union()
    await raises_errno(errno.EEXIST, rename(fs, "a", "b", RENAME_NOREPLACE))
    assert await read(fs, "b") == b"b"
    assert os.listdir(upper) == []
    await rename(fs, "a", "c", RENAME_NOREPLACE)
    assert await read(fs, "c") == b"a"
    assert sorted(await listdir(fs)) == [b"b", b"c"]


@pytest.mark.parametrize(
    "flags", [RENAME_WHITEOUT, 8, 1 << 5, RENAME_NOREPLACE | RENAME_EXCHANGE], ids=hex
)
async def test_rename_with_other_flags_is_invalid(
    union: UnionFactory, layers: Layers, upper: Path, flags: int
) -> None:
    put(layers.lowers[0] / "a", b"a")
    fs = union()
    await raises_errno(errno.EINVAL, rename(fs, "a", "b", flags))
    assert os.listdir(upper) == []


async def test_rename_errors(union: UnionFactory, layers: Layers) -> None:
    put(layers.lowers[0] / "f")
    put(layers.lowers[0] / "d" / "sub" / "x")
    put(layers.lowers[0] / "e" / "x")
    (layers.lowers[0] / "empty").mkdir()
    fs = union()
    await raises_errno(errno.EISDIR, rename(fs, "f", "d"))
    await raises_errno(errno.ENOTDIR, rename(fs, "d", "f"))
    await raises_errno(errno.ENOTEMPTY, rename(fs, "d", "e"))
    await raises_errno(errno.EINVAL, rename(fs, "d", "d/sub/x2"))
    await raises_errno(errno.ENOENT, rename(fs, "missing", "z"))
    await rename(fs, "d", "empty")
    assert await listdir(fs, "empty") == [b"sub"]
