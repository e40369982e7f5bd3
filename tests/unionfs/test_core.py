"""The front (unionfs/core.py): a read-only union, a corrupt layer turning the union read-only
(s3ql's failsafe), and an upper written by strata read back as a lower."""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
from collections.abc import Awaitable
from pathlib import Path

import pytest

from tests.unionfs.helpers import (
    ME,
    RENAME_EXCHANGE,
    Layers,
    UnionFactory,
    create,
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
from unionfs.attrs import SetAttr
from unionfs.config import UnionConfig, WhiteoutFormat, validate
from unionfs.core import UnionFS
from unionfs.errors import LayerCorruptError
from unionfs.inodes import ROOT


def mutations(fs: UnionFS, f: int, d: int) -> list[Awaitable[object]]:
    """One call of each kind that changes the union: on the file `f` (with the xattr user.x)
    and the directory `d` (holding `x`), both in the root."""
    return [
        fs.create(ROOT, b"new", 0o100644, ME),
        fs.mkdir(ROOT, b"new", 0o40755, ME),
        fs.mknod(ROOT, b"new", stat.S_IFIFO | 0o644, 0, ME),
        fs.symlink(ROOT, b"new", b"f", ME),
        fs.link(f, ROOT, b"new"),
        fs.unlink(ROOT, b"f"),
        fs.rmdir(d, b"x"),
        fs.rmdir(ROOT, b"d"),
        fs.rename(ROOT, b"f", ROOT, b"g", 0),
        fs.rename(ROOT, b"f", d, b"x", RENAME_EXCHANGE),
        fs.setattr(f, SetAttr(mode=0o100600)),
        fs.setattr(f, SetAttr(uid=1)),
        fs.setattr(f, SetAttr(size=0)),
        fs.setattr(f, SetAttr(mtime_ns=1)),
        fs.setxattr(f, "user.y", b"2"),
        fs.removexattr(f, "user.x"),
        fs.open(f, os.O_WRONLY),
        fs.open(f, os.O_RDWR),
        fs.open(f, os.O_RDONLY | os.O_TRUNC),
        fs.write(f, 0, b"x"),
    ]


async def test_read_only_union_refuses_every_mutation(union: UnionFactory, layers: Layers) -> None:
    put(layers.lowers[0] / "f", b"data")
    put(layers.lowers[0] / "d" / "x")
    os.setxattr(layers.lowers[0] / "f", "user.x", b"1")
    fs = union(read_only=True)
    for call in mutations(fs, await node(fs, "f"), await node(fs, "d")):
        await raises_errno(errno.EROFS, call)
    assert await read(fs, "f") == b"data"
    assert await fs.getxattr(await node(fs, "f"), "user.x") == b"1"
    assert sorted(await listdir(fs)) == [b"d", b"f"]
    st = await fs.statfs()
    assert st.f_blocks == os.statvfs(layers.lowers[0]).f_blocks


@pytest.mark.parametrize(
    "value", [b"\x01\x02", struct.pack("<Q", (7 << 56) | 12345), struct.pack("<Q", 12345)]
)
async def test_a_bad_origin_marker_is_a_corrupt_layer_and_turns_the_union_read_only(
    union: UnionFactory, layers: Layers, upper: Path, caplog: pytest.LogCaptureFixture, value: bytes
) -> None:
    """s3ql's failsafe: the forged object is EIO (LayerCorruptError), one line names the layer
    and the problem, every later mutation is EROFS and the healthy files stay readable."""
    put(layers.lowers[0] / "f", b"data")
    put(layers.lowers[0] / "d" / "x")
    os.setxattr(layers.lowers[0] / "f", "user.x", b"1")
    fs = union()
    if fs.work.origin_xattr is None:
        pytest.skip("the upper filesystem keeps no xattrs")
    await create(fs, "forged", b"forged\n")
    os.setxattr(upper / "forged", fs.work.origin_xattr, value)
    fs = union.remount(fs)
    f, d = await node(fs, "f"), await node(fs, "d")
    with pytest.raises(LayerCorruptError) as err:
        await node(fs, "forged")
    assert err.value.errno == errno.EIO
    assert err.value.layer == str(upper)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert str(upper) in errors[0].getMessage()
    assert "bad origin marker" in errors[0].getMessage()
    assert "read-only" in errors[0].getMessage()
    for call in mutations(fs, f, d):
        await raises_errno(errno.EROFS, call)
    assert await read(fs, "f") == b"data"
    assert sorted(await listdir(fs)) == [b"d", b"f"]  # the broken object is left out
    await raises_errno(errno.EIO, fs.lookup(ROOT, b"forged"))  # again: a warning, no new error
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
    assert os.listdir(upper) == ["forged"]  # nothing was written


@pytest.mark.parametrize("whiteout", [WhiteoutFormat.CHARDEV, WhiteoutFormat.WH], ids=str)
async def test_upper_written_by_strata_reads_back_as_a_lower_layer(
    union: UnionFactory, layers: Layers, tmp_path: Path, whiteout: WhiteoutFormat
) -> None:
    put(layers.lowers[0] / "keep", b"k")
    put(layers.lowers[0] / "gone", b"g")
    put(layers.lowers[0] / "d" / "old", b"o")
    put(layers.lowers[0] / "m" / "lower", b"l")
    put(layers.lowers[0] / "r" / "moved", b"r")
    fs = union(whiteout=whiteout)
    await rename(fs, "r", "renamed")
    await unlink(fs, "gone")
    await unlink(fs, "d/old")
    await rmdir(fs, "d")
    await mkdir(fs, "d")
    await create(fs, "d/new", b"n")
    await create(fs, "m/upper", b"u")
    view = {p: sorted(await listdir(fs, p)) for p in ("", "d", "m", "renamed")}
    union.close(fs)
    fresh_upper, fresh_work = tmp_path / "upper2", tmp_path / "work2"
    fresh_upper.mkdir()
    fresh_work.mkdir()
    cfg = UnionConfig(lowers=(layers.upper, *layers.lowers), upper=fresh_upper, work=fresh_work)
    stacked = UnionFS(validate(cfg))
    try:
        seen = {p: sorted(await listdir(stacked, p)) for p in ("", "d", "m", "renamed")}
        assert seen == view
        assert await read(stacked, "d/new") == b"n"
    finally:
        stacked.close()
