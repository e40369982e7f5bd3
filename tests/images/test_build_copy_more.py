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
