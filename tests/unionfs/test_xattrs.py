"""xattrs through the union (unionfs/xattrs.py): private markers are never listed, read or set."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import pytest

from tests.unionfs.helpers import (
    PRIVATE_XATTRS,
    Layers,
    UnionFactory,
    attr,
    errno_of,
    node,
    put,
    raises_errno,
    xattrs,
)


@pytest.mark.root
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
    assert os.getxattr(upper / "f", fs.work.origin_xattr) == struct.pack(
        "<Q", (await attr(fs, "f")).nodeid
    )
    assert "trusted.overlay.opaque" not in xattrs(upper / "f")
