"""`strata build` of the instructions and flags beyond the basics, on the busybox test image:
VOLUME, HEALTHCHECK and ONBUILD (config fields and triggers compared with podman's build of the
same Dockerfiles, `--format docker`), COPY --chmod and --link, FROM --platform and the automatic
platform ARGs, RUN --mount (cache, bind, tmpfs, secret) and RUN --network, ADD of URLs (from a
server on loopback) with --checksum, and their refusals.

Builds need root and FUSE (the `strata` fixture skips otherwise, and fails the test if a mount or
process is left).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import http.server
import json
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.podman import PrivatePodman
from tests.runtime.conftest import Strata

from .test_build import _load, _store_snapshot
from .test_multistage import _image_root

BASE = """\
FROM uniontest:1
VOLUME /data
VOLUME ["/logs", "/cache"]
HEALTHCHECK --interval=1m30s --timeout=3s --start-period=500ms --retries=4 \\
  CMD wget -q -O- http://localhost/ || exit 1
ONBUILD RUN echo triggered > /tmp/trigger
ONBUILD COPY a.txt /from-trigger
STOPSIGNAL SIGINT
LABEL org.example.name="trig base" version=1
EXPOSE 8080 53/udp
ENV MODE=test PATH=/usr/local/bin:/bin
WORKDIR /srv
USER 1000:1000
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hi"]
"""

CHILD = """\
FROM localhost/trig:1
USER 0
RUN cat /tmp/trigger /from-trigger > /both
HEALTHCHECK NONE
"""

FIELDS = (
    *("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Volumes", "ExposedPorts", "Labels"),
    *("Healthcheck", "OnBuild", "StopSignal"),
)


def _context(root: Path) -> Path:
    ctx = root / "ctx"
    (ctx / "d").mkdir(parents=True)
    (ctx / "a.txt").write_text("a-text\n")
    (ctx / "d/x").write_text("x\n")
    (ctx / "ignored.log").write_text("ignored\n")
    (ctx / ".dockerignore").write_text("*.log\n")
    (ctx / "Dockerfile").write_text(BASE)
    (ctx / "Dockerfile.child").write_text(CHILD)
    return ctx


def test_volume_healthcheck_onbuild_match_podman(strata: Strata) -> None:
    store = _load(strata)
    ctx = _context(strata.tmp)
    strata.run("build", "-t", "trig:1", str(ctx), check=True)
    child = strata.run("build", "-f", str(ctx / "Dockerfile.child"), "-t", "child:1", str(ctx))
    assert child.returncode == 0, child.stderr
    assert "# Executing 2 build triggers" in child.stdout
    ours = {ref: store.get(ref).config["config"] for ref in ("trig:1", "child:1")}
    trig = ours["trig:1"]
    assert isinstance(trig, dict)
    assert trig["Healthcheck"] == {
        "Test": ["CMD-SHELL", "wget -q -O- http://localhost/ || exit 1"],
        "Interval": 90_000_000_000,
        "Timeout": 3_000_000_000,
        "StartPeriod": 500_000_000,
        "Retries": 4,
    }
    assert trig["OnBuild"] == ["RUN echo triggered > /tmp/trigger", "COPY a.txt /from-trigger"]

    with PrivatePodman(strata.tmp) as podman:
        archive = strata.tmp / "uniontest.tar"
        strata.run("save", "uniontest:1", "-o", str(archive), check=True)
        podman.run("load", "-q", "-i", str(archive))
        docker = ("-q", "--format", "docker", "--network", "host")  # (no CNI bridge made)
        podman.run("build", *docker, "-t", "localhost/trig:1", str(ctx))
        podman.run(
            "build",
            *(*docker, "-f", str(ctx / "Dockerfile.child")),
            *("-t", "localhost/child:1", str(ctx)),
        )
        for ref in ("trig:1", "child:1"):
            theirs = podman.docker_config(f"localhost/{ref}")
            mine = ours[ref]
            assert isinstance(mine, dict)
            for config in (mine, theirs):  # buildah stamps its version (on the base too)
                labels = config.get("Labels")
                if isinstance(labels, dict):
                    labels.pop("io.buildah.version", None)
            for name in FIELDS:
                assert (mine.get(name) or None) == (theirs.get(name) or None), (ref, name)
        root = podman.mount("localhost/child:1")
        assert (root / "both").read_text() == "triggered\na-text\n"
    strata_run = strata.run("run", "--rm", "child:1", "cat /both", check=True)
    assert strata_run.stdout == "triggered\na-text\n"


def test_copy_chmod_link_and_platform(strata: Strata) -> None:
    store = _load(strata)
    ctx = _context(strata.tmp)
    (ctx / "Dockerfile").write_text(
        "FROM --platform=$BUILDPLATFORM uniontest:1\n"
        "ARG TARGETARCH\n"
        "ARG TARGETPLATFORM\n"
        'RUN echo "for $TARGETPLATFORM ($TARGETARCH)" && ln -s /opt /lnk\n'
        "COPY --chmod=0705 d /chm/\n"
        "COPY --chmod=600 <<EOF /note\n"
        "secret-ish\n"
        "EOF\n"
        "COPY a.txt /lnk/followed\n"
        "COPY --link --chown=7:8 a.txt /lnk/linked\n"
    )
    done = strata.run("build", "-t", "cl:1", str(ctx), check=True)
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    assert f"for linux/{arch} ({arch})" in done.stdout
    rec = store.get("cl:1")
    linked = store.layer_path(rec.layers[-1])
    # the --link layer holds the copy alone, its path made in an empty root
    assert sorted(str(p.relative_to(linked)) for p in linked.rglob("*")) == ["lnk", "lnk/linked"]
    st = os.lstat(linked / "lnk/linked")
    assert (st.st_uid, st.st_gid) == (7, 8)
    out = strata.run(
        "run",
        "--rm",
        "cl:1",
        "sh",
        "-c",
        "stat -c '%a %n' /chm/x /note; ls /lnk; test -L /lnk || echo 'no link'; ls /opt",
        check=True,
    )
    # a linked layer does not follow the image's symlink: its /lnk directory replaces it (as
    # BuildKit documents), while /lnk/followed, copied before through the link, is in /opt
    lines = out.stdout.splitlines()
    assert lines[:4] == ["705 /chm/x", "600 /note", "linked", "no link"]
    assert "followed" in lines[4:]

    (ctx / "Dockerfile").write_text("FROM --platform=linux/s390x uniontest:1\n")
    refused = strata.run("build", str(ctx))
    assert refused.returncode == 1
    assert "Dockerfile:1: FROM --platform=linux/s390x: strata builds only for" in refused.stderr


def test_run_mounts(strata: Strata) -> None:
    store = _load(strata)
    ctx = _context(strata.tmp)
    secret = strata.tmp / "token"
    secret.write_text("t0ken-value")
    (ctx / "Dockerfile").write_text(
        "FROM uniontest:1 AS other\n"
        "RUN mkdir /stuff && echo from-other > /stuff/o\n"
        "FROM uniontest:1\n"
        "RUN --mount=type=cache,target=/var/cache/mine sh -c"
        " 'echo run >> /var/cache/mine/log && wc -l < /var/cache/mine/log'\n"
        "RUN --mount=type=bind,source=a.txt,target=/tmp/a.txt cat /tmp/a.txt\n"
        "RUN --mount=type=bind,target=/ctx sh -c 'ls /ctx; echo x > /ctx/a.txt || echo read-only'\n"
        "RUN --mount=type=bind,target=/ctx,rw sh -c 'echo scribbled > /ctx/a.txt'\n"
        "RUN --mount=type=bind,from=other,source=/stuff,target=/o cat /o/o\n"
        "RUN --mount=type=tmpfs,target=/scratch sh -c 'echo x > /scratch/x && ls /scratch'\n"
        "RUN --mount=type=secret,id=tok sh -c 'cat /run/secrets/tok; echo'\n"
        "RUN --mount=type=secret,id=tok,env=TOK sh -c 'echo \"env: $TOK\"'\n"
        "RUN --mount=type=secret,id=absent true\n"
        "RUN --network=none cat /proc/net/dev\n"
    )
    secret_arg = f"id=tok,src={secret}"
    first = strata.run("build", "--secret", secret_arg, "-t", "m:1", str(ctx), check=True)
    lines = first.stdout.splitlines()
    assert "1" in lines  # the cache mount's log: one line
    assert "a-text" in lines
    assert "ignored.log" not in first.stdout  # the bound context is what .dockerignore leaves
    assert "read-only" in lines
    assert (ctx / "a.txt").read_text() == "a-text\n"  # an rw bind's writes are its own
    assert "from-other" in lines
    assert "t0ken-value" in lines
    assert "env: t0ken-value" in lines
    netdev = first.stdout.split("cat /proc/net/dev")[1]
    assert "lo:" in netdev
    assert "eth0" not in netdev

    rec = store.get("m:1")
    # the mount points are not in the layers, nor is the secret anywhere in the store
    for diff_id in rec.layers[len(store.get("uniontest:1").layers) :]:
        layer = store.layer_path(diff_id)
        names = {str(p.relative_to(layer)) for p in layer.rglob("*")}
        assert not names & {"var/cache/mine", "var/cache", "ctx", "o", "scratch", "run/secrets"}
        assert not names & {"tmp/a.txt", "run/secrets/tok"}
    for path in store.path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert b"t0ken-value" not in path.read_bytes(), path
    history = json.dumps(rec.config["history"])
    assert "--mount=type=cache,target=/var/cache/mine" in history
    assert "t0ken" not in history

    # the cache mount outlives the build: a build without the step cache runs it again
    again = strata.run(
        "build", "--no-cache", "--secret", secret_arg, "-t", "m:2", str(ctx), check=True
    )
    assert "2" in again.stdout.splitlines()
    # a changed bound context file invalidates its RUN; the rest comes from the cache
    (ctx / "a.txt").write_text("changed\n")
    third = strata.run("build", "--secret", secret_arg, "-t", "m:3", str(ctx), check=True)
    assert "changed" in third.stdout.splitlines()
    assert third.stdout.split("Step 5/")[0].count("Using cache") == 2  # stage other, cache RUN


@pytest.mark.parametrize(
    ("dockerfile", "message"),
    [
        ("RUN --mount=type=nfs,target=/x true", "Dockerfile:2: RUN --mount=type=nfs,target=/x:"),
        ("RUN --mount=type=cache true", "type=cache needs target="),
        ("RUN --mount=type=bind,target=/x,colour=red true", "colour= is not supported"),
        ("RUN --mount=type=secret,id=s,required=true true", "id=s: no such secret"),
        ("RUN --mount=type=bind,source=../x,target=/x true", "outside the build context"),
        ("RUN --security=insecure true", "RUN --security=insecure: only the sandbox"),
        ("RUN --network=bridge true", "RUN --network=bridge: expected default, none or host"),
        ("COPY --chmod=u+x a.txt /a", "COPY --chmod=u+x: expected an octal mode"),
        ("HEALTHCHECK --interval=1 CMD true", "HEALTHCHECK --interval=1: expected a duration"),
        ("HEALTHCHECK --retries=x CMD true", "HEALTHCHECK --retries=x: not a count"),
        ("HEALTHCHECK NONE --x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK true", "HEALTHCHECK: expected CMD command or NONE"),
        ("ONBUILD FROM x", "Dockerfile:2: ONBUILD FROM is not allowed"),
        ("ONBUILD ONBUILD RUN x", "ONBUILD ONBUILD is not allowed"),
        ("ONBUILD RUN --mount=type=cache,target=/x true", ""),
        ("COPY --from=0 --link a.txt /a", "COPY --from=0: names this stage or a later one"),
    ],
)
def test_refused_instructions_store_nothing(strata: Strata, dockerfile: str, message: str) -> None:
    store = _load(strata)
    ctx = _context(strata.tmp)
    (ctx / "Dockerfile").write_text(f"FROM uniontest:1\n{dockerfile}\n")
    before = _store_snapshot(store)
    done = strata.run("build", "-t", "refused:1", str(ctx))
    if not message:  # a trigger is only checked, and kept for the image that builds on this
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 1
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert store.find("refused:1") is None
    assert _store_snapshot(store) == before


def test_bad_secret_options(strata: Strata) -> None:
    ctx = _context(strata.tmp)
    for spec, message in (
        ("src=/x", "--secret src=/x: id= is required"),
        ("id=a,src=/nonexistent", "--secret id=a,src=/nonexistent: /nonexistent: No such file"),
        ("id=a,colour=red", "unknown key colour="),
        ("id=a,env=STRATA_NO_SUCH_VARIABLE", "no environment variable STRATA_NO_SUCH_VARIABLE"),
    ):
        done = strata.run("build", "--secret", spec, str(ctx))
        assert done.returncode == 125, spec
        assert message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@contextlib.contextmanager
def _http_server(root: Path) -> Iterator[str]:
    """A plain HTTP server on loopback serving `root`, stopped afterwards; its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_add_of_urls(strata: Strata) -> None:
    store = _load(strata)
    ctx = _context(strata.tmp)
    served = strata.tmp / "served"
    served.mkdir()
    (served / "notes.txt").write_text("remote notes\n")
    (served / "data.tar.gz").write_bytes(gzip.compress(b"not extracted from a URL\n"))
    os.utime(served / "notes.txt", (1_000_000_000, 1_000_000_000))
    digest = hashlib.sha256(b"remote notes\n").hexdigest()
    with _http_server(served) as base:
        (ctx / "Dockerfile").write_text(
            "FROM uniontest:1\n"
            f"ADD --checksum=sha256:{digest} --chown=7:8 {base}/notes.txt /checked\n"
            f"ADD {base}/notes.txt {base}/data.tar.gz /remote/\n"
        )
        strata.run("build", "-t", "url:1", str(ctx), check=True)
        again = strata.run("build", "-t", "url:2", str(ctx), check=True)
        assert again.stdout.count("Using cache") == 2
        (served / "notes.txt").write_text("changed notes\n")
        changed = strata.run("build", "-t", "url:3", str(ctx), check=True)
        assert changed.stdout.count("Using cache") == 1  # the checksum's step: not fetched again
        bad = [
            (f"ADD {base}/missing /x", f"Dockerfile:2: ADD {base}/missing: HTTP 404"),
            (f"ADD --checksum=sha256:{digest} {base}/notes.txt /x", "has sha256:"),
            (f"ADD --checksum=sha256:{digest} a.txt /x", "ADD --checksum takes one http(s)"),
            (f"COPY {base}/notes.txt /x", "COPY takes no URLs (ADD does)"),
            ("ADD https://example.invalid/repo.git /src", "git repositories are not supported"),
            (f"ADD {base}/ /x", "the URL names no file"),
        ]
        for line, message in bad:
            (ctx / "Dockerfile").write_text(f"FROM uniontest:1\n{line}\n")
            done = strata.run("build", str(ctx))
            assert done.returncode == 1, line
            assert message in done.stderr, (line, done.stderr)
            assert len(done.stderr.strip().splitlines()) == 1
    with _image_root(store, "url:1", strata.tmp) as root:
        st = os.lstat(root / "remote/notes.txt")
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_mtime) == (0o600, 0, 1_000_000_000)
        assert (root / "remote/data.tar.gz").read_bytes()[:2] == b"\x1f\x8b"  # kept as it is
        st = os.lstat(root / "checked")
        assert (st.st_uid, st.st_gid) == (7, 8)
        assert (root / "checked").read_text() == "remote notes\n"
