"""`strata build` of multi-stage Dockerfiles and here-documents on the busybox test image:
COPY --from a stage, an index and an image, FROM a stage, `--target`, stages the target does not
need left unbuilt, the cache across stages; and the same Dockerfile built by podman gives the
same files and config (podman 4.3 has no here-documents: those are checked against Docker's
documented behaviour).

Builds need root and FUSE (the `strata` fixture skips otherwise, and fails the test if a mount or
process is left).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from images.store import ImageStore
from tests.helpers.mounts import (
    EntrySnapshot,
    StrataMount,
    UnionDirs,
    diff_snapshots,
    tree_snapshot,
)
from tests.helpers.podman import PrivatePodman
from tests.runtime.conftest import Strata

from .test_build import _load

# The stages podman builds too (no here-documents).
STAGES = """\
ARG BASE=uniontest:1
FROM ${BASE} AS build
COPY src.txt /src/
RUN mkdir -p /out/sub && cp /src/src.txt /out/f && chown 5:6 /out/f /out/sub \\
 && chmod 640 /out/f && ln -s f /out/link && ln -s /out/f /abs && mkfifo /out/fifo
FROM uniontest:1 AS unused
RUN echo SHOULD-NOT-RUN
FROM build AS child
RUN echo child > /child
FROM uniontest:1
ARG WHO=you
COPY --from=build /out /copied
COPY --from=build /out/link /followed
COPY --from=build /abs /absfollowed
COPY --from=build /out/f /out/link /multi/
COPY --from=0 /out/f* /glob/
COPY --from=child --chown=7:8 /child /
COPY --from=uniontest:1 /etc/motd /from-image
WORKDIR /work
CMD ["cat", "/child"]
"""

HEREDOCS = """\
COPY --chown=1:2 <<EOF a.txt <<'RAW' /here/
hello $WHO "quoted" \\$WHO
EOF
raw $WHO
RAW
RUN <<EOF
echo "script says $WHO"
echo "$WHO" > /script-out
EOF
RUN <<EOF
#!/bin/sh
echo "shebang script $0"
EOF
RUN cat <<EOF > /x && cat <<-'TABS' > /y
in $WHO
EOF
\tno tabs $WHO
\tTABS
"""

PATHS = ("copied", "followed", "absfollowed", "multi", "glob", "child", "from-image", "work")


def _context(root: Path, dockerfile: str) -> Path:
    ctx = root / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "src.txt").write_text("from the context\n")
    (ctx / "a.txt").write_text("a-text\n")
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


@contextmanager
def _image_root(store: ImageStore, ref: str, tmp: Path) -> Iterator[Path]:
    """The image's layers mounted read-only (a union without an upper)."""
    rec = store.get(ref)
    dirs = UnionDirs(
        lowers=[store.layer_path(d) for d in reversed(rec.layers)],
        upper=None,
        work=None,
        mnt=tmp / f"mnt-{rec.id[:12]}",
    )
    dirs.mnt.mkdir()
    with StrataMount(dirs, log_path=tmp / f"mnt-{rec.id[:12]}.log"):
        yield dirs.mnt


def _tree(root: Path) -> dict[str, EntrySnapshot]:
    """What the builds made, without times or directory sizes (filesystems differ there)."""

    def exclude(rel: str) -> bool:
        return rel.split("/")[1] not in PATHS

    tree = tree_snapshot(root, mtime=False, dir_size=False, xattrs=False, exclude=exclude)
    del tree["/"]
    return tree


