"""Unit tests of the union core (`UnionFS`) on real temp directories, without FUSE.

Each test builds its lower trees, then asks the `union` fixture for a `UnionFS` over them (lowers
top first: lower0, lower1, lower2) and drives it with node ids, checking the upper and work dirs
directly. After every test the fixture checks the layer invariants: each lower layer is
byte-identical to what it was when the first `UnionFS` was made over it, the work dir's
`strata/tmp` is empty, and no `.wh.NAME` whiteout sits next to a real `NAME` in the upper.

Most tests need root (chown to other ids, trusted.* xattrs, 0/0 character devices).
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from tests.helpers.mounts import (
    diff_snapshots,
    is_chardev_whiteout,
    skip_unless_root,
    tree_snapshot,
)
from unionfs.attrs import Attr, Caller, SetAttr
from unionfs.config import UnionConfig, WhiteoutFormat, validate
from unionfs.core import UnionFS
from unionfs.dirops import SHARED_WHITEOUT
from unionfs.errors import UsageError
from unionfs.inodes import ROOT

pytestmark = pytest.mark.root

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

OPAQUE_XATTR_FORMS = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
PRIVATE_XATTRS = (
    "trusted.overlay.opaque",
    "trusted.overlay.origin",
    "trusted.strata.origin",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
)
# A valid VFS_CAP_REVISION_2 value: effective, permitted = CAP_NET_BIND_SERVICE.
CAPABILITY = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)
ROOT_CALLER = Caller(uid=0, gid=0)
USER = Caller(uid=1000, gid=1000)
KiB = 1 << 10
MiB = 1 << 20


@pytest.fixture(autouse=True)
def _needs_root() -> None:
    skip_unless_root()


# -------------------------------------------------------------------------------------------------
# layers and invariants


@dataclass
class Layers:
    lowers: list[Path]  # top first
    upper: Path
    work: Path

    @property
    def tmp(self) -> Path:
        return self.work / "strata" / "tmp"


@dataclass
class UnionFactory:
    """`union()` -> a UnionFS over the test's layers; remembers what to check afterwards."""

    layers: Layers
    made: list[UnionFS] = field(default_factory=list)
    closed: set[int] = field(default_factory=set)
    lower_snapshots: dict[Path, dict[str, object]] = field(default_factory=dict)

    def __call__(
        self,
        *,
        whiteout: WhiteoutFormat = WhiteoutFormat.AUTO,
        read_only: bool = False,
        lowers: list[Path] | None = None,
        upper: Path | None = None,
        metacopy: bool = True,
    ) -> UnionFS:
        lowers = self.layers.lowers if lowers is None else lowers
        for lower in lowers:
            if lower not in self.lower_snapshots:
                self.lower_snapshots[lower] = dict(tree_snapshot(lower))
        if read_only:
            cfg = UnionConfig(lowers=tuple(lowers), whiteout=whiteout)
        else:
            cfg = UnionConfig(
                lowers=tuple(lowers),
                upper=upper or self.layers.upper,
                work=self.layers.work,
                whiteout=whiteout,
                metacopy=metacopy,
            )
        fs = UnionFS(validate(cfg))
        self.made.append(fs)
        return fs

    def close(self, fs: UnionFS) -> None:
        if id(fs) not in self.closed:
            self.closed.add(id(fs))
            fs.close()

    def remount(self, fs: UnionFS, **kwargs: object) -> UnionFS:
        """Close fs and make a new UnionFS over the same layers (as an unmount + mount)."""
        self.close(fs)
        return self(**kwargs)  # type: ignore[arg-type]

    def close_all(self) -> None:
        for fs in self.made:
            self.close(fs)


