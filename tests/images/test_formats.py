"""The other input forms, made from the busybox test image: an OCI layout directory (gzip and
zstd layers) and Docker >= 25's `docker save` (OCI layout in a tar, uncompressed layers, with
and without its `manifest.json`). Each loads as the same image, every digest checked."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from images.load import LoadError, load
from images.store import ImageStore
from tests.helpers.images import BUSYBOX_DOCKER_ARCHIVE, BUSYBOX_OCI_ARCHIVE

from .test_load import IMAGE_ID

zstandard = pytest.importorskip("zstandard")


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test image {path} is missing")
    return path


def _put_blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def _oci_layout(tmp_path: Path, *, zstd: bool) -> Path:
    layout = tmp_path / "layout"
    with tarfile.open(_need(BUSYBOX_OCI_ARCHIVE)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tar.extractall(layout, filter="data")
        else:
            tar.extractall(layout)  # our own test data
    if not zstd:
        return layout
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    manifest = json.loads((layout / "blobs/sha256" / desc["digest"][7:]).read_bytes())
    for layer in manifest["layers"]:
        raw = gzip.decompress((layout / "blobs/sha256" / layer["digest"][7:]).read_bytes())
        data = zstandard.ZstdCompressor().compress(raw)
        layer["digest"] = _put_blob(layout, data)
        layer["size"] = len(data)
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    data = json.dumps(manifest).encode()
    desc["digest"], desc["size"] = _put_blob(layout, data), len(data)
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def _docker25(tmp_path: Path, *, with_index: bool) -> Path:
    """Docker >= 25's layout: blobs/sha256/*, index.json, manifest.json naming blobs."""
    files: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    with tarfile.open(_need(BUSYBOX_DOCKER_ARCHIVE)) as tar:
        (old,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]

        def read(name: str) -> bytes:
            f = tar.extractfile(name)
            assert f is not None
            return f.read()

        config = read(old["Config"])
        layers = [read(name) for name in old["Layers"]]
    blobs = {hashlib.sha256(b).hexdigest(): b for b in (config, *layers)}
    for digest, data in blobs.items():
        files[f"blobs/sha256/{digest}"] = data

    def descriptor(data: bytes, media: str) -> dict[str, object]:
        return {
            "mediaType": media,
            "digest": f"sha256:{hashlib.sha256(data).hexdigest()}",
            "size": len(data),
        }

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor(config, "application/vnd.oci.image.config.v1+json"),
            "layers": [descriptor(b, "application/vnd.oci.image.layer.v1.tar") for b in layers],
        }
    ).encode()
    files[f"blobs/sha256/{hashlib.sha256(manifest).hexdigest()}"] = manifest
    if with_index:
        entry = descriptor(manifest, "application/vnd.oci.image.manifest.v1+json")
        entry["annotations"] = {
            "io.containerd.image.name": "localhost/uniontest:1",
            "org.opencontainers.image.ref.name": "1",
        }
        files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode()
    files["manifest.json"] = json.dumps(
        [
            {
                "Config": f"blobs/sha256/{hashlib.sha256(config).hexdigest()}",
                "RepoTags": ["localhost/uniontest:1"],
                "Layers": [f"blobs/sha256/{hashlib.sha256(b).hexdigest()}" for b in layers],
            }
        ]
    ).encode()
    path = tmp_path / "docker25.tar"
    with tarfile.open(path, "w") as out:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("form", ["oci-dir-gzip", "oci-dir-zstd", "docker25", "docker25-no-index"])
def test_forms_load_as_the_same_image(tmp_path: Path, form: str) -> None:
    if form.startswith("oci-dir"):
        source = _oci_layout(tmp_path, zstd=form.endswith("zstd"))
    else:
        source = _docker25(tmp_path, with_index=not form.endswith("no-index"))
    store = ImageStore(tmp_path / "root")
    said: list[str] = []
    (rec,) = load(store, source, say=said.append)
    assert rec.id == IMAGE_ID
    assert said == ["Loaded image: localhost/uniontest:1"]
    assert len(store.layers()) == 4
    top = store.layer_path(rec.layers[-1])
    assert (top / "etc/motd").read_text() == "reborn\n"


def test_wrong_diff_id_rejected(tmp_path: Path) -> None:
    """A layer blob matching its own digest but not the config's diff_id is refused."""
    layout = _oci_layout(tmp_path, zstd=False)
    index = json.loads((layout / "index.json").read_text())
    desc = index["manifests"][0]
    manifest = json.loads((layout / "blobs/sha256" / desc["digest"][7:]).read_bytes())
    manifest["layers"][0], manifest["layers"][1] = manifest["layers"][1], manifest["layers"][0]
    data = json.dumps(manifest).encode()
    desc["digest"], desc["size"] = _put_blob(layout, data), len(data)
    (layout / "index.json").write_text(json.dumps(index))
    store = ImageStore(tmp_path / "root")
    with pytest.raises(LoadError, match="does not match diff_id"):
        load(store, layout, say=lambda _: None)
    assert store.images() == []
    assert store.layers() == []
