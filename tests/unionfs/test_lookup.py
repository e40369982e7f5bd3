"""Lookup across the layers (unionfs/lookup.py): top-down resolution, whiteouts, opacity, names."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from tests.helpers.mounts import diff_snapshots, is_chardev_whiteout, tree_snapshot
from tests.unionfs.helpers import (
    ME,
    OPAQUE_XATTR_FORMS,
    Layers,
    UnionFactory,
    attr,
    chardev_whiteout,
    create,
    exists,
    listdir,
    make_opaque,
    node,
    put,
    raises_errno,
    read,
    unlink,
    write,
)
from unionfs.attrs import SetAttr
from unionfs.inodes import ROOT


async def test_lookup_goes_top_down(union: UnionFactory, layers: Layers, upper: Path) -> None:
    l0, l1, l2 = layers.lowers
    put(l2 / "a", b"l2"), put(l1 / "a", b"l1"), put(l0 / "a", b"l0"), put(upper / "a", b"up")
    put(l2 / "b", b"l2"), put(l1 / "b", b"l1")
    put(l2 / "c", b"l2")
    fs = union()
    assert await read(fs, "a") == b"up"
    assert await read(fs, "b") == b"l1"
    assert await read(fs, "c") == b"l2"
    await raises_errno(errno.ENOENT, fs.lookup(ROOT, b"nothing"))


async def test_lookup_merges_directories_of_all_layers(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    l0, l1, l2 = layers.lowers
    put(upper / "d" / "u", b"u")
    put(l0 / "d" / "x", b"0")
    put(l1 / "d" / "y", b"1")
    put(l2 / "d" / "z", b"2")
    fs = union()
    assert sorted(await listdir(fs, "d")) == [b"u", b"x", b"y", b"z"]
    assert [await read(fs, f"d/{n}") for n in "uxyz"] == [b"u", b"0", b"1", b"2"]


@pytest.mark.parametrize("layer", ["upper", "lower0"])
async def test_chardev_whiteout_stops_lookup(
    union: UnionFactory, layers: Layers, upper: Path, layer: str
) -> None:
    holder = upper if layer == "upper" else layers.lowers[0]
    chardev_whiteout(holder / "f")
    chardev_whiteout(holder / "d")
    put(layers.lowers[1] / "f", b"hidden")
    put(layers.lowers[1] / "d" / "x", b"hidden")
    fs = union()
    await raises_errno(errno.ENOENT, fs.lookup(ROOT, b"f"))
    await raises_errno(errno.ENOENT, fs.lookup(ROOT, b"d"))
    assert await listdir(fs) == []


@pytest.mark.parametrize("layer", ["upper", "lower0"])
async def test_wh_file_stops_lookup_and_is_never_listed(
    union: UnionFactory, layers: Layers, upper: Path, layer: str
) -> None:
    holder = upper if layer == "upper" else layers.lowers[0]
    put(holder / ".wh.f")
    put(holder / ".wh.d")
    put(layers.lowers[1] / "f", b"hidden")
    put(layers.lowers[1] / "d" / "x", b"hidden")
    put(layers.lowers[1] / "kept", b"k")
    fs = union()
    await raises_errno(errno.ENOENT, fs.lookup(ROOT, b"f"))
    await raises_errno(errno.ENOENT, fs.lookup(ROOT, b"d"))
    await raises_errno(errno.ENOENT, fs.lookup(ROOT, b".wh.f"))
    assert await listdir(fs) == [b"kept"]


async def test_non_directory_stops_directory_merge(union: UnionFactory, layers: Layers) -> None:
    l0, l1, l2 = layers.lowers
    put(l0 / "d" / "a", b"a")  # dir over file over dir: only the top dir is seen
    put(l1 / "d", b"file")
    put(l2 / "d" / "c", b"c")
    put(l0 / "f", b"file")  # file over dir
    put(l1 / "f" / "x", b"x")
    fs = union()
    assert await listdir(fs, "d") == [b"a"]
    await raises_errno(errno.ENOENT, node(fs, "d/c"))
    assert stat.S_ISREG((await attr(fs, "f")).mode)
    assert await read(fs, "f") == b"file"
    await raises_errno(errno.ENOTDIR, node(fs, "f/x"))


async def test_upper_file_hides_lower_directory(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(upper / "d", b"file")
    put(layers.lowers[0] / "d" / "x", b"x")
    fs = union()
    assert stat.S_ISREG((await attr(fs, "d")).mode)
    assert await listdir(fs) == [b"d"]


@pytest.mark.root
@pytest.mark.parametrize("form", [*OPAQUE_XATTR_FORMS, ".wh..wh..opq"])
@pytest.mark.parametrize("layer", ["upper", "lower0"])
async def test_opaque_directory_stops_lookup_below(
    union: UnionFactory, layers: Layers, upper: Path, layer: str, form: str
) -> None:
    holder = upper if layer == "upper" else layers.lowers[0]
    put(holder / "d" / "top", b"top")
    make_opaque(holder / "d", form)
    put(layers.lowers[1] / "d" / "below", b"hidden")
    put(layers.lowers[2] / "d" / "deeper", b"hidden")
    fs = union()
    assert await listdir(fs, "d") == [b"top"]
    await raises_errno(errno.ENOENT, node(fs, "d/below"))
    await raises_errno(errno.ENOENT, node(fs, "d/deeper"))
    await raises_errno(errno.ENOENT, node(fs, "d/.wh..wh..opq"))
    assert form not in await fs.listxattr(await node(fs, "d"))


@pytest.mark.root
async def test_opaque_xattr_value_must_be_y(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "d" / "top")
    os.setxattr(layers.lowers[0] / "d", "trusted.overlay.opaque", b"n")
    put(layers.lowers[1] / "d" / "below")
    fs = union()
    assert sorted(await listdir(fs, "d")) == [b"below", b"top"]


async def test_reserved_names_are_hidden_and_cannot_be_made(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / ".wh.gone")
    put(upper / ".wh.alsogone")
    put(upper / "f", b"f")
    put(layers.lowers[0] / "d" / ".wh..wh..opq")
    fs = union()
    assert await listdir(fs) == [b"f", b"d"] or sorted(await listdir(fs)) == [b"d", b"f"]
    for name in (b".wh.gone", b".wh.alsogone", b".wh.f", b".wh..wh..opq"):
        await raises_errno(errno.ENOENT, fs.lookup(ROOT, name))
    fnode = await node(fs, "f")
    await raises_errno(errno.EPERM, fs.create(ROOT, b".wh.x", 0o100644, ME))
    await raises_errno(errno.EPERM, fs.mkdir(ROOT, b".wh.x", 0o40755, ME))
    await raises_errno(errno.EPERM, fs.mkdir(ROOT, b".wh..wh..opq", 0o40755, ME))
    await raises_errno(errno.EPERM, fs.mknod(ROOT, b".wh.x", stat.S_IFIFO | 0o644, 0, ME))
    await raises_errno(errno.EPERM, fs.symlink(ROOT, b".wh.x", b"f", ME))
    await raises_errno(errno.EPERM, fs.link(fnode, ROOT, b".wh.x"))
    await raises_errno(errno.EPERM, fs.rename(ROOT, b"f", ROOT, b".wh.d", 0))
    assert await read(fs, "f") == b"f"
    assert await exists(fs, "d")


async def test_names_over_255_bytes_are_too_long(union: UnionFactory, layers: Layers) -> None:
    put(layers.lowers[0] / "f")
    fs = union()
    f = await node(fs, "f")
    long, ok = b"n" * 256, b"n" * 255
    await raises_errno(errno.ENAMETOOLONG, fs.lookup(ROOT, long))
    await raises_errno(errno.ENAMETOOLONG, fs.create(ROOT, long, 0o100644, ME))
    await raises_errno(errno.ENAMETOOLONG, fs.mkdir(ROOT, long, 0o40755, ME))
    await raises_errno(errno.ENAMETOOLONG, fs.mknod(ROOT, long, 0o10644, 0, ME))
    await raises_errno(errno.ENAMETOOLONG, fs.symlink(ROOT, long, b"f", ME))
    await raises_errno(errno.ENAMETOOLONG, fs.link(f, ROOT, long))
    await raises_errno(errno.ENAMETOOLONG, fs.rename(ROOT, b"f", ROOT, long, 0))
    await raises_errno(errno.ENAMETOOLONG, fs.unlink(ROOT, long))
    await raises_errno(errno.ENAMETOOLONG, fs.rmdir(ROOT, long))
    await fs.create(ROOT, ok, 0o100644, ME)
    assert (await fs.lookup(ROOT, ok)).nodeid
    assert sorted(await listdir(fs)) == [b"f", ok]


async def test_lower_names_of_255_bytes_can_be_looked_up_and_listed(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    a, c = "a" * 255, "c" * 255
    put(layers.lowers[0] / a, b"lower")
    put(layers.lowers[0] / c, b"other")
    fs = union()
    assert sorted(await listdir(fs)) == [a.encode(), c.encode()]
    assert await read(fs, a) == b"lower"
    await write(fs, a, b"LOWER")
    await unlink(fs, c)
    assert await listdir(fs) == [a.encode()]
    assert is_chardev_whiteout(upper / c)


@pytest.mark.root
async def test_symlinks_inside_layers_are_never_followed(
    union: UnionFactory, layers: Layers, upper: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    put(outside / "secret", b"secret")
    l0, l1, _ = layers.lowers
    os.symlink(outside, l0 / "link")
    put(l0 / "d" / "mine", b"mine")
    os.symlink(outside, l1 / "d")  # a symlink below a directory stops the merge
    os.symlink(outside, upper / "u")
    put(l0 / "u" / "f", b"hidden by the upper symlink")
    before = tree_snapshot(outside)
    fs = union()
    await raises_errno(errno.ENOTDIR, node(fs, "link/secret"))
    await raises_errno(errno.ENOTDIR, node(fs, "u/f"))
    assert await listdir(fs, "d") == [b"mine"]
    await raises_errno(errno.ENOENT, node(fs, "d/secret"))
    await fs.setattr(await node(fs, "link"), SetAttr(uid=1234))  # lchown: copies the link up
    await write(fs, "d/mine", b"MINE")
    await create(fs, "d/new", b"new")
    assert os.readlink(upper / "link") == str(outside)
    assert os.lstat(upper / "link").st_uid == 1234
    assert os.stat(outside).st_uid == 0
    assert not diff_snapshots(before, tree_snapshot(outside))
