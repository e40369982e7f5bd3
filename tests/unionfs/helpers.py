"""Building layers and driving the union core (`UnionFS`) by path, for tests/unionfs.

Each test builds its lower trees, then asks the `union` fixture (conftest.py) for a `UnionFS` over
them (lowers top first: lower0, lower1, lower2) and drives it with node ids, checking the upper and
work dirs directly. After every test the fixture checks the layer invariants: each lower layer is
byte-identical to what it was when the first `UnionFS` was made over it, the work dir's
`strata/tmp` is empty, and no `.wh.NAME` whiteout sits next to a real `NAME` in the upper.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.helpers.mounts import (
    diff_snapshots,
    tree_snapshot,
)
from unionfs.attrs import Attr, Caller
from unionfs.config import UnionConfig, WhiteoutFormat, validate
from unionfs.core import UnionFS
from unionfs.dirops import SHARED_WHITEOUT
from unionfs.inodes import ROOT

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
ME = Caller(uid=os.getuid(), gid=os.getgid())  # creating as the test user needs no privilege
USER = Caller(uid=1000, gid=1000)
KiB = 1 << 10
MiB = 1 << 20


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
    fs: UnionFS, path: str, data: bytes = b"", mode: int = 0o644, caller: Caller = ME
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


async def mkdir(fs: UnionFS, path: str, mode: int = 0o755, caller: Caller = ME) -> Attr:
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
