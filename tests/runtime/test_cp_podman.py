"""`strata cp` against `podman cp` (the oracle that runs here: podman can create a container and
copy to and from it, not run it): the same image in both, the same copies, the same trees."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.images import BUSYBOX_OCI_ARCHIVE
from tests.helpers.podman import PrivatePodman
from tests.runtime.conftest import STRATA, Strata

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def tree(path: Path) -> dict[str, tuple[object, ...]]:
    """What a copy made: each entry's type, mode, owner and content (or link target)."""
    out: dict[str, tuple[object, ...]] = {}
    if not os.path.lexists(path):
        return out
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (
            [".", *dirnames, *filenames] if dirpath == str(path) else [*dirnames, *filenames]
        ):
            full = os.path.join(dirpath, name) if name != "." else dirpath
            st = os.lstat(full)
            rel = os.path.relpath(full, path)
            if stat.S_ISREG(st.st_mode):
                what: object = hashlib.sha256(Path(full).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(full)
            else:
                what = ""
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, what)
    return out


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[list[str]]:
    """The shared private podman store (tests/helpers/podman.py) with the test image and a
    created container `pc`; its command line."""
    with PrivatePodman(tmp_path) as store:
        store.run("load", "-q", "-i", str(BUSYBOX_OCI_ARCHIVE))
        store.run("create", "--name", "pc", "localhost/uniontest:1", "true")
        try:
            yield store.base
        finally:
            subprocess.run([*store.base, "rm", "-f", "pc"], capture_output=True, check=False)


# strata's init layer holds the container's /etc mount points (empty files, as docker's init
# layer; podman has none), which a copy of a stopped container's /etc shows, as docker's does
INIT_FILES = ("hostname", "hosts", "resolv.conf")

CASES = [
    # (SRC in the container, DEST below the output dir, what is there before)
    ("/etc", "new", None),
    ("/etc", "dir", "dir"),
    ("/etc/.", "dir", "dir"),
    ("/etc/passwd", "newfile", None),
    ("/etc/passwd", "dir", "dir"),
    ("/etc/passwd", "file", "file"),
    ("/etc/passwd", "dir/", "dir"),
    ("/etc", "file", "file"),  # refused by both
    ("/nonexistent", "dir", "dir"),  # refused by both
    ("/etc/passwd", "missing/", None),  # refused by both
]


def test_copies_out_match_podman(strata: Strata, podman: list[str], tmp_path: Path) -> None:
    strata.run("load", "-q", "-i", str(BUSYBOX_OCI_ARCHIVE), check=True)
    strata.run("create", "--name", "sc", "uniontest:1", "true", check=True)
    for i, (src, dest, before) in enumerate(CASES):
        results = []
        for who, command in (
            ("podman", [*podman, "cp", f"pc:{src}"]),
            ("strata", [STRATA, "cp", "--root", str(strata.root), f"sc:{src}"]),
        ):
            out = tmp_path / f"{who}-{i}"
            out.mkdir()
            if before == "dir":
                (out / "dir").mkdir()
            elif before == "file":
                (out / "file").write_text("before\n")
            done = subprocess.run(
                [*command, str(out / dest)], capture_output=True, timeout=120, check=False
            )
            results.append((done.returncode == 0, tree(out)))
        (p_ok, p_tree), (s_ok, s_tree) = results
        diff = {
            k: (p_tree.get(k), s_tree.get(k))
            for k in p_tree.keys() | s_tree.keys()
            if p_tree.get(k) != s_tree.get(k) and os.path.basename(k) not in INIT_FILES
        }
        assert (p_ok, diff) == (s_ok, {}), (src, dest, before)


def test_copy_in_matches_podman(strata: Strata, podman: list[str], tmp_path: Path) -> None:
    strata.run("load", "-q", "-i", str(BUSYBOX_OCI_ARCHIVE), check=True)
    strata.run("create", "--name", "sc", "uniontest:1", "true", check=True)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("file\n")
    os.chmod(src / "sub" / "f", 0o640)
    os.symlink("sub/f", src / "link")
    for who, command in (
        ("podman", [*podman, "cp"]),
        ("strata", [STRATA, "cp", "--root", str(strata.root)]),
    ):
        name = "pc" if who == "podman" else "sc"
        for args in ((str(src), f"{name}:/opt/"), (str(src / "sub/f"), f"{name}:/etc/renamed")):
            subprocess.run([*command, *args], capture_output=True, timeout=120, check=True)
        back = tmp_path / f"back-{who}"
        back.mkdir()
        for path in ("/opt/src", "/etc/renamed"):
            subprocess.run(
                [*command, f"{name}:{path}", str(back)],
                capture_output=True,
                timeout=120,
                check=True,
            )
    assert tree(tmp_path / "back-podman") == tree(tmp_path / "back-strata")
    assert (tmp_path / "back-strata" / "src" / "sub" / "f").read_text() == "file\n"


def test_diff_after_copies_matches_podman(
    strata: Strata, podman: list[str], tmp_path: Path
) -> None:
    strata.run("load", "-q", "-i", str(BUSYBOX_OCI_ARCHIVE), check=True)
    strata.run("create", "--name", "sc", "uniontest:1", "true", check=True)
    note = tmp_path / "note"
    note.write_text("note\n")
    new_dir = tmp_path / "newdir"
    (new_dir / "inner").mkdir(parents=True)
    (new_dir / "inner" / "f").write_text("f\n")
    diffs = []
    for name, command in (("pc", podman), ("sc", [STRATA])):
        root = [] if name == "pc" else ["--root", str(strata.root)]
        cp = [*command, "cp", *root]
        for src, dest in ((note, "/opt/"), (note, "/etc/passwd"), (new_dir, "/var/")):
            subprocess.run(
                [*cp, str(src), f"{name}:{dest}"], capture_output=True, timeout=120, check=True
            )
        diff = [*command, "diff", *root, name]
        done = subprocess.run(diff, capture_output=True, text=True, timeout=120, check=True)
        diffs.append(sorted(done.stdout.splitlines()))
    assert diffs[0] == diffs[1]
    assert "A /var/newdir/inner/f" in diffs[1]
