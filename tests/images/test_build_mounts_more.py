"""`RUN --mount=type=tmpfs,size=N` is a real tmpfs of that size, and the directories of
`RUN --mount=type=cache` are build cache: `strata builder prune` and `strata system prune`
remove them (not one a RUN holds), `strata system df` counts them as "Build Cache".

Builds need root and FUSE (the `strata` fixture skips otherwise, and fails the test if a mount or
process is left).
"""

from __future__ import annotations

import fcntl
import os

from tests.runtime.conftest import Strata

from .test_build import _load
from .test_multistage import _image_root

TMPFS = """\
FROM localhost/uniontest:1
RUN --mount=type=tmpfs,target=/t,size=1m grep " /t " /proc/mounts > /mounts \\
 && (dd if=/dev/zero of=/t/f bs=1024 count=2048 2>/dev/null && echo fits || echo full) > /res \\
 && ls /t > /listed
"""


def test_tmpfs_mount_is_a_tmpfs_of_its_size(strata: Strata) -> None:
    store = _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(TMPFS)
    strata.run("build", "-t", "t:1", str(ctx), check=True)
    with _image_root(store, "t:1", strata.tmp) as root:
        fields = (root / "mounts").read_text().split()
        assert fields[1:3] == ["/t", "tmpfs"]
        assert "size=1024k" in fields[3].split(",")
        assert (root / "res").read_text() == "full\n"  # 2 MiB do not fit in 1 MiB
        assert (root / "listed").read_text() == "f\n"
        assert not (root / "t").exists()  # the mount point is not in the layer


def test_tmpfs_mount_bad_size(strata: Strata) -> None:
    _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM localhost/uniontest:1\nRUN --mount=type=tmpfs,target=/t,size=lots true\n"
    )
    refused = strata.run("build", "-t", "t:1", str(ctx))
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "strata: Dockerfile:2: RUN --mount=type=tmpfs,target=/t,size=lots:"
        " size=lots: expected a size such as 64m or 1g"
    )


CACHE = """\
FROM localhost/uniontest:1
RUN --mount=type=cache,target=/c ls /c > /before && dd if=/dev/zero of=/c/big bs=1024 count=64
"""


def _build_cache_row(strata: Strata) -> list[str]:
    df = strata.run("system", "df", check=True).stdout.splitlines()
    (row,) = [line for line in df if line.startswith("Build Cache")]
    return row.split()


def test_builder_prune_removes_cache_mounts_not_in_use(strata: Strata) -> None:
    store = _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(CACHE)
    strata.run("build", "-t", "c:1", str(ctx), check=True)
    mounts = strata.root / "images/build-mounts"
    (mount,) = os.listdir(mounts)
    # docker's columns: TYPE (two words) TOTAL ACTIVE SIZE RECLAIMABLE; one entry, one mount
    row = _build_cache_row(strata)
    assert row[2:4] == ["2", "0"]
    assert row[4].endswith("kB")
    assert float(row[4][:-2]) >= 65
    # a RUN using it holds a flock: prune leaves it
    fd = os.open(mounts / mount, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        assert _build_cache_row(strata)[3] == "1"
        kept = strata.run("builder", "prune", "-f", check=True)
        assert mount not in kept.stdout
        assert os.listdir(mounts) == [mount]
    finally:
        os.close(fd)
    pruned = strata.run("builder", "prune", "-a", "-f", check=True)
    assert pruned.stdout.startswith("Deleted build cache objects:\n")
    assert f"\n{mount}\n" in pruned.stdout
    assert "Total reclaimed space: 0B" not in pruned.stdout
    assert os.listdir(mounts) == []
    assert os.listdir(strata.root / "images/cache") == []
    assert store.get("c:1").tags == ("localhost/c:1",)  # images stay
    # the next build starts with an empty cache mount, and runs the step again
    again = strata.run("build", "-t", "c:2", str(ctx), check=True)
    assert "Using cache" not in again.stdout
    with _image_root(store, "c:2", strata.tmp) as root:
        assert (root / "before").read_text() == ""
    nothing = strata.run("builder", "prune", check=True)
    assert nothing.stdout.startswith("Deleted build cache objects:")
    assert strata.run("system", "prune", "-f", check=True).returncode == 0
    assert os.listdir(mounts) == []
    assert strata.run("builder", "prune", check=True).stdout == "Total reclaimed space: 0B\n"


def test_builder_prune_bad_input(strata: Strata) -> None:
    bad = strata.run("builder", "prune", "--nosuch")
    assert bad.returncode == 125
    assert len(bad.stderr.strip().splitlines()) <= 3
    assert "Traceback" not in bad.stderr
    empty = strata.run("builder", "prune", check=True)  # no store yet: nothing to do
    assert empty.stdout == "Total reclaimed space: 0B\n"
    assert not (strata.root / "images").exists()
