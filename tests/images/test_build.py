"""`strata build` on the busybox test image: every instruction, the layers and config it makes,
the build cache, and the refusals (nothing stored, nothing left behind).

Builds need root and FUSE (the `strata` fixture skips otherwise, and fails the test if a mount or
process is left).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from images.store import ImageStore
from tests.runtime.conftest import Strata

from .test_commit import _members
from .test_load import _archive

DOCKERFILE = r"""# escape=\
# the busybox test image, by an ARG before FROM
ARG BASE=uniontest:1
FROM ${BASE}
ARG WHO=world
MAINTAINER strata tests <tests@example.invalid>
ENV GREETING="hello there" \
    WHO_AGAIN=${WHO:-nobody}
# a change, a deletion, and a directory replaced by a new one
RUN echo "building for $WHO" && echo changed >> /etc/passwd && rm /etc/motd \
 && rm -rf /opt/tree && mkdir /opt/tree && echo new > /opt/tree/n
WORKDIR app
COPY a.txt dir ./
COPY *.md /docs/
COPY --chown=nobody:nogroup a.txt /owned
COPY --chown=7 a.txt /numeric
ADD plain.tar gz.tgz bz.tar.bz2 xz.tar.xz zst.tar.zst /unpacked/
ADD not-a-tar.gz /notatar/
LABEL purpose=test "two words"=yes
EXPOSE 80 53/udp 8000-8001
USER 0:0
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat a.txt x /unpacked/plain /unpacked/gz /unpacked/bz /unpacked/xz /unpacked/zst; echo $GREETING $WHO_AGAIN; pwd"]
"""


def _tar(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o640
            info.uid, info.gid = 3, 4
            info.mtime = 1_000_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _context(root: Path) -> Path:
    ctx = root / "ctx"
    (ctx / "dir/sub").mkdir(parents=True)
    (ctx / "a.txt").write_text("a-text\n")
    (ctx / "dir/x").write_text("x-text\n")
    (ctx / "dir/sub/y").write_text("y\n")
    (ctx / "one.md").write_text("1\n")
    (ctx / "two.md").write_text("2\n")
    (ctx / "secret.md").write_text("never copied\n")
    (ctx / "build.log").write_text("never sent\n")
    (ctx / ".dockerignore").write_text("*.log\nsecret.md\n")
    (ctx / "plain.tar").write_bytes(_tar({"plain": b"plain\n"}))
    (ctx / "gz.tgz").write_bytes(gzip.compress(_tar({"gz": b"gz\n"})))
    (ctx / "bz.tar.bz2").write_bytes(bz2.compress(_tar({"bz": b"bz\n"})))
    (ctx / "xz.tar.xz").write_bytes(lzma.compress(_tar({"xz": b"xz\n"})))
    (ctx / "zst.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(_tar({"zst": b"zst\n"})))
    (ctx / "not-a-tar.gz").write_bytes(gzip.compress(b"just text\n"))
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


def _load(strata: Strata) -> ImageStore:
    strata.run("load", "-q", "-i", str(_archive("oci")), check=True)
    return ImageStore(strata.root)


def test_build_every_instruction_then_rebuild_from_cache(strata: Strata) -> None:
    store = _load(strata)
    ctx = _context(strata.tmp)
    done = strata.run("build", "-t", "built:1", "--build-arg", "UNUSED=1", str(ctx), check=True)
    assert "building for world" in done.stdout
    assert "Using cache" not in done.stdout
    assert "not consumed: UNUSED" in done.stderr
    rec = store.get("built:1")
    assert f" ---> {rec.id[:12]}\nSuccessfully built {rec.id[:12]}" in done.stdout
    base = store.get("uniontest:1")
    assert rec.layers[: len(base.layers)] == base.layers
    assert len(rec.layers) == len(base.layers) + 8  # RUN WORKDIR COPY*4 ADD*2

    config = rec.config["config"]
    assert isinstance(config, dict)
    assert config["Env"] == ["PATH=/bin", "FOO=bar", "GREETING=hello there", "WHO_AGAIN=world"]
    assert config["WorkingDir"] == "/app"
    assert config["User"] == "0:0"
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    assert config["Cmd"][0].startswith("cat a.txt")
    assert config["Labels"]["purpose"] == "test"
    assert config["Labels"]["two words"] == "yes"
    assert set(config["ExposedPorts"]) == {"80/tcp", "53/udp", "8000/tcp", "8001/tcp"}
    assert rec.config["author"] == "strata tests <tests@example.invalid>"
    history = rec.config["history"]
    assert isinstance(history, list)
    mine = history[len(base.config["history"]) :]  # type: ignore[arg-type]
    assert [(h["created_by"].split()[0], bool(h.get("empty_layer"))) for h in mine] == [
        ("MAINTAINER", True),
        ("ENV", True),
        ("RUN", False),
        ("WORKDIR", False),
        ("COPY", False),
        ("COPY", False),
        ("COPY", False),
        ("COPY", False),
        ("ADD", False),
        ("ADD", False),
        ("LABEL", True),
        ("EXPOSE", True),
        ("USER", True),
        ("ENTRYPOINT", True),
        ("CMD", True),
    ]
    assert mine[2]["created_by"].startswith("RUN |1 WHO=world /bin/sh -c echo")

    # the RUN layer: the change, the whiteout, the opaque directory
    run_layer = {m.name: m for m in _members(store, rec.layers[len(base.layers)])}
    assert {"etc/passwd", "etc/.wh.motd", "opt/tree/.wh..wh..opq", "opt/tree/n"} <= set(run_layer)
    # the COPY layers: owners, what .dockerignore left out
    copy_layer = {m.name: m for m in _members(store, rec.layers[len(base.layers) + 2])}
    assert set(copy_layer) == {"app", "app/a.txt", "app/sub", "app/sub/y", "app/x"}
    assert all(m.uid == 0 and m.gid == 0 for m in copy_layer.values())
    docs = {m.name for m in _members(store, rec.layers[len(base.layers) + 3])}
    assert docs == {"docs", "docs/one.md", "docs/two.md"}
    (owned,) = [m for m in _members(store, rec.layers[len(base.layers) + 4]) if m.isfile()]
    assert (owned.name, owned.uid, owned.gid) == ("owned", 65534, 65534)
    (numeric,) = [m for m in _members(store, rec.layers[len(base.layers) + 5]) if m.isfile()]
    assert (numeric.name, numeric.uid, numeric.gid) == ("numeric", 7, 7)
    unpacked = {m.name: m for m in _members(store, rec.layers[len(base.layers) + 6])}
    assert unpacked["unpacked/gz"].uid == 3
    assert unpacked["unpacked/gz"].mode == 0o640
    assert unpacked["unpacked/gz"].mtime == 1_000_000_000
    notatar = {m.name for m in _members(store, rec.layers[len(base.layers) + 7])}
    assert notatar == {"notatar", "notatar/not-a-tar.gz"}

    run = strata.run("run", "--rm", "built:1", check=True)
    assert run.stdout.splitlines() == [
        "a-text",
        "x-text",
        "plain",
        "gz",
        "bz",
        "xz",
        "zst",
        "hello there world",
        "/app",
    ]
    gone = strata.run("run", "--rm", "built:1", "test -e /etc/motd || echo gone; ls /opt/tree")
    assert gone.stdout.split() == ["gone", "n"]

    # an unchanged rebuild does no work and gives the same image
    again = strata.run("build", "-t", "built:2", str(ctx), check=True)
    assert "building for world" not in again.stdout
    assert again.stdout.count("Using cache") == 15  # every step after FROM but the ARG
    assert store.get("built:2").id == rec.id
    # a changed source invalidates its step and those after it, not those before
    (ctx / "two.md").write_text("2, changed\n")
    changed = strata.run("build", "-t", "built:3", str(ctx), check=True)
    assert changed.stdout.count("Using cache") == 5  # MAINTAINER ENV RUN WORKDIR COPY
    assert store.get("built:3").id != rec.id
    # a different build arg is another RUN
    other = strata.run("build", "--build-arg", "WHO=you", "-t", "built:4", str(ctx), check=True)
    assert "building for you" in other.stdout
    # --no-cache runs everything again
    fresh = strata.run("build", "--no-cache", "-t", "built:5", str(ctx), check=True)
    assert "Using cache" not in fresh.stdout
    assert "building for world" in fresh.stdout
    assert strata.container_ids() == []


def test_cache_entries_whose_layers_were_pruned_miss(strata: Strata) -> None:
    store = _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM uniontest:1\nENV A=1\nRUN echo ran > /ran\n")
    strata.run("build", "-t", "cached:1", str(ctx), check=True)
    entries = len(os.listdir(store.cache_dir))
    assert entries == 2
    removed = strata.run("rmi", "cached:1", check=True)
    assert "Deleted layer" in removed.stdout  # the RUN's layer: only a cache entry names it
    again = strata.run("build", "-t", "cached:1", str(ctx), check=True)
    assert again.stdout.count("Using cache") == 1  # ENV only: the RUN's entry misses
    out = strata.run("run", "--rm", "cached:1", "cat", "/ran", check=True)
    assert out.stdout == "ran\n"
    strata.run("rmi", "cached:1", check=True)
    strata.run("image", "prune", check=True)
    assert len(os.listdir(store.cache_dir)) == 1  # prune dropped the entry naming a lost layer


def _store_snapshot(store: ImageStore) -> tuple[list[str], list[str]]:
    return [r.id for r in store.images()], store.layers()


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [
        (
            "FROM uniontest:1\nRUN true\nADD --keep-git-dir=true a /x\n",
            "Dockerfile:3: ADD --keep-git-dir is not",
        ),
        ("FROM uniontest:1\nFOO bar\n", "Dockerfile:2: FOO is not supported"),
        ("FROM uniontest:1\nCOPY --from=0 a b\n", "Dockerfile:2: COPY --from=0: names this"),
        ("FROM uniontest:1 AS a\nFROM uniontest:1 AS A\n", "Dockerfile:2: FROM ... AS A: a stage"),
        ("FROM uniontest:1 AS 1x\n", "Dockerfile:1: FROM ... AS 1x: invalid stage name"),
        ("FROM uniontest:1\nCOPY --from=nosuch:1 a b\n", "COPY --from nosuch:1: no such image"),
        ("FROM uniontest:1\nCOPY --from a b\n", "Dockerfile:2: COPY --from needs a value"),
        ("FROM uniontest:1\nRUN <<EOF\ntrue\n", "Dockerfile:2: RUN: here-document <<EOF has no"),
        (
            "FROM uniontest:1\nRUN --mount=type=cache true\n",
            "Dockerfile:2: RUN --mount=type=cache:",
        ),
        ("RUN true\nFROM uniontest:1\n", "Dockerfile:1: RUN before FROM"),
        ("# nothing\n", "no FROM"),
        ("FROM nosuch:1\n", "Dockerfile:1: FROM nosuch:1: no such image"),
        ("FROM uniontest:1\nRUN true\nADD git@example.invalid:x.git /x\n", "git repositories"),
        ("FROM uniontest:1\nCOPY missing /x\n", "Dockerfile:2: COPY failed: missing: not found"),
        ("FROM uniontest:1\nCOPY ../x /x\n", "outside the build context"),
        ("FROM uniontest:1\nCOPY a b /x\n", "must be a directory and end with a /"),
        ("FROM uniontest:1\nCOPY --chown=nobody42 a /x\n", "--chown=nobody42: no such user"),
        ("FROM uniontest:1\nEXPOSE http\n", "Dockerfile:2: EXPOSE http"),
        ("FROM uniontest:1\nENV A\n", "Dockerfile:2: ENV: A needs a value"),
    ],
)
def test_refused_dockerfiles_store_nothing(strata: Strata, dockerfile: str, message: str) -> None:
    store = _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "a").write_text("a\n")
    (ctx / "b").write_text("b\n")
    (ctx / "Dockerfile").write_text(dockerfile)
    before = _store_snapshot(store)
    done = strata.run("build", "-t", "refused:1", str(ctx))
    assert done.returncode == 1
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert store.find("refused:1") is None
    if "RUN true" not in dockerfile:  # refused before any step ran
        assert _store_snapshot(store) == before
    assert strata.container_ids() == []


def test_failing_run_leaves_nothing_behind(strata: Strata) -> None:
    store = _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM uniontest:1\nRUN echo ok > /ok\nRUN echo failing; exit 3\nCMD x\n"
    )
    done = strata.run("build", "-t", "failed:1", str(ctx))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "strata: Dockerfile:3: RUN /bin/sh -c echo failing; exit 3: exit status 3"
    )
    assert "failing" in done.stdout
    assert store.find("failed:1") is None
    assert strata.container_ids() == []
    missing = strata.run("build", "-t", "failed:1", "-f", str(ctx / "nope"), str(ctx))
    assert missing.returncode == 1
    assert "nope" in missing.stderr
    exec_form = ctx / "Exec"
    exec_form.write_text('FROM uniontest:1\nRUN ["/no/such/program"]\n')
    done = strata.run("build", "-f", str(exec_form), str(ctx))
    assert done.returncode == 1
    assert done.stderr.startswith("strata: Exec:2: RUN /no/such/program: exit status 127")


def test_build_from_scratch_and_inspect(strata: Strata) -> None:
    store = ImageStore(strata.root)
    ctx = strata.tmp / "ctx"
    (ctx / "bin").mkdir(parents=True)
    (ctx / "bin/hello").write_text("hello\n")
    (ctx / "Dockerfile").write_text('FROM scratch\nCOPY bin /bin/\nCMD ["/bin/hello"]\n')
    strata.run("build", "-q", "-t", "tiny", str(ctx), check=True)
    rec = store.get("tiny")
    assert len(rec.layers) == 1
    assert {m.name for m in _members(store, rec.layers[0])} == {"bin", "bin/hello"}
    info = json.loads(strata.run("image", "inspect", "tiny", check=True).stdout)[0]
    assert info["Config"]["Cmd"] == ["/bin/hello"]
    # top-level inspect: containers first, then images
    strata.run("create", "--name", "tiny", "tiny", check=True)
    both = json.loads(strata.run("inspect", "tiny", rec.id[:12], check=True).stdout)
    assert both[0]["Name"] == "tiny"
    assert "State" in both[0]
    assert both[1]["Id"] == f"sha256:{rec.id}"
    assert both[1]["Config"]["Cmd"] == ["/bin/hello"]
    missing = strata.run("inspect", "nosuch")
    assert missing.returncode == 1
    assert missing.stderr == "strata: no such container: nosuch\n"  # as before images existed


def test_run_chmod_of_a_lower_file_keeps_its_data_in_the_layer(strata: Strata) -> None:
    """A RUN that only changes a lower file's metadata leaves a metacopy file (no data) in its
    upper; the layer built from it must hold the data, and COPY --chown over an existing
    directory must not lose anything either."""
    store = _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM uniontest:1\nRUN chmod 0600 /etc/passwd && touch -d @0 /bin/busybox\n"
    )
    strata.run("build", "-q", "-t", "mc", str(ctx), check=True)
    rec = store.get("mc")
    base = store.get("uniontest:1")
    members = {m.name: m for m in _members(store, rec.layers[-1])}
    layer = store.layer_path(rec.layers[-1])
    for rel in ("etc/passwd", "bin/busybox"):
        below = next(
            store.layer_path(d) / rel
            for d in reversed(base.layers)
            if (store.layer_path(d) / rel).exists()
        )
        data = below.read_bytes()
        assert members[rel].size == len(data) > 0
        assert (layer / rel).read_bytes() == data
    assert stat.S_IMODE(members["etc/passwd"].mode) == 0o600
    assert members["bin/busybox"].mtime == 0
    out = strata.run("run", "--rm", "mc", "sed", "-n", "1p", "/etc/passwd", check=True)
    assert out.stdout.startswith("root:")


def test_run_sees_env_workdir_user_and_build_args(strata: Strata) -> None:
    store = _load(strata)
    ctx = strata.tmp / "ctx"
    (ctx / "skip/keep").mkdir(parents=True)
    (ctx / "skip/drop").write_text("dropped\n")
    (ctx / "skip/keep/k").write_text("kept\n")
    (ctx / "deep/er").mkdir(parents=True)
    (ctx / "deep/er/x.tmp").write_text("tmp\n")
    (ctx / "deep/er/y").write_text("y\n")
    (ctx / ".dockerignore").write_text("skip\n!skip/keep\n**/*.tmp\n")
    (ctx / "Dockerfile").write_text(
        "ARG GLOBAL=g\n"
        "FROM uniontest:1\n"
        "ARG GLOBAL\n"
        "ARG LOCAL=l\n"
        "ARG SHADOWED=arg SPACED='two words'\n"
        "ENV SHADOWED=env\n"
        "ARG FROM_ENV=$SHADOWED-$LOCAL\n"
        "WORKDIR /work/dir\n"
        "COPY . ctx/\n"
        "USER nobody\n"
        'RUN echo "$GLOBAL $LOCAL $SHADOWED $(pwd) $(id -u) $SPACED $FROM_ENV"; find ctx | sort\n'
        'ENTRYPOINT ["echo"]\n'
    )
    done = strata.run("build", "-t", "env:1", "--build-arg", "LOCAL=override", str(ctx))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "g override env /work/dir 65534 two words env-override" in lines
    start = lines.index("ctx")
    assert lines[start : start + 9] == [
        "ctx",
        "ctx/.dockerignore",
        "ctx/Dockerfile",
        "ctx/deep",
        "ctx/deep/er",
        "ctx/deep/er/y",
        "ctx/skip",
        "ctx/skip/keep",
        "ctx/skip/keep/k",
    ]
    config = store.get("env:1").config["config"]
    assert isinstance(config, dict)
    assert config["Entrypoint"] == ["echo"]
    assert "Cmd" not in config  # the base image's CMD does not suit the new ENTRYPOINT
    assert config["User"] == "nobody"
    assert not [e for e in config["Env"] if e.startswith(("GLOBAL=", "LOCAL="))]
    run = strata.run("run", "--rm", "env:1", "hello", check=True)
    assert run.stdout == "hello\n"


def test_layers_held_by_a_build_survive_rmi_and_prune(tmp_path: Path) -> None:
    """What a build holds (its staging dir flock'ed, `held.json`) is in use for rmi and prune;
    once the build is over (or its process died: the flock is gone) it is not."""
    from images.load import load

    store = ImageStore(tmp_path / "root")
    (rec,) = load(store, _archive("oci"), say=lambda _: None)
    with store.staging() as staging:
        with store.lock():
            store.hold(staging, rec.layers)
        out = store.remove("uniontest:1", force=False)
        assert not [line for line in out if "Deleted layer" in line]
        assert store.prune() == []
        assert all(store.has_layer(d) for d in rec.layers)
    assert len(store.prune()) == len(rec.layers)
    assert store.layers() == []


def test_interrupted_build_leaves_nothing_behind(strata: Strata) -> None:
    import signal
    import time

    store = _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM uniontest:1\nRUN echo started; sleep 60\n")
    proc = strata.popen("build", "-t", "never:1", str(ctx), stdout=-1, stderr=-1)
    try:
        assert proc.stdout is not None
        while "started" not in proc.stdout.readline():
            assert proc.poll() is None
        deadline = time.monotonic() + 10
        while not strata.container_ids() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert "exit status 130" in err
    assert store.find("never:1") is None
    assert strata.container_ids() == []
    assert os.listdir(store.tmp_dir) == []


def test_shell_and_stopsignal(strata: Strata) -> None:
    store = _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM uniontest:1\n"
        'SHELL ["/bin/echo", "via-echo"]\n'
        "RUN hello there\n"
        "CMD as shell form\n"
        "STOPSIGNAL SIGUSR1\n"
    )
    done = strata.run("build", "-t", "shell:1", str(ctx), check=True)
    assert "via-echo hello there" in done.stdout.splitlines()
    config = store.get("shell:1").config["config"]
    assert isinstance(config, dict)
    assert config["Shell"] == ["/bin/echo", "via-echo"]
    assert config["Cmd"] == ["/bin/echo", "via-echo", "as shell form"]
    assert config["StopSignal"] == "SIGUSR1"
    (ctx / "Dockerfile").write_text("FROM uniontest:1\nSTOPSIGNAL SIGNOPE\n")
    bad = strata.run("build", str(ctx))
    assert bad.returncode == 1
    assert bad.stderr == "strata: Dockerfile:2: STOPSIGNAL SIGNOPE: not a signal\n"
    (ctx / "Dockerfile").write_text("FROM uniontest:1\nSHELL /bin/bash -c\n")
    bad = strata.run("build", str(ctx))
    assert "Dockerfile:2: SHELL needs the JSON form" in bad.stderr


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([("../escape", tarfile.REGTYPE, "")], "'..' in member name"),
        ([("link", tarfile.SYMTYPE, "/"), ("link/etc/x", tarfile.REGTYPE, "")], "symlink"),
        ([("hard", tarfile.LNKTYPE, "/etc/passwd")], "hard link"),
    ],
)
def test_add_of_a_hostile_tar_is_refused(
    strata: Strata, members: list[tuple[str, bytes, str]], message: str
) -> None:
    from .hostile import layer_tar, member

    store = _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    tar = layer_tar([member(name, kind, link=link) for name, kind, link in members])
    (ctx / "evil.tar").write_bytes(tar)
    (ctx / "Dockerfile").write_text("FROM uniontest:1\nADD evil.tar /dst/\n")
    done = strata.run("build", "-t", "evil:1", str(ctx))
    assert done.returncode == 1
    assert done.stderr.startswith("strata: Dockerfile:2: ADD failed: evil.tar: cannot extract")
    assert message in done.stderr
    assert store.find("evil:1") is None
    assert not (strata.tmp / "escape").exists()
    assert strata.container_ids() == []


def test_run_steps_are_confined_as_containers_are(strata: Strata) -> None:
    """A RUN step gets the defaults of `strata run`: podman's capabilities, the seccomp filter,
    a read-only /proc/sys; mount(2) fails."""
    _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM uniontest:1\n"
        "RUN grep -E '^(CapEff|Seccomp):' /proc/self/status;"
        " echo 1 > /proc/sys/vm/drop_caches || echo sys-ro;"
        " mkdir -p /m; mount -t tmpfs t /m || echo no-mount\n"
    )
    done = strata.run("build", "-t", "confined", str(ctx))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = lines.index("CapEff:\t00000000800405fb")
    assert lines[start : start + 4] == [
        "CapEff:\t00000000800405fb",
        "Seccomp:\t2",
        "sys-ro",
        "no-mount",
    ]
