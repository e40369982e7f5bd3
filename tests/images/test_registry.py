"""`strata pull/push/login/logout` end to end against a real registry (Debian's docker-registry on
127.0.0.1), with skopeo and podman as the independent clients on the other side.

Faults (bad statuses, cut connections, altered blobs...) are in test_registry_faults.py. Tests
that run containers need root (the runtime's `strata` fixture); the others use `client`.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.helpers.images import BUSYBOX_OCI_ARCHIVE
from tests.helpers.registry import (
    FaultProxy,
    RegistryServer,
    TestCA,
    TokenServer,
    container_env,
    push_index,
    seed,
    skopeo_inspect,
)
from tests.runtime.conftest import Strata

from .registry_fixtures import (
    EXPECTED_RUN,
    IMAGE_ID,
    REPO,
    StoreState,
    assert_failed_cleanly,
    assert_one_line,
    blob_digests,
    client,
    configure,
    layer_digests,
    proxy,
    registry,
    run_rootless_command,
)

__all__ = ["client", "proxy", "registry"]  # fixtures, used by name


# -------------------------------------------------------------------------------------------------
# pull


@pytest.mark.root
def test_pull_run_and_images(strata: Strata, registry: RegistryServer) -> None:
    configure(strata, strata.tmp)
    ref = f"{registry.host}/{REPO}:1"
    done = strata.run("pull", ref, check=True)
    assert done.stdout == f"{IMAGE_ID}\n"
    assert "Traceback" not in done.stderr
    assert done.stderr  # progress, without -q
    run = strata.run("run", "--rm", ref, check=True)
    assert run.stdout.split() == EXPECTED_RUN
    table = strata.run("images", check=True).stdout.splitlines()
    assert table[1].split()[:3] == [f"{registry.host}/{REPO}", "1", IMAGE_ID[:12]]
    rows = json.loads(strata.run("images", "--format", "json", check=True).stdout)
    assert [(r["Id"], r["RepoTags"]) for r in rows] == [(f"sha256:{IMAGE_ID}", [ref])]


def test_pull_twice_downloads_no_layer(client: Strata, registry: RegistryServer) -> None:
    ref = f"{registry.host}/{REPO}:1"
    first = client.run("pull", "-q", ref, check=True)
    assert first.stdout == f"{IMAGE_ID}\n"
    assert first.stderr == ""  # -q
    layers = layer_digests(registry)
    got = blob_digests([r.path for r in registry.blob_gets()])
    assert sorted(set(got) - {f"sha256:{IMAGE_ID}"}) == sorted(layers)
    assert sorted(got) == sorted({*got})  # each blob once
    count = len(registry.requests())
    again = client.run("pull", "-q", ref, check=True)
    assert again.stdout == f"{IMAGE_ID}\n"
    second = registry.requests()[count:]
    assert [r for r in second if r.method == "GET" and "/manifests/" in r.path]
    # No blob again: not a layer, and not the config either (the store has it: an image id is
    # its config's digest)
    fetched = blob_digests([r.path for r in second if r.method == "GET"])
    assert fetched == [], fetched


def test_pull_by_digest(client: Strata, registry: RegistryServer) -> None:
    _, digest, _ = registry.get_manifest(REPO, "1")
    done = client.run("pull", "-q", f"{registry.host}/{REPO}@{digest}", check=True)
    assert done.stdout == f"{IMAGE_ID}\n"
    # a digest that is not there: 404, one line
    missing = client.run("pull", "-q", f"{registry.host}/{REPO}@sha256:{'0' * 64}")
    assert "not found" in assert_one_line(missing)


def test_platforms_from_an_index(client: Strata, registry: RegistryServer) -> None:
    both = push_index(registry, REPO, "multi", "1", ["linux/amd64", "linux/arm64/v8"])
    foreign = push_index(registry, REPO, "foreign", "1", ["linux/arm64", "linux/s390x"])
    host = registry.host
    # the host's platform by default (these tests run on amd64 machines)
    if subprocess.run(["uname", "-m"], capture_output=True, text=True).stdout.strip() == "x86_64":
        done = client.run("pull", "-q", f"{host}/{REPO}:multi", check=True)
        assert done.stdout == both.for_platform("linux/amd64").config_digest[7:] + "\n"
    arm = client.run("pull", "-q", "--platform", "linux/arm64/v8", f"{host}/{REPO}:multi")
    assert arm.returncode == 0, arm.stderr
    assert arm.stdout == both.for_platform("linux/arm64/v8").config_digest[7:] + "\n"
    s390 = client.run("pull", "-q", "--platform", "linux/s390x", f"{host}/{REPO}:foreign")
    assert s390.stdout == foreign.for_platform("linux/s390x").config_digest[7:] + "\n"
    # no entry for the platform wanted: one line naming those there are
    before = StoreState.of(client.root)
    done = client.run("pull", "-q", "--platform", "linux/amd64", f"{host}/{REPO}:foreign")
    line = assert_failed_cleanly(done, client.root, before)
    assert "linux/arm64" in line
    assert "linux/s390x" in line


def test_short_names(client: Strata, proxy: FaultProxy, tmp_path: Path) -> None:
    # none configured: one line that says how to qualify it, and nothing contacted
    done = client.run("pull", "-q", f"{REPO}:1")
    line = assert_one_line(done)
    assert "qualified" in line
    assert proxy.requests() == []
    # with the proxy as the search registry
    configure(client, tmp_path, search=[proxy.host])
    done = client.run("pull", "-q", f"{REPO}:1", check=True)
    assert done.stdout == f"{IMAGE_ID}\n"
    assert proxy.requests("GET", f"/v2/{REPO}/manifests/1")
    table = client.run("images", check=True).stdout.splitlines()
    assert table[1].split()[:2] == [f"{proxy.host}/{REPO}", "1"]


# -------------------------------------------------------------------------------------------------
# push


def _saved_manifest(strata: Strata, ref: str, tmp: Path) -> dict[str, object]:
    """The image manifest `strata save --format oci-archive` writes for `ref`."""
    out = tmp / "saved.tar"
    strata.run("save", "--format", "oci-archive", "-o", str(out), ref, check=True)
    with tarfile.open(out) as tar:

        def member(name: str) -> bytes:
            f = tar.extractfile(name)
            assert f is not None
            return f.read()

        index = json.loads(member("index.json"))
        digest = index["manifests"][0]["digest"]
        manifest: dict[str, object] = json.loads(member(f"blobs/sha256/{digest[7:]}"))
    return manifest


def _private_podman(tmp: Path) -> tuple[list[str], Path]:
    runroot = Path(tempfile.mkdtemp(prefix="strata-pr", dir="/tmp"))  # podman: < 50 characters
    base = [
        "podman",
        "--root",
        str(tmp / "podman"),
        "--runroot",
        str(runroot),
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--runtime",
        "runc",
        "--events-backend",
        "none",
    ]
    return base, runroot


@pytest.mark.root
def test_push_then_skopeo_and_podman(strata: Strata, registry: RegistryServer) -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    configure(strata, strata.tmp)
    strata.run("load", "-i", str(BUSYBOX_OCI_ARCHIVE), check=True)
    dest = f"{registry.host}/pushed:1"
    done = strata.run("push", "-q", "uniontest:1", dest, check=True)
    assert "Traceback" not in done.stderr
    raw = skopeo_inspect(registry, "pushed:1", raw=True)
    saved = _saved_manifest(strata, "uniontest:1", strata.tmp)
    config = raw["config"]
    assert isinstance(config, dict)
    assert config["digest"] == f"sha256:{IMAGE_ID}"
    pushed_layers = raw["layers"]
    saved_layers = saved["layers"]
    assert isinstance(pushed_layers, list)
    assert isinstance(saved_layers, list)
    assert [entry["digest"] for entry in pushed_layers] == [
        entry["digest"] for entry in saved_layers
    ]
    info = skopeo_inspect(registry, "pushed:1")
    assert info["Env"] == ["PATH=/bin", "FOO=bar"]
    # podman, with a private store, pulls it and runs it
    base, runroot = _private_podman(strata.tmp)
    env = container_env(strata.tmp / "podman-config")  # podman wants the auth file to exist
    try:
        pulled = subprocess.run(
            [*base, "pull", "-q", "--tls-verify=false", dest],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert pulled.returncode == 0, pulled.stderr
        assert pulled.stdout.strip() == IMAGE_ID
        ran = subprocess.run(
            # podman raises nofile/nproc to limits this machine does not grant (as bench/)
            [
                *base,
                "run",
                "--rm",
                "--network=none",
                "--ulimit=nofile=1024:1024",
                "--ulimit=nproc=1024:1024",
                dest,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split() == EXPECTED_RUN
    finally:
        # (no `podman system reset`: it would also remove the host's podman networks)
        shutil.rmtree(strata.tmp / "podman", ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


@pytest.mark.root
def test_two_hosts_share_layers(strata: Strata, tmp_path: Path) -> None:
    """Two state roots are two machines: A pushes, B pulls; an image on the same base then
    moves only its new layer (and its config) both ways."""
    configure(strata, tmp_path)
    host_b = Strata(root=tmp_path / "state-b", tmp=tmp_path, env=dict(strata.env))
    with RegistryServer(tmp_path / "registry") as reg:
        try:
            strata.run("load", "-i", str(BUSYBOX_OCI_ARCHIVE), check=True)
            strata.run("push", "-q", "uniontest:1", f"{reg.host}/shared:1", check=True)
            assert len(reg.blob_puts()) == 5  # 4 layers, the config
            b1 = host_b.run("pull", "-q", f"{reg.host}/shared:1", check=True)
            assert b1.stdout == f"{IMAGE_ID}\n"
            ctx = tmp_path / "ctx"
            ctx.mkdir()
            (ctx / "extra.txt").write_text("extra\n")
            (ctx / "Dockerfile").write_text("FROM localhost/uniontest:1\nCOPY extra.txt /opt/\n")
            built = strata.run("build", "-q", "-t", "second:1", str(ctx), check=True)
            second_id = built.stdout.strip().removeprefix("sha256:")
            puts = len(reg.blob_puts())
            strata.run("push", "-q", "second:1", f"{reg.host}/shared:2", check=True)
            new_puts = reg.blob_puts()[puts:]
            assert len(new_puts) == 2, new_puts  # the COPY layer and the config
            gets = len(reg.requests())
            b2 = host_b.run("pull", "-q", f"{reg.host}/shared:2", check=True)
            assert b2.stdout == f"{second_id}\n"
            fetched = blob_digests(
                [
                    r.path
                    for r in reg.requests()[gets:]
                    if r.method == "GET" and r.status in (200, 206)
                ]
            )
            new_layer = layer_digests(reg, "2", "shared")[-1]
            assert sorted(fetched) == sorted([new_layer, f"sha256:{second_id}"])
            run = host_b.run("run", "--rm", "second:1", "cat", "/opt/extra.txt")
            # (B knows it by its registry name only)
            assert run.returncode == 125
            run = host_b.run(
                "run", "--rm", f"{reg.host}/shared:2", "cat", "/opt/extra.txt", check=True
            )
            assert run.stdout == "extra\n"
        finally:
            host_b.cleanup()  # B's containers (the fixture checks A's root only)


# -------------------------------------------------------------------------------------------------
# authentication


def test_tls_htpasswd_login_pull_logout(client: Strata, tmp_path: Path) -> None:
    users = {"alice": "s3cret"}
    with RegistryServer(tmp_path / "registry", tls=True, users=users) as reg:
        seed(reg, BUSYBOX_OCI_ARCHIVE, f"{REPO}:1")
        authfile = tmp_path / "login.json"
        certs = ["--tls-verify=true", "--cert-dir", str(reg.cert_dir)]
        # a wrong password: refused, nothing written
        bad = run_rootless_command(
            client,
            "login", "--authfile", str(authfile), *certs, "-u", "alice", "--password-stdin",
            reg.host, input="wrong\n",
        )  # fmt: skip
        assert re.search(r"(?i)401|unauthori[sz]ed|password", assert_one_line(bad))
        assert not authfile.exists() or reg.host not in authfile.read_text()
        login = run_rootless_command(
            client,
            "login", "--authfile", str(authfile), *certs, "-u", "alice", "--password-stdin",
            reg.host, input="s3cret\n",
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        auths = json.loads(authfile.read_text())["auths"]
        assert base64.b64decode(auths[reg.host]["auth"]) == b"alice:s3cret"
        ref = f"{reg.host}/{REPO}:1"
        done = client.run("pull", "-q", "--authfile", str(authfile), *certs, ref)
        assert done.stdout == f"{IMAGE_ID}\n", done.stderr
        # without the CA: one line about TLS, and nothing stored
        other = Strata(root=tmp_path / "other", tmp=tmp_path, env=dict(client.env))
        before = StoreState.of(other.root)
        no_ca = other.run("pull", "-q", "--authfile", str(authfile), "--tls-verify=true", ref)
        line = assert_failed_cleanly(no_ca, other.root, before)
        assert any(w in line.lower() for w in ("certificate", "tls", "ssl")), line
        # --tls-verify=false: the CA is not needed (credentials still are)
        unverified = other.run(
            "pull", "-q", "--authfile", str(authfile), "--tls-verify=false", ref
        )  # fmt: skip
        assert unverified.stdout == f"{IMAGE_ID}\n", unverified.stderr
        other = Strata(root=tmp_path / "other2", tmp=tmp_path, env=dict(client.env))
        # without credentials: 401
        anon = other.run("pull", "-q", *certs, ref)
        assert_failed_cleanly(anon, other.root, before)
        # logout removes the entry; the next pull has no credentials
        out = run_rootless_command(client, "logout", "--authfile", str(authfile), reg.host)
        assert out.returncode == 0, out.stderr
        assert reg.host not in json.loads(authfile.read_text()).get("auths", {})
        after = other.run("pull", "-q", "--authfile", str(authfile), *certs, ref)
        assert_failed_cleanly(after, other.root, before)
        again = run_rootless_command(client, "logout", "--authfile", str(authfile), reg.host)
        assert assert_one_line(again)


def test_bearer_tokens_are_cached_per_scope(client: Strata, tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    with (
        TokenServer(ca, users={"bob": "pw"}, anonymous_pull=["public"]) as tokens,
        RegistryServer(tmp_path / "registry", token=tokens, ca=ca) as reg,
    ):
        seed(reg, BUSYBOX_OCI_ARCHIVE, f"{REPO}:1")
        seed(reg, BUSYBOX_OCI_ARCHIVE, "public:1")
        tokens.requests.clear()
        tokens.accounts.clear()
        done = client.run("pull", "-q", "--creds", "bob:pw", f"{reg.host}/{REPO}:1")
        assert done.stdout == f"{IMAGE_ID}\n", done.stderr
        # one token for the one scope, reused for the manifest, the config and every layer
        assert dict(tokens.requests) == {f"repository:{REPO}:pull": 1}
        assert tokens.accounts == ["bob"]
        # anonymous: allowed on the public repository only
        pub = client.run("pull", "-q", f"{reg.host}/public:1")
        assert pub.stdout == f"{IMAGE_ID}\n", pub.stderr
        before = StoreState.of(client.root)
        denied = client.run("pull", "-q", f"{reg.host}/{REPO}:2")
        assert_failed_cleanly(denied, client.root, before)
        wrong = client.run("pull", "-q", "--creds", "bob:nope", f"{reg.host}/{REPO}:1")
        assert_failed_cleanly(wrong, client.root, before)
        # credentials from `strata login` serve the token requests of a later pull
        authfile = tmp_path / "login.json"
        login = run_rootless_command(
            client, "login", "--authfile", str(authfile), "-u", "bob", "--password-stdin",
            reg.host, input="pw\n",
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        tokens.accounts.clear()
        done = client.run("pull", "-q", "--authfile", str(authfile), f"{reg.host}/{REPO}:1")
        assert done.stdout == f"{IMAGE_ID}\n", done.stderr
        assert set(tokens.accounts) == {"bob"}


# -------------------------------------------------------------------------------------------------
# run --pull


@pytest.mark.root
def test_run_pull_policies(strata: Strata, proxy: FaultProxy) -> None:
    configure(strata, strata.tmp)
    ref = f"{proxy.host}/{REPO}:1"
    never = strata.run("run", "--rm", "--pull=never", ref)
    assert never.returncode == 125
    assert proxy.requests() == []
    assert StoreState.of(strata.root).images == ()
    missing = strata.run("run", "--rm", "--pull=missing", ref, check=True)
    assert missing.stdout.split() == EXPECTED_RUN
    layers = set(layer_digests(proxy.registry))
    assert set(blob_digests([r.path for r in proxy.requests("GET")])) >= layers
    seen = len(proxy.requests())
    present = strata.run("run", "--rm", ref, check=True)  # default: missing
    assert present.stdout.split() == EXPECTED_RUN
    assert proxy.requests()[seen:] == []
    always = strata.run("run", "--rm", "--pull=always", ref, check=True)
    assert always.stdout.split() == EXPECTED_RUN
    later = proxy.requests()[seen:]
    assert [r for r in later if r.method in ("GET", "HEAD") and "/manifests/" in r.path]
    again = blob_digests([r.path for r in later if r.method == "GET" and r.status in (200, 206)])
    assert not set(again) & layers, again
