"""Metadata-only copy-up (metacopy) through the union core: copyup.py and fileio.py with markers."""

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
    KiB,
    Layers,
    UnionFactory,
    attr,
    chardev_whiteout,
    create,
    make_opaque,
    mkdir,
    node,
    put,
    raises_errno,
    read,
    rename,
    unlink,
    write,
)
from unionfs.attrs import SetAttr
from unionfs.config import UnionConfig, validate
from unionfs.core import UnionFS

METACOPY = "trusted.strata.metacopy"


METACOPY_LAYER = "trusted.strata.metacopy-layer"


BIG = bytes(range(256)) * 4096  # 1 MiB: copied in a worker thread


def is_metacopy(path: Path) -> bool:
    try:
        os.getxattr(path, METACOPY, follow_symlinks=False)
    except OSError:
        return False
    return True


@pytest.mark.root
async def test_chmod_copies_metadata_only_and_reads_come_from_below(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    f = put(layers.lowers[1] / "d" / "f", BIG)
    lower_st = os.stat(f)
    fs = union()
    before = await attr(fs, "d/f")
    await fs.setattr(await node(fs, "d/f"), SetAttr(mode=stat.S_IFREG | 0o600))
    up = upper / "d" / "f"
    st = os.stat(up)
    assert is_metacopy(up)
    assert os.getxattr(upper, METACOPY_LAYER) == b"y"  # the layer says it holds markers
    assert st.st_size == len(BIG)
    assert st.st_blocks * 512 < 64 * KiB  # a hole
    after = await attr(fs, "d/f")
    assert (after.nodeid, after.size, stat.S_IMODE(after.mode)) == (before.nodeid, len(BIG), 0o600)
    assert after.blocks == lower_st.st_blocks  # as overlayfs: the data's blocks
    assert await read(fs, "d/f", len(BIG)) == BIG
    assert await read(fs, "d/f", 10, len(BIG) - 5) == BIG[-5:]
    fs = union.remount(fs)
    assert await read(fs, "d/f", len(BIG)) == BIG
    assert stat.S_IMODE((await attr(fs, "d/f")).mode) == 0o600


@pytest.mark.root
@pytest.mark.parametrize("how", ["write", "o_trunc", "truncate", "truncate-0", "link"])
async def test_first_data_change_copies_the_data_and_drops_the_marker(
    union: UnionFactory, layers: Layers, upper: Path, how: str
) -> None:
    put(layers.lowers[0] / "d" / "f", BIG)
    fs = union()
    nodeid = await node(fs, "d/f")
    ino = (await attr(fs, "d/f")).nodeid
    await fs.open(nodeid, os.O_RDONLY)
    early = nodeid  # opened on the lower file
    await fs.setattr(nodeid, SetAttr(mode=stat.S_IFREG | 0o640, uid=77, gid=88))
    assert await fs.read(early, 0, 4) == BIG[:4]
    await fs.setxattr(nodeid, "user.kept", b"k")
    await fs.open(nodeid, os.O_RDONLY)
    reader = nodeid  # opened on the data below
    expected = BIG
    if how == "write":
        await write(fs, "d/f", b"NEW", 10)
        expected = BIG[:10] + b"NEW" + BIG[13:]
    elif how == "o_trunc":
        await write(fs, "d/f", b"T", 0, os.O_WRONLY | os.O_TRUNC)
        expected = b"T"
    elif how == "truncate":
        await fs.setattr(nodeid, SetAttr(size=5))
        expected = BIG[:5]
    elif how == "truncate-0":
        await fs.setattr(nodeid, SetAttr(size=0))
        expected = b""
    else:
        await fs.link(nodeid, await node(fs, "d"), b"g")
        assert (await attr(fs, "d/g")).nlink == 2
        assert os.stat(upper / "d" / "g").st_ino == os.stat(upper / "d" / "f").st_ino
    up = upper / "d" / "f"
    assert not is_metacopy(up)
    assert up.read_bytes() == expected
    st = os.stat(up)
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 77, 88)
    assert os.getxattr(up, "user.kept") == b"k"
    assert (await attr(fs, "d/f")).nodeid == ino
    assert await fs.read(reader, 0, len(BIG) + 1) == expected  # the readers moved to the copy
    assert await fs.read(early, 0, len(BIG) + 1) == expected
    fs = union.remount(fs)
    assert await read(fs, "d/f", len(BIG) + 1) == expected


