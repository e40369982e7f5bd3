"""`strata push`: an image of the store into a registry (OCI distribution spec 1.1).

What is sent is what `strata save --format oci-archive` writes: the config exactly as stored,
each layer as the uncompressed tar it was loaded from (rebuilt from its tar map and checked
against its diff_id, so a blob's digest is its diff_id) and the manifest from
`images.save.oci_manifest`. So a push and a save of one image name the same manifest digest.

The order, per layer (a few in parallel):

1. `HEAD /v2/<name>/blobs/<digest>`: a blob the repository has is not sent ("skipped").
2. A cross-repository mount when the image record knows the blob in another repository of the
   same registry (its `digests`, `name@sha256:...`, say where it was pulled from or pushed to):
   `POST .../blobs/uploads/?mount=<digest>&from=<repo>`. 201 is done; 202 opens an ordinary
   upload, which is used. The token must then also allow `repository:<from>:pull`.
3. Otherwise an upload: the layer is rebuilt into the store's staging directory, then sent in one
   `PUT ?digest=` (monolithic) or, above `CHUNK_SIZE`, in `PATCH`es with `Content-Range` and a
   closing empty `PUT ?digest=` (chunked). Every `Location` may be relative or absolute and may
   carry a query, so the next URL is always resolved against the last one. A request whose
   answer was lost is sent again (`Session` retries); when the registry had acted on it, a
   chunk meets 404/416 and the blob starts over in a new upload, a closing `PUT` meets 404
   and a `HEAD` shows the blob is there.

Then the config blob (the same way, from memory), and last the manifest (`PUT /v2/<name>/manifests/<tag>`): a registry only
accepts a manifest whose blobs it has, and a reader never sees the tag before its content. The
registry's `Docker-Content-Digest` must be the sha256 of what was sent. Only then is the digest
recorded in the store (`name@sha256:...`, which later pushes mount from).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import trio

from unionfs.errors import UsageError

from .distribution import Options, RegistryError, Session, check_status
from .pull import Reporter
from .reference import Reference, parse
from .registries import RegistriesConf, load_conf
from .save import MANIFEST_TYPE, oci_manifest, rebuild_layer
from .store import ImageRecord, ImageStore, hex_of, normalize_ref

CHUNK_SIZE: Final = 32 << 20
CHUNK_SIZE_ENV: Final = "STRATA_PUSH_CHUNK_SIZE"  # for tests of the chunked path (bytes)
PARALLEL_UPLOADS: Final = 3
CANCEL_TIMEOUT: Final = 5.0  # seconds for the DELETE of an abandoned upload
_READ: Final = 1 << 20

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PushTarget:
    """Where a push goes: the reference, and the registry host and repository path there."""

    ref: Reference
    host: str
    repo: str
    insecure: bool


def chunk_size() -> int:
    """Blobs above this many bytes go up in chunks of this size (`$STRATA_PUSH_CHUNK_SIZE`)."""
    text = os.environ.get(CHUNK_SIZE_ENV, "")
    if text.isdigit() and int(text) > 0:
        return int(text)
    return CHUNK_SIZE


def find_source(store: ImageStore, source: str) -> ImageRecord:
    """The local image; "no such image" is a push failure (125), not `get`'s exit 1."""
    rec = store.find(source)
    if rec is None:
        raise UsageError(f"no such image: {source}", 125)
    return rec


def destination(rec: ImageRecord, source: str, dest: str | None) -> Reference:
    """The reference to push to: `dest`, or else `source` when it names a registry.

    A registry needs a qualified name (`host[:port]/path[:tag]`): as podman, push never
    resolves a short name through the search registries, since that would pick where an image
    goes by the order of a list."""
    text = dest
    if text is None:
        try:
            stored = normalize_ref(source)
        except UsageError:
            stored = ""
        if stored not in rec.tags or stored.startswith("localhost/"):
            raise UsageError(
                f"push {source}: give a destination (host[:port]/path[:tag]); {source} does not"
                " name a registry",
                125,
            )
        text = stored
    ref = parse(text.removeprefix("docker://"))
    if ref.short or ref.domain == "localhost":
        raise UsageError(
            f"push: {text!r} does not name a registry; give host[:port]/path[:tag]"
            " (e.g. registry.example:5000/team/app:1)",
            125,
        )
    if ref.digest:
        raise UsageError(f"push: {text!r}: give a tag to push to, not a digest", 125)
    return ref


