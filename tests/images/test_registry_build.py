"""`strata build --pull`: FROM images come from a registry as the pull policy says."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.registry import RegistryServer
from tests.runtime.conftest import Strata

from .registry_fixtures import IMAGE_ID, REPO, StoreState, client, registry

__all__ = ["client", "registry"]  # fixtures, used by name


def _context(tmp: Path, base: str) -> Path:
    ctx = tmp / "ctx"
    ctx.mkdir()
    # no RUN: the build needs no container, so no root
    (ctx / "Dockerfile").write_text(f'FROM {base}\nENV BUILT=1\nCMD ["/bin/sh"]\n')
    return ctx


def test_build_pulls_a_missing_from_image(client: Strata, registry: RegistryServer) -> None:
    base = f"{registry.host}/{REPO}:1"
    ctx = _context(client.tmp, base)
    done = client.run("build", "-q", "-t", "built:1", str(ctx))
    assert done.returncode == 0, done.stderr
    images = client.run("images", "--format", "json", check=True).stdout
    assert IMAGE_ID in images  # the base, pulled
    assert "localhost/built" in images
    gets = len(registry.manifest_gets())
    # again: the base is in the store now, so nothing is asked of the registry
    client.run("build", "-q", "--no-cache", "-t", "built:2", str(ctx), check=True)
    registry.settle()
    assert len(registry.manifest_gets()) == gets


def test_build_pull_always_asks_the_registry_again(
    client: Strata, registry: RegistryServer
) -> None:
    base = f"{registry.host}/{REPO}:1"
    ctx = _context(client.tmp, base)
    client.run("pull", "-q", base, check=True)
    registry.settle()
    gets, blobs = len(registry.manifest_gets()), len(registry.blob_gets())
    client.run("build", "-q", "--pull", "-t", "built:1", str(ctx), check=True)
    registry.settle()
    assert len(registry.manifest_gets()) > gets  # docker's bare --pull: always
    assert len(registry.blob_gets()) == blobs  # no layer, nor the config, again


def test_build_pull_never_refuses_a_missing_from_image(
    client: Strata, registry: RegistryServer
) -> None:
    ctx = _context(client.tmp, f"{registry.host}/{REPO}:1")
    before = StoreState.of(client.root)
    done = client.run("build", "-q", "--pull=never", "-t", "built:1", str(ctx))
    assert done.returncode == 1, done.stderr  # a failed build exits 1, as docker build
    assert done.stdout == ""
    assert done.stderr.startswith("strata: Dockerfile:1: FROM ")
    assert done.stderr.count("\n") == 1
    assert "no such image" in done.stderr
    assert StoreState.of(client.root) == before
