"""Copy-up (unionfs/copyup.py): what each trigger keeps, directories, special files, holes, races, hard links."""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from tests.helpers.mounts import is_chardev_whiteout
from tests.unionfs.helpers import (
    CAPABILITY,
    Layers,
    MiB,
    UnionFactory,
    attr,
    exists,
    listdir,
    node,
    put,
    raises_errno,
    read,
    rename,
    unlink,
    write,
    xattrs,
)
from unionfs.attrs import SetAttr
from unionfs.core import UnionFS
from unionfs.inodes import ROOT


@dataclass(frozen=True)
class Trigger:
    name: str
    run: Callable[[UnionFS], Awaitable[None]]
    result: str  # path of the file in the union (and the upper) afterwards
    keeps_data: bool = True
    keeps_mode: bool = True
    keeps_owner: bool = True
    keeps_times: bool = True
    keeps_caps: bool = True
    keeps_parent_mtime: bool = True
    metadata_only: bool = False  # with metacopy on, the data stays below


async def _open_rw(fs: UnionFS) -> None:
    await fs.open(await node(fs, "d/f"), os.O_RDWR)


async def _open_trunc(fs: UnionFS) -> None:
    await fs.open(await node(fs, "d/f"), os.O_WRONLY | os.O_TRUNC)


async def _truncate(fs: UnionFS) -> None:
    await fs.setattr(await node(fs, "d/f"), SetAttr(size=3))


async def _chmod(fs: UnionFS) -> None:
    await fs.setattr(await node(fs, "d/f"), SetAttr(mode=stat.S_IFREG | 0o4700))


async def _chown(fs: UnionFS) -> None:
    await fs.setattr(await node(fs, "d/f"), SetAttr(uid=4321, gid=8765))


async def _utime(fs: UnionFS) -> None:
    await fs.setattr(await node(fs, "d/f"), SetAttr(atime_ns=5_000_000_001, mtime_ns=6_000_000_002))


async def _setxattr(fs: UnionFS) -> None:
    await fs.setxattr(await node(fs, "d/f"), "user.added", b"new")


async def _removexattr(fs: UnionFS) -> None:
    await fs.removexattr(await node(fs, "d/f"), "user.extra")


async def _link(fs: UnionFS) -> None:
    await fs.link(await node(fs, "d/f"), await node(fs, "d"), b"g")


async def _rename(fs: UnionFS) -> None:
    await rename(fs, "d/f", "d/g")


TRIGGERS = [
    Trigger("write-open", _open_rw, "d/f"),
    Trigger("o_trunc", _open_trunc, "d/f", keeps_data=False, keeps_times=False, keeps_caps=False),
    Trigger("truncate", _truncate, "d/f", keeps_data=False, keeps_times=False, keeps_caps=False),
    Trigger("chmod", _chmod, "d/f", keeps_mode=False, metadata_only=True),
    Trigger(
        "chown",
        _chown,
        "d/f",
        keeps_owner=False,
        keeps_mode=False,
        keeps_caps=False,
        metadata_only=True,
    ),
    Trigger("utime", _utime, "d/f", keeps_times=False, metadata_only=True),
    Trigger("setxattr", _setxattr, "d/f", metadata_only=True),
    Trigger("removexattr", _removexattr, "d/f", metadata_only=True),
    Trigger("link", _link, "d/g", keeps_parent_mtime=False),
    Trigger("rename", _rename, "d/g", keeps_parent_mtime=False, metadata_only=True),
]


LOWER_DATA = b"lower data\n" * 100


LOWER_TIMES = (1_000_000_123, 2_000_000_456)


DIR_TIMES = (3_000_000_789, 4_000_000_987)


