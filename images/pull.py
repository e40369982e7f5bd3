"""`strata pull`: an image from a registry into the store.

The order keeps the store consistent whatever happens (an error, a cut connection, Ctrl-C):

1. The reference is resolved: a short name through registries.conf (aliases, then the search
   registries in order), a qualified one to its mirrors (first) and its registry.
2. The manifest is fetched (an index or manifest list picks the wanted platform: `--platform`, by
   default this host's), then the config, each checked against its digest and size bound.
3. The config's `rootfs.diff_ids` say which layers the store already has: those are not
   downloaded. The others are downloaded in parallel (3 at a time) into a staging directory of
   the store, each checked against its digest while it streams, *before* a byte of it is parsed;
   then each is extracted (2 at a time, in threads) and checked against its diff_id, exactly as
   `strata load` does (`images.load.extract_verified`).
4. Only when every layer is in place are they renamed into the store and the image recorded
   (under the store's lock). Until then nothing is visible, and the staging directory goes away
   on any failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import trio

from unionfs.errors import UsageError

from .distribution import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    MAX_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    Manifest,
    Options,
    RegistryError,
    Session,
)
from .load import LoadError, add_layers, check_config, extract_verified, json_object
from .reference import Reference, parse
from .registries import Endpoint, RegistriesConf, load_conf
from .store import ImageRecord, ImageStore, hex_of

PARALLEL_DOWNLOADS: Final = 3
PARALLEL_EXTRACTS: Final = 2
LAYER_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
    }
)
FOREIGN_TYPES: Final = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)
CONFIG_TYPES: Final = frozenset(
    {"application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"}
)


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """`OS/ARCH[/VARIANT]`, as `--platform` takes it."""
        parts = text.split("/")
        if not 2 <= len(parts) <= 3 or not all(parts):
            raise UsageError(f"--platform {text!r}: give OS/ARCH[/VARIANT], e.g. linux/arm64", 125)
        return cls(parts[0], _normal_arch(parts[1]), parts[2] if len(parts) == 3 else "")

    @classmethod
    def host(cls) -> Platform:
        machine = os.uname().machine
        arch = _normal_arch(machine)
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine, "")
        return cls("linux", arch, variant)

    def matches(self, desc: dict[str, Any]) -> bool:
        platform = desc.get("platform")
        if not isinstance(platform, dict):
            return False
        if platform.get("os") != self.os:
            return False
        if _normal_arch(str(platform.get("architecture", ""))) != self.architecture:
            return False
        want = self.variant or ("v8" if self.architecture == "arm64" else "")
        have = str(platform.get("variant") or ("v8" if self.architecture == "arm64" else ""))
        return not want or want == have

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def _normal_arch(arch: str) -> str:
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm"}.get(arch, arch)


def _describe_platform(desc: object) -> str:
    if not isinstance(desc, dict) or not isinstance(desc.get("platform"), dict):
        return "?"
    p = desc["platform"]
    return "/".join(str(p[k]) for k in ("os", "architecture", "variant") if p.get(k))


@dataclass(frozen=True, slots=True)
class _Layer:
    digest: str
    size: int
    diff_id: str


class Reporter:
    """What a pull says on stderr: rich progress bars on a terminal, one line per blob
    otherwise, nothing with `-q`."""

    def __init__(self, quiet: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.bars = not quiet and self.stream.isatty()
        self._progress: Any = None

    def __enter__(self) -> Reporter:
        if self.bars:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)

    def say(self, line: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(line, highlight=False, markup=False)
        else:
            print(line, file=self.stream, flush=True)

    def bar(self, label: str, total: int) -> Callable[[int], None] | None:
        if self._progress is None:
            return None
        task = self._progress.add_task(label, total=total)
        progress = self._progress

        def advance(n: int) -> None:
            progress.advance(task, n)

        return advance


async def pull(
    store: ImageStore,
    ref_text: str,
    *,
    options: Options,
    platform: Platform | None = None,
    conf: RegistriesConf | None = None,
    reporter: Reporter | None = None,
) -> ImageRecord:
    """Pull `ref_text` into `store` (see the module doc); the image's record."""
    conf = conf if conf is not None else load_conf()
    reporter = reporter or Reporter(quiet=True)
    ref = parse(ref_text)
    if ref.domain == "localhost" and ":" not in ref.domain:
        raise RegistryError(f"{ref}: localhost/ names images of this host only; nothing to pull")
    candidates = conf.candidates(ref)
    errors: list[RegistryError] = []
    for candidate in candidates:
        for endpoint in conf.endpoints(candidate, pull=True):
            reporter.say(f"Trying to pull {candidate}...")
            try:
                return await _pull_from(
                    store, candidate, endpoint, options, conf, platform, reporter
                )
            except RegistryError as e:
                errors.append(e)
                if len(candidates) == 1 and not endpoint.mirror:
                    raise
    if len(errors) == 1:
        raise errors[0]
    raise RegistryError(
        f"pulling {ref}: " + "; ".join(str(e) for e in errors),
        errors[-1].status if errors else None,
    )