def whiteouts_beside_real_entries(upper: Path) -> list[str]:
    """`.wh.NAME` markers in the upper whose NAME also exists there (must never happen)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(os.fsencode(upper)):
        names = set(dirnames) | set(filenames)
        for name in names:
            marker = name.startswith(b".wh.") and not name.startswith(b".wh..wh.")
            if marker and name[4:] in names:
                found.append(os.fsdecode(os.path.join(dirpath, name)))
    return found


def check_invariants(factory: UnionFactory) -> None:
    problems: list[str] = []
    for lower, before in factory.lower_snapshots.items():
        after = tree_snapshot(lower)
        diff = diff_snapshots(before, after, names=("before", "after"))  # type: ignore[arg-type]
        problems += [f"lower {lower.name} changed: {d}" for d in diff]
    tmp = factory.layers.tmp
    left = sorted(set(os.listdir(tmp)) - {os.fsdecode(SHARED_WHITEOUT)}) if tmp.exists() else []
    if left:
        problems.append(f"work dir leftovers in {tmp}: {left}")
    problems += [
        f"whiteout beside a real entry: {p}"
        for p in whiteouts_beside_real_entries(factory.layers.upper)
    ]
    assert not problems, "\n".join(problems)


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    lowers = [tmp_path / f"lower{i}" for i in range(3)]
    for d in (*lowers, tmp_path / "upper", tmp_path / "work"):
        d.mkdir()
    return Layers(lowers=lowers, upper=tmp_path / "upper", work=tmp_path / "work")


@pytest.fixture
def union(layers: Layers) -> Iterator[UnionFactory]:
    factory = UnionFactory(layers)
    try:
        yield factory
    finally:
        factory.close_all()
    check_invariants(factory)


@pytest.fixture
def lower0(layers: Layers) -> Path:
    return layers.lowers[0]


@pytest.fixture
def lower1(layers: Layers) -> Path:
    return layers.lowers[1]


@pytest.fixture
def upper(layers: Layers) -> Path:
    return layers.upper


# -------------------------------------------------------------------------------------------------
# building layers


def put(path: Path, data: bytes = b"", mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


def chardev_whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o000, os.makedev(0, 0))


def make_opaque(path: Path, form: str) -> None:
    if form == ".wh..wh..opq":
        (path / form).write_bytes(b"")
    else:
        os.setxattr(path, form, b"y")


def xattrs(path: Path) -> dict[str, bytes]:
    return {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in os.listxattr(path, follow_symlinks=False)
    }


# -------------------------------------------------------------------------------------------------
# driving the core by path


async def node(fs: UnionFS, path: str) -> int:
    """Node id of a union path ("" or "/" is the root), one lookup per component."""
    nodeid: int = ROOT
    for comp in path.strip("/").split("/"):
        if comp:
            nodeid = (await fs.lookup(nodeid, comp.encode())).nodeid
    return nodeid


async def parent_and_name(fs: UnionFS, path: str) -> tuple[int, bytes]:
    head, _, tail = path.strip("/").rpartition("/")
    return await node(fs, head), tail.encode()


async def attr(fs: UnionFS, path: str) -> Attr:
    return await fs.getattr(await node(fs, path))


async def read(fs: UnionFS, path: str, size: int = 1 << 16, offset: int = 0) -> bytes:
    nodeid = await node(fs, path)
    await fs.open(nodeid, os.O_RDONLY)
    return await fs.read(nodeid, offset, size)


async def write(
    fs: UnionFS, path: str, data: bytes, offset: int = 0, flags: int = os.O_RDWR
) -> None:
    nodeid = await node(fs, path)
    await fs.open(nodeid, flags)
    assert await fs.write(nodeid, offset, data) == len(data)


async def create(
    fs: UnionFS, path: str, data: bytes = b"", mode: int = 0o644, caller: Caller = ROOT_CALLER
) -> Attr:
    parent, name = await parent_and_name(fs, path)
    a = await fs.create(parent, name, stat.S_IFREG | mode, caller)
    if data:
        await fs.write(a.nodeid, 0, data)
    return a


async def listdir(fs: UnionFS, path: str = "") -> list[bytes]:
    """The names readdir returns (without '.' and '..'), in readdir order."""
    fh = await fs.opendir(await node(fs, path))
    try:
        return [name for name, _, _ in fs.readdir(fh, 0) if name not in (b".", b"..")]
    finally:
        await fs.releasedir(fh)


async def unlink(fs: UnionFS, path: str) -> None:
    parent, name = await parent_and_name(fs, path)
    await fs.unlink(parent, name)


async def rmdir(fs: UnionFS, path: str) -> None:
    parent, name = await parent_and_name(fs, path)
    await fs.rmdir(parent, name)


async def mkdir(fs: UnionFS, path: str, mode: int = 0o755, caller: Caller = ROOT_CALLER) -> Attr:
    parent, name = await parent_and_name(fs, path)
    return await fs.mkdir(parent, name, stat.S_IFDIR | mode, caller)


async def rename(fs: UnionFS, old: str, new: str, flags: int = 0) -> None:
    op, on = await parent_and_name(fs, old)
    np, nn = await parent_and_name(fs, new)
    await fs.rename(op, on, np, nn, flags)


async def exists(fs: UnionFS, path: str) -> bool:
    try:
        await node(fs, path)
    except FileNotFoundError:
        return False
    return True


async def errno_of(call: Awaitable[object]) -> int:
    """The errno `call` fails with (the test fails if it succeeds)."""
    try:
        await call
    except OSError as exc:
        return exc.errno or 0
    pytest.fail("expected an OSError, the call succeeded")


async def raises_errno(code: int, call: Awaitable[object]) -> None:
    got = await errno_of(call)
    assert got == code, f"expected {errno.errorcode[code]}, got {errno.errorcode.get(got, got)}"


# -------------------------------------------------------------------------------------------------
# lookup


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
    await raises_errno(errno.EPERM, fs.create(ROOT, b".wh.x", 0o100644, ROOT_CALLER))
    await raises_errno(errno.EPERM, fs.mkdir(ROOT, b".wh.x", 0o40755, ROOT_CALLER))
    await raises_errno(errno.EPERM, fs.mkdir(ROOT, b".wh..wh..opq", 0o40755, ROOT_CALLER))
    await raises_errno(errno.EPERM, fs.mknod(ROOT, b".wh.x", stat.S_IFIFO | 0o644, 0, ROOT_CALLER))
    await raises_errno(errno.EPERM, fs.symlink(ROOT, b".wh.x", b"f", ROOT_CALLER))
    await raises_errno(errno.EPERM, fs.link(fnode, ROOT, b".wh.x"))
    await raises_errno(errno.EPERM, fs.rename(ROOT, b"f", ROOT, b".wh.d", 0))
    assert await read(fs, "f") == b"f"
    assert await exists(fs, "d")


# -------------------------------------------------------------------------------------------------
# readdir


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


# -------------------------------------------------------------------------------------------------
# copy-up


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


async def test_interrupted_copy_up_leftovers_are_cleaned_at_start(
    union: UnionFactory, layers: Layers
) -> None:
    tmp = layers.tmp
    tmp.mkdir(parents=True)
    put(tmp / "123-1", b"half a copy")
    put(tmp / "123-2" / "deep" / "file", b"x")
    os.chmod(tmp / "123-2" / "deep", 0)
    os.mknod(tmp / "123-3", stat.S_IFCHR, os.makedev(0, 0))
    os.symlink("/etc/passwd", tmp / "123-4")
    (tmp / "123-5").mkdir()
    os.symlink("/etc", tmp / "123-5" / "escape")
    union()
    assert os.listdir(tmp) == []
    assert os.stat("/etc/passwd")


async def test_second_union_on_the_same_work_dir_is_refused(union: UnionFactory) -> None:
    first = union()
    with pytest.raises(UsageError, match="in use"):
        union()
    union.close(first)
    union()  # free again once the first is closed


# -------------------------------------------------------------------------------------------------
# whiteouts and removal


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


async def test_mknod_of_0_0_chardev_is_refused(union: UnionFactory, upper: Path) -> None:
    fs = union()
    await raises_errno(
        errno.EPERM, fs.mknod(ROOT, b"fake", stat.S_IFCHR | 0o644, os.makedev(0, 0), ROOT_CALLER)
    )
    assert os.listdir(upper) == []
    a = await fs.mknod(ROOT, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3), ROOT_CALLER)
    assert a.rdev == os.makedev(1, 3)
    await fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, ROOT_CALLER)
    assert stat.S_ISFIFO(os.lstat(upper / "fifo").st_mode)


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


# -------------------------------------------------------------------------------------------------
# xattrs, names, read-only


async def test_private_xattrs_are_not_listed_gettable_or_settable(
    union: UnionFactory, layers: Layers, upper: Path
) -> None:
    put(layers.lowers[0] / "f", b"f")
    os.setxattr(layers.lowers[0] / "f", "user.mine", b"1")
    put(layers.lowers[0] / "d" / "x")
    os.setxattr(layers.lowers[0] / "d", "trusted.overlay.opaque", b"y")
    fs = union()
    f, d = await node(fs, "f"), await node(fs, "d")
    await fs.setxattr(f, "user.other", b"2")  # copies f up, with an origin xattr
    assert fs.work.origin_xattr is not None
    assert fs.work.origin_xattr in os.listxattr(upper / "f")
    assert sorted(await fs.listxattr(f)) == ["user.mine", "user.other"]
    assert await fs.listxattr(d) == []
    for target in (f, d):
        for name in (*PRIVATE_XATTRS, fs.work.origin_xattr):
            await raises_errno(errno.ENODATA, fs.getxattr(target, name))
            assert await errno_of(fs.setxattr(target, name, b"y")) in (errno.EPERM, errno.EACCES)
            assert await errno_of(fs.removexattr(target, name)) in (errno.ENODATA, errno.EPERM)
    assert os.getxattr(upper / "f", fs.work.origin_xattr) == struct.pack("<Q", (await attr(fs, "f")).nodeid)
    assert "trusted.overlay.opaque" not in xattrs(upper / "f")


async def test_names_over_255_bytes_are_too_long(union: UnionFactory, layers: Layers) -> None:
    put(layers.lowers[0] / "f")
    fs = union()
    f = await node(fs, "f")
    long, ok = b"n" * 256, b"n" * 255
    await raises_errno(errno.ENAMETOOLONG, fs.lookup(ROOT, long))
    await raises_errno(errno.ENAMETOOLONG, fs.create(ROOT, long, 0o100644, ROOT_CALLER))
    await raises_errno(errno.ENAMETOOLONG, fs.mkdir(ROOT, long, 0o40755, ROOT_CALLER))
    await raises_errno(errno.ENAMETOOLONG, fs.mknod(ROOT, long, 0o10644, 0, ROOT_CALLER))
    await raises_errno(errno.ENAMETOOLONG, fs.symlink(ROOT, long, b"f", ROOT_CALLER))
    await raises_errno(errno.ENAMETOOLONG, fs.link(f, ROOT, long))
    await raises_errno(errno.ENAMETOOLONG, fs.rename(ROOT, b"f", ROOT, long, 0))
    await raises_errno(errno.ENAMETOOLONG, fs.unlink(ROOT, long))
    await raises_errno(errno.ENAMETOOLONG, fs.rmdir(ROOT, long))
    await fs.create(ROOT, ok, 0o100644, ROOT_CALLER)
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


async def test_rename_to_a_name_of_255_bytes(union: UnionFactory, upper: Path) -> None:
    fs = union()
    await create(fs, "f", b"data")
    await mkdir(fs, "d")
    await rename(fs, "f", "b" * 255)
    await rename(fs, "d", "e" * 255)
    assert sorted(os.listdir(upper)) == ["b" * 255, "e" * 255]
    assert await read(fs, "b" * 255) == b"data"


async def test_read_only_union_refuses_every_mutation(union: UnionFactory, layers: Layers) -> None:
    put(layers.lowers[0] / "f", b"data")
    put(layers.lowers[0] / "d" / "x")
    os.setxattr(layers.lowers[0] / "f", "user.x", b"1")
    fs = union(read_only=True)
    f, d = await node(fs, "f"), await node(fs, "d")
    mutations: list[Awaitable[object]] = [
        fs.create(ROOT, b"new", 0o100644, ROOT_CALLER),
        fs.mkdir(ROOT, b"new", 0o40755, ROOT_CALLER),
        fs.mknod(ROOT, b"new", stat.S_IFIFO | 0o644, 0, ROOT_CALLER),
        fs.symlink(ROOT, b"new", b"f", ROOT_CALLER),
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
    ]
    for call in mutations:
        await raises_errno(errno.EROFS, call)
    assert await read(fs, "f") == b"data"
    assert await fs.getxattr(f, "user.x") == b"1"
    assert sorted(await listdir(fs)) == [b"d", b"f"]
    st = await fs.statfs()
    assert st.f_blocks == os.statvfs(layers.lowers[0]).f_blocks


# -------------------------------------------------------------------------------------------------
# hard links


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


# -------------------------------------------------------------------------------------------------
# rename


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


# -------------------------------------------------------------------------------------------------
# inode numbers


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


# -------------------------------------------------------------------------------------------------
# ownership


async def test_new_objects_are_owned_by_the_caller(union: UnionFactory, upper: Path) -> None:
    fs = union()
    a = await create(fs, "f", mode=0o640, caller=USER)
    assert (a.uid, a.gid, stat.S_IMODE(a.mode)) == (1000, 1000, 0o640)
    await mkdir(fs, "d", 0o750, caller=USER)
    await fs.symlink(ROOT, b"s", b"f", USER)
    await fs.mknod(ROOT, b"p", stat.S_IFIFO | 0o600, 0, USER)
    for name, mode in (("f", 0o640), ("d", 0o750), ("p", 0o600)):
        st = os.lstat(upper / name)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, mode), name
    st = os.lstat(upper / "s")
    assert (st.st_uid, st.st_gid) == (1000, 1000)


@pytest.mark.parametrize("where", ["upper", "lower"])
async def test_setgid_directory_passes_its_group(
    union: UnionFactory, layers: Layers, upper: Path, where: str
) -> None:
    sg = (upper if where == "upper" else layers.lowers[0]) / "sg"
    sg.mkdir()
    os.chown(sg, 0, 2000)
    os.chmod(sg, 0o2775)
    fs = union()
    f = await create(fs, "sg/f", caller=USER)
    d = await mkdir(fs, "sg/d", 0o755, caller=USER)
    assert (f.uid, f.gid) == (1000, 2000)
    assert (d.uid, d.gid) == (1000, 2000)
    assert d.mode & stat.S_ISGID
    assert not f.mode & stat.S_ISGID
    st = os.lstat(upper / "sg" / "d")
    assert (st.st_gid, bool(st.st_mode & stat.S_ISGID)) == (2000, True)
    assert os.lstat(upper / "sg" / "f").st_gid == 2000


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


# -------------------------------------------------------------------------------------------------
# an upper written by strata reads back as a lower


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


# -------------------------------------------------------------------------------------------------
# metadata-only copy-up (metacopy)

METACOPY = "trusted.strata.metacopy"
METACOPY_LAYER = "trusted.strata.metacopy-layer"
BIG = bytes(range(256)) * 4096  # 1 MiB: copied in a worker thread


def is_metacopy(path: Path) -> bool:
    try:
        os.getxattr(path, METACOPY, follow_symlinks=False)
    except OSError:
        return False
    return True


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
    await raises_errno(errno.EIO, fs.write(await node(fs, "d/f"), 0, b"x"))
    await raises_errno(errno.EIO, fs.open(await node(fs, "d/f"), os.O_RDWR))
    assert not (layers.upper / "d" / "f").exists()


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