def test_multistage_copy_from_heredocs_target_and_cache(strata: Strata) -> None:
    store = _load(strata)
    ctx = _context(strata.tmp, STAGES + HEREDOCS)
    done = strata.run("build", "-t", "ms:1", str(ctx), check=True)
    assert "SHOULD-NOT-RUN" not in done.stdout  # a stage nothing needs is not built
    assert "Step 5/" not in done.stdout
    assert "Step 6/" not in done.stdout
    assert "script says you" in done.stdout
    assert "shebang script /dev/pipes/EOF" in done.stdout
    rec = store.get("ms:1")
    config = rec.config["config"]
    assert isinstance(config, dict)
    assert config["Cmd"] == ["cat", "/child"]
    assert config["WorkingDir"] == "/work"

    with _image_root(store, "ms:1", strata.tmp) as root:
        tree = _tree(root)
        assert tree["/copied/f"][1:4] == (0o640, 5, 6)  # COPY --from keeps owners and modes
        assert tree["/copied/sub"][:4] == ("dir", 0o755, 5, 6)
        assert tree["/copied/link"].target == b"f"  # a link inside a copied directory stays
        assert tree["/copied/fifo"].kind == "fifo"
        for followed in ("/followed", "/absfollowed", "/multi/link", "/multi/f", "/glob/f"):
            assert tree[followed][:5] == ("file", 0o640, 5, 6, 17), followed  # links followed
        assert set(tree) >= {"/glob", "/glob/f"}
        assert "/glob/fifo" in tree
        assert tree["/child"][1:4] == (0o644, 7, 8)  # --chown wins
        assert (root / "child").read_text() == "child\n"  # FROM a stage builds on it
        assert (root / "from-image").read_bytes() == (root / "etc/motd").read_bytes()
        # here-documents
        assert (root / "here/EOF").read_text() == 'hello you "quoted" $WHO\n'
        assert (root / "here/RAW").read_text() == "raw $WHO\n"
        assert (root / "here/a.txt").read_text() == "a-text\n"
        for name in ("EOF", "RAW", "a.txt"):
            st = os.lstat(root / "here" / name)
            assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o644, 1, 2)
        assert (root / "script-out").read_text() == "you\n"
        assert (root / "x").read_text() == "in you\n"
        assert (root / "y").read_text() == "no tabs $WHO\n"
        assert not (root / "dev/pipes").exists()  # the script was bound, not written

    history = rec.config["history"]
    assert isinstance(history, list)
    shebang_run = [h for h in history if "/dev/pipes/EOF" in h["created_by"]]
    assert len(shebang_run) == 1

    # an unchanged rebuild: every step of the built stages from the cache, the same image
    again = strata.run("build", "-t", "ms:2", str(ctx), check=True)
    steps = again.stdout.count("\nStep ") + again.stdout.startswith("Step ")
    built = [line for line in again.stdout.splitlines() if line.startswith("Step ")]
    metadata_only = sum(1 for line in built if " : ARG " in line or " : FROM " in line)
    assert again.stdout.count("Using cache") == steps - metadata_only
    assert store.get("ms:2").id == rec.id

    # a change in the build stage's context: its COPY and what copies from it are made again
    (ctx / "src.txt").write_text("changed\n")
    changed = strata.run("build", "-t", "ms:3", str(ctx), check=True)
    assert "Step 3/" in changed.stdout
    step3 = changed.stdout.split("Step 3/")[1].split("Step 4/")[0]
    assert "Using cache" not in step3
    copy_from = changed.stdout.split("Step 11/")[1].split("Step 12/")[0]
    assert "Using cache" not in copy_from
    with _image_root(store, "ms:3", strata.tmp) as root:
        assert (root / "copied/f").read_text() == "changed\n"

    # --target: the stage, built alone (from the cache), as an image
    target = strata.run("build", "--target", "build", "-t", "ms:build", str(ctx), check=True)
    assert "Step 10/" not in target.stdout
    assert "SHOULD-NOT-RUN" not in target.stdout
    with _image_root(store, "ms:build", strata.tmp) as root:
        assert (root / "out/f").read_text() == "changed\n"
        assert not (root / "copied").exists()
    refused = strata.run("build", "--target", "nosuch", str(ctx))
    assert refused.returncode == 1
    assert refused.stderr.strip() == "strata: --target nosuch: no stage of that name"


def test_multistage_matches_podman(strata: Strata) -> None:
    """The same multi-stage Dockerfile and context built by podman: the same files, modes,
    owners, link targets and contents, and the same config fields."""
    store = _load(strata)
    ctx = _context(strata.tmp, STAGES.replace(" && mkfifo /out/fifo", ""))
    strata.run("build", "-t", "ms:1", str(ctx), check=True)
    with PrivatePodman(strata.tmp) as podman:
        archive = strata.tmp / "uniontest.tar"
        strata.run("save", "uniontest:1", "-o", str(archive), check=True)
        podman.run("load", "-q", "-i", str(archive))
        podman.run("build", "-q", "--network", "host", "-t", "localhost/ms:1", str(ctx))
        (info,) = json.loads(podman.run("image", "inspect", "localhost/ms:1"))
        theirs = podman.mount("localhost/ms:1")
        with _image_root(store, "ms:1", strata.tmp) as root:
            ours_tree = _tree(root)
            # Docker creates a WORKDIR nothing writes to, buildah 1.28 does not: strata
            # follows Docker (README).
            assert ours_tree.pop("/work").kind == "dir"
            diff = diff_snapshots(ours_tree, _tree(theirs), names=("strata", "podman"))
            assert diff == []
            for rel in ("copied/f", "followed", "multi/link", "child", "from-image"):
                assert (root / rel).read_bytes() == (theirs / rel).read_bytes(), rel
        ours = store.get("ms:1").config["config"]
        assert isinstance(ours, dict)
        for field in ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "ExposedPorts"):
            assert ours.get(field) == info["Config"].get(field), field