async def _pull_from(
    store: ImageStore,
    ref: Reference,
    endpoint: Endpoint,
    options: Options,
    conf: RegistriesConf,
    platform: Platform | None,
    reporter: Reporter,
) -> ImageRecord:
    repo = endpoint.path
    async with Session(endpoint.host, conf, options, insecure=endpoint.insecure) as session:
        top = await session.get_manifest(repo, ref.manifest_ref)
        digests = [f"{ref.name}@{top.digest}"]
        manifest = top
        doc = _document(manifest, endpoint.host)
        if _is_index(manifest, doc):
            wanted = platform or Platform.host()
            chosen = _choose(doc, wanted, f"{ref}")
            manifest = await session.get_manifest(repo, chosen)
            doc = _document(manifest, endpoint.host)
            if _is_index(manifest, doc):
                raise RegistryError(f"{ref}: an index inside an index is not supported")
            digests.append(f"{ref.name}@{manifest.digest}")
        config_desc = _descriptor(doc.get("config"), "config", ref)
        config_type = str(config_desc.get("mediaType") or "")
        if config_type and config_type not in CONFIG_TYPES:
            raise RegistryError(f"{ref}: not a container image (config media type {config_type})")
        raw_config = _stored_config(store, config_desc)
        if raw_config is None:
            raw_config = await session.get_blob_bytes(
                repo, config_desc["digest"], config_desc["size"], MAX_CONFIG
            )
            reporter.say(f"Copying config {hex_of(config_desc['digest'])[:12]} done")
        try:
            config = json_object(raw_config, "image config")
            check_config(config)
        except LoadError as e:
            raise RegistryError(f"{ref}: {e}") from None
        if platform is not None and config.get("architecture") not in (None, platform.architecture):
            reporter.say(
                f"warning: {ref} is for {config.get('os')}/{config.get('architecture')},"
                f" not {platform}"
            )
        layers = _layers(doc, config, ref)
        diff_ids = [layer.diff_id for layer in layers]
        tags = [ref.stored_tag] if ref.tag else []
        with store.staging() as staging:
            await _fetch_layers(store, staging, session, repo, layers, reporter, ref)
            with store.lock():
                add_layers(store, staging, diff_ids)
                rec = store.add_image(raw_config, config, diff_ids, tags, tuple(digests))
        reporter.say("Writing manifest to image destination")
        return rec


async def _fetch_layers(
    store: ImageStore,
    staging: Path,
    session: Session,
    repo: str,
    layers: list[_Layer],
    reporter: Reporter,
    ref: Reference,
) -> None:
    """Download and extract the layers the store lacks into `staging`; the ones it has are
    held there, so that a concurrent `rmi` or `prune` leaves them alone."""
    wanted: dict[str, _Layer] = {}
    for layer in layers:
        if store.has_layer(layer.diff_id):
            reporter.say(f"Copying blob {hex_of(layer.digest)[:12]} skipped: already exists")
        else:
            wanted.setdefault(layer.diff_id, layer)
    store.hold(staging, [layer.diff_id for layer in layers])
    downloads = trio.CapacityLimiter(PARALLEL_DOWNLOADS)
    extracts = trio.CapacityLimiter(PARALLEL_EXTRACTS)

    async def one(layer: _Layer) -> None:
        blob = staging / f"blob-{hex_of(layer.digest)}"
        short = hex_of(layer.digest)[:12]
        async with downloads:
            advance = reporter.bar(f"blob {short}", layer.size)
            with open(blob, "wb") as out:
                await session.fetch_blob(repo, layer.digest, layer.size, out, advance)
        dest = staging / layer.diff_id
        dest.mkdir()

        def extract() -> str:
            with open(blob, "rb") as stream:
                return extract_verified(
                    stream, dest, staging / f"{layer.diff_id}.map", f"layer {short}", None
                )

        try:
            got = await trio.to_thread.run_sync(extract, limiter=extracts)
        except LoadError as e:
            raise RegistryError(f"{ref}: {e}") from None
        finally:
            os.unlink(blob)
        if got != layer.diff_id:
            raise RegistryError(
                f"{ref}: layer {short}: uncompressed content does not match diff_id"
                f" sha256:{layer.diff_id}"
            )
        if advance is None:
            reporter.say(f"Copying blob {short} done")

    async with trio.open_nursery() as nursery:
        for layer in wanted.values():
            nursery.start_soon(one, layer)


