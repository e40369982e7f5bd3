"""`strata build`'s COPY beyond the basics: hard links within one copy and extended attributes
(file capabilities, `user.*`) kept from the context and from a stage, as podman's build keeps
them (compared with a private podman store); `COPY --parents` and `COPY --exclude` (Dockerfile
1.7-labs, BuildKit's semantics) from the context and from a stage; and their bad input.

Builds need root and FUSE (the `strata` fixture skips otherwise, and fails the test if a mount or
process is left).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers.mounts import EntrySnapshot, diff_snapshots, tree_snapshot
from tests.helpers.podman import PrivatePodman
from tests.runtime.conftest import Strata

from .test_build import _load
from .test_multistage import _image_root

CAP = "cap_net_raw+ep"

LINKS_AND_XATTRS = """\
FROM localhost/uniontest:1 AS stage
COPY d /ctx/
FROM localhost/uniontest:1
COPY --from=stage /ctx /fromstage/
COPY d /direct/
COPY d/a d/b d/x /two-sources/
"""


def _links_context(root: Path) -> Path:
    """A context with a hard-linked pair, a file with a `user.*` xattr and one with a file
    capability (skips when the filesystem or setcap cannot make them)."""
    ctx = root / "ctx"
    (ctx / "d").mkdir(parents=True)
    (ctx / "d/a").write_text("linked\n")
    os.link(ctx / "d/a", ctx / "d/b")
    (ctx / "d/x").write_text("with xattr\n")
    (ctx / "d/cap").write_text("with a capability\n")
    try:
        os.setxattr(ctx / "d/x", "user.color", b"red")
    except OSError as e:
        pytest.skip(f"no user xattrs here: {e.strerror}")
    setcap = shutil.which("setcap") or "/usr/sbin/setcap"
    if not os.path.exists(setcap):
        pytest.skip("setcap is not installed")
    subprocess.run([setcap, CAP, str(ctx / "d/cap")], check=True)
    (ctx / "Dockerfile").write_text(LINKS_AND_XATTRS)
    return ctx


def _tree(root: Path, tops: tuple[str, ...]) -> dict[str, EntrySnapshot]:
    def exclude(rel: str) -> bool:
        return rel.split("/")[1] not in tops

    tree = tree_snapshot(root, mtime=False, dir_size=False, exclude=exclude)
    del tree["/"]
    return tree


def test_copy_keeps_hard_links_and_xattrs_as_podman(strata: Strata) -> None:
    store = _load(strata)
    ctx = _links_context(strata.tmp)
    strata.run("build", "-t", "links:1", str(ctx), check=True)
    tops = ("fromstage", "direct", "two-sources")
    with _image_root(store, "links:1", strata.tmp) as root:
        ours = _tree(root, tops)
        for top in tops:
            # links are kept within one source, not across the sources of a COPY (BuildKit's
            # and buildah's copy)
            links = (f"/{top}/a", f"/{top}/b") if top != "two-sources" else ()
            assert ours[f"/{top}/a"].hardlinks == links, top
            assert dict(ours[f"/{top}/x"].xattrs or ()) == {"user.color": b"red"}, top
        for top in ("fromstage", "direct"):
            caps = dict(ours[f"/{top}/cap"].xattrs or ())
            assert caps.keys() == {"security.capability"}, top
            shown = subprocess.run(
                ["getcap", str(root / top / "cap")], capture_output=True, text=True, check=True
            )
            assert "cap_net_raw=ep" in shown.stdout
        with PrivatePodman(strata.tmp) as podman:
            archive = strata.tmp / "uniontest.tar"
            strata.run("save", "uniontest:1", "-o", str(archive), check=True)
            podman.run("load", "-q", "-i", str(archive))
            podman.run("build", "-q", "--network", "host", "-t", "localhost/links:1", str(ctx))
            theirs = _tree(podman.mount("localhost/links:1"), tops)
            assert diff_snapshots(ours, theirs, names=("strata", "podman")) == []


def test_copy_cache_sees_links_and_xattrs(strata: Strata) -> None:
    """A changed xattr or a hard link made a copy is a new COPY step, not a cache hit."""
    _load(strata)
    ctx = _links_context(strata.tmp)
    (ctx / "Dockerfile").write_text("FROM localhost/uniontest:1\nCOPY d /direct/\n")
    strata.run("build", "-t", "c:1", str(ctx), check=True)
    again = strata.run("build", "-t", "c:1", str(ctx), check=True)
    assert "Using cache" in again.stdout
    os.setxattr(ctx / "d/x", "user.color", b"blue")
    changed = strata.run("build", "-t", "c:1", str(ctx), check=True)
    assert "Using cache" not in changed.stdout
    os.unlink(ctx / "d/b")
    shutil.copy(ctx / "d/a", ctx / "d/b")
    unlinked = strata.run("build", "-t", "c:1", str(ctx), check=True)
    assert "Using cache" not in unlinked.stdout


def test_copy_leaves_out_the_unions_private_xattrs(strata: Strata) -> None:
    """An xattr the union cannot take (trusted.* of the union's own namespace is private and
    left out): the copy still succeeds, without it."""
    store = _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("f\n")
    try:
        os.setxattr(ctx / "f", "trusted.overlay.opaque", b"y")
    except OSError as e:
        pytest.skip(f"no trusted xattrs here: {e.strerror}")
    (ctx / "Dockerfile").write_text("FROM localhost/uniontest:1\nCOPY f /f\n")
    strata.run("build", "-t", "p:1", str(ctx), check=True)
    with _image_root(store, "p:1", strata.tmp) as root:
        assert "trusted.overlay.opaque" not in os.listxattr(root / "f")
        assert (root / "f").read_text() == "f\n"


PARENTS_AND_EXCLUDE = """\
FROM localhost/uniontest:1 AS stage
COPY x /sx/x
FROM localhost/uniontest:1
ARG PAT=*.md
COPY --parents x/*.txt y/a.txt /p/
COPY --parents ./x/./sub/c.txt /pivot/
COPY --parents x /pdir/
COPY --exclude=*.log --exclude=cache dir /ex/
COPY --exclude=$PAT x /ex2/
COPY --from=stage --parents /sx/x/sub/c.txt /fromp/
COPY --from=stage --exclude=sub /sx/x /fromex/
ADD --exclude=*.md x /addex/
"""


def _files(root: Path, top: str) -> list[str]:
    found = []
    for dirpath, _dirs, names in os.walk(root / top):
        found += [os.path.relpath(os.path.join(dirpath, n), root) for n in names]
    return sorted(found)


def test_copy_parents_and_exclude(strata: Strata) -> None:
    store = _load(strata)
    ctx = strata.tmp / "ctx"
    for rel, text in {
        "x/a.txt": "xa",
        "x/b.md": "xb",
        "x/sub/c.txt": "xc",
        "y/a.txt": "ya",
        "dir/keep": "k",
        "dir/skip.log": "s",
        "dir/cache/big": "b",
    }.items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(text)
    os.chmod(ctx / "x", 0o750)
    os.utime(ctx / "x", (1_000_000_000, 1_000_000_000))
    (ctx / "Dockerfile").write_text(PARENTS_AND_EXCLUDE)
    done = strata.run("build", "-t", "pe:1", str(ctx), check=True)
    assert "COPY --parents x/*.txt y/a.txt /p/" in done.stdout
    with _image_root(store, "pe:1", strata.tmp) as root:
        assert _files(root, "p") == ["p/x/a.txt", "p/y/a.txt"]
        # the parents are made as the context has them
        st = os.stat(root / "p/x")
        assert (st.st_mode & 0o7777, st.st_mtime) == (0o750, 1_000_000_000)
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert _files(root, "pivot") == ["pivot/sub/c.txt"]
        assert _files(root, "pdir") == ["pdir/x/a.txt", "pdir/x/b.md", "pdir/x/sub/c.txt"]
        assert _files(root, "ex") == ["ex/keep"]
        assert not (root / "ex/cache").exists()
        assert _files(root, "ex2") == ["ex2/a.txt", "ex2/sub/c.txt"]
        assert _files(root, "fromp") == ["fromp/sx/x/sub/c.txt"]
        assert _files(root, "fromex") == ["fromex/a.txt", "fromex/b.md"]
        assert _files(root, "addex") == ["addex/a.txt", "addex/sub/c.txt"]
        assert (root / "p/y/a.txt").read_text() == "ya"
    again = strata.run("build", "-t", "pe:1", str(ctx), check=True)
    assert again.stdout.count("Using cache") == 9


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("COPY --parents=maybe a /", "COPY --parents=maybe: expected true or false"),
        ("ADD --parents a /", "ADD --parents is not supported"),
        ("COPY --exclude a /", "COPY --exclude needs a value (--exclude=...)"),
        ("COPY --link=yes a /", "COPY --link=yes: expected true or false"),
    ],
)
def test_copy_parents_and_exclude_bad_input(strata: Strata, line: str, error: str) -> None:
    _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "a").write_text("a")
    (ctx / "Dockerfile").write_text(f"FROM localhost/uniontest:1\n{line}\n")
    before = sorted(os.listdir(strata.root / "images/records"))
    refused = strata.run("build", "-t", "bad:1", str(ctx))
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"strata: Dockerfile:2: {error}"
    assert sorted(os.listdir(strata.root / "images/records")) == before
