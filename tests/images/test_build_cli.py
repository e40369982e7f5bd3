"""`strata build`'s docker command-line habits: the context or the Dockerfile on stdin, `--label`,
`--iidfile`, `--network`, `--add-host`, `-o/--output`, `--progress`, and their bad input (one
line, exit status 125, nothing stored)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest
import zstandard

from images.store import ImageStore
from tests.runtime.conftest import Strata

from .test_load import _archive

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def _load(strata: Strata) -> ImageStore:
    strata.run("load", "-q", "-i", str(_archive("oci")), check=True)
    return ImageStore(strata.root)


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _build(strata: Strata, *args: str, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        strata.argv("build", *args), input=stdin, capture_output=True, env=strata.env, timeout=300
    )


def test_context_on_stdin_labels_iidfile_and_add_host(strata: Strata) -> None:
    """`strata build -f build/Dockerfile - < ctx.tar.zst`: a compressed tar is the context and
    -f names a file in it, as docker; --label marks the image, --iidfile gets its id, and RUN
    sees --add-host in its /etc/hosts."""
    store = _load(strata)
    dockerfile = (
        b"FROM uniontest:1\nLABEL from=dockerfile\nCOPY a.txt /a.txt\n"
        b"RUN grep myhost /etc/hosts > /hosts && cat /a.txt\n"
    )
    tar = _tar({"a.txt": b"from the tar\n", "build/Dockerfile": dockerfile})
    iid = strata.tmp / "iid"
    done = _build(
        strata, "-t", "stdin:1", "-f", "build/Dockerfile", "--label", "a=b", "--label",
        "from=cli", "--iidfile", str(iid), "--add-host", "myhost:10.1.2.3", "-",
        stdin=zstandard.ZstdCompressor().compress(tar),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert b"from the tar\n" in done.stdout
    rec = store.get("stdin:1")
    assert iid.read_text() == f"sha256:{rec.id}"
    config = rec.config["config"]
    assert isinstance(config, dict)
    assert config["Labels"]["a"] == "b"
    assert config["Labels"]["from"] == "cli"
    hosts = strata.run("run", "--rm", "stdin:1", "cat", "/hosts", check=True)
    assert hosts.stdout.split() == ["10.1.2.3", "myhost"]
    assert os.listdir(store.tmp_dir) == []  # the extracted context is gone


def test_dockerfile_alone_on_stdin_and_with_f_dash(strata: Strata) -> None:
    store = _load(strata)
    alone = _build(strata, "-q", "-", stdin=b"FROM uniontest:1\nRUN echo alone > /alone\n")
    assert alone.returncode == 0, alone.stderr
    image = alone.stdout.decode().strip()
    assert image.startswith("sha256:")
    assert f"sha256:{store.get(image[7:19]).id}" == image
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "f.txt").write_text("from the dir\n")
    dashed = _build(
        strata, "-t", "dash:1", "-f", "-", str(ctx), stdin=b"FROM uniontest:1\nCOPY f.txt /f\n"
    )
    assert dashed.returncode == 0, dashed.stderr
    shown = strata.run("run", "--rm", "dash:1", "cat", "/f", check=True)
    assert shown.stdout == "from the dir\n"


def test_output_exports_files_and_stores_no_image(strata: Strata) -> None:
    """`-o DIR`, `-o type=tar,dest=FILE` and `-o -` (a tar on stdout, the steps on stderr), as
    BuildKit's local and tar exporters: the target stage's files, and no image in the store."""
    store = _load(strata)
    before = {rec.id for rec in store.images()}
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM uniontest:1 AS build\nRUN mkdir /out && echo artifact > /out/bin && ln -s bin"
        " /out/link\nFROM scratch\nCOPY --from=build /out /\n"
    )
    local = strata.tmp / "local"
    strata.run("build", "-o", str(local), str(ctx), check=True)
    assert sorted(os.listdir(local)) == ["bin", "link"]
    assert (local / "bin").read_text() == "artifact\n"
    assert os.readlink(local / "link") == "bin"
    archive = strata.tmp / "out.tar"
    strata.run("build", "--output", f"type=tar,dest={archive}", str(ctx), check=True)
    with tarfile.open(archive) as tar:
        assert sorted(m.name for m in tar if m.name != ".") == ["./bin", "./link"]
    streamed = subprocess.run(
        strata.argv("build", "-o", "-", str(ctx)), capture_output=True, env=strata.env, timeout=300
    )
    assert streamed.returncode == 0, streamed.stderr
    assert b"Step 1/4" in streamed.stderr
    with tarfile.open(fileobj=io.BytesIO(streamed.stdout)) as tar:
        member = tar.extractfile("./bin")
        assert member is not None
        assert member.read() == b"artifact\n"
    assert {rec.id for rec in store.images()} == before


def test_network_none_for_every_run_unless_the_run_says(strata: Strata) -> None:
    _load(strata)
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(
        "FROM uniontest:1\nRUN grep -c : /proc/net/dev > /none\n"
        "RUN --network=host grep -c : /proc/net/dev > /host\n"
    )
    strata.run("build", "--network", "none", "-t", "net:1", str(ctx), check=True)
    shown = strata.run("run", "--rm", "net:1", "cat", "/none", "/host", check=True)
    only_lo, host = (int(n) for n in shown.stdout.split())
    assert only_lo == 1  # lo
    assert host == int(subprocess.run(["grep", "-c", ":", "/proc/net/dev"], capture_output=True,
                                      text=True, check=True).stdout)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["-f", "-", "-"], b"", "the context and the Dockerfile cannot both come from stdin"),
        (["-o", "type=registry,dest=x", "ctx"], b"", "--output type=registry,dest=x: type"),
        (["-o", "type=tar", "ctx"], b"", "--output type=tar: dest= is required"),
        (["--label", "=v", "ctx"], b"", "--label '=v': expected KEY=VALUE"),
        (["--add-host", "h:bad", "ctx"], b"", "--add-host 'h:bad': 'bad' is not an IP address"),
        (["-"], _tar({"../escape": b"x"}), "the build context on stdin: "),
    ],
)
def test_bad_build_options_store_nothing(
    strata: Strata, args: list[str], stdin: bytes, message: str
) -> None:
    store = _load(strata)
    before = sorted(os.listdir(strata.root / "images/layers"))
    ctx = strata.tmp / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM uniontest:1\nRUN true\n")
    args = [str(ctx) if a == "ctx" else a for a in args]
    done = _build(strata, *args, stdin=stdin)
    assert done.returncode == 125, done.stderr
    err = done.stderr.decode()
    assert err.startswith(f"strata: {message}"), err
    assert len(err.splitlines()) == 1
    assert sorted(os.listdir(strata.root / "images/layers")) == before
    assert os.listdir(store.tmp_dir) == []
