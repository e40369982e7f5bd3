"""`strata load`: images from docker-archive tars, OCI archives and OCI layout directories.

Accepted inputs:
- old `docker save` / `podman save --format docker-archive`: `manifest.json`, `<config>.json`,
  layer tars named in the manifest;
- Docker >= 25 `docker save` and OCI archives (`podman save --format oci-archive`): a tar of an
  OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/...`); when both `index.json` and
  `manifest.json` are present the OCI index is used;
- an OCI image layout directory.

Layers may be uncompressed, gzip or zstd (found by their magic bytes, whatever the media type
says). Every digest is checked while the bytes stream through: manifests and configs against their
descriptors, layer blobs against theirs, and each uncompressed layer against the config's
`rootfs.diff_ids`. A layer is extracted (`extract.extract_layer`) into the store's tmp dir and
renamed into `layers/<diff_id>` only once it is complete and verified; a layer already in the
store is only hashed. The image record is written last, so a failed load leaves the store as it
was (apart from layers that were complete and verified, which `prune` removes if unused).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, cast

from unionfs.errors import UsageError

from .extract import LayerError, default_limit, extract_layer, member_path
from .store import ImageRecord, ImageStore, hex_of, normalize_ref
from .tarsplit import write_map

_GZIP: Final = b"\x1f\x8b"
_ZSTD: Final = b"\x28\xb5\x2f\xfd"
_PROGRESS_MIN: Final = 8 << 20  # show progress for layers at least this big
_MAX_JSON: Final = 64 << 20  # manifests and configs larger than this are refused


class LoadError(UsageError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 125)


class _HashingReader(io.RawIOBase):
    """Reads through `raw`, hashing every byte; with `tee`, writes them there too, at most
    `tee_limit` of them (LayerError beyond: the uncompressed tar is kept beside the layer, so it
    counts against the space a layer may take)."""

    def __init__(
        self, raw: IO[bytes], tee: IO[bytes] | None = None, tee_limit: int | None = None
    ) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.count = 0
        self.tee = tee
        self.tee_limit = tee_limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.hash.update(data)
        self.count += n
        if self.tee is not None:
            if self.tee_limit is not None and self.count > self.tee_limit:
                raise LayerError(
                    f"the layer expands beyond {self.tee_limit} bytes of tar (half the free"
                    " space of the store, less a reserve): a decompression bomb, or too little"
                    " space"
                )
            self.tee.write(data)
        return n

    def drain(self) -> None:
        while self.read(1 << 20):
            pass

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


class _Source:
    """Files of the input by their path in the layout: a directory or a tar on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if not path.is_dir():
            try:
                self.tar = tarfile.open(path, "r:")  # noqa: SIM115 (closed by close())
            except (tarfile.TarError, OSError) as e:
                raise LoadError(
                    f"{path}: not a tar archive or OCI layout directory ({e})"
                ) from None
            for info in self.tar.getmembers():
                try:
                    name = member_path(info.name)
                except LayerError:
                    continue
                self.members[name] = info

    def exists(self, name: str) -> bool:
        if self.tar is None:
            return (self.path / _inside(name)).is_file()
        return _inside(name) in self.members

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        rel = _inside(name)
        if self.tar is None:
            target = self.path / rel
            if target.is_symlink() or not target.is_file():
                raise LoadError(f"{name}: missing from the layout")
            with open(target, "rb") as f:
                yield f
            return
        info = self.members.get(rel)
        depth = 0
        while info is not None and (info.issym() or info.islnk()) and depth < 8:
            # docker-archive's <id>/layer.tar -> ../<diffid>.tar
            base = os.path.dirname(rel) if info.issym() else ""
            rel = os.path.normpath(os.path.join(base, info.linkname))
            info = self.members.get(rel)
            depth += 1
        member = self.tar.extractfile(info) if info is not None and info.isreg() else None
        if member is None:
            raise LoadError(f"{name}: missing from the archive")
        with member:
            yield member

    def size(self, name: str) -> int:
        rel = _inside(name)
        if self.tar is None:
            return os.path.getsize(self.path / rel)
        info = self.members.get(rel)
        return info.size if info is not None else 0

    def read(self, name: str, digest: str | None = None, size: int | None = None) -> bytes:
        """The file `name` (at most 64 MiB: manifests and configs), checked against the digest
        and the size its descriptor gives."""
        with self.open(name) as f:
            data = f.read(_MAX_JSON + 1)
        if len(data) > _MAX_JSON:
            raise LoadError(f"{name}: larger than {_MAX_JSON} bytes")
        if size is not None and len(data) != size:
            raise LoadError(f"{name}: {len(data)} bytes, its descriptor says {size}")
        if digest is not None and hashlib.sha256(data).hexdigest() != hex_of(digest):
            raise LoadError(f"{name}: content does not match its digest {digest}")
        return data

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()