@pytest.mark.root
async def test_rename_of_metacopy_file_keeps_its_data_reachable(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "d" / "f", b"data of f")
    fs = union()
    await fs.setattr(await node(fs, "d/f"), SetAttr(uid=5))
    await mkdir(fs, "e")
    await rename(fs, "d/f", "e/moved")
    await create(fs, "d/f", b"a new file at the old name")
    assert os.getxattr(upper / "e" / "moved", METACOPY) == b"d/f"
    assert await read(fs, "e/moved") == b"data of f"
    fs = union.remount(fs)
    assert await read(fs, "e/moved") == b"data of f"
    assert await read(fs, "d/f") == b"a new file at the old name"
    await write(fs, "e/moved", b"D")
    assert (upper / "e" / "moved").read_bytes() == b"Data of f"


@pytest.mark.root
async def test_rename_of_lower_file_is_metadata_only(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "f", BIG)
    fs = union()
    await rename(fs, "f", "g")
    assert is_metacopy(upper / "g")
    assert is_chardev_whiteout(upper / "f")
    assert await read(fs, "g", len(BIG)) == BIG


async def test_hard_linked_and_empty_lower_files_are_copied_whole(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    f = put(layers.lowers[0] / "d" / "f", b"linked")
    os.link(f, layers.lowers[0] / "d" / "f2")
    put(layers.lowers[0] / "d" / "empty")
    fs = union()
    await fs.setattr(await node(fs, "d/f"), SetAttr(mode=stat.S_IFREG | 0o600))
    await fs.setattr(await node(fs, "d/empty"), SetAttr(mode=stat.S_IFREG | 0o600))
    assert not is_metacopy(upper / "d" / "f")
    assert not is_metacopy(upper / "d" / "empty")
    assert (upper / "d" / "f2").read_bytes() == b"linked"
    assert (await attr(fs, "d/f2")).nlink == 2


async def test_metacopy_off_copies_the_data(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "f", b"data")
    fs = union(metacopy=False)
    await fs.setattr(await node(fs, "f"), SetAttr(mode=stat.S_IFREG | 0o600))
    assert not is_metacopy(upper / "f")
    assert (upper / "f").read_bytes() == b"data"
    assert METACOPY_LAYER not in os.listxattr(upper)


async def test_metacopy_upper_is_read_back_with_metacopy_off(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "f", b"data")
    fs = union()
    await fs.setattr(await node(fs, "f"), SetAttr(mode=stat.S_IFREG | 0o600))
    fs = union.remount(fs, metacopy=False)  # markers on disk are honoured either way
    assert await read(fs, "f") == b"data"
    await write(fs, "f", b"D")
    assert (upper / "f").read_bytes() == b"Data"


async def test_concurrent_data_copy_ups_of_a_metacopy_file_make_one_copy(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "big", BIG * 4)
    fs = union()
    nodeid = await node(fs, "big")
    await fs.setattr(nodeid, SetAttr(mode=stat.S_IFREG | 0o600))
    handles: list[int] = []

    async def open_rw() -> None:
        await fs.open(nodeid, os.O_RDWR)
        handles.append(nodeid)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(open_rw)
    for i, fh in enumerate(handles):
        await fs.write(fh, i, b"X")
    assert (upper / "big").read_bytes() == b"XXX" + (BIG * 4)[3:]
    assert not is_metacopy(upper / "big")


async def test_metadata_change_during_a_data_copy_up_lands_on_the_copy(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "big", BIG * 4)  # copied in a worker thread: the chmod comes between
    fs = union()
    nodeid = await node(fs, "big")
    await fs.setattr(nodeid, SetAttr(mode=stat.S_IFREG | 0o600))
    handles: list[int] = []

    async def open_rw() -> None:
        await fs.open(nodeid, os.O_RDWR)
        handles.append(nodeid)

    async def chmod() -> None:
        await trio.lowlevel.checkpoint()
        await fs.setattr(nodeid, SetAttr(mode=stat.S_IFREG | 0o751))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(open_rw)
        nursery.start_soon(chmod)
    assert stat.S_IMODE(os.stat(upper / "big").st_mode) == 0o751
    assert not is_metacopy(upper / "big")
    assert (upper / "big").read_bytes() == BIG * 4


@pytest.mark.root
async def test_upper_with_metacopy_files_reads_back_as_a_lower_layer(
    union: UnionFactory, layers: Layers, tmp_path: Path
) -> None:
    put(layers.lowers[1] / "d" / "f", b"data of f")
    put(layers.lowers[1] / "d" / "g", b"data of g")
    fs = union()
    await fs.setattr(await node(fs, "d/f"), SetAttr(mode=stat.S_IFREG | 0o600))
    await rename(fs, "d/g", "g-moved")
    await create(fs, "d/g", b"new g")
    union.close(fs)
    # the upper becomes the top lower of a new stack: the markers lead below it
    stack = [layers.upper, *layers.lowers]
    upper2, work2 = tmp_path / "upper2", tmp_path / "work2"
    upper2.mkdir()
    work2.mkdir()
    cfg = UnionConfig(lowers=tuple(stack), upper=upper2, work=work2)
    fs2 = UnionFS(validate(cfg))
    try:
        assert await read(fs2, "d/f") == b"data of f"
        assert await read(fs2, "g-moved") == b"data of g"
        assert await read(fs2, "d/g") == b"new g"
        assert (await attr(fs2, "d/f")).blocks == os.stat(layers.lowers[1] / "d" / "f").st_blocks
        # a metadata change there chains: its marker leads to the metacopy file below it
        await fs2.setattr(await node(fs2, "g-moved"), SetAttr(uid=9))
        assert os.getxattr(upper2 / "g-moved", METACOPY) == b"g-moved"
        assert await read(fs2, "g-moved") == b"data of g"
        await write(fs2, "d/f", b"D")  # data copy-up from two layers down
        assert (upper2 / "d" / "f").read_bytes() == b"Data of f"
        assert stat.S_IMODE(os.stat(upper2 / "d" / "f").st_mode) == 0o600
    finally:
        fs2.close()
    fs3 = UnionFS(validate(cfg))
    try:
        assert await read(fs3, "g-moved") == b"data of g"
    finally:
        fs3.close()


def _metacopy_layer(root: Path, path: str, marker: bytes, size: int) -> Path:
    """A layer holding a metacopy file at `path` with `marker` (as a previous upper would)."""
    f = put(root / path)
    os.truncate(f, size)
    os.setxattr(f, METACOPY, marker)
    os.setxattr(root, METACOPY_LAYER, b"y")
    return f


@pytest.mark.root
@pytest.mark.parametrize(
    "case",
    ["missing", "whiteout", "wh-file", "opaque-dir", "size-differs", "not-a-file", "dir-symlink"],
)
async def test_lower_metacopy_file_without_its_data_reads_eio(
    union: UnionFactory, layers: Layers, case: str
) -> None:
    l0, l1, l2 = layers.lowers
    _metacopy_layer(l0, "d/f", b"d/f", 4)
    put(l2 / "d" / "f", b"data")
    if case == "missing":
        (l2 / "d" / "f").unlink()
    elif case == "whiteout":
        chardev_whiteout(l1 / "d" / "f")
    elif case == "wh-file":
        put(l1 / "d" / ".wh.f")
    elif case == "opaque-dir":
        (l1 / "d").mkdir()
        make_opaque(l1 / "d", "trusted.overlay.opaque")
    elif case == "size-differs":
        put(l2 / "d" / "f", b"other size")
    elif case == "not-a-file":
        (l2 / "d" / "f").unlink()
        (l2 / "d" / "f").mkdir()
    else:  # a symlinked directory below is never followed
        put(l1 / "elsewhere" / "f", b"data")
        (l2 / "d" / "f").unlink()
        (l2 / "d").rmdir()
        os.symlink("elsewhere", l2 / "d")
    fs = union()
    a = await attr(fs, "d/f")  # attributes stay readable
    assert a.size == 4
    await raises_errno(errno.EIO, fs.read(await node(fs, "d/f"), 0, 4))
    # a corrupt layer: the union is read-only from now on (see test_core.py)
    await raises_errno(errno.EROFS, fs.write(await node(fs, "d/f"), 0, b"x"))
    await raises_errno(errno.EROFS, fs.open(await node(fs, "d/f"), os.O_RDWR))
    assert not (layers.upper / "d" / "f").exists()


@pytest.mark.root
@pytest.mark.parametrize(
    "marker",
    [b"../secret", b"/secret", b"d/../../secret", b"./d/f", b"d//f", b"", b"d/f\0x", b"x" * 300],
)
async def test_hostile_marker_never_leaves_the_layers(
    union: UnionFactory, layers: Layers, tmp_path: Path, marker: bytes
) -> None:
    l0, l1, _ = layers.lowers
    put(tmp_path / "secret", b"outside")
    put(layers.lowers[2] / "secret", b"outside")
    _metacopy_layer(l1, "d/f", marker, 7)
    put(l0 / "keep", b"k")
    fs = union()
    await raises_errno(errno.EIO, fs.read(await node(fs, "d/f"), 0, 4))


@pytest.mark.root
async def test_lower_metacopy_file_finds_data_layers_below(
    union: UnionFactory, layers: Layers
) -> None:
    l0, l1, l2 = layers.lowers
    _metacopy_layer(l0, "top", b"old/name", 4)
    _metacopy_layer(l1, "old/name", b"base/data", 4)  # a chain of two markers
    put(l1 / "base" / "data", b"NOPE")  # same layer as the marker: never searched
    os.setxattr(l1 / "base" / "data", "user.x", b"1")
    put(l2 / "base" / "data", b"good")
    fs = union()
    assert await read(fs, "top") == b"good"
    assert await read(fs, "old/name") == b"good"
    assert await read(fs, "base/data") == b"NOPE"


@pytest.mark.root
async def test_open_metacopy_file_keeps_its_metadata_after_unlink_and_lowers_stay_untouched(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "f", b"lower data", 0o644)
    put(layers.lowers[0] / "g", b"lower g", 0o644)
    fs = union()
    nodeid = await node(fs, "f")
    await fs.setattr(nodeid, SetAttr(mode=stat.S_IFREG | 0o600, uid=5))
    await fs.open(nodeid, os.O_RDONLY)
    fh = nodeid  # on the data below
    await unlink(fs, "f")
    a = await fs.getattr(nodeid)
    assert (a.nlink, stat.S_IMODE(a.mode), a.uid) == (0, 0o600, 5)  # the metacopy file's
    assert await fs.read(fh, 0, 100) == b"lower data"
    # fchmod of a nameless file open on lower data cannot be done without changing a lower
    await raises_errno(errno.EROFS, fs.setattr(nodeid, SetAttr(mode=stat.S_IFREG | 0o777)))
    gid = await node(fs, "g")
    await fs.open(gid, os.O_RDONLY)
    # a plain lower file, open, then unlinked
    await unlink(fs, "g")
    await raises_errno(errno.EROFS, fs.setattr(gid, SetAttr(mode=stat.S_IFREG | 0o777)))
