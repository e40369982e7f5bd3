"""Directory operations (unionfs/dirops.py): whiteouts, removal, creation over deleted lower names."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from tests.helpers.mounts import is_chardev_whiteout
from tests.unionfs.helpers import (
    ME,
    Layers,
    MiB,
    UnionFactory,
    create,
    exists,
    listdir,
    mkdir,
    node,
    put,
    raises_errno,
    read,
    rmdir,
    unlink,
    write,
)
from unionfs.config import WhiteoutFormat
from unionfs.inodes import ROOT


async def test_unlink_of_lower_file_leaves_chardev_whiteout_by_default(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "f")
    put(layers.lowers[1] / "d" / "x")
    (layers.lowers[1] / "e").mkdir()
    fs = union()
    await unlink(fs, "f")
    await unlink(fs, "d/x")
    await rmdir(fs, "d")
    await rmdir(fs, "e")
    for name in ("f", "d", "e"):
        assert is_chardev_whiteout(upper / name)
        assert not await exists(fs, name)
    assert sorted(os.listdir(upper)) == ["d", "e", "f"]
    fs = union.remount(fs)
    assert await listdir(fs) == []


async def test_unlink_of_lower_file_leaves_wh_file_in_wh_format(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "f")
    put(layers.lowers[0] / "g")
    put(layers.lowers[1] / "d" / "x")
    fs = union(whiteout=WhiteoutFormat.WH)
    await unlink(fs, "f")
    await write(fs, "g", b"changed")  # copied up, then removed: the marker replaces the copy
    await unlink(fs, "g")
    await unlink(fs, "d/x")
    await rmdir(fs, "d")
    assert sorted(os.listdir(upper)) == [".wh.d", ".wh.f", ".wh.g"]
    assert all((upper / n).is_file() and not (upper / n).is_symlink() for n in os.listdir(upper))
    assert await listdir(fs) == []
    await mkdir(fs, "d")
    assert sorted(os.listdir(upper / "d")) == [".wh..wh..opq"]
    assert await listdir(fs, "d") == []
    fs = union.remount(fs, whiteout=WhiteoutFormat.WH)
    assert await listdir(fs) == [b"d"]
    assert await listdir(fs, "d") == []
    await rmdir(fs, "d")  # holds only its opaque marker
    assert sorted(os.listdir(upper)) == [".wh.d", ".wh.f", ".wh.g"]
    assert await listdir(fs) == []


async def test_name_in_no_lower_is_deleted_not_whited_out(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "d" / "lower")
    fs = union()
    await create(fs, "new", b"x")
    await mkdir(fs, "newdir")
    await create(fs, "newdir/f")
    await create(fs, "d/new")
    await unlink(fs, "new")
    await unlink(fs, "newdir/f")
    await rmdir(fs, "newdir")
    await unlink(fs, "d/new")
    assert sorted(os.listdir(upper)) == ["d"]
    assert os.listdir(upper / "d") == []


@pytest.mark.root
async def test_mkdir_over_deleted_lower_dir_is_opaque(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "d" / "old")
    put(layers.lowers[1] / "d" / "older")
    fs = union()
    await unlink(fs, "d/old")
    await unlink(fs, "d/older")
    await rmdir(fs, "d")
    await mkdir(fs, "d")
    assert await listdir(fs, "d") == []
    assert os.getxattr(upper / "d", "trusted.overlay.opaque") == b"y"
    assert os.listdir(upper / "d") == []
    await raises_errno(errno.ENOENT, node(fs, "d/old"))
    fs = union.remount(fs)
    assert await listdir(fs, "d") == []


async def test_create_over_deleted_lower_file_replaces_whiteout(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "f", b"old")
    fs = union()
    await unlink(fs, "f")
    await create(fs, "f", b"new")
    assert await read(fs, "f") == b"new"
    assert (upper / "f").read_bytes() == b"new"


@pytest.mark.root
async def test_mknod_of_0_0_chardev_is_refused(union: UnionFactory, upper: Path) -> None:
    fs = union()
    await raises_errno(
        errno.EPERM, fs.mknod(ROOT, b"fake", stat.S_IFCHR | 0o644, os.makedev(0, 0), ME)
    )
    assert os.listdir(upper) == []
    a = await fs.mknod(ROOT, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3), ME)
    assert a.rdev == os.makedev(1, 3)
    await fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, ME)
    assert stat.S_ISFIFO(os.lstat(upper / "fifo").st_mode)


async def test_unlink_during_copy_up_leaves_no_copy(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "big", os.urandom(16 * MiB))
    fs = union()
    big = await node(fs, "big")
    outcome: list[str] = []

    async def writer() -> None:
        try:
            await fs.open(big, os.O_RDWR)
        except FileNotFoundError:
            outcome.append("ENOENT")
            return
        await fs.write(big, 0, b"W")
        outcome.append("written")

    async def remover() -> None:
        await trio.lowlevel.checkpoint()  # the writer is now copying in a worker thread
        await fs.unlink(ROOT, b"big")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        nursery.start_soon(remover)
    assert outcome == ["ENOENT"], "the unlink did not happen during the copy-up"
    assert not await exists(fs, "big")
    assert os.listdir(upper) == ["big"]
    assert is_chardev_whiteout(upper / "big")


async def test_whiteouts_are_links_to_one_shared_inode_as_in_overlayfs(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    for name in ("a", "b", "c"):
        put(layers.lowers[0] / name, b"x")
    fs = union()
    await unlink(fs, "a")
    await unlink(fs, "b")
    first, second = os.lstat(upper / "a"), os.lstat(upper / "b")
    assert is_chardev_whiteout(upper / "a")
    assert is_chardev_whiteout(upper / "b")
    assert first.st_ino == second.st_ino
    assert second.st_nlink >= 2
    fs = union.remount(fs)  # the mount clears the work dir: a new shared inode, old ones stay
    await unlink(fs, "c")
    assert is_chardev_whiteout(upper / "c")
    assert sorted(await listdir(fs)) == []
