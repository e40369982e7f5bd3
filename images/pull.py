"""`strata pull`: an image from a registry into the store.

The order keeps the store consistent whatever happens (an error, a cut connection, Ctrl-C):

1. The reference is resolved: a short name through registries.conf (aliases, then the search
   registries in order), a qualified one to its mirrors (first) and its registry.
2. The manifest is fetched (an index or manifest list picks the wanted platform: `--platform`, by
   default this host's), then the config, each checked against its digest and size bound.
3. The config's `rootfs.diff_ids` say which layers the store already has: those are not
   downloaded. The others are downloaded in parallel (3 at a time) into a staging directory of
   the store, each checked against its digest while it streams, and extracted (2 at a time, in
   threads) as it arrives, exactly as `strata load` extracts (`images.load.extract_verified`,
   which checks the diff_id). The extraction reads the blob's file behind the download and
   sees its end only once the whole blob matched its digest: a layer is kept only when both
   its digest and its diff_id match, and a download that fails or restarts from zero throws
   the extraction away (after a restart, the complete blob is extracted again).
4. Only when every layer is in place are they renamed into the store and the image recorded
   (under the store's lock). Until then nothing is visible, and the staging directory goes away
   on any failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, TextIO, cast

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
    run_async,
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


def pull_reporting(
    store: ImageStore,
    ref: str,
    options: Options,
    *,
    platform: str | None = None,
    quiet: bool = False,
    conf: RegistriesConf | None = None,
) -> ImageRecord:
    """`pull` run to completion from synchronous code, with progress on stderr unless `quiet`
    (`strata pull`, and the pulls of `run`, `create` and `build`)."""
    chosen = Platform.parse(platform) if platform else None
    with Reporter(quiet=quiet) as reporter:
        return run_async(
            lambda: pull(store, ref, options=options, platform=chosen, conf=conf, reporter=reporter)
        )


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
    async with Session(endpoint.host, options, insecure=endpoint.insecure) as session:
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
        dest = staging / layer.diff_id
        dest.mkdir()
        growing = _GrowingBlob(blob)

        def extract() -> str:
            def from_file(stream: IO[bytes]) -> str:
                return extract_verified(
                    stream, dest, staging / f"{layer.diff_id}.map", f"layer {short}", None
                )

            try:
                with growing.reader() as stream:
                    return from_file(stream)
            except _Restarted:
                growing.wait()  # the download started again from zero: extract it whole
                shutil.rmtree(dest)
                dest.mkdir()
                with open(blob, "rb") as stream:
                    return from_file(stream)

        async def download() -> None:
            try:
                async with downloads:
                    advance = reporter.bar(f"blob {short}", layer.size)
                    await session.fetch_blob(
                        repo, layer.digest, layer.size, cast(IO[bytes], growing), advance
                    )
            except BaseException:
                growing.end(failed=True)
                raise
            growing.end(failed=False)
            if advance is None:
                reporter.say(f"Copying blob {short} done")

        got: list[str] = []
        refused: list[LoadError] = []

        async def extract_task() -> None:
            try:
                got.append(await trio.to_thread.run_sync(extract, limiter=extracts))
            except _Aborted:
                pass  # the download failed: its error is the one to tell
            except LoadError as e:
                # told once the download ends well: bytes that do not match their digest
                # are reported as that, whatever the extraction made of them
                refused.append(e)

        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(download)
                inner.start_soon(extract_task)
        finally:
            growing.close()
            blob.unlink(missing_ok=True)
        if refused:
            raise RegistryError(f"{ref}: {refused[0]}")
        if got != [layer.diff_id]:
            raise RegistryError(
                f"{ref}: layer {short}: uncompressed content does not match diff_id"
                f" sha256:{layer.diff_id}"
            )

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


class _Restarted(Exception):
    """The download of the blob being extracted started again from its first byte."""


class _Aborted(Exception):
    """The download of the blob being extracted failed."""


class _GrowingBlob:
    """A blob's file as the download writes it (`write`, `seek(0)` + `truncate` for a restart,
    then `end`) and as the extraction reads it meanwhile (`reader`, in a thread).

    The reader waits for bytes that are not written yet, and it sees the end of the file only
    after `end(failed=False)`, which the download calls once the whole blob matched its digest:
    so an extraction cannot finish with bytes that turned out wrong. A failed download makes
    the reader raise `_Aborted`, a restart `_Restarted`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb", buffering=0)  # noqa: SIM115 (closed by close())
        self.cond = threading.Condition()
        self.size = 0
        self.ended = False
        self.failed = False
        self.restarted = False

    # the download's side (the trio thread); only the calls fetch_blob makes

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[self.file.write(view) or 0 :]
        with self.cond:
            self.size += len(data)
            self.cond.notify_all()
        return len(data)

    def seek(self, offset: int) -> int:
        with self.cond:
            self.restarted = True
            self.size = 0
            self.cond.notify_all()
        return self.file.seek(offset)

    def truncate(self) -> int:
        return self.file.truncate()

    def end(self, *, failed: bool) -> None:
        with self.cond:
            if not self.ended:
                self.ended, self.failed = True, failed
            self.cond.notify_all()

    def close(self) -> None:
        self.end(failed=True)
        self.file.close()

    # the extraction's side (its thread)

    def wait(self) -> None:
        """Until the download ends; _Aborted if it failed."""
        with self.cond:
            while not self.ended:
                self.cond.wait()
            if self.failed:
                raise _Aborted

    @contextlib.contextmanager
    def reader(self) -> Iterator[IO[bytes]]:
        with open(self.path, "rb") as f:
            yield cast(IO[bytes], io.BufferedReader(_GrowingReader(self, f), 1 << 20))


class _GrowingReader(io.RawIOBase):
    def __init__(self, blob: _GrowingBlob, file: io.BufferedReader) -> None:
        self.blob = blob
        self.file = file
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        blob = self.blob
        with blob.cond:
            while True:
                if blob.restarted:
                    raise _Restarted
                if blob.ended and blob.failed:
                    raise _Aborted
                if self.pos < blob.size or blob.ended:
                    break
                blob.cond.wait()
            available = blob.size - self.pos
        if available <= 0:
            return 0
        n = self.file.readinto(buffer[: min(len(buffer), available)])
        self.pos += n or 0
        return n or 0


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
