"""A property test of layer extraction (issue 12): random member sequences of files, directories,
symlinks (to names inside the layer, to `..`, to a canary directory beside the layer),
hard links, whiteout files and opaque markers, members replacing earlier ones, absolute and `..`
names, setuid and world-writable modes.

Whatever the sequence, nothing outside the layer changes (a full metadata snapshot of the canary
tree next to it), and either the archive is refused with a LayerError or the extracted tree is
exactly what a model gives: the members applied in order, a later one replacing an earlier one
(a directory over a directory keeps it; anything else replaces it, a directory's whole tree
included), missing parents made as 0755 directories, a hard link a copy of an earlier file or
symlink; refused are absolute or `..` names, a member under a symlink or a non-directory, and a
hard link to anything but an earlier file or symlink member still there.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from images import extract

from .hostile import layer_tar, member


@dataclass(frozen=True)
class Dir:
    mode: int


@dataclass(frozen=True)
class File:
    data: bytes
    mode: int


@dataclass(frozen=True)
class Link:
    target: str


Entry = Dir | File | Link


class Refused(Exception):
    pass


def _clean(name: str) -> str:
    if name.startswith("/"):
        raise Refused(name)
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise Refused(name)
    return "/".join(parts)


def model(members: list[tuple[str, str, str, int]]) -> dict[str, Entry]:
    """(kind, name, arg, mode) applied in order, as extract_layer applies them."""
    tree: dict[str, Entry] = {}
    linkable: set[str] = set()
    for kind, name, arg, mode in members:
        rel = _clean(name)
        if not rel:
            if kind != "dir":
                raise Refused(name)
            continue  # the layer root's own metadata is not compared
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            found = tree.get(parent)
            if found is None:
                tree[parent] = Dir(0o755)
            elif not isinstance(found, Dir):
                raise Refused(name)
        old = tree.get(rel)
        if old is not None and not (isinstance(old, Dir) and kind == "dir"):
            if isinstance(old, Dir):
                for path in [p for p in tree if p.startswith(rel + "/")]:
                    del tree[path]
                linkable = {p for p in linkable if not p.startswith(rel + "/")}
            del tree[rel]
        linkable.discard(rel)
        if kind == "dir":
            tree[rel] = Dir(mode)
        elif kind == "file":
            tree[rel] = File(arg.encode(), mode)
            linkable.add(rel)
        elif kind == "symlink":
            tree[rel] = Link(arg)
            linkable.add(rel)
        else:  # hardlink
            target = _clean(arg)
            if target not in linkable:
                raise Refused(name)
            tree[rel] = tree[target]
    return tree


def read_tree(root: Path) -> dict[str, Entry]:
    tree: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st_ = os.lstat(path)
            if stat.S_ISLNK(st_.st_mode):
                tree[rel] = Link(os.readlink(path))
            elif stat.S_ISDIR(st_.st_mode):
                tree[rel] = Dir(stat.S_IMODE(st_.st_mode))
            else:
                with open(path, "rb") as f:
                    tree[rel] = File(f.read(), stat.S_IMODE(st_.st_mode))
    return tree


def snapshot(root: Path) -> list[tuple[object, ...]]:
    """Everything of a tree that a stray chmod, chown, utime, write or unlink would change."""
    out = []
    for dirpath, _, filenames in os.walk(root):
        for path in [dirpath, *(os.path.join(dirpath, n) for n in filenames)]:
            s = os.lstat(path)
            data = b""
            if stat.S_ISREG(s.st_mode):
                with open(path, "rb") as f:
                    data = f.read()
            out.append((path, s.st_mode, s.st_uid, s.st_gid, s.st_mtime_ns, s.st_nlink, data))
    return sorted(out)


NAMES = st.lists(st.sampled_from(["a", "b", "c", ".wh.a", ".wh..wh..opq"]), min_size=1, max_size=3)


@st.composite
def members(draw: st.DrawFn, canary: str) -> list[tuple[str, str, str, int]]:
    """Mostly well-formed sequences (so that most are extracted and compared with the model),
    with hostile names in a part of them."""
    hostile = draw(st.integers(0, 3)) == 0
    prefixes = ["", "./", "/", "../", "a/../"] if hostile else ["", "", "./"]
    out: list[tuple[str, str, str, int]] = []
    for _ in range(draw(st.integers(1, 12))):
        name = draw(st.sampled_from(prefixes)) + "/".join(draw(NAMES))
        kind = draw(st.sampled_from(["file", "file", "dir", "dir", "symlink", "hardlink"]))
        mode = draw(st.sampled_from([0o644, 0o755, 0o4777, 0o777, 0o600]))
        if kind == "symlink":
            # Absolute targets name only the canary: a broken extractor run by this test must
            # not change the host (an earlier one made "/" mode 0644 through a link to "/").
            arg = draw(st.sampled_from(["a", "b/c", "..", "../..", canary, canary + "/a"]))
        elif kind == "hardlink":
            earlier = [n for _, n, _, _ in out] or ["a"]
            arg = draw(st.sampled_from([*earlier, "/".join(draw(NAMES))]))
        else:
            arg = draw(st.sampled_from(["", "x", "data"]))
        out.append((kind, name, arg, mode))
    return out


def to_tar(seq: list[tuple[str, str, str, int]]) -> bytes:
    kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
             "hardlink": tarfile.LNKTYPE}  # fmt: skip
    built = []
    for kind, name, arg, mode in seq:
        if kind == "file":
            built.append(member(name, data=arg.encode(), mode=mode))
        else:
            built.append(member(name, kinds[kind], link=arg, mode=mode))
    return layer_tar(built)


# Named when the module is imported (the symlink targets are drawn when the test is defined),
# made only when its tests run: a collected but deselected module leaves nothing in /tmp.
WORK = Path(tempfile.gettempdir()) / f"strata-extract-property-{os.getpid()}-{secrets.token_hex(4)}"
CANARY = WORK / "canary"


@pytest.fixture(scope="module", autouse=True)
def _work_dir() -> Iterator[None]:
    WORK.mkdir(mode=0o700)
    try:
        yield
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seq=members(str(CANARY)))
def test_extraction_never_reaches_outside_and_matches_the_model(
    seq: list[tuple[str, str, str, int]],
) -> None:
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        base = Path(tmp)
        (base / "canary").mkdir(mode=0o700)
        (base / "canary" / "a").write_bytes(b"canary")
        os.chmod(base / "canary" / "a", 0o600)
        # the canary the symlinks name is the shared one; make it, and snapshot both
        CANARY.mkdir(mode=0o700, exist_ok=True)
        (CANARY / "a").write_bytes(b"canary")
        before = snapshot(base / "canary") + snapshot(CANARY)
        dest = base / "layer"
        dest.mkdir()
        try:
            expected: dict[str, Entry] | None = model(seq)
        except Refused:
            expected = None
        try:
            extract.extract_layer(io.BytesIO(to_tar(seq)), dest, limit=1 << 20)
            got: dict[str, Entry] | None = read_tree(dest)
        except extract.LayerError:
            got = None
        assert snapshot(base / "canary") + snapshot(CANARY) == before
        assert got == expected, seq