def _stored_config(store: ImageStore, desc: dict[str, Any]) -> bytes | None:
    """The config the store already has for this descriptor (an image id is its config's
    digest), so pulling an image the store has costs only the manifest; None otherwise."""
    image_id = hex_of(desc["digest"])
    try:
        raw = store.config_bytes(image_id)
    except OSError:
        return None
    if len(raw) != desc["size"] or hashlib.sha256(raw).hexdigest() != image_id:
        return None
    return raw


def _document(manifest: Manifest, host: str) -> dict[str, Any]:
    if manifest.media_type in DOCKER_SCHEMA1:
        raise RegistryError(
            f"{host}: the image has a Docker schema 1 manifest, which is deprecated and not supported"
        )
    try:
        doc = json.loads(manifest.raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RegistryError(f"{host}: manifest {manifest.digest[:19]} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise RegistryError(f"{host}: manifest {manifest.digest[:19]} is not a JSON object")
    if doc.get("schemaVersion") == 1:
        raise RegistryError(
            f"{host}: the image has a Docker schema 1 manifest, which is deprecated and not supported"
        )
    return doc


def _is_index(manifest: Manifest, doc: dict[str, Any]) -> bool:
    media = str(doc.get("mediaType") or manifest.media_type)
    if media in (OCI_INDEX, DOCKER_LIST):
        return True
    if media in (OCI_MANIFEST, DOCKER_MANIFEST):
        return False
    return "manifests" in doc and "config" not in doc


def _choose(index: dict[str, Any], platform: Platform, ref: str) -> str:
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise RegistryError(f"{ref}: the index has no manifests array")
    for desc in entries:
        if isinstance(desc, dict) and platform.matches(desc):
            digest = desc.get("digest")
            if not isinstance(digest, str) or not digest.startswith("sha256:"):
                raise RegistryError(f"{ref}: an index entry has no sha256 digest")
            hex_of(digest)
            return digest
    available = sorted({_describe_platform(d) for d in entries})
    raise RegistryError(
        f"{ref}: no image for {platform} in the index (it has: {', '.join(available) or 'none'})"
    )


def _descriptor(value: object, what: str, ref: Reference) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RegistryError(f"{ref}: the manifest's {what} is not a descriptor")
    digest, size = value.get("digest"), value.get("size")
    if not isinstance(digest, str):
        raise RegistryError(f"{ref}: the manifest's {what} has no digest")
    try:
        hex_of(digest)
    except UsageError:
        raise RegistryError(
            f"{ref}: the manifest's {what} has digest {digest[:80]!r} (sha256 only)"
        ) from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RegistryError(f"{ref}: the manifest's {what} has no valid size")
    return value


def _layers(doc: dict[str, Any], config: dict[str, Any], ref: Reference) -> list[_Layer]:
    descs = doc.get("layers")
    if not isinstance(descs, list):
        raise RegistryError(f"{ref}: the manifest has no layers array")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise RegistryError(f"{ref}: the image config has no rootfs.diff_ids")
    if len(diff_ids) != len(descs):
        raise RegistryError(
            f"{ref}: the config has {len(diff_ids)} diff_ids for {len(descs)} layers"
        )
    layers = []
    for i, (value, diff_id) in enumerate(zip(descs, diff_ids, strict=True)):
        desc = _descriptor(value, f"layer {i + 1}", ref)
        media = str(desc.get("mediaType") or "")
        if media in FOREIGN_TYPES or desc.get("urls"):
            raise RegistryError(
                f"{ref}: layer {i + 1} is non-distributable ({media or 'with urls'}: a foreign"
                " layer, such as a Windows base layer); strata cannot pull it"
            )
        if media and media not in LAYER_TYPES:
            raise RegistryError(f"{ref}: layer {i + 1} has media type {media}, not a layer tar")
        try:
            layers.append(_Layer(desc["digest"], desc["size"], hex_of(str(diff_id))))
        except UsageError:
            raise RegistryError(
                f"{ref}: diff_id {str(diff_id)[:80]!r} is not a sha256 digest"
            ) from None
    return layers