@pytest.mark.root
@pytest.mark.parametrize("metacopy", [False, True], ids=["metacopy-off", "metacopy-on"])
@pytest.mark.parametrize("trigger", TRIGGERS, ids=lambda t: t.name)
async def test_copy_up_keeps_metadata(
    union: UnionFactory, layers: Layers, upper: Path, trigger: Trigger, metacopy: bool
) -> None:
    lower = layers.lowers[1]
    d = lower / "d"
    f = put(d / "f", LOWER_DATA, 0o755)
    os.chown(f, 1234, 5678)
    os.chmod(f, 0o4755)  # after chown, which clears set-id bits
    os.setxattr(f, "user.extra", b"x")
    os.setxattr(f, "trusted.extra", b"t")
    os.setxattr(f, "security.capability", CAPABILITY)
    os.utime(f, ns=LOWER_TIMES)
    os.chown(d, 1111, 2222)
    os.chmod(d, 0o2750)
    os.setxattr(d, "user.dir", b"dx")
    os.utime(d, ns=DIR_TIMES)
    fs = union(metacopy=metacopy)
    # the invariant snapshot just read the lower file (relatime): its atime is now
    lower_times = (os.lstat(f).st_atime_ns, LOWER_TIMES[1])
    ino = (await attr(fs, "d/f")).nodeid
    dir_ino = (await attr(fs, "d")).nodeid

    await trigger.run(fs)

    up = upper / trigger.result
    st = os.lstat(up)
    assert (await attr(fs, trigger.result)).nodeid == ino, "st_ino changed by copy-up"
    assert (await attr(fs, "d")).nodeid == dir_ino
    assert fs.work.origin_xattr is not None
    assert os.getxattr(up, fs.work.origin_xattr) == struct.pack("<Q", ino)
    data = up.read_bytes()
    if metacopy and trigger.metadata_only:  # a hole of the right size, the data stays below
        assert data == bytes(len(LOWER_DATA))
        assert os.getxattr(up, "trusted.strata.metacopy") == b"d/f"
        assert await read(fs, trigger.result) == LOWER_DATA
    else:
        assert data == (LOWER_DATA if trigger.keeps_data else data[:3])
        assert await read(fs, trigger.result) == data
    if trigger.keeps_owner:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    if trigger.keeps_mode:
        assert stat.S_IMODE(st.st_mode) == 0o4755
    if trigger.keeps_times:
        assert (st.st_atime_ns, st.st_mtime_ns) == lower_times
    got = xattrs(up)
    expected = {"user.extra": b"x", "trusted.extra": b"t"}
    if trigger.keeps_caps:
        expected["security.capability"] = CAPABILITY
    if trigger.name == "setxattr":
        expected["user.added"] = b"new"
    if trigger.name == "removexattr":
        del expected["user.extra"]
    private = (fs.work.origin_xattr, "trusted.strata.metacopy")
    assert {k: v for k, v in got.items() if k not in private} == expected
    # the parent came up first, with its own metadata
    dst = os.lstat(upper / "d")
    assert (dst.st_uid, dst.st_gid, stat.S_IMODE(dst.st_mode)) == (1111, 2222, 0o2750)
    assert xattrs(upper / "d").get("user.dir") == b"dx"
    if trigger.keeps_parent_mtime:
        assert dst.st_mtime_ns == DIR_TIMES[1]
    # what changed changed
    if trigger.name == "chmod":
        assert stat.S_IMODE(st.st_mode) == 0o4700
    if trigger.name == "chown":
        assert (st.st_uid, st.st_gid) == (4321, 8765)
    if trigger.name == "utime":
        assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_001, 6_000_000_002)
    if trigger.name == "link":
        assert os.lstat(upper / "d" / "f").st_ino == st.st_ino
        assert (await attr(fs, "d/f")).nlink == 2
    if trigger.name == "rename":
        assert is_chardev_whiteout(upper / "d" / "f")
        assert not await exists(fs, "d/f")


@pytest.mark.parametrize("change", ["setxattr", "chmod", "utime"])
async def test_copy_up_of_a_directory_keeps_it_merged(
    union: UnionFactory, layers: Layers, upper: Path, change: str
) -> None:
    put(layers.lowers[0] / "d" / "x", b"x")
    put(layers.lowers[1] / "d" / "y", b"y")
    fs = union()
    d = await node(fs, "d")
    if change == "setxattr":
        await fs.setxattr(d, "user.tag", b"1")
    elif change == "chmod":
        await fs.setattr(d, SetAttr(mode=stat.S_IFDIR | 0o700))
    else:
        await fs.setattr(d, SetAttr(mtime_ns=7_000_000_000))
    assert (upper / "d").is_dir()
    assert os.listdir(upper / "d") == []
    assert sorted(await listdir(fs, "d")) == [b"x", b"y"]
    fs = union.remount(fs)
    assert sorted(await listdir(fs, "d")) == [b"x", b"y"]
    assert await read(fs, "d/y") == b"y"


