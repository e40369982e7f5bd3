"""`strata build` runs independent stages at the same time (images/stagepool.py): each once,
their output prefixed with the stage, and a failing stage stops the others with nothing left
behind. No timing asserts: the two stages meet through a shared cache mount, which only works
when they run at the same time (each waits for the other's mark), and the failing stage waits
until the other is inside its long RUN.

Builds need root and FUSE (the `strata` fixture skips otherwise, and fails the test if a mount or
process is left).
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.runtime.conftest import Strata
from tests.runtime.test_rootless import rootless as rootless

from .test_build import _load
from .test_load import _archive
from .test_multistage import _image_root

# each RUN marks itself in the shared cache dir, then waits (at most 120 s) for the other's mark
MEET = (
    "RUN --mount=type=cache,id=meet,target=/meet"
    " echo {me} > /meet/{me} && i=0 && while [ ! -e /meet/{other} ]; do"
    " i=$((i+1)); [ $i -lt 1200 ] || exit 7; sleep 0.1; done && echo {me} made > /{me}.out"
)

PARALLEL = f"""\
FROM localhost/uniontest:1 AS left
{MEET.format(me="left", other="right")}
RUN echo left says hello
FROM localhost/uniontest:1 AS right
{MEET.format(me="right", other="left")}
RUN echo right says hello
FROM localhost/uniontest:1
COPY --from=left /left.out /
COPY --from=right /right.out /
"""

FAILING = """\
FROM localhost/uniontest:1 AS bad
RUN --mount=type=cache,id=fail,target=/meet i=0; while [ ! -e /meet/slow ]; do \\
    i=$((i+1)); [ $i -lt 1200 ] || exit 7; sleep 0.1; done; exit 3
FROM localhost/uniontest:1 AS slow
RUN --mount=type=cache,id=fail,target=/meet touch /meet/slow && sleep 300
FROM localhost/uniontest:1
COPY --from=bad /etc/motd /a
COPY --from=slow /etc/motd /b
"""


def test_independent_stages_run_at_the_same_time(strata: Strata) -> None:
    store = _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(PARALLEL)
    done = strata.run("build", "-t", "par:1", str(ctx), check=True)
    lines = done.stdout.splitlines()
    # each stage's lines carry its name, its RUN output too; each stage is built once
    assert "[left] left says hello" in lines
    assert "[right] right says hello" in lines
    assert sum(line.startswith("[left] Step 1/9 : FROM") for line in lines) == 1
    assert sum(line.startswith("[right] Step 4/9 : FROM") for line in lines) == 1
    # the last stage (alone) prints as a sequential build does
    assert "Step 7/9 : FROM localhost/uniontest:1" in lines
    with _image_root(store, "par:1", strata.tmp) as root:
        assert (root / "left.out").read_text() == "left made\n"
        assert (root / "right.out").read_text() == "right made\n"
    again = strata.run("build", "-t", "par:1", str(ctx), check=True)
    assert again.stdout.count("Using cache") == 6


def test_a_failing_stage_stops_the_others(strata: Strata) -> None:
    _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(FAILING)
    records = sorted(os.listdir(strata.root / "images/records"))
    failed = strata.run("build", "-t", "fail:1", str(ctx))
    assert failed.returncode == 1
    assert (
        failed.stderr.strip()
        .splitlines()[-1]
        .startswith("strata: Dockerfile:2: RUN /bin/sh -c i=0;")
    )
    assert failed.stderr.strip().endswith("exit status 3")
    assert sorted(os.listdir(strata.root / "images/records")) == records
    assert strata.run("ps", "-a", "-q").stdout.strip() == ""
    assert os.listdir(strata.root / "images/tmp") == []


ROOTLESS = (
    PARALLEL.replace(
        "RUN echo left says hello",
        "RUN --mount=type=tmpfs,target=/t,size=64k"
        " (dd if=/dev/zero of=/t/f bs=1024 count=128 2>/dev/null && echo fits || echo full) > /tmpfs",
    )
    + "COPY --from=left /tmpfs /\n"
)


def test_rootless_parallel_stages_tmpfs_and_builder_prune(
    rootless: tuple[Strata, list[str], bool],
) -> None:
    """A rootless build (in the user's user namespace): the stages meet as root's do, the tmpfs
    has its size, and builder prune removes the cache mount."""
    user, _, _with_subids = rootless
    ctx = Path(user.tmp) / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(ROOTLESS)
    user.run("load", "-q", "-i", str(_archive("oci")), check=True)
    done = user.run("build", "-t", "par:1", str(ctx), check=True)
    assert "[right] right says hello" in done.stdout.splitlines()
    shown = user.run("run", "--rm", "par:1", "cat", "/left.out", "/right.out", "/tmpfs")
    assert shown.stdout == "left made\nright made\nfull\n", shown.stderr
    assert len(os.listdir(Path(user.root) / "images/build-mounts")) == 1
    pruned = user.run("builder", "prune", "-f", check=True)
    assert pruned.stdout.startswith("Deleted build cache objects:\n")
    assert os.listdir(Path(user.root) / "images/build-mounts") == []
    assert user.container_ids() == []