def target_for(ref: Reference, conf: RegistriesConf) -> PushTarget:
    endpoint = conf.endpoints(ref, pull=False)[-1]
    return PushTarget(ref, endpoint.host, endpoint.path, endpoint.insecure)


def mount_sources(rec: ImageRecord, target: PushTarget, conf: RegistriesConf) -> list[str]:
    """Repositories on the target's registry host, other than the target, that the image is
    known in (newest first), as paths on that host (registries.conf may rewrite names)."""
    found: list[str] = []
    for entry in reversed(rec.digests):
        name, _, _digest = entry.partition("@")
        try:
            ref = parse(name)
            if ref.short:
                continue
            other = target_for(ref, conf)
        except UsageError:  # a malformed record, or a registry blocked since
            continue
        if other.host == target.host and other.repo != target.repo and other.repo not in found:
            found.append(other.repo)
    return found


class _Uploader:
    """The blob and manifest requests of one push to one repository."""

    def __init__(self, session: Session, target: PushTarget, mount_from: str | None) -> None:
        self.session = session
        self.host = target.host
        self.repo = target.repo
        self.mount_from = mount_from
        scopes = [f"repository:{self.repo}:pull,push"]
        if mount_from is not None:
            scopes.append(f"repository:{mount_from}:pull")
        self.scopes = tuple(scopes)

    async def _request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | Callable[[], AsyncIterator[bytes]] | None = None,
        what: str,
    ) -> httpx.Response:
        return await self.session.request(
            method,
            url,
            repo=self.repo,
            scopes=self.scopes,
            headers=headers,
            content=content,
            what=what,
            absolute=True,
        )

    def _url(self, path: str) -> str:
        return self.session.url(f"/v2/{self.repo}{path}")

    async def size_if_present(self, digest: str) -> int | None:
        """The blob's size when the repository has it, None when it does not."""
        short = hex_of(digest)[:12]
        resp = await self._request("HEAD", self._url(f"/blobs/{digest}"), what=f"blob {short}")
        if resp.status_code == 404:
            return None
        check_status(resp, self.host, f"blob {short} of {self.repo}", (200,))
        length = resp.headers.get("content-length", "")
        return int(length) if length.isdigit() else None

    async def try_mount(self, digest: str) -> str | None:
        """Mount `digest` from `mount_from`: None when mounted, else the Location of the upload
        the registry opened instead (or of a new one, if the mount was refused)."""
        short = hex_of(digest)[:12]
        if self.mount_from is not None:
            query = urllib.parse.urlencode({"mount": digest, "from": self.mount_from})
            try:
                resp = await self._request(
                    "POST",
                    self._url(f"/blobs/uploads/?{query}"),
                    headers={"Content-Length": "0"},
                    what=f"mount of blob {short}",
                )
            except RegistryError as e:
                if e.status not in (401, 403):
                    raise
                # no pull access to the other repository: upload as if it were not there
                self.mount_from = None
                self.scopes = self.scopes[:1]
            else:
                if resp.status_code == 201:
                    return None
                check_status(resp, self.host, f"mount of blob {short} into {self.repo}", (202,))
                return self._location(resp, self._url("/blobs/uploads/"))
        return await self.start_upload(digest)

    async def start_upload(self, digest: str) -> str:
        url = self._url("/blobs/uploads/")
        resp = await self._request(
            "POST",
            url,
            headers={"Content-Length": "0"},
            what=f"upload of blob {hex_of(digest)[:12]}",
        )
        check_status(resp, self.host, f"upload to {self.repo}", (202,))
        return self._location(resp, url)

    async def cancel(self, location: str) -> None:
        """Give up the upload at `location` (`DELETE`), so the registry need not keep its
        partial data until it purges old uploads; a failure here is not the one to report."""
        with trio.move_on_after(CANCEL_TIMEOUT):
            try:
                await self.session.request(
                    "DELETE",
                    location,
                    repo=self.repo,
                    scopes=self.scopes,
                    absolute=True,
                    what="cancelling an upload",
                )
            except RegistryError as e:
                log.info("%s", e)

    def _location(self, resp: httpx.Response, base: str) -> str:
        location = resp.headers.get("location")
        if not location:
            raise RegistryError(f"{self.host}: the registry opened an upload without a Location")
        return resolve_location(base, str(location))

    async def upload(
        self,
        location: str,
        digest: str,
        path: Path,
        size: int,
        progress: Callable[[int], None] | None,
    ) -> None:
        """Send the file `path` (`size` bytes, `digest`) to the upload at `location`."""
        short = hex_of(digest)[:12]
        chunk = chunk_size()
        if size <= chunk:
            resp = await self._request(
                "PUT",
                with_digest(location, digest),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(size),
                },
                content=_file_part(path, 0, size, progress),
                what=f"blob {short}",
            )
        else:
            start, restarts = 0, 0
            while start < size:
                end = min(start + chunk, size)
                resp = await self._request(
                    "PATCH",
                    location,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(end - start),
                        "Content-Range": f"{start}-{end - 1}",
                    },
                    content=_file_part(path, start, end, progress),
                    what=f"blob {short} (bytes {start}-{end - 1})",
                )
                if resp.status_code in (404, 416) and restarts < self.session.options.retries:
                    # A chunk sent again after its answer was lost: the upload has moved on
                    # (416), or the registry dropped it as resumed at the wrong offset (404, as
                    # distribution does). A new upload from the first byte is always right.
                    restarts += 1
                    location, start = await self.start_upload(digest), 0
                    continue
                check_status(resp, self.host, f"blob {short}: chunk at {start}", (202,))
                location = self._location(resp, location)
                start = end
            resp = await self._request(
                "PUT",
                with_digest(location, digest),
                headers={"Content-Length": "0"},
                what=f"blob {short}",
            )
        if resp.status_code == 404 and await self.size_if_present(digest) == size:
            return  # the PUT was sent again after its answer was lost: the upload is closed
        check_status(resp, self.host, f"blob {short} into {self.repo}", (201,))
        _check_digest(resp, digest, f"{self.host}: blob {short}")

    async def upload_bytes(self, location: str, digest: str, data: bytes) -> None:
        resp = await self._request(
            "PUT",
            with_digest(location, digest),
            headers={"Content-Type": "application/octet-stream"},
            content=data,
            what=f"blob {hex_of(digest)[:12]}",
        )
        check_status(resp, self.host, f"blob {hex_of(digest)[:12]} into {self.repo}", (201,))
        _check_digest(resp, digest, f"{self.host}: blob {hex_of(digest)[:12]}")

    async def put_manifest(self, tag: str, manifest: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        resp = await self._request(
            "PUT",
            self._url(f"/manifests/{tag}"),
            headers={"Content-Type": MANIFEST_TYPE},
            content=manifest,
            what=f"manifest {self.repo}:{tag}",
        )
        check_status(resp, self.host, f"manifest {self.repo}:{tag}", (201,))
        _check_digest(resp, digest, f"{self.host}: manifest {self.repo}:{tag}")
        return digest


def resolve_location(base: str, location: str) -> str:
    """An upload's `Location` as a URL: registries send absolute URLs, or paths (relative to the
    request that got the answer, behind a proxy that rewrites hosts), with a query to keep."""
    return urllib.parse.urljoin(base, location)


def with_digest(location: str, digest: str) -> str:
    """The upload URL with `digest=` added to whatever query the registry put there."""
    sep = "&" if urllib.parse.urlsplit(location).query else ("" if location.endswith("?") else "?")
    return f"{location}{sep}{urllib.parse.urlencode({'digest': digest})}"


def _check_digest(resp: httpx.Response, digest: str, what: str) -> None:
    given = resp.headers.get("docker-content-digest", "")
    if given and given != digest:
        raise RegistryError(f"{what}: the registry stored {given}, not {digest}")


def _file_part(
    path: Path, start: int, end: int, progress: Callable[[int], None] | None
) -> Callable[[], AsyncIterator[bytes]]:
    """Bytes [start, end) of `path`, read afresh on each call (a retried request resends)."""

    async def read() -> AsyncIterator[bytes]:
        f = await trio.open_file(path, "rb")
        async with f:
            await f.seek(start)
            left = end - start
            while left > 0:
                data = await f.read(min(left, _READ))
                if not data:
                    raise RegistryError(f"{path.name}: shorter than expected")
                left -= len(data)
                if progress is not None:
                    progress(len(data))
                yield data

    return read


async def push(
    store: ImageStore,
    source: str,
    dest: str | None,
    *,
    options: Options,
    conf: RegistriesConf | None = None,
    reporter: Reporter | None = None,
) -> str:
    """Push the image `source` to `dest` (see the module doc); the manifest digest."""
    reporter = reporter or Reporter(quiet=True)
    rec = find_source(store, source)
    ref = destination(rec, source, dest)
    conf = conf if conf is not None else load_conf()
    target = target_for(ref, conf)
    config = store.config_bytes(rec.id)
    mounts = mount_sources(rec, target, conf)
    async with Session(target.host, options, insecure=target.insecure) as session:
        await session.ping()  # the scheme (an insecure registry may be plain HTTP) before any URL
        reporter.say("Getting image source signatures")
        up = _Uploader(session, target, mounts[0] if mounts else None)
        config_digest = f"sha256:{rec.id}"
        # asked alone first: its answer brings the token the parallel layer requests then share
        has_config = await up.size_if_present(config_digest) is not None
        with store.staging() as staging:
            store.hold(staging, rec.layers)
            sizes = await _push_layers(store, staging, up, rec.layers, reporter)
        if not has_config:
            location = await up.try_mount(config_digest)
            if location is not None:
                await up.upload_bytes(location, config_digest, config)
        reporter.say(f"Copying config {rec.id[:12]} done")
        manifest = oci_manifest(rec.id, config, [(d, sizes[d]) for d in rec.layers])
        reporter.say("Writing manifest to image destination")
        digest = await up.put_manifest(ref.tag, manifest)
    store.add_digest(rec.id, f"{ref.name}@{digest}")
    return digest


async def _push_layers(
    store: ImageStore,
    staging: Path,
    up: _Uploader,
    diff_ids: Sequence[str],
    reporter: Reporter,
) -> dict[str, int]:
    """Each distinct layer into the repository (PARALLEL_UPLOADS at a time); their sizes."""
    sizes: dict[str, int] = {}
    limit = trio.CapacityLimiter(PARALLEL_UPLOADS)

    async def one(diff_id: str) -> None:
        digest = f"sha256:{diff_id}"
        short = diff_id[:12]
        async with limit:
            present = await up.size_if_present(digest)
            if present is not None:
                sizes[diff_id] = present
                reporter.say(f"Copying blob {short} skipped: already exists")
                return
            location = await up.try_mount(digest)
            if location is None:
                await _mounted_size(up, digest, diff_id, sizes, store, staging)
                reporter.say(f"Copying blob {short} skipped: already exists")
                return
            spool = staging / f"layer-{diff_id}"
            try:
                size = await trio.to_thread.run_sync(rebuild_layer, store, diff_id, spool)
                sizes[diff_id] = size
                advance = reporter.bar(f"blob {short}", size)
                await up.upload(location, digest, spool, size, advance)
            except Exception:
                await up.cancel(location)
                raise
            finally:
                spool.unlink(missing_ok=True)
            if advance is None:
                reporter.say(f"Copying blob {short} done")

    async with trio.open_nursery() as nursery:
        for diff_id in dict.fromkeys(diff_ids):
            nursery.start_soon(one, diff_id)
    return sizes


async def _mounted_size(
    up: _Uploader,
    digest: str,
    diff_id: str,
    sizes: dict[str, int],
    store: ImageStore,
    staging: Path,
) -> None:
    """The size of a blob just mounted: the registry's word, else the rebuilt tar's."""
    size = await up.size_if_present(digest)
    if size is None:
        spool = staging / f"size-{diff_id}"
        try:
            size = await trio.to_thread.run_sync(rebuild_layer, store, diff_id, spool)
        finally:
            spool.unlink(missing_ok=True)
    sizes[diff_id] = size


def write_digestfile(path: Path, digest: str) -> None:
    try:
        path.write_text(digest)
    except OSError as e:
        raise UsageError(f"--digestfile {path}: {e.strerror}", 125) from None