@pytest.mark.root
async def test_copy_up_of_symlink_fifo_and_device_keeps_them(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    lower = layers.lowers[0]
    os.symlink("target/of/link", lower / "sym")
    os.mkfifo(lower / "fifo", 0o640)
    os.mknod(lower / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for name in ("sym", "fifo", "null"):
        os.chown(lower / name, 1234, 5678, follow_symlinks=False)
    fs = union()
    for name in ("sym", "fifo", "null"):
        await fs.setxattr(await node(fs, name), "trusted.touched", b"1")
    assert os.readlink(upper / "sym") == "target/of/link"
    assert await fs.readlink(await node(fs, "sym")) == b"target/of/link"
    assert stat.S_ISFIFO(os.lstat(upper / "fifo").st_mode)
    assert stat.S_IMODE(os.lstat(upper / "fifo").st_mode) == 0o640
    assert os.lstat(upper / "null").st_rdev == os.makedev(1, 3)
    for name in ("sym", "fifo", "null"):
        st = os.lstat(upper / name)
        assert (st.st_uid, st.st_gid) == (1234, 5678)


async def test_sparse_copy_up_keeps_holes(union: UnionFactory, layers: Layers, upper: Path) -> None:
    f = layers.lowers[0] / "sparse"
    size = 64 * MiB
    with open(f, "wb") as out:
        out.truncate(size)
        for off in (0, 20 * MiB, size - 4096):
            out.seek(off)
            out.write(b"D" * 4096)
    assert os.stat(f).st_blocks * 512 < MiB
    fs = union()
    await write(fs, "sparse", b"E", offset=10 * MiB)
    st = os.stat(upper / "sparse")
    assert st.st_size == size
    assert st.st_blocks * 512 < MiB, f"copy-up filled holes: {st.st_blocks} blocks"
    for off in (0, 20 * MiB, size - 4096):
        assert await read(fs, "sparse", 4096, off) == b"D" * 4096
    assert await read(fs, "sparse", 3, 10 * MiB - 1) == b"\0E\0"
    assert await read(fs, "sparse", 4096, 30 * MiB) == bytes(4096)


async def test_concurrent_copy_ups_of_one_big_file_make_one_correct_copy(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    content = bytearray(os.urandom(32 * MiB))
    put(layers.lowers[0] / "big", bytes(content))
    fs = union()
    big = await node(fs, "big")

    async def writer(offset: int, data: bytes) -> None:
        await fs.open(big, os.O_RDWR)
        await fs.write(big, offset, data)

    async def reader() -> None:
        await fs.open(big, os.O_RDONLY)
        await trio.lowlevel.checkpoint()
        assert len(await fs.read(big, 0, 4096)) == 4096

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, 0, b"A" * 100)
        nursery.start_soon(writer, 16 * MiB, b"B" * 100)
        nursery.start_soon(reader)
    content[0:100] = b"A" * 100
    content[16 * MiB : 16 * MiB + 100] = b"B" * 100
    assert (upper / "big").read_bytes() == bytes(content)
    assert os.listdir(upper) == ["big"]


async def test_copy_up_of_hard_linked_lower_file_links_all_names(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    lower = layers.lowers[1]
    put(lower / "a", b"old")
    (lower / "d").mkdir()
    os.link(lower / "a", lower / "d" / "b")
    put(lower / "other", b"not linked")
    fs = union()
    ino = (await attr(fs, "a")).nodeid
    assert (await attr(fs, "d/b")).nodeid == ino
    assert (await attr(fs, "a")).nlink == 2
    await write(fs, "a", b"new")
    assert await read(fs, "d/b") == b"new"
    ua, ub = os.lstat(upper / "a"), os.lstat(upper / "d" / "b")
    assert ua.st_ino == ub.st_ino
    assert ua.st_nlink == 2
    assert (await attr(fs, "d/b")).nodeid == ino
    assert not (upper / "other").exists()

    fs = union.remount(fs)
    assert (await attr(fs, "d/b")).nodeid == ino  # looked up first this time
    assert (await attr(fs, "a")).nodeid == ino
    assert await read(fs, "d/b") == b"new"
    assert (await attr(fs, "a")).nlink == 2


async def test_hard_link_group_copy_up_skips_whited_out_name(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    lower = layers.lowers[1]
    put(lower / "a", b"old")
    os.link(lower / "a", lower / "b")
    os.link(lower / "a", lower / "c")
    fs = union()
    await unlink(fs, "c")
    await write(fs, "a", b"new")
    assert await read(fs, "b") == b"new"
    assert not await exists(fs, "c")
    assert is_chardev_whiteout(upper / "c")


async def test_hard_link_copy_up_through_a_name_not_looked_up_first(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    lower = layers.lowers[1]
    put(lower / "x" / "a", b"old")
    (lower / "y").mkdir()
    os.link(lower / "x" / "a", lower / "y" / "b")
    os.link(lower / "x" / "a", lower / "shadowed")
    put(layers.lowers[0] / "shadowed", b"another file")  # hides the third name
    fs = union()
    await write(fs, "y/b", b"new")  # x/a was never looked up
    assert await read(fs, "x/a") == b"new"
    assert await read(fs, "shadowed") == b"another file"
    assert os.lstat(upper / "x" / "a").st_ino == os.lstat(upper / "y" / "b").st_ino
    assert not (upper / "shadowed").exists()
    assert (await attr(fs, "x/a")).nodeid == (await attr(fs, "y/b")).nodeid


async def test_link_of_lower_file_copies_it_up(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "d" / "f", b"data")
    fs = union()
    ino = (await attr(fs, "d/f")).nodeid
    a = await fs.link(await node(fs, "d/f"), ROOT, b"g")
    assert a.nodeid == ino
    assert a.nlink == 2
    assert os.lstat(upper / "d" / "f").st_ino == os.lstat(upper / "g").st_ino
    assert await read(fs, "g") == b"data"
    await write(fs, "g", b"DATA")
    assert await read(fs, "d/f") == b"DATA"
    await raises_errno(errno.EEXIST, fs.link(await node(fs, "g"), ROOT, b"d"))
    await raises_errno(errno.EPERM, fs.link(await node(fs, "d"), ROOT, b"dirlink"))
