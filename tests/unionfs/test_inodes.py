"""Inode numbers (unionfs/inodes.py): stable across copy-up, remount and forget."""

from __future__ import annotations

import os
from pathlib import Path

from tests.unionfs.helpers import (
    Layers,
    UnionFactory,
    attr,
    create,
    mkdir,
    node,
    put,
    read,
    write,
)
from unionfs.inodes import ROOT


async def test_st_ino_is_stable_across_copy_up_and_remount(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[1] / "d" / "sub" / "f", b"f")
    put(layers.lowers[0] / "d" / "g", b"g")
    fs = union()
    paths = ["d", "d/sub", "d/sub/f", "d/g"]
    before = {p: (await attr(fs, p)).nodeid for p in paths}
    assert len(set(before.values())) == len(paths)
    await write(fs, "d/sub/f", b"F")
    await fs.setxattr(await node(fs, "d/g"), "user.x", b"1")
    new = await create(fs, "d/new", b"n")
    await mkdir(fs, "d/newdir")
    newdir = (await attr(fs, "d/newdir")).nodeid
    assert {p: (await attr(fs, p)).nodeid for p in paths} == before
    fh = await fs.opendir(await node(fs, "d"))
    d_inos = {name: a.nodeid for name, a, _ in fs.readdir(fh, 0)}
    await fs.releasedir(fh)
    assert d_inos[b"g"] == before["d/g"]
    assert d_inos[b"sub"] == before["d/sub"]
    assert d_inos[b"new"] == new.nodeid

    fs = union.remount(fs)
    assert {p: (await attr(fs, p)).nodeid for p in paths} == before
    assert (await attr(fs, "d/new")).nodeid == new.nodeid
    assert (await attr(fs, "d/newdir")).nodeid == newdir
    assert (await attr(fs, "")).nodeid == ROOT


async def test_forgotten_nodes_come_back_with_the_same_numbers(
    union: UnionFactory, layers: Layers
) -> None:
    put(layers.lowers[0] / "d" / "f", b"f")
    put(layers.lowers[0] / "d" / "g", b"g")
    os.link(layers.lowers[0] / "d" / "g", layers.lowers[0] / "h")
    fs = union()
    paths = ["d", "d/f", "d/g", "h"]
    before = {p: (await attr(fs, p)).nodeid for p in paths}
    await write(fs, "d/f", b"F")
    await write(fs, "h", b"G")
    # the kernel forgets everything it was given (every lookup counted one reference)
    held = [(int(n.nodeid), n.lookups) for n in fs.inodes.nodes.values() if n.nodeid != ROOT]
    fs.forget(held)
    assert list(fs.inodes.nodes) == [ROOT]
    assert {p: (await attr(fs, p)).nodeid for p in paths} == before
    assert await read(fs, "d/g") == b"G"
