"""uidmapping=/gidmapping= and squash_to_* in the core: ids are translated at the boundary only.

On disk the upper holds the "outside" ids; the union shows the "inside" ones (fuse-overlayfs's
meaning of `inside:outside:count`). Unmapped ids pass unchanged; squash overrides what is shown.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.mounts import skip_unless_root
from unionfs.attrs import Caller, SetAttr
from unionfs.config import IdMapping, UnionConfig, validate
from unionfs.core import UnionFS
from unionfs.inodes import ROOT


def _layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    lower, upper, work = (tmp_path / n for n in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "f").write_bytes(b"x")
    os.chown(lower / "f", 100005, 100005)
    return lower, upper, work


async def test_mapped_ids_are_shown_inside_and_stored_outside(tmp_path: Path) -> None:
    skip_unless_root()
    lower, upper, work = _layers(tmp_path)
    maps = (IdMapping(inside=0, outside=100000, count=65536),)
    fs = UnionFS(validate(UnionConfig((lower,), upper, work, uid_map=maps, gid_map=maps)))
    try:
        attr = await fs.lookup(ROOT, b"f")
        assert (attr.uid, attr.gid) == (5, 5)
        new = await fs.create(ROOT, b"n", 0o644, Caller(uid=7, gid=8))
        assert (new.uid, new.gid) == (7, 8)
        st = os.stat(upper / "n")
        assert (st.st_uid, st.st_gid) == (100007, 100008)
        await fs.setattr(attr.nodeid, SetAttr(uid=9, gid=10))
        st = os.stat(upper / "f")  # chown copied it up, with the outside ids
        assert (st.st_uid, st.st_gid) == (100009, 100010)
        assert (await fs.getattr(attr.nodeid)).uid == 9
    finally:
        fs.close()


async def test_squash_shows_one_owner_but_keeps_disk_ids(tmp_path: Path) -> None:
    skip_unless_root()
    lower, upper, work = _layers(tmp_path)
    fs = UnionFS(validate(UnionConfig((lower,), upper, work, squash_uid=0, squash_gid=0)))
    try:
        attr = await fs.lookup(ROOT, b"f")
        assert (attr.uid, attr.gid) == (0, 0)
        assert os.stat(lower / "f").st_uid == 100005
    finally:
        fs.close()
