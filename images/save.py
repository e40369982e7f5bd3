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

from .store import ImageRecord, ImageStore, normalize_ref
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


def save(store: ImageStore, refs: str | Sequence[str], output: Path | BinaryIO, fmt: str) -> None:
    """Write the images `refs` (docker's `save A B`: all of them in one archive) as `fmt` to
    the file `output` (whole or not at all: built beside it, then renamed) or to the stream
    `output` (stdout: `strata save IMAGE | ...`)."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: one of {', '.join(FORMATS)}", 125)
    entries = _entries(store, [refs] if isinstance(refs, str) else refs)
    if not isinstance(output, Path):
        # "w|": a pipe cannot tell() where it is, as tarfile's "w" asks
        with tarfile.open(fileobj=output, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _write(tar, store, entries, fmt)
        output.flush()
        return
    output = output.absolute()
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _write(tar, store, entries, fmt)
        os.rename(tmp, output)
    finally:
        if tmp.exists():
            os.unlink(tmp)


def _entries(store: ImageStore, refs: Sequence[str]) -> list[tuple[ImageRecord, list[str]]]:
    """Each image once, in the order first named, with the names it is saved under (an
    image named twice, by two of its tags, keeps both, as docker's)."""
    found: dict[str, tuple[ImageRecord, list[str]]] = {}
    for ref in refs:
        rec = store.get(ref)
        _, tags = found.setdefault(rec.id, (rec, []))
        tags += [t for t in _tags_for(rec, ref) if t not in tags]
    return list(found.values())


def _write(
    tar: tarfile.TarFile,
    store: ImageStore,
    entries: Sequence[tuple[ImageRecord, list[str]]],
    fmt: str,
) -> None:
    with tempfile.TemporaryDirectory(dir=store.tmp_dir) as spool_dir:
        writer = _Writer(tar)
        spool = Path(spool_dir) / "layer"
        if fmt == "oci-archive":
            _oci(writer, store, entries, spool)
        else:
            _docker(writer, store, entries, spool)


def _tags_for(rec: ImageRecord, ref: str) -> list[str]:
    """The name `ref` stands for among the image's (`bb` for `localhost/bb:latest`), else its
    first name (an image saved by id)."""
    try:
        wanted = normalize_ref(ref)
    except UsageError:
        wanted = ref
    for tag in rec.tags:
        if wanted == tag or ref in (
            tag,
            tag.removeprefix("localhost/"),
            tag.removesuffix(":latest"),
        ):
            return [tag]
    return list(rec.tags[:1])


def _oci(
    writer: _Writer,
    store: ImageStore,
    entries: Sequence[tuple[ImageRecord, list[str]]],
    spool: Path,
) -> None:
    """An OCI image layout; with several images or names also docker's manifest.json over
    the same blobs (the layout of Docker >= 25's `save`), which podman's `load` reads as a
    docker-archive holding each of them."""
    writer.add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    sizes: dict[str, int] = {}
    index: list[dict[str, object]] = []
    for rec, tags in entries:
        for diff_id in rec.layers:
            if diff_id not in sizes:
                sizes[diff_id] = writer.add_layer(f"blobs/sha256/{diff_id}", store, diff_id, spool)
        config = store.config_bytes(rec.id)
        writer.add(f"blobs/sha256/{rec.id}", config)
        manifest = oci_manifest(rec.id, config, [(d, sizes[d]) for d in rec.layers])
        digest = hashlib.sha256(manifest).hexdigest()
        writer.add(f"blobs/sha256/{digest}", manifest)
        entry: dict[str, object] = {
            "mediaType": MANIFEST_TYPE,
            "digest": f"sha256:{digest}",
            "size": len(manifest),
        }
        index += [
            entry | {"annotations": {"org.opencontainers.image.ref.name": tag}} for tag in tags
        ] or [entry]
    writer.add("index.json", json.dumps({"schemaVersion": 2, "manifests": index}).encode())
    if len(index) > 1:  # (podman's oci-archive reader takes one image, one name)
        blob = "blobs/sha256/{}"
        writer.add("manifest.json", _docker_manifest(entries, blob, blob))


def _docker_manifest(
    entries: Sequence[tuple[ImageRecord, list[str]]], config_name: str, layer_name: str
) -> bytes:
    """docker's manifest.json: each image's config, names and layers by their file names."""
    return json.dumps(
        [
            {
                "Config": config_name.format(rec.id),
                "RepoTags": tags,
                "Layers": [layer_name.format(d) for d in rec.layers],
            }
            for rec, tags in entries
        ]
    ).encode()


def _docker(
    writer: _Writer,
    store: ImageStore,
    entries: Sequence[tuple[ImageRecord, list[str]]],
    spool: Path,
) -> None:
    written: set[str] = set()
    for rec, _ in entries:
        for diff_id in rec.layers:
            if diff_id not in written:
                writer.add_layer(f"{diff_id}.tar", store, diff_id, spool)
                written.add(diff_id)
        writer.add(f"{rec.id}.json", store.config_bytes(rec.id))
    writer.add("manifest.json", _docker_manifest(entries, "{}.json", "{}.tar"))
