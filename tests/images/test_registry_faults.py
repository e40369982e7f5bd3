"""`strata pull` against a registry that misbehaves (a `FaultProxy` in front of a real one).

Every failure must be one `strata: ...` line on stderr, exit 125, and a store exactly as before:
no new image, no new layer directory, nothing left in images/tmp. Recoverable faults (a 429, a
503 once, a connection cut mid-blob) must end in a successful pull. `--retry-delay 0` keeps the
retries quick; a Retry-After header is obeyed as sent (1 s).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.helpers.images import BUSYBOX_OCI_ARCHIVE
from tests.helpers.mounts import skip_unless_root
from tests.helpers.registry import FaultProxy, RegistryServer, free_port, seed
from tests.runtime.conftest import Strata

from .registry_fixtures import (
    IMAGE_ID,
    REPO,
    StoreState,
    assert_failed_cleanly,
    client,
    interrupt,
    proxy,
    registry,
    tmp_entries,
)

__all__ = ["client", "proxy", "registry"]  # fixtures, used by name

FAST = ("--retry", "2", "--retry-delay", "0")


def _big_layer(registry: RegistryServer) -> tuple[str, int]:
    """The largest layer of uniontest:1 (the busybox base, ~1 MB gzipped): digest, size."""
    manifest = json.loads(registry.get_manifest(REPO, "1")[0])
    layer = max(manifest["layers"], key=lambda entry: entry["size"])
    return layer["digest"], layer["size"]


def _fail_cleanly(client: Strata, ref: str, *args: str) -> str:
    before = StoreState.of(client.root)
    done = client.run("pull", "-q", *args, ref)
    return assert_failed_cleanly(done, client.root, before)


def _pull_ok(client: Strata, ref: str, *args: str) -> None:
    done = client.run("pull", "-q", *args, ref)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{IMAGE_ID}\n"
    assert done.stderr == ""


def test_connection_refused(client: Strata) -> None:
    # a port that was just free; nothing listens there (a refused connect is not retried long)
    port = free_port()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    line = _fail_cleanly(client, f"127.0.0.1:{port}/{REPO}:1", *FAST)
    assert f"127.0.0.1:{port}" in line


@pytest.mark.root
def test_unknown_host(client: Strata) -> None:
    """A name that resolves nowhere. This machine's resolver asks a nameserver elsewhere, so the
    pull runs in a network namespace of its own: there the lookup fails at once, and no query
    leaves the machine."""
    skip_unless_root()
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    before = StoreState.of(client.root)
    done = subprocess.run(
        ["unshare", "--net", *client.argv("pull", "-q", *FAST, f"nonexistent.invalid/{REPO}:1")],
        capture_output=True,
        text=True,
        timeout=60,
        env=client.env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    line = assert_failed_cleanly(done, client.root, before)
    assert "nonexistent.invalid" in line


def test_wrong_credentials(client: Strata, tmp_path: Path) -> None:
    with RegistryServer(tmp_path / "tls", tls=True, users={"alice": "s3cret"}) as reg:
        seed(reg, BUSYBOX_OCI_ARCHIVE, f"{REPO}:1")
        certs = ("--cert-dir", str(reg.cert_dir))
        _fail_cleanly(client, f"{reg.host}/{REPO}:1", *certs, "--creds", "alice:wrong", *FAST)
        _pull_ok(client, f"{reg.host}/{REPO}:1", *certs, "--creds", "alice:s3cret")


@pytest.mark.parametrize(
    ("what", "pattern"),
    [("manifest", r"GET /v2/[^ ]*/manifests/"), ("blob", r"GET /v2/[^ ]*/blobs/sha256:")],
)
def test_forbidden(client: Strata, proxy: FaultProxy, what: str, pattern: str) -> None:
    proxy.fail(pattern, 403)
    line = _fail_cleanly(client, f"{proxy.host}/{REPO}:1", *FAST)
    assert "403" in line or "denied" in line.lower() or "forbidden" in line.lower(), line
    # a 403 is an answer, not a hiccup: asked once
    assert len([r for r in proxy.requests() if r.fault == "status"]) == 1


def test_not_found(client: Strata, proxy: FaultProxy) -> None:
    line = _fail_cleanly(client, f"{proxy.host}/nosuchrepo:1", *FAST)
    assert "not found" in line.lower() or "404" in line
    line = _fail_cleanly(client, f"{proxy.host}/{REPO}:nosuchtag", *FAST)
    assert "not found" in line.lower() or "404" in line
    assert "nosuchtag" in line


def test_too_many_requests_then_success(client: Strata, proxy: FaultProxy) -> None:
    proxy.fail(r"GET /v2/[^ ]*/manifests/", 429, times=1, headers={"Retry-After": "1"})
    digest, _ = _big_layer(proxy.registry)
    proxy.fail(rf"GET /v2/[^ ]*/blobs/{digest}", 429, times=1, headers={"Retry-After": "1"})
    _pull_ok(client, f"{proxy.host}/{REPO}:1", "--retry-delay", "0")
    assert len(proxy.requests("GET", "/manifests/1$")) >= 2
    assert len(proxy.requests("GET", f"/blobs/{digest}")) == 2


def test_too_many_requests_persisting(client: Strata, proxy: FaultProxy) -> None:
    proxy.fail(r"GET /v2/[^ ]*/manifests/", 429, headers={"Retry-After": "0"})
    line = _fail_cleanly(client, f"{proxy.host}/{REPO}:1", *FAST)
    assert "429" in line or "too many" in line.lower(), line
    assert len(proxy.requests("GET", "/manifests/")) == 3  # once and 2 retries


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors(client: Strata, proxy: FaultProxy, status: int) -> None:
    # once: retried and fine
    proxy.fail(r"GET /v2/[^ ]*/blobs/sha256:", status, times=1)
    _pull_ok(client, f"{proxy.host}/{REPO}:1", *FAST)
    # always: one line after the retries, nothing stored
    proxy.clear()
    proxy.fail(r"GET /v2/[^ ]*/manifests/", status)
    other = Strata(root=client.tmp / "other", tmp=client.tmp, env=client.env)
    line = _fail_cleanly(other, f"{proxy.host}/{REPO}:1", *FAST)
    assert str(status) in line, line


def test_altered_blob(client: Strata, proxy: FaultProxy) -> None:
    digest, _ = _big_layer(proxy.registry)
    proxy.corrupt(rf"GET /v2/[^ ]*/blobs/{digest}")
    line = _fail_cleanly(client, f"{proxy.host}/{REPO}:1", *FAST)
    assert "digest" in line, line


def test_altered_config(client: Strata, proxy: FaultProxy) -> None:
    proxy.corrupt(rf"GET /v2/[^ ]*/blobs/sha256:{IMAGE_ID}")
    line = _fail_cleanly(client, f"{proxy.host}/{REPO}:1", *FAST)
    assert "digest" in line, line


def test_oversized_manifest(client: Strata, proxy: FaultProxy) -> None:
    proxy.oversized(r"/manifests/", 10 << 20)
    _fail_cleanly(client, f"{proxy.host}/{REPO}:1", *FAST)


def test_redirect_loop(client: Strata, proxy: FaultProxy) -> None:
    proxy.redirect_loop(r"GET /v2/[^ ]*/blobs/sha256:")
    line = _fail_cleanly(client, f"{proxy.host}/{REPO}:1", *FAST)
    assert "redirect" in line.lower(), line
    assert len(proxy.requests()) < 100  # it gave up on its own


def test_cut_mid_blob_resumes_with_range(client: Strata, proxy: FaultProxy) -> None:
    digest, size = _big_layer(proxy.registry)
    cut = 100_000
    assert size > 2 * cut
    proxy.cut(rf"GET /v2/[^ ]*/blobs/{digest}", cut, times=1)
    _pull_ok(client, f"{proxy.host}/{REPO}:1", *FAST)
    gets = proxy.requests("GET", f"/blobs/{digest}")
    assert [g.fault for g in gets] == ["cut", None], gets
    assert gets[0].range is None
    # Resumed from what had arrived, not from the start. (A client that reads the body in
    # 1 MiB chunks, e.g. httpx's aiter_raw(1 << 20), loses a cut inside the first MiB and
    # starts over without Range: this cut is at 100 kB on purpose.)
    resumed = re.fullmatch(r"bytes=(\d+)-", gets[1].range or "")
    assert resumed is not None, gets[1]
    assert 0 < int(resumed[1]) <= cut, gets[1]


def test_cut_mid_blob_then_whole_blob_again(client: Strata, proxy: FaultProxy) -> None:
    """A registry that answers the resumed request with the whole blob (200, no Range): the
    download starts over from zero, and so does the extraction that was reading behind it."""
    digest, _ = _big_layer(proxy.registry)
    proxy.cut(rf"GET /v2/[^ ]*/blobs/{digest}", 100_000, times=1)
    proxy.ignore_range(rf"GET /v2/[^ ]*/blobs/{digest}")
    _pull_ok(client, f"{proxy.host}/{REPO}:1", *FAST)
    gets = proxy.requests("GET", f"/blobs/{digest}")
    assert [(g.fault, g.status) for g in gets] == [("cut", 200), ("no_range", 200)], gets
    assert gets[1].range is not None  # strata asked to resume; the registry sent it all


def test_cut_every_time(client: Strata, proxy: FaultProxy) -> None:
    digest, _ = _big_layer(proxy.registry)
    proxy.cut(rf"GET /v2/[^ ]*/blobs/{digest}", 1000)
    _fail_cleanly(client, f"{proxy.host}/{REPO}:1", *FAST)
    assert len(proxy.requests("GET", f"/blobs/{digest}")) == 3  # once and 2 retries


def test_ctrl_c_mid_download_leaves_the_store_as_it_was(client: Strata, proxy: FaultProxy) -> None:
    """SIGINT while a layer is downloading (and others may be extracting): exit 130, no
    traceback, and no image, layer or staging dir left behind."""
    digest, size = _big_layer(proxy.registry)
    stall = proxy.stall(rf"GET /v2/[^ ]*/blobs/{digest}", size // 2, times=1)
    before = StoreState.of(client.root)
    code, out, err = interrupt(
        client,
        "pull",
        "-q",
        f"{proxy.host}/{REPO}:1",
        ready=stall.stalled,
        release=stall.release,
    )
    assert code == 130, err
    assert "Traceback" not in err
    assert out == ""
    assert StoreState.of(client.root) == before
    assert tmp_entries(client.root) == []
