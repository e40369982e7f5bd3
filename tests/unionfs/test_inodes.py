"""Inode numbers (unionfs/inodes.py): stable across copy-up, remount and forget."""

from __future__ import annotations

import os
import stat
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
from unionfs.attrs import SetAttr
from unionfs.core import UnionFS
from unionfs.inodes import ROOT, Node


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


async def _walk(fs: UnionFS) -> dict[int, int]:
    """List every directory as the kernel's readdirplus does (one reference per entry it
    accepted, see ops.readdir); node id -> references taken."""
    held: dict[int, int] = {}
    todo = [int(ROOT)]
    while todo:
        fh = await fs.opendir(todo.pop())
        for name, a, _ in fs.readdir(fh, 0):
            if name not in (b".", b".."):
                fs.remember(a.nodeid)
                held[a.nodeid] = held.get(a.nodeid, 0) + 1
                if stat.S_ISDIR(a.mode):
                    todo.append(a.nodeid)
        await fs.releasedir(fh)
    return held


async def test_a_forgotten_tree_leaves_no_nodes_and_no_listings_behind(
    union: UnionFactory, layers: Layers
) -> None:
    """What drop_caches does to a walked tree: the kernel forgets every node, files before
    their directories. The nodes go, and with them the lower listings and the lower-only
    attributes they held (issue 16: the listings used to stay for good)."""
    for d in range(6):
        for f in range(20):
            put(layers.lowers[1] / f"d{d}" / f"s{d % 2}" / f"f{f}", b"x" * f)
    put(layers.lowers[0] / "d0" / "top", b"top")
    fs = union()
    held = await _walk(fs)
    numbers = {nodeid: (await fs.getattr(nodeid)).mode for nodeid in held}
    assert len(held) == 6 * 2 + 6 * 20 + 1
    assert len(fs.layers._listings) >= 6
    depth = {nodeid: _depth(fs.inodes.get(nodeid)) for nodeid in held}
    fs.forget(sorted(held.items(), key=lambda item: -depth[item[0]]))
    assert list(fs.inodes.nodes) == [ROOT]
    # only the root's own listings (one per lower layer) are left
    assert len(fs.layers._listings) <= len(layers.lowers)
    again = await _walk(fs)
    assert {nodeid: (await fs.getattr(nodeid)).mode for nodeid in again} == numbers


async def test_a_forgotten_file_keeps_its_directory_and_a_hard_link_copies_up_after_it(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    """A lower file keeps its attributes, not its stat, once looked up: a copy-up of a
    hard-linked file after that still finds the other names of its group (by the lower
    inode number, stat'ed again)."""
    put(layers.lowers[0] / "d" / "a", b"data")
    os.link(layers.lowers[0] / "d" / "a", layers.lowers[0] / "d" / "b")
    fs = union()
    a = await attr(fs, "d/a")
    assert a.nlink == 2
    fs.forget([(await node(fs, "d/b"), 1)])
    await fs.setattr(a.nodeid, SetAttr(mode=0o600))
    assert os.stat(upper / "d" / "a").st_ino == os.stat(upper / "d" / "b").st_ino
    assert (await attr(fs, "d/b")).nodeid == a.nodeid


def _depth(node: Node) -> int:
    depth = 0
    parent = node.parent
    while parent is not None:
        depth, parent = depth + 1, parent.parent
    return depth
