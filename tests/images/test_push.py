"""`strata push` against a real registry (Debian's docker-registry on 127.0.0.1).

What is pushed is what `strata save --format oci-archive` writes, byte for byte (the manifest
digest is the same); a second push sends no blob; a push to another repository of the same
registry mounts the blobs instead of sending them (asking the token service for pull on the
source); big blobs go up in chunks; relative upload Locations work; a pull of what was pushed is
the same image. A retried or lost answer is recovered; failures are one line and exit 125, and
Ctrl-C exits 130, in both cases with the store as it was. No test needs root.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import socket
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from images.load import import_rootfs, load
from images.push import resolve_location, with_digest
from images.save import save
from images.store import ImageStore
from tests.helpers.images import BUSYBOX_OCI_ARCHIVE
from tests.helpers.registry import (
    FaultProxy,
    LoggedRequest,
    RegistryServer,
    TestCA,
    TokenServer,
    free_port,
    http_request,
    sha256_digest,
    skip_unless_registry,
    skopeo,
    skopeo_args,
    skopeo_inspect,
)
from tests.runtime.conftest import Strata

from .hostile import layer_tar, member
from .registry_fixtures import interrupt

IMAGE_ID = "3d1c289ad1a5d8c3658fb1563c193b1ab0cb6c81c146fbce02e24a1c80993931"
LAYERS = 4  # the busybox test image's layers (PROVENANCE.md)
PODMAN_LINES = ("Getting image source signatures", "Writing manifest to image destination")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """An empty plain-HTTP registry, anonymous push and pull."""
    skip_unless_registry()
    with RegistryServer(tmp_path / "registry") as reg:
        yield reg


def _client(tmp_path: Path, name: str = "state") -> Strata:
    """`strata` with a private state root, registries.conf and auth file."""
    conf = tmp_path / "registries.conf"
    conf.write_text("unqualified-search-registries = []\n")
    handle = Strata(root=tmp_path / name, tmp=tmp_path)
    handle.env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    handle.env["REGISTRY_AUTH_FILE"] = str(tmp_path / "auth.json")
    handle.env.pop("STRATA_PUSH_CHUNK_SIZE", None)
    return handle


@pytest.fixture
def client(tmp_path: Path) -> Strata:
    """A client whose store holds the busybox test image as uniontest:1."""
    handle = _client(tmp_path)
    load(ImageStore(handle.root), BUSYBOX_OCI_ARCHIVE, say=lambda _line: None)
    return handle


def _saved_manifest(root: Path, ref: str, tmp: Path) -> bytes:
    """The manifest bytes `strata save --format oci-archive` writes for `ref`."""
    out = tmp / "saved.tar"
    save(ImageStore(root), ref, out, "oci-archive")
    with tarfile.open(out) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        digest = index["manifests"][0]["digest"]
        member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
        assert member is not None
        return member.read()


def _uploads(reg: RegistryServer, since: int = 0) -> list[LoggedRequest]:
    """Requests that carry blob bytes (PATCH, or the PUT closing an upload)."""
    return [
        r
        for r in reg.requests()[since:]
        if r.method in ("PUT", "PATCH") and "/blobs/uploads/" in r.path
    ]


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    """A failed push: exit 125, nothing on stdout, one `strata: ...` line on stderr."""
    assert done.returncode == 125, (done.returncode, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("strata: "), lines[0]
    return lines[0]


def test_push_sends_what_save_writes(client: Strata, registry: RegistryServer) -> None:
    digestfile = client.tmp / "digest"
    done = client.run(
        "push", "uniontest:1", f"{registry.host}/team/app:1", "--digestfile", str(digestfile)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert (lines[0], lines[-1]) == PODMAN_LINES
    assert sum(line.startswith("Copying blob ") and line.endswith(" done") for line in lines) == 4
    assert f"Copying config {IMAGE_ID[:12]} done" in lines

    saved = _saved_manifest(client.root, "uniontest:1", client.tmp)
    raw = skopeo(
        registry, "inspect", "--raw", *skopeo_args(registry), f"docker://{registry.host}/team/app:1"
    )
    assert raw.rstrip("\n").encode() == saved  # what the registry serves is what save writes
    digest = sha256_digest(saved)
    assert digestfile.read_text() == digest
    assert skopeo_inspect(registry, "team/app:1")["Digest"] == digest
    assert registry.get_manifest("team/app", "1")[0] == saved
    rec = ImageStore(client.root).get("uniontest:1")
    assert f"{registry.host}/team/app@{digest}" in rec.digests
    assert len(registry.blob_puts()) == LAYERS + 1  # the layers and the config, once each


def test_second_push_sends_no_blob(client: Strata, registry: RegistryServer) -> None:
    dest = f"{registry.host}/app:1"
    client.run("push", "-q", "uniontest:1", dest, check=True)
    before = len(registry.requests())
    done = client.run("image", "push", "uniontest:1", dest, check=True)
    assert _uploads(registry, before) == []
    assert sum(line.endswith("skipped: already exists") for line in done.stderr.splitlines()) == 4
    manifest_puts = [r for r in registry.requests()[before:] if "/manifests/" in r.path]
    assert [(r.method, r.status) for r in manifest_puts] == [("PUT", 201)]


def test_push_to_another_repository_mounts_the_blobs(
    client: Strata, registry: RegistryServer
) -> None:
    client.run("push", "-q", "uniontest:1", f"{registry.host}/first:1", check=True)
    before = len(registry.requests())
    done = client.run("push", "uniontest:1", f"{registry.host}/second:1", check=True)
    after = registry.requests()[before:]
    mounts = [r for r in after if r.method == "POST" and "mount=" in r.path]
    assert len(mounts) == LAYERS + 1
    assert all("from=first" in r.path and r.status == 201 for r in mounts)
    assert _uploads(registry, before) == []
    assert "Copying blob" in done.stderr
    assert (
        skopeo_inspect(registry, "second:1")["Digest"]
        == skopeo_inspect(registry, "first:1")["Digest"]
    )


def test_chunked_upload_and_pull_back(client: Strata, registry: RegistryServer) -> None:
    chunk = 256 << 10
    client.env["STRATA_PUSH_CHUNK_SIZE"] = str(chunk)
    client.run("push", "-q", "uniontest:1", f"{registry.host}/big:1", check=True)
    patches = [r for r in registry.requests() if r.method == "PATCH"]
    manifest = json.loads(registry.get_manifest("big", "1")[0])
    sizes = [layer["size"] for layer in manifest["layers"]]
    assert len(patches) == sum(-(-size // chunk) for size in sizes if size > chunk) > 1
    assert all(r.status == 202 for r in patches)

    other = _client(client.tmp, "other")
    done = other.run("pull", "-q", f"{registry.host}/big:1", check=True)
    assert done.stdout.strip() == IMAGE_ID


def test_push_of_a_qualified_name_needs_no_destination(
    client: Strata, registry: RegistryServer
) -> None:
    client.run("tag", "uniontest:1", f"{registry.host}/named:2", check=True)
    client.run("push", "-q", f"{registry.host}/named:2", check=True)
    saved = _saved_manifest(client.root, "uniontest:1", client.tmp)
    assert skopeo_inspect(registry, "named:2")["Digest"] == sha256_digest(saved)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nosuch:1", "HOST/x:1"], "no such image: nosuch:1"),
        (["uniontest:1"], "give a destination"),
        (["uniontest:1", "short:1"], "does not name a registry"),
        (["uniontest:1", "localhost/x:1"], "does not name a registry"),
        (["uniontest:1", "HOST/Bad//x"], "invalid image reference"),
        (["uniontest:1", f"HOST/x@sha256:{'0' * 64}"], "give a tag"),
    ],
)
def test_bad_push_is_one_line(
    client: Strata, registry: RegistryServer, args: list[str], message: str
) -> None:
    done = client.run("push", *(a.replace("HOST", registry.host) for a in args))
    assert message in _one_line(done)
    assert [r for r in registry.requests() if r.path != "/v2/"] == []  # refused before any work


def test_push_to_nothing_listening_is_one_line(client: Strata) -> None:
    done = client.run("push", "--retry", "0", "uniontest:1", f"127.0.0.1:{free_port()}/x:1")
    line = _one_line(done)
    assert "connect" in line or "refused" in line


def test_push_refuses_a_layer_changed_on_disk(tmp_path: Path, registry: RegistryServer) -> None:
    client = _client(tmp_path)
    store = ImageStore(client.root)
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(layer_tar([member("f", data=b"one\n"), member("g", data=b"x")]))
    rec = import_rootfs(store, str(rootfs), "small:1")
    (store.layer_path(rec.layers[0]) / "f").write_bytes(b"two\n")
    done = client.run("push", "-q", "small:1", f"{registry.host}/small:1")
    assert "changed on disk" in _one_line(done)
    logged = registry.requests()
    assert not [r for r in logged if "/manifests/" in r.path]
    opened = [r for r in logged if r.method == "POST" and r.status == 202]
    cancelled = [r for r in logged if r.method == "DELETE" and "/blobs/uploads/" in r.path]
    assert len(opened) == len(cancelled) == 1  # the upload it opened is given up
    assert cancelled[0].status == 204
    assert ImageStore(client.root).get("small:1").digests == ()
    assert list((store.tmp_dir).iterdir()) == []


def test_push_needs_credentials_where_the_registry_asks(client: Strata, tmp_path: Path) -> None:
    skip_unless_registry()
    with RegistryServer(tmp_path / "auth", tls=True, users={"alice": "secret"}) as reg:
        tls = ["--cert-dir", str(reg.cert_dir)]
        done = client.run("push", "-q", *tls, "uniontest:1", f"{reg.host}/private:1")
        assert "authentication required" in _one_line(done)
        done = client.run(
            "push", "-q", *tls, "--creds", "alice:wrong", "uniontest:1", f"{reg.host}/p:1"
        )
        assert "wrong username or password" in _one_line(done)
        client.run(
            "push",
            "-q",
            *tls,
            "--creds",
            "alice:secret",
            "uniontest:1",
            f"{reg.host}/p:1",
            check=True,
        )
        assert reg.get_manifest("p", "1")[0] == _saved_manifest(
            client.root, "uniontest:1", tmp_path
        )


def test_push_retries_a_failed_upload(client: Strata, registry: RegistryServer) -> None:
    """A 500 on a chunk and on a closing PUT: each is sent again (with its bytes), and the
    pushed image is whole."""
    client.env["STRATA_PUSH_CHUNK_SIZE"] = str(1 << 20)
    with FaultProxy(registry) as proxy:
        proxy.fail(r"^PATCH .*/blobs/uploads/", 500, times=1)
        proxy.fail(r"^PUT .*/blobs/uploads/.*digest=", 503, times=1)
        client.run(
            "push",
            "-q",
            "--retry-delay",
            "0",
            "uniontest:1",
            f"{proxy.host}/retried:1",
            check=True,
        )
        assert [r.status for r in proxy.requests("PATCH")][:2] == [500, 202]
        assert 503 in [r.status for r in proxy.requests("PUT", "/blobs/uploads/")]
    saved = _saved_manifest(client.root, "uniontest:1", client.tmp)
    assert registry.get_manifest("retried", "1")[0] == saved
    for layer in json.loads(saved)["layers"]:
        assert sha256_digest(registry.get_blob("retried", layer["digest"])) == layer["digest"]


@pytest.mark.parametrize(
    ("pattern", "status", "message"),
    [
        (r"^PUT .*/manifests/", 503, "server error (HTTP 503) (retried 1 times)"),
        (r"^POST .*/blobs/uploads/", 403, "access denied (HTTP 403)"),
        (r"^PUT .*/blobs/uploads/", 404, "not found (HTTP 404)"),
    ],
)
def test_registry_refusal_is_one_line(
    client: Strata, registry: RegistryServer, pattern: str, status: int, message: str
) -> None:
    with FaultProxy(registry) as proxy:
        proxy.fail(pattern, status)
        done = client.run(
            "push",
            "-q",
            "--retry",
            "1",
            "--retry-delay",
            "0",
            "uniontest:1",
            f"{proxy.host}/refused:1",
        )
    assert message in _one_line(done)
    assert ImageStore(client.root).get("uniontest:1").digests == ()
    assert list(ImageStore(client.root).tmp_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("base", "location", "expected"),
    [
        (
            "http://r:5000/v2/a/blobs/uploads/",
            "/v2/a/blobs/uploads/u1?_state=x%3D",
            "http://r:5000/v2/a/blobs/uploads/u1?_state=x%3D",
        ),
        ("https://r/v2/a/blobs/uploads/", "u2", "https://r/v2/a/blobs/uploads/u2"),
        ("http://r/v2/a/blobs/uploads/", "https://blobs.r/up/3?s=1", "https://blobs.r/up/3?s=1"),
    ],
)
def test_upload_locations_resolve_against_the_request(
    base: str, location: str, expected: str
) -> None:
    assert resolve_location(base, location) == expected


def test_digest_joins_the_locations_query() -> None:
    digest = f"sha256:{'a' * 64}"
    encoded = f"sha256%3A{'a' * 64}"
    assert with_digest("http://r/u/1", digest) == f"http://r/u/1?digest={encoded}"
    assert with_digest("http://r/u/1?_state=x", digest) == f"http://r/u/1?_state=x&digest={encoded}"
    assert with_digest("http://r/u/1?", digest) == f"http://r/u/1?digest={encoded}"


def test_mount_asks_the_token_service_for_pull_on_the_source(
    client: Strata, tmp_path: Path
) -> None:
    skip_unless_registry()
    ca = TestCA(tmp_path / "ca")
    with (
        TokenServer(ca, users={"bob": "pw"}) as tokens,
        RegistryServer(tmp_path / "tok", token=tokens, ca=ca) as reg,
    ):
        creds = ["--creds", "bob:pw"]
        client.run("push", "-q", *creds, "uniontest:1", f"{reg.host}/first:1", check=True)
        before = len(reg.requests())
        client.run("push", "-q", *creds, "uniontest:1", f"{reg.host}/second:1", check=True)
        after = reg.requests()[before:]
        assert tokens.requests["repository:first:pull repository:second:pull,push"] == 1
        mounts = [r for r in after if r.method == "POST" and "mount=" in r.path]
        assert [r.status for r in mounts] == [201] * (LAYERS + 1)
        assert _uploads(reg, before) == []


class _RelativeURLRegistry(RegistryServer):
    """A registry that answers with relative `Location`s (`http.relativeurls`), as registries
    behind a proxy are told to."""

    def _config(self) -> str:
        return super()._config().replace("\nhttp:\n", "\nhttp:\n  relativeurls: true\n", 1)


def test_relative_locations(client: Strata, tmp_path: Path) -> None:
    skip_unless_registry()
    with _RelativeURLRegistry(tmp_path / "relative") as reg:
        opened = http_request(f"{reg.url}/v2/probe/blobs/uploads/", "POST", body=b"")
        assert opened.headers["location"].startswith("/v2/probe/blobs/uploads/")
        client.env["STRATA_PUSH_CHUNK_SIZE"] = str(1 << 20)
        client.run("push", "-q", "uniontest:1", f"{reg.host}/rel:1", check=True)
        assert [r.status for r in reg.requests() if r.method == "PATCH"][:1] == [202]
        saved = _saved_manifest(client.root, "uniontest:1", tmp_path)
        assert reg.get_manifest("rel", "1")[0] == saved


class _LostAnswerProxy(FaultProxy):
    """Forwards everything, but loses the answer to the first `method` request whose path
    matches `pattern`: the registry acted on it, the client sees the connection close."""

    def __init__(self, registry: RegistryServer, method: str, pattern: str) -> None:
        super().__init__(registry)
        self.method = method
        self.pattern = pattern
        self.lost: list[str] = []

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        with self._lock:
            lose = (
                not self.lost and req.command == self.method and re.search(self.pattern, req.path)
            )
            if lose:
                self.lost.append(req.path)
        if not lose:
            super()._handle(req)
            return
        self._forward(req, self._read_body(req))
        req.close_connection = True
        with contextlib.suppress(OSError):
            req.connection.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize(
    ("method", "pattern", "chunk", "then"),
    [
        ("PATCH", "/blobs/uploads/", 1 << 20, ("PATCH", 404)),  # resent chunk: start over
        ("PUT", "digest=", 32 << 20, ("PUT", 404)),  # resent PUT: the blob is there already
    ],
)
def test_a_lost_answer_is_recovered(
    client: Strata,
    registry: RegistryServer,
    method: str,
    pattern: str,
    chunk: int,
    then: tuple[str, int],
) -> None:
    client.env["STRATA_PUSH_CHUNK_SIZE"] = str(chunk)
    with _LostAnswerProxy(registry, method, pattern) as proxy:
        client.run(
            "push",
            "-q",
            "--retry-delay",
            "0",
            "uniontest:1",
            f"{proxy.host}/lost:1",
            check=True,
        )
        assert proxy.lost
        seen = [(r.method, r.status) for r in proxy.requests()]
        assert then in seen
    saved = _saved_manifest(client.root, "uniontest:1", client.tmp)
    assert registry.get_manifest("lost", "1")[0] == saved
    for layer in json.loads(saved)["layers"]:
        assert sha256_digest(registry.get_blob("lost", layer["digest"])) == layer["digest"]


class _HoldingProxy(FaultProxy):
    """Forwards everything, but holds the first blob upload (`PUT`/`PATCH`) unanswered until
    `release` is set: a push caught mid-upload."""

    def __init__(self, registry: RegistryServer) -> None:
        super().__init__(registry)
        self.held = threading.Event()
        self.release = threading.Event()

    def _handle(self, req: http.server.BaseHTTPRequestHandler) -> None:
        with self._lock:
            hold = (
                not self.held.is_set()
                and req.command in ("PUT", "PATCH")
                and "/blobs/uploads/" in req.path
            )
            if hold:
                self.held.set()
        if not hold:
            super()._handle(req)
            return
        self._read_body(req)
        self.release.wait(60)
        req.close_connection = True
        with contextlib.suppress(OSError):
            req.connection.shutdown(socket.SHUT_RDWR)


def test_ctrl_c_mid_upload_leaves_the_store_as_it_was(
    client: Strata, registry: RegistryServer
) -> None:
    """SIGINT while a layer is going up: exit 130, no traceback, no staging dir left, and no
    digest recorded."""
    with _HoldingProxy(registry) as proxy:
        code, out, err = interrupt(
            client,
            "push",
            "-q",
            "uniontest:1",
            f"{proxy.host}/stopped:1",
            ready=proxy.held,
            release=proxy.release,
        )
    assert code == 130, err
    assert "Traceback" not in err
    assert out == ""
    store = ImageStore(client.root)
    assert store.get("uniontest:1").digests == ()
    assert list(store.tmp_dir.iterdir()) == []
