"""What `strata pull` accepts and refuses of a registry's manifests and layers: the busybox test
image re-published with zstd and with uncompressed layers (Docker schema 2 and OCI), and
manifests strata cannot use (a foreign layer, schema 1, an artifact that is not an image), each
refused with one line and the store unchanged."""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path
from typing import Final

import pytest
import zstandard

from tests.helpers.images import BUSYBOX_OCI_ARCHIVE
from tests.helpers.registry import RegistryServer, sha256_digest
from tests.runtime.conftest import Strata

from .registry_fixtures import (
    IMAGE_ID,
    REPO,
    StoreState,
    assert_failed_cleanly,
    client,
    registry,
)

__all__ = ["client", "registry"]  # fixtures, used by name

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"


def _image() -> tuple[bytes, list[bytes]]:
    """The test image's config and its layers as uncompressed tars, from the OCI archive."""
    with tarfile.open(BUSYBOX_OCI_ARCHIVE) as tar:

        def blob(digest: str) -> bytes:
            member = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert member is not None
            return member.read()

        index = json.loads(blob_of(tar, "index.json"))
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        config = blob(manifest["config"]["digest"])
        layers = [gzip.decompress(blob(layer["digest"])) for layer in manifest["layers"]]
    return config, layers


def blob_of(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.extractfile(name)
    assert member is not None
    return member.read()


def _publish(
    registry: RegistryServer,
    tag: str,
    layers: list[tuple[bytes, str]],
    *,
    manifest_type: str = OCI_MANIFEST,
    config: bytes | None = None,
    config_type: str | None = None,
    base: dict[str, object] | None = None,
) -> None:
    raw_config = config if config is not None else _image()[0]
    descriptors = []
    for data, media in layers:
        descriptors.append(
            {"mediaType": media, "digest": registry.put_blob(REPO, data), "size": len(data)}
        )
    if config_type is None:
        config_type = OCI_CONFIG if manifest_type == OCI_MANIFEST else DOCKER_CONFIG
    doc = {
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {
            "mediaType": config_type,
            "digest": registry.put_blob(REPO, raw_config),
            "size": len(raw_config),
        },
        "layers": ([base] if base else []) + descriptors,
    }
    registry.put_manifest(REPO, tag, json.dumps(doc).encode(), manifest_type)


@pytest.mark.parametrize(
    ("manifest_type", "compress", "media"),
    [
        (OCI_MANIFEST, zstandard.ZstdCompressor().compress, OCI_LAYER + "+zstd"),
        (OCI_MANIFEST, bytes, OCI_LAYER),
        (DOCKER_MANIFEST, bytes, DOCKER_LAYER),
        (DOCKER_MANIFEST, gzip.compress, DOCKER_LAYER + ".gzip"),
    ],
    ids=["oci-zstd", "oci-uncompressed", "docker-uncompressed", "docker-gzip"],
)
def test_zstd_gzip_and_uncompressed_layers_give_the_same_image(
    client: Strata, registry: RegistryServer, manifest_type: str, compress: object, media: str
) -> None:
    _, layers = _image()
    assert callable(compress)
    _publish(registry, "fmt", [(compress(t), media) for t in layers], manifest_type=manifest_type)
    done = client.run("pull", "-q", f"{registry.host}/{REPO}:fmt")
    assert done.stdout == f"{IMAGE_ID}\n", done.stderr
    info = json.loads(client.run("image", "inspect", IMAGE_ID, check=True).stdout)[0]
    assert info["Layers"] == 4


def _refused(client: Strata, registry: RegistryServer, tag: str) -> str:
    before = StoreState.of(client.root)
    done = client.run("pull", "-q", "--retry", "0", f"{registry.host}/{REPO}:{tag}")
    return assert_failed_cleanly(done, client.root, before)


class _ForeignURLRegistry(RegistryServer):
    """A registry that accepts layers with `urls` (distribution's URL allow list), as registries
    serving Windows images do; by default it refuses such manifests."""

    def _config(self) -> str:
        return super()._config() + (
            "validation:\n  manifests:\n    urls:\n      allow:\n        - ^https://\n"
        )


def test_a_foreign_layer_is_refused(client: Strata, tmp_path: Path) -> None:
    """A non-distributable layer lives elsewhere (its `urls`): strata refuses the image with one
    line and never fetches from those URLs."""
    _, layers = _image()
    foreign = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    with _ForeignURLRegistry(tmp_path / "foreign") as reg:
        first = gzip.compress(layers[0])
        reg.put_blob(REPO, first)
        _publish(
            reg,
            "foreign",
            [(t, DOCKER_LAYER) for t in layers[1:]],
            manifest_type=DOCKER_MANIFEST,
            base={
                "mediaType": foreign,
                "digest": sha256_digest(first),
                "size": len(first),
                "urls": ["https://windows.example/base.tar.gz"],
            },
        )
        line = _refused(client, reg, "foreign")
    assert "non-distributable" in line


def test_a_schema1_manifest_is_refused() -> None:
    """Docker's schema 1 (deprecated, and refused by registries unless enabled) is named as
    such; checked on the manifest itself, as registry 2.8 no longer serves new ones."""
    from images.distribution import DOCKER_SCHEMA1, Manifest, RegistryError
    from images.pull import _document

    raw = b'{"schemaVersion": 1, "name": "x", "tag": "1", "fsLayers": []}'
    for media in (*DOCKER_SCHEMA1, "application/json"):
        with pytest.raises(RegistryError, match="schema 1"):
            _document(Manifest(raw, media, sha256_digest(raw)), "r.example")


def test_an_artifact_that_is_not_an_image_is_refused(
    client: Strata, registry: RegistryServer
) -> None:
    _publish(
        registry,
        "chart",
        [(b"not a tar", "application/vnd.cncf.helm.chart.content.v1.tar+gzip")],
        config=b"{}",
        config_type="application/vnd.cncf.helm.config.v1+json",
    )
    line = _refused(client, registry, "chart")
    assert "not a container image" in line


def test_a_config_that_does_not_match_the_layers_is_refused(
    client: Strata, registry: RegistryServer
) -> None:
    """Three layers for a config naming four diff_ids."""
    _, layers = _image()
    _publish(registry, "short", [(t, OCI_LAYER) for t in layers[:3]])
    line = _refused(client, registry, "short")
    assert "4 diff_ids for 3 layers" in line


def test_a_layer_that_does_not_match_its_diff_id_is_refused(
    client: Strata, registry: RegistryServer
) -> None:
    """Digests all correct, but the second layer is not the one the config names."""
    _, layers = _image()
    swapped = [layers[0], layers[2], layers[1], layers[3]]
    _publish(registry, "swapped", [(t, OCI_LAYER) for t in swapped])
    line = _refused(client, registry, "swapped")
    assert "diff_id" in line
