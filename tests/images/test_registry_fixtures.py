"""The registry test fixtures themselves, checked with skopeo and plain HTTP only (no strata):
a plain registry, TLS with htpasswd, Bearer tokens, the fault proxy and the multi-platform index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.images import BUSYBOX_DOCKER_ARCHIVE, BUSYBOX_OCI_ARCHIVE
from tests.helpers.registry import (
    MANIFEST_ACCEPT,
    FaultProxy,
    RegistryServer,
    TestCA,
    TokenServer,
    http_request,
    push_index,
    seed,
    skopeo,
    skopeo_inspect,
)

REPO = "uniontest"
CONFIG_DIGEST = "sha256:3d1c289ad1a5d8c3658fb1563c193b1ab0cb6c81c146fbce02e24a1c80993931"


def test_plain_registry_seed_and_inspect(tmp_path: Path) -> None:
    with RegistryServer(tmp_path / "reg") as reg:
        digest = seed(reg, BUSYBOX_OCI_ARCHIVE, "uniontest:1")
        info = skopeo_inspect(reg, "uniontest:1")
        assert info["Digest"] == digest
        assert info["Env"] == ["PATH=/bin", "FOO=bar"]
        assert len(reg.blob_puts()) == 5  # 4 layers and the config
        raw = skopeo_inspect(reg, "uniontest:1", raw=True)
        config = raw["config"]
        assert isinstance(config, dict)
        assert config["digest"] == CONFIG_DIGEST
        seed(reg, BUSYBOX_DOCKER_ARCHIVE, "fromdocker:1")
        assert skopeo_inspect(reg, "fromdocker:1")["Env"] == ["PATH=/bin", "FOO=bar"]
        # inspecting reads manifests and configs, never a layer
        configs = {
            json.loads(reg.get_manifest(repo, "1")[0])["config"]["digest"]
            for repo in ("uniontest", "fromdocker")
        }
        assert {r.path.rsplit("/", 1)[1] for r in reg.blob_gets()} == configs
    assert reg.port != 0
    # stopped: nothing listens there any more
    with pytest.raises(ConnectionRefusedError):
        http_request(f"http://127.0.0.1:{reg.port}/v2/")


def test_tls_htpasswd(tmp_path: Path) -> None:
    with RegistryServer(tmp_path / "reg", tls=True, users={"alice": "s3cret"}) as reg:
        seed(reg, BUSYBOX_OCI_ARCHIVE, "uniontest:1")
        info = skopeo_inspect(reg, "uniontest:1")
        assert info["Env"] == ["PATH=/bin", "FOO=bar"]
        ref = f"docker://{reg.host}/uniontest:1"
        with pytest.raises(RuntimeError, match="certificate"):  # no CA given
            skopeo(reg, "inspect", "--creds=alice:s3cret", ref)
        with pytest.raises(RuntimeError, match=r"(?i)unauthorized|authentication"):
            skopeo(reg, "inspect", f"--cert-dir={reg.cert_dir}", "--creds=alice:wrong", ref)
        assert http_request(f"{reg.url}/v2/", context=reg.ssl_context()).status == 401
        # the fault proxy speaks plain HTTP to its clients and TLS to this registry
        with FaultProxy(reg) as proxy:
            assert http_request(f"{proxy.url}/v2/").status == 401
            ok = http_request(f"{proxy.url}/v2/", headers=reg.auth_headers(REPO))
            assert ok.status == 200


def test_token_auth(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    with (
        TokenServer(ca, users={"bob": "pw"}, anonymous_pull=["public"]) as tokens,
        RegistryServer(tmp_path / "reg", token=tokens, ca=ca) as reg,
    ):
        seed(reg, BUSYBOX_OCI_ARCHIVE, "uniontest:1")
        seed(reg, BUSYBOX_OCI_ARCHIVE, "public:1")
        tokens.requests.clear()
        assert skopeo_inspect(reg, "uniontest:1")["Env"] == ["PATH=/bin", "FOO=bar"]
        assert tokens.requests["repository:uniontest:pull"] >= 1
        # anonymous: the public repository only
        anon = ["--tls-verify=false", "--no-creds"]
        out = skopeo(reg, "inspect", *anon, f"docker://{reg.host}/public:1")
        assert json.loads(out)["Env"] == ["PATH=/bin", "FOO=bar"]
        with pytest.raises(RuntimeError, match=r"(?i)unauthorized|authentication|denied"):
            skopeo(reg, "inspect", *anon, f"docker://{reg.host}/uniontest:1")
        with pytest.raises(RuntimeError):
            skopeo(
                reg,
                "inspect",
                "--tls-verify=false",
                "--creds=bob:wrong",
                f"docker://{reg.host}/uniontest:1",
            )
        assert None in tokens.accounts
        assert "bob" in tokens.accounts


def test_fault_proxy(tmp_path: Path) -> None:
    with RegistryServer(tmp_path / "reg") as reg, FaultProxy(reg) as proxy:
        seed(reg, BUSYBOX_OCI_ARCHIVE, "uniontest:1")
        manifest = json.loads(reg.get_manifest("uniontest", "1")[0])
        layer = manifest["layers"][0]["digest"]
        blob_url = f"{proxy.url}/v2/uniontest/blobs/{layer}"
        whole = http_request(blob_url)
        assert whole.status == 200
        assert whole.body == reg.get_blob("uniontest", layer)
        # Range passes through
        part = http_request(blob_url, headers={"Range": "bytes=10-19"})
        assert (part.status, part.body) == (206, whole.body[10:20])
        assert proxy.requests("GET", "/blobs/")[-1].range == "bytes=10-19"
        # status faults, N times then through
        proxy.fail(r"/manifests/", 429, times=1, headers={"Retry-After": "1"})
        url = f"{proxy.url}/v2/uniontest/manifests/1"
        first = http_request(url, headers={"Accept": MANIFEST_ACCEPT})
        assert (first.status, first.headers["retry-after"]) == (429, "1")
        assert http_request(url, headers={"Accept": MANIFEST_ACCEPT}).status == 200
        # altered bytes
        proxy.corrupt(r"/blobs/", times=1)
        bad = http_request(blob_url)
        assert len(bad.body) == len(whole.body)
        assert bad.body != whole.body
        # a cut connection
        proxy.cut(r"/blobs/", 1000, times=1)
        with pytest.raises(Exception, match=r"(?i)incomplete|closed|reset"):
            http_request(blob_url)
        assert http_request(blob_url).body == whole.body
        # a redirect to itself; an oversized manifest
        proxy.redirect_loop(r"/manifests/loop")
        loop = http_request(f"{proxy.url}/v2/uniontest/manifests/loop")
        assert loop.status == 307
        assert loop.headers["location"] == f"{proxy.url}/v2/uniontest/manifests/loop"
        proxy.oversized(r"/manifests/big", size=1 << 20)
        assert len(http_request(f"{proxy.url}/v2/uniontest/manifests/big").body) > 1 << 20
        # uploads through the proxy: Location headers point back at it
        start = http_request(f"{proxy.url}/v2/other/blobs/uploads/", "POST", body=b"")
        assert start.status == 202
        assert start.headers["location"].startswith(proxy.url)
        faults = [r.fault for r in proxy.requests() if r.fault]
        assert faults == ["status", "corrupt", "cut", "redirect_loop", "oversized"]


def test_multi_platform_index(tmp_path: Path) -> None:
    with RegistryServer(tmp_path / "reg") as reg:
        seed(reg, BUSYBOX_OCI_ARCHIVE, "uniontest:1")
        index = push_index(reg, "uniontest", "multi", "1", ["linux/amd64", "linux/arm64/v8"])
        raw = skopeo_inspect(reg, "uniontest:multi", raw=True)
        entries = raw["manifests"]
        assert isinstance(entries, list)
        assert [e["platform"]["architecture"] for e in entries] == ["amd64", "arm64"]
        out = skopeo(
            reg,
            "inspect",
            "--tls-verify=false",
            "--override-arch=arm64",
            "--override-variant=v8",
            f"docker://{reg.host}/uniontest:multi",
        )
        info = json.loads(out)
        assert info["Architecture"] == "arm64"
        assert info["Digest"] == index.digest  # skopeo names the reference, the index


def test_a_registry_that_exits_fails_fast_with_its_log(tmp_path: Path) -> None:
    class Broken(RegistryServer):
        def _config(self) -> str:
            return f"version: 0.1\nhttp:\n  addr: 127.0.0.1:{self.port}\nstorage:\n  nosuch: {{}}\n"

    with (
        pytest.raises(RuntimeError, match=r"exited early:\n(?s:.*)nosuch"),
        Broken(tmp_path / "reg"),
    ):
        pass