@dataclass
class _Image:
    raw_config: bytes
    # (path in the input, blob digest if known, size its descriptor gives if any)
    layers: list[tuple[str, str | None, int | None]]
    tags: list[str]


class _Progress:
    """A one-line progress bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.label, self.total, self.done = label, total, 0
        self.enabled = enabled and total >= _PROGRESS_MIN and sys.stderr.isatty()
        self.shown = -1

    def __call__(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        pct = min(100, self.done * 100 // max(self.total, 1))
        if pct != self.shown:
            self.shown = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {pct:3d}%")
            sys.stderr.flush()

    def end(self) -> None:
        if self.enabled and self.shown >= 0:
            sys.stderr.write("\n")


def _inside(name: str) -> str:
    """A path named by a manifest, as a clean path inside the archive or layout; LoadError
    when it is absolute or climbs out with `..`."""
    try:
        return member_path(name)
    except LayerError as e:
        raise LoadError(f"{name!r}: not a path inside the archive ({e})") from None


def _parse(data: bytes, what: str) -> object:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise LoadError(f"{what}: invalid JSON ({str(e)[:100]})") from None
    except RecursionError:
        raise LoadError(f"{what}: invalid JSON (nested too deeply)") from None


def json_object(data: bytes, what: str) -> dict[str, Any]:
    value = _parse(data, what)
    if not isinstance(value, dict):
        raise LoadError(f"{what}: not a JSON object")
    return value


def _field(obj: dict[str, Any], key: str, kind: type, what: str) -> Any:
    """obj[key] when it is a `kind`; LoadError naming it otherwise."""
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise LoadError(f"{what}: {key!r} missing or not a JSON {_KIND_NAMES[kind]}")
    return value


_KIND_NAMES: Final[dict[type, str]] = {str: "string", list: "array", dict: "object", int: "number"}


def _tag_of(ref: str) -> list[str]:
    """The stored form of a tag an archive names; an invalid one fails the load, as in docker."""
    try:
        return [normalize_ref(ref)]
    except UsageError as e:
        raise LoadError(f"the archive names an {e}") from None


def _docker_images(src: _Source) -> list[_Image]:
    manifest = _parse(src.read("manifest.json"), "manifest.json")
    if not isinstance(manifest, list):
        raise LoadError("manifest.json: not a list")
    found = []
    for entry in manifest:
        if not isinstance(entry, dict):
            raise LoadError("manifest.json: an entry is not a JSON object")
        config_name = _field(entry, "Config", str, "manifest.json")
        stem = os.path.basename(config_name).removesuffix(".json")
        digest = f"sha256:{stem}" if len(stem) == 64 else None
        raw = src.read(config_name, digest)
        layers: list[tuple[str, str | None, int | None]] = []
        for name in _field(entry, "Layers", list, "manifest.json"):
            if not isinstance(name, str):
                raise LoadError("manifest.json: a layer name is not a string")
            _inside(name)
            base = os.path.basename(name)
            blob = f"sha256:{base}" if len(base) == 64 and "blobs/" in name else None
            layers.append((name, blob, None))
        tags = [t for ref in entry.get("RepoTags") or [] for t in _tag_of(str(ref))]
        found.append(_Image(raw, layers, tags))
    return found


def _blob(digest: str) -> str:
    return f"blobs/sha256/{hex_of(digest)}"


def _oci_images(src: _Source) -> list[_Image]:
    index = json_object(src.read("index.json"), "index.json")
    found = []
    pending = [(m, None) for m in index.get("manifests") or []]
    while pending:
        desc, name = pending.pop(0)
        if not isinstance(desc, dict):
            raise LoadError("index.json: a descriptor is not a JSON object")
        annotations = desc.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise LoadError("index.json: annotations is not a JSON object")
        ref = annotations.get("io.containerd.image.name") or annotations.get(
            "org.opencontainers.image.ref.name"
        )
        name = ref or name
        digest = _field(desc, "digest", str, "descriptor")
        data = json_object(src.read(_blob(digest), digest, _size(desc)), "manifest")
        media = str(data.get("mediaType") or desc.get("mediaType") or "")
        if "index" in media or "manifest.list" in media or "manifests" in data:
            nested = [m for m in data.get("manifests") or [] if _usable(m)]
            pending += [(m, name) for m in nested[:1]]
            continue
        config = _field(data, "config", dict, "manifest")
        config_digest = _field(config, "digest", str, "manifest config")
        raw = src.read(_blob(config_digest), config_digest, _size(config))
        layers: list[tuple[str, str | None, int | None]] = []
        for layer in _field(data, "layers", list, "manifest") if "layers" in data else []:
            if not isinstance(layer, dict):
                raise LoadError("manifest: a layer descriptor is not a JSON object")
            layer_digest = _field(layer, "digest", str, "layer descriptor")
            layers.append((_blob(layer_digest), layer_digest, _size(layer)))
        tags = _tag_of(str(name)) if name and ("/" in str(name) or ":" in str(name)) else []
        found.append(_Image(raw, layers, tags))
    return found


def check_config(config: dict[str, Any]) -> None:
    """The image config's fields that strata uses have the types the OCI spec gives them, so
    that nothing later trips over a hostile value; LoadError (one line) naming the field."""

    def strings(value: object, what: str) -> None:
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise LoadError(f"image config: {what} is not an array of strings")

    inner = config.get("config")
    if inner is not None:
        if not isinstance(inner, dict):
            raise LoadError("image config: config is not a JSON object")
        for key in ("Env", "Entrypoint", "Cmd"):
            strings(inner.get(key), f"config.{key}")
        for key in ("WorkingDir", "User", "StopSignal"):
            if inner.get(key) is not None and not isinstance(inner[key], str):
                raise LoadError(f"image config: config.{key} is not a string")
        for key in ("ExposedPorts", "Volumes", "Labels"):
            if inner.get(key) is not None and not isinstance(inner[key], dict):
                raise LoadError(f"image config: config.{key} is not a JSON object")
    history = config.get("history")
    if history is not None and not (
        isinstance(history, list) and all(isinstance(h, dict) for h in history)
    ):
        raise LoadError("image config: history is not an array of objects")
    if config.get("created") is not None and not isinstance(config["created"], str):
        raise LoadError("image config: created is not a string")


def _size(desc: dict[str, Any]) -> int | None:
    """The `size` an OCI descriptor gives (it must match the blob)."""
    size = desc.get("size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise LoadError(f"descriptor {desc.get('digest')}: size {size!r} is not a byte count")
    return size


def _usable(desc: object) -> bool:
    if not isinstance(desc, dict):
        return False
    platform = desc.get("platform") or {}
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    return not platform or (platform.get("os") == "linux" and platform.get("architecture") == arch)


def _decompressed(raw: IO[bytes]) -> IO[bytes]:
    head = raw.read(4)
    rest = _Prefixed(head, raw)
    if head.startswith(_GZIP):
        return cast(IO[bytes], gzip.GzipFile(fileobj=rest, mode="rb"))
    if head.startswith(_ZSTD):
        import zstandard  # a dependency; imported only for zstd layers

        return cast(
            IO[bytes],
            zstandard.ZstdDecompressor().stream_reader(
                cast(IO[bytes], rest), read_across_frames=True
            ),
        )
    return cast(IO[bytes], rest)


class _Prefixed(io.RawIOBase):
    def __init__(self, head: bytes, raw: IO[bytes]) -> None:
        self.head, self.raw = head, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _warn(name: str) -> Callable[[str], None]:
    def warn(message: str) -> None:
        print(f"strata: warning: {name}: {message}", file=sys.stderr, flush=True)

    return warn


def extract_verified(
    stream: IO[bytes], dest: Path, map_dest: Path, name: str, progress: _Progress | None
) -> str:
    """Extract the (maybe compressed) layer `stream` into `dest`, its tar map into `map_dest`;
    return its diff_id (sha256 of the uncompressed tar)."""
    raw_tar = dest.with_name(dest.name + ".raw")
    # the uncompressed tar (kept for the tar map) and the files extracted from it share the
    # space a layer may take: at most half each (files never take more than their tar)
    try:
        half = default_limit(dest) // 2
    except LayerError as e:
        raise LoadError(str(e)) from None
    with open(raw_tar, "wb") as tee:
        tar_hash = _HashingReader(_decompressed(stream), tee, tee_limit=half)
        try:
            payloads = extract_layer(
                io.BufferedReader(tar_hash, 1 << 20),
                dest,
                progress=progress,
                limit=half,
                warn=_warn(name),
            )
            tar_hash.drain()
        except LayerError as e:
            raise LoadError(f"{name}: {e}") from None
        except (OSError, EOFError, ValueError) as e:
            if isinstance(e, OSError) and e.filename:
                raise
            raise LoadError(f"{name}: cannot read it ({e})") from None
    write_map(raw_tar, dest, payloads, map_dest)
    os.unlink(raw_tar)
    return tar_hash.hexdigest()


def _load_layer(
    store: ImageStore,
    src: _Source,
    name: str,
    blob: str | None,
    diff_id: str,
    staging: Path,
    progress: bool,
) -> None:
    with src.open(name) as raw:
        blob_hash = _HashingReader(raw)
        stream = io.BufferedReader(blob_hash, 1 << 20)
        dest = staging / diff_id
        bar = _Progress(f"layer {diff_id[:12]}", src.size(name), progress)
        try:
            if store.has_layer(diff_id) or dest.exists():
                tar_hash = _HashingReader(_decompressed(stream))
                try:
                    tar_hash.drain()
                except (EOFError, ValueError) as e:
                    raise LoadError(f"layer {name}: cannot read it ({e})") from None
                got = tar_hash.hexdigest()
            else:
                dest.mkdir()
                got = extract_verified(
                    stream, dest, staging / f"{diff_id}.map", f"layer {name}", bar
                )
        finally:
            bar.end()
        blob_hash.drain()
    if blob is not None and blob_hash.hexdigest() != hex_of(blob):
        raise LoadError(f"layer {name}: content does not match its digest {blob}")
    if got != diff_id:
        raise LoadError(
            f"layer {name}: uncompressed content does not match diff_id sha256:{diff_id}"
        )


def add_layers(store: ImageStore, staging: Path, diff_ids: Sequence[str]) -> None:
    """Move the layers extracted into `staging` into place (with the lock held)."""
    for diff_id in diff_ids:
        if (staging / diff_id).exists():
            store.add_layer(diff_id, staging / diff_id, staging / f"{diff_id}.map")
        elif not store.has_layer(diff_id):  # an rmi or prune took it meanwhile
            raise LoadError(f"layer sha256:{diff_id} was removed during the load; load again")


def load(
    store: ImageStore, path: Path, *, progress: bool = True, say: Callable[[str], None] = print
) -> list[ImageRecord]:
    """Load every image of the archive or layout at `path` into `store`."""
    src = _Source(path)
    try:
        if src.exists("index.json"):
            images = _oci_images(src)
        elif src.exists("manifest.json"):
            images = _docker_images(src)
        else:
            raise LoadError(f"{path}: neither an OCI layout (index.json) nor a docker archive")
        if not images:
            raise LoadError(f"{path}: no image in it")
        records = []
        # extraction runs without the state root's lock (containers can start meanwhile);
        # the lock is taken to record each image
        with store.staging() as staging:
            for image in images:
                config = json_object(image.raw_config, "image config")
                check_config(config)
                rootfs = config.get("rootfs") or {}
                if not isinstance(rootfs, dict) or not isinstance(
                    rootfs.get("diff_ids") or [], list
                ):
                    raise LoadError("image config: rootfs.diff_ids is not a JSON array")
                diff_ids = [hex_of(str(d)) for d in rootfs.get("diff_ids") or []]
                if len(diff_ids) != len(image.layers):
                    raise LoadError(
                        f"config has {len(diff_ids)} diff_ids for {len(image.layers)} layers"
                    )
                for (name, blob, size), diff_id in zip(image.layers, diff_ids, strict=True):
                    if size is not None and src.size(name) != size:
                        raise LoadError(
                            f"layer {name}: {src.size(name)} bytes, its descriptor says {size}"
                        )
                    _load_layer(store, src, name, blob, diff_id, staging, progress)
                with store.lock():
                    add_layers(store, staging, diff_ids)
                    rec = store.add_image(image.raw_config, config, diff_ids, image.tags)
                records.append(rec)
                for tag in rec.tags if image.tags else ():
                    if tag in image.tags:
                        say(f"Loaded image: {tag}")
                if not image.tags:
                    say(f"Loaded image ID: sha256:{rec.id}")
        return records
    finally:
        src.close()


def load_stream(store: ImageStore, stream: IO[bytes], **kwargs: object) -> list[ImageRecord]:
    """`load` from a pipe (spooled to a file inside the store first)."""
    with store.staging() as spool:
        with open(spool / "input.tar", "wb") as tmp:
            shutil.copyfileobj(stream, tmp, 1 << 20)
        return load(store, spool / "input.tar", **kwargs)  # type: ignore[arg-type]


def _parse_change(change: str, config: dict[str, object]) -> None:
    """One `--change` line (a Dockerfile instruction) applied to the config's `config`."""
    import shlex

    key, _, value = change.strip().partition(" ")
    key, value = key.upper(), value.strip()

    def argv() -> list[str]:
        if value.startswith("["):
            parsed = json.loads(value)
            if isinstance(parsed, list):
                return [str(v) for v in parsed]
        return ["/bin/sh", "-c", value]

    if key in ("CMD", "ENTRYPOINT"):
        config["Cmd" if key == "CMD" else "Entrypoint"] = argv()
    elif key == "ENV":
        env = [str(e) for e in config.get("Env") or []]  # type: ignore[attr-defined]
        pairs = shlex.split(value)
        if len(pairs) >= 1 and "=" not in pairs[0]:
            pairs = [f"{pairs[0]}={value[len(pairs[0]) :].strip()}"]
        for pair in pairs:
            name = pair.partition("=")[0]
            env = [e for e in env if e.partition("=")[0] != name] + [pair]
        config["Env"] = env
    elif key == "WORKDIR":
        config["WorkingDir"] = value
    elif key == "USER":
        config["User"] = value
    elif key == "LABEL":
        labels = dict(config.get("Labels") or {})  # type: ignore[call-overload]
        for pair in shlex.split(value):
            name, _, v = pair.partition("=")
            labels[name] = v
        config["Labels"] = labels
    else:
        raise LoadError(f"--change {change!r}: unsupported (CMD ENTRYPOINT ENV WORKDIR USER LABEL)")


def import_rootfs(
    store: ImageStore, file: str, reference: str | None, changes: Sequence[str] = ()
) -> ImageRecord:
    """`strata import`: a one-layer image from a rootfs tarball (gzip/zstd/plain; '-': stdin)."""
    import time

    tags = [normalize_ref(reference)] if reference else []
    inner: dict[str, object] = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    }
    for change in changes:
        _parse_change(change, inner)
    with store.staging() as staging:
        dest = staging / "layer"
        dest.mkdir()
        stream: IO[bytes]
        if file == "-":
            stream = sys.stdin.buffer
        else:
            try:
                stream = open(file, "rb")  # noqa: SIM115
            except OSError as e:
                raise LoadError(f"{file}: {e.strerror}") from None
        try:
            diff_id = extract_verified(stream, dest, staging / "layer.map", file, None)
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
        config: dict[str, object] = {
            "created": created,
            "architecture": arch,
            "os": "linux",
            "config": inner,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
            "history": [
                {"created": created, "created_by": f"strata import {os.path.basename(file)}"}
            ],
        }
        raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        with store.lock():
            store.add_layer(diff_id, dest, staging / "layer.map")
            return store.add_image(raw, config, [diff_id], tags)
