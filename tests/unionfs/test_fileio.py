"""File I/O (unionfs/fileio.py): reads never copy up, cached fds follow copy-up, unlinked open files."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.mounts import is_chardev_whiteout
from tests.unionfs.helpers import (
    Layers,
    UnionFactory,
    create,
    listdir,
    node,
    put,
    read,
)
from unionfs.inodes import ROOT


async def test_reading_never_copies_up(
    union: UnionFactory, layers: Layers, upper: Path, tmp_path: Path
) -> None:
    lower = layers.lowers[0]
    put(lower / "d" / "f", b"data")
    os.setxattr(lower / "d" / "f", "user.x", b"1")
    os.symlink("f", lower / "d" / "link")
    fs = union()
    f = await node(fs, "d/f")
    assert await read(fs, "d/f") == b"data"
    await fs.open(f, os.O_RDONLY)
    await fs.fsync(f, False)
    await fs.getattr(f)
    assert await fs.getxattr(f, "user.x") == b"1"
    assert "user.x" in await fs.listxattr(f)
    assert await fs.readlink(await node(fs, "d/link")) == b"f"
    assert sorted(await listdir(fs, "d")) == [b"f", b"link"]
    st = await fs.statfs()
    assert (st.f_blocks, st.f_bsize) == (os.statvfs(upper).f_blocks, os.statvfs(upper).f_bsize)
    assert os.listdir(upper) == []


async def test_open_read_only_handle_sees_data_after_another_handle_copies_up(
    union: UnionFactory, layers: Layers
) -> None:
    put(layers.lowers[0] / "f", b"old data")
    fs = union()
    f = await node(fs, "f")
    await fs.open(f, os.O_RDONLY)
    assert await fs.read(f, 0, 100) == b"old data"
    await fs.open(f, os.O_RDWR)
    await fs.write(f, 0, b"NEW")
    assert await fs.read(f, 0, 100) == b"NEW data"


async def test_open_unlinked_files_report_nlink_0_and_stay_usable(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "lowerfile", b"lower")
    fs = union()
    await create(fs, "upperfile", b"upper")
    handles = {}
    for name in ("upperfile", "lowerfile"):
        nodeid = await node(fs, name)
        await fs.open(nodeid, os.O_RDONLY)
        handles[name] = nodeid
        await fs.unlink(ROOT, name.encode())
    for name, nodeid in handles.items():
        a = await fs.getattr(nodeid)
        assert a.nlink == 0, name
        assert await fs.read(nodeid, 0, 100) == name[:5].encode()
    assert sorted(os.listdir(upper)) == ["lowerfile"]
    assert is_chardev_whiteout(upper / "lowerfile")
