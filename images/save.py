"""`strata save`: an image from the store as an OCI archive or a docker archive.

The config is written exactly as it was loaded, and each layer as the exact tar it was loaded
from (rebuilt from its tar map, `tarsplit`, and checked against its diff_id while it is written),
uncompressed. So the image id and the diff_ids survive load -> save -> load, and podman or
Docker load the result. A layer blob's digest is then its diff_id; a manifest loaded with gzip
layers gets new layer digests (and so a new manifest digest), as `podman save` of an image
pulled compressed does.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Final

from unionfs.errors import UsageError

from .store import ImageRecord, ImageStore
from .tarsplit import rebuild

FORMATS: Final = ("oci-archive", "docker-archive")
LAYER_TYPE: Final = "application/vnd.oci.image.layer.v1.tar"
CONFIG_TYPE: Final = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPE: Final = "application/vnd.oci.image.manifest.v1+json"


class _Writer:
    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.dirs: set[str] = set()

    def add(self, name: str, data: bytes) -> None:
        self.mkdirs(name)
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        self.tar.addfile(info, io.BytesIO(data))

    def mkdirs(self, name: str) -> None:
        parent = os.path.dirname(name)
        if parent and parent not in self.dirs:
            self.mkdirs(parent)
            info = tarfile.TarInfo(parent)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            self.tar.addfile(info)
            self.dirs.add(parent)

    def add_layer(self, name: str, store: ImageStore, diff_id: str, spool: Path) -> int:
        """The layer's original tar as `name`; its size. Checks the diff_id first."""
        size = rebuild_layer(store, diff_id, spool)
        self.mkdirs(name)
        info = tarfile.TarInfo(name)
        info.size, info.mode = size, 0o644
        with open(spool, "rb") as f:
            self.tar.addfile(info, f)
        return info.size


def rebuild_layer(store: ImageStore, diff_id: str, dest: Path) -> int:
    """Write layer `diff_id`'s original tar (from its tar map) to `dest`; its size.

    The sha256 of what was written must be the diff_id: `save` and `push` both hand out that
    digest for these bytes, so a layer changed on disk since it was loaded is an error (125)."""
    map_path = store.map_path(diff_id)
    if not map_path.exists():
        raise UsageError(f"layer {diff_id[:12]}: no tar map (loaded before save existed?)", 125)
    h = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        try:
            for chunk in rebuild(map_path, store.layer_path(diff_id)):
                h.update(chunk)
                out.write(chunk)
                size += len(chunk)
        except (OSError, ValueError) as e:
            raise UsageError(f"layer {diff_id[:12]}: cannot rebuild its tar ({e})", 125) from None
    if h.hexdigest() != diff_id:
        raise UsageError(f"layer {diff_id[:12]}: changed on disk since it was loaded", 125)
    return size


def oci_manifest(image_id: str, config: bytes, layers: Sequence[tuple[str, int]]) -> bytes:
    """The OCI image manifest of an image whose layers are uncompressed tars: `layers` are
    (diff_id hex, size), base first. `save --format oci-archive` writes these bytes and `push`
    sends them, so both give one image the same manifest digest."""
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": CONFIG_TYPE,
                "digest": f"sha256:{image_id}",
                "size": len(config),
            },
            "layers": [
                {"mediaType": LAYER_TYPE, "digest": f"sha256:{diff_id}", "size": size}
                for diff_id, size in layers
            ],
        }
    ).encode()


def save(store: ImageStore, ref: str, output: Path | BinaryIO, fmt: str) -> None:
    """Write image `ref` as `fmt` to the file `output` (whole or not at all: built beside it,
    then renamed) or to the stream `output` (stdout: `strata save IMAGE | ...`)."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: one of {', '.join(FORMATS)}", 125)
    rec = store.get(ref)
    if not isinstance(output, Path):
        # "w|": a pipe cannot tell() where it is, as tarfile's "w" asks
        with tarfile.open(fileobj=output, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _write(tar, store, rec, ref, fmt)
        output.flush()
        return
    output = output.absolute()
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _write(tar, store, rec, ref, fmt)
        os.rename(tmp, output)
    finally:
        if tmp.exists():
            os.unlink(tmp)


def _write(tar: tarfile.TarFile, store: ImageStore, rec: ImageRecord, ref: str, fmt: str) -> None:
    config = store.config_bytes(rec.id)
    tags = _tags_for(rec, ref)
    with tempfile.TemporaryDirectory(dir=store.tmp_dir) as spool_dir:
        writer = _Writer(tar)
        spool = Path(spool_dir) / "layer"
        if fmt == "oci-archive":
            _oci(writer, store, rec, config, tags, spool)
        else:
            _docker(writer, store, rec, config, tags, spool)


def _tags_for(rec: ImageRecord, ref: str) -> list[str]:
    for tag in rec.tags:
        if ref in (tag, tag.removeprefix("localhost/"), tag.removesuffix(":latest")):
            return [tag]
    return list(rec.tags[:1])


def _oci(
    writer: _Writer,
    store: ImageStore,
    rec: ImageRecord,
    config: bytes,
    tags: list[str],
    spool: Path,
) -> None:
    writer.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    layers = [
        (diff_id, writer.add_layer(f"blobs/sha256/{diff_id}", store, diff_id, spool))
        for diff_id in rec.layers
    ]
    writer.add(f"blobs/sha256/{rec.id}", config)
    manifest = oci_manifest(rec.id, config, layers)
    digest = hashlib.sha256(manifest).hexdigest()
    writer.add(f"blobs/sha256/{digest}", manifest)
    entry: dict[str, object] = {
        "mediaType": MANIFEST_TYPE,
        "digest": f"sha256:{digest}",
        "size": len(manifest),
    }
    if tags:
        entry["annotations"] = {"org.opencontainers.image.ref.name": tags[0]}
    writer.add("index.json", json.dumps({"schemaVersion": 2, "manifests": [entry]}).encode())


def _docker(
    writer: _Writer,
    store: ImageStore,
    rec: ImageRecord,
    config: bytes,
    tags: list[str],
    spool: Path,
) -> None:
    names = []
    for diff_id in rec.layers:
        writer.add_layer(f"{diff_id}.tar", store, diff_id, spool)
        names.append(f"{diff_id}.tar")
    writer.add(f"{rec.id}.json", config)
    manifest = [{"Config": f"{rec.id}.json", "RepoTags": tags, "Layers": names}]
    writer.add("manifest.json", json.dumps(manifest).encode())
