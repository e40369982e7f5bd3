"""The image store: content-addressed layers and image records under the state root.

Layout (beside the runtime's `containers/`, under the same `lock`):

    images/layers/<diff_id hex>/   a layer, extracted once, shared by every image and container
    images/records/<id hex>.json   an image: its config, layer diff_ids (base first), tags
    images/configs/<id hex>        the config exactly as loaded (its sha256 is the image id)
    images/maps/<diff_id>          a layer's tar without file contents (`tarsplit`), for `save`
    images/tmp/                    layers being extracted; renamed into place when complete
    images/cache/<key hex>.json    the build cache: a build step's result (config, diff_ids)

A build holds the layers it works on (its base image's, and each new one until the image is
recorded) in `held.json` of its flock(2)ed staging dir: `rmi` and `prune` count them as used. A
cache entry holds nothing: a layer only a cache entry names may be pruned, and the entry then
misses (and `prune` drops it).

An image id is the sha256 of its config, as Docker's. Every file is written to a temporary name
and renamed, so readers (`strata run` resolving an image) need no lock; changes take the state
root's exclusive lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import os
import re
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from runtime.images import ImageConfig, ImageSpec
from runtime.state import StateRoot, now, read_json, remove_tree, write_json
from unionfs.errors import UsageError

from .reference import NAME_TAG

HELD: Final = "held.json"
_HEX: Final = re.compile(r"[0-9a-f]{64}")


def normalize_ref(ref: str) -> str:
    """`name[:tag]` as stored: a tag (`latest` by default), `localhost/` for a bare name.
    UsageError unless `ref` follows the distribution reference grammar."""
    m = NAME_TAG.fullmatch(ref)
    if m is None or len(m["name"]) > 255:
        shown = ref if len(ref) <= 100 else ref[:100] + "..."
        raise UsageError(f"invalid image reference {shown!r}", 125)
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        name, tag = ref, "latest"
    if "/" not in name:
        name = f"localhost/{name}"
    return f"{name}:{tag}"


def hex_of(digest: str) -> str:
    algo, sep, value = digest.partition(":")
    if not sep or algo != "sha256" or not _HEX.fullmatch(value):
        raise UsageError(f"unsupported digest {digest!r} (sha256 only)", 125)
    return value


@dataclass(frozen=True, slots=True)
class ImageRecord:
    id: str  # config sha256 hex
    layers: tuple[str, ...]  # diff_id hex, base first
    tags: tuple[str, ...]
    config: dict[str, object]
    loaded: str
    # `name@sha256:<manifest digest>` of each registry manifest it was pulled by or pushed as
    digests: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "layers": list(self.layers),
            "tags": list(self.tags),
            "config": self.config,
            "loaded": self.loaded,
            "digests": list(self.digests),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ImageRecord:
        layers, tags, config = data["layers"], data["tags"], data["config"]
        digests = data.get("digests") or []
        assert isinstance(digests, list)
        assert isinstance(layers, list)
        assert isinstance(tags, list)
        assert isinstance(config, dict)
        return cls(
            id=str(data["id"]),
            layers=tuple(str(x) for x in layers),
            tags=tuple(str(x) for x in tags),
            config=config,
            loaded=str(data.get("loaded", "")),
            digests=tuple(str(x) for x in digests),
        )

    @property
    def runtime_config(self) -> ImageConfig:
        return ImageConfig.from_oci(self.config)

    @property
    def created(self) -> str:
        return str(self.config.get("created") or "")


class ImageStore:
    """The images and layers under one state root (see the module doc)."""

    def __init__(self, root: Path) -> None:
        self.state = StateRoot(root)
        self.path = root / "images"
        self.layers_dir = self.path / "layers"
        self.records_dir = self.path / "records"
        self.configs_dir = self.path / "configs"
        self.tmp_dir = self.path / "tmp"
        self.maps_dir = self.path / "maps"
        self.cache_dir = self.path / "cache"

    def ensure(self) -> None:
        for d in (
            self.layers_dir,
            self.records_dir,
            self.configs_dir,
            self.tmp_dir,
            self.maps_dir,
            self.cache_dir,
        ):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with self.state.lock():
            self.ensure()
            yield

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A private directory inside the store, removed afterwards whatever happens.

        It is flock(2)ed while in use, so `prune` leaves it alone: loads extract without the
        state root's lock (which `run`, `rm`, ... need) and take it only to record the result."""
        self.ensure()
        path = Path(tempfile.mkdtemp(dir=self.tmp_dir))
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        finally:
            remove_tree(path)
            os.close(fd)

    # -- layers --------------------------------------------------------------------------------

    def layer_path(self, diff_id: str) -> Path:
        return self.layers_dir / diff_id

    def has_layer(self, diff_id: str) -> bool:
        return self.layer_path(diff_id).is_dir()

    def map_path(self, diff_id: str) -> Path:
        return self.maps_dir / diff_id

    def add_layer(self, diff_id: str, extracted: Path, tar_map: Path) -> None:
        """Move a completely extracted layer and its tar map into place (with the lock held)."""
        if self.has_layer(diff_id):
            remove_tree(extracted)
        else:
            os.rename(tar_map, self.map_path(diff_id))
            os.rename(extracted, self.layer_path(diff_id))

    def layer_tar_size(self, diff_id: str) -> int:
        """The layer's uncompressed size (its tar's, as podman and docker count a layer); the
        space its directory takes when it has no tar map (loaded before maps existed)."""
        from .tarsplit import tar_size

        try:
            return tar_size(self.map_path(diff_id))
        except (OSError, ValueError, EOFError, struct.error):
            return layer_size(self.layer_path(diff_id)) if self.has_layer(diff_id) else 0

    def layers(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.layers_dir) if _HEX.fullmatch(n))
        except FileNotFoundError:
            return []

    # -- images --------------------------------------------------------------------------------

    def images(self) -> list[ImageRecord]:
        """Every image, newest loaded first."""
        found = []
        try:
            names = os.listdir(self.records_dir)
        except FileNotFoundError:
            return []
        for name in names:
            if name.endswith(".json") and _HEX.fullmatch(name[:-5]):
                try:
                    found.append(ImageRecord.from_json(read_json(self.records_dir / name)))
                except (OSError, ValueError, KeyError, AssertionError):
                    continue
        found.sort(key=lambda r: r.loaded, reverse=True)
        return found

    def find(self, ref: str) -> ImageRecord | None:
        """An image by name[:tag], `sha256:ID`, or unique id prefix."""
        images = self.images()
        try:
            wanted = normalize_ref(ref)
        except UsageError:
            wanted = None
        for rec in images:
            if wanted in rec.tags or ref in rec.tags or ref in rec.digests:
                return rec
        prefix = ref.removeprefix("sha256:")
        if re.fullmatch(r"[0-9a-f]{1,64}", prefix):
            matches = [r for r in images if r.id.startswith(prefix)]
            if len(matches) > 1:
                raise UsageError(f"image id prefix {prefix} is ambiguous", 125)
            if matches:
                return matches[0]
        return None

    def get(self, ref: str) -> ImageRecord:
        """The image `ref` names; "no such image" exits 1, as in docker's image commands (a
        `run` or `create` of a missing image is 125: runtime.images)."""
        rec = self.find(ref)
        if rec is None:
            raise UsageError(f"no such image: {ref}", 1)
        return rec

    def write(self, rec: ImageRecord) -> None:
        write_json(self.records_dir / f"{rec.id}.json", rec.to_json())

    def config_bytes(self, image_id: str) -> bytes:
        return (self.configs_dir / image_id).read_bytes()

    def add_image(
        self,
        raw_config: bytes,
        config: dict[str, object],
        layers: list[str],
        tags: list[str],
        digests: tuple[str, ...] = (),
    ) -> ImageRecord:
        """Record an image whose layers are in place; tags move to it, repository digests
        (`name@sha256:...`) are added to its own (with the lock held)."""
        image_id = hashlib.sha256(raw_config).hexdigest()
        cfg_path = self.configs_dir / image_id
        tmp = cfg_path.with_name(f".{image_id}.{os.getpid()}.tmp")
        tmp.write_bytes(raw_config)
        os.rename(tmp, cfg_path)
        old = self.find(image_id) if (self.records_dir / f"{image_id}.json").exists() else None
        all_tags = list(old.tags if old else ())
        for tag in tags:
            self.untag_everywhere(tag)
            if tag not in all_tags:
                all_tags.append(tag)
        all_digests = tuple(dict.fromkeys((*(old.digests if old else ()), *digests)))
        rec = ImageRecord(
            id=image_id,
            layers=tuple(layers),
            tags=tuple(all_tags),
            config=config,
            loaded=now(),
            digests=all_digests,
        )
        self.write(rec)
        return rec

    def add_digest(self, image_id: str, digest_ref: str) -> None:
        """Remember that `image_id` is `name@sha256:...` in a registry (after a push)."""
        with self.lock():
            rec = self.get(image_id)
            if digest_ref not in rec.digests:
                self.write(dataclasses.replace(rec, digests=(*rec.digests, digest_ref)))

    def untag_everywhere(self, tag: str) -> None:
        for rec in self.images():
            if tag in rec.tags:
                self.write(_with_tags(rec, tuple(t for t in rec.tags if t != tag)))

    def tag(self, ref: str, new: str) -> None:
        tag = normalize_ref(new)
        with self.lock():
            rec = self.get(ref)
            self.untag_everywhere(tag)
            rec = self.get(rec.id)
            self.write(_with_tags(rec, (*rec.tags, tag)))

    def spec(self, rec: ImageRecord, ref: str) -> ImageSpec:
        layers = tuple(self.layer_path(d) for d in reversed(rec.layers))
        for path in layers:
            if not path.is_dir():
                raise UsageError(f"image {ref}: layer {path.name[:12]} is missing", 125)
        return ImageSpec(ref=ref, layers=layers, config=rec.runtime_config)

    # -- removal -------------------------------------------------------------------------------

    def containers_using(self, rec: ImageRecord) -> list[str]:
        """Ids of the containers made from `rec` (their layers are its layers)."""
        mine = tuple(str(self.layer_path(d)) for d in reversed(rec.layers))
        return [c.id for c in self.state.containers() if tuple(c.config.layers) == mine]

    def layers_in_use(self) -> set[str]:
        used: set[str] = set()
        for rec in self.images():
            used.update(rec.layers)
        prefix = str(self.layers_dir) + "/"
        for c in self.state.containers():
            used.update(p[len(prefix) :] for p in c.config.layers if p.startswith(prefix))
        used.update(self._held_layers())
        return used

    def hold(self, staging: Path, diff_ids: list[str] | tuple[str, ...]) -> None:
        """Record that the operation owning `staging` uses these layers (with the lock held),
        besides those it recorded before: the stages of a build may run in processes of their
        own (images.stagepool), each adding its layers."""
        try:
            before = read_json(staging / HELD).get("layers") or []
        except FileNotFoundError:
            before = []
        known = [str(d) for d in before] if isinstance(before, list) else []
        write_json(staging / HELD, {"layers": sorted({*known, *diff_ids})})

    def _held_layers(self) -> set[str]:
        """Layers named by `held.json` in staging dirs whose owner is still at work."""
        held: set[str] = set()
        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return held
        for name in names:
            path = self.tmp_dir / name
            if not (path / HELD).is_file() or not locked(path):
                continue
            try:
                layers = read_json(path / HELD).get("layers") or []
            except (OSError, ValueError):
                continue
            if isinstance(layers, list):
                held.update(str(d) for d in layers)
        return held

    def remove(self, ref: str, *, force: bool) -> list[str]:
        """`rmi`: untag, or delete the image and the layers nothing else uses; lines to print."""
        out = []
        with self.lock():
            rec = self.get(ref)
            try:
                tag = normalize_ref(ref)
            except UsageError:
                tag = ""
            if tag in rec.tags and len(rec.tags) > 1:
                self.write(_with_tags(rec, tuple(t for t in rec.tags if t != tag)))
                return [f"Untagged: {tag}"]
            users = self.containers_using(rec)
            if users and not force:
                raise UsageError(f"image {ref} is in use by container {users[0][:12]} (use -f)", 1)
            out += [f"Untagged: {t}" for t in rec.tags]
            os.unlink(self.records_dir / f"{rec.id}.json")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.configs_dir / rec.id)
            out.append(f"Deleted: sha256:{rec.id}")
            out += self._free_layers(rec.layers)
        return out

    def _free_layers(self, candidates: tuple[str, ...] | list[str]) -> list[str]:
        used = self.layers_in_use()
        out = []
        for diff_id in candidates:
            if diff_id not in used and self.has_layer(diff_id):
                # rename first: a half-removed layer is never seen under its name
                doomed = self.tmp_dir / f"rm-{diff_id}"
                os.rename(self.layer_path(diff_id), doomed)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.map_path(diff_id))
                remove_tree(doomed)
                out.append(f"Deleted layer: sha256:{diff_id}")
        return out

    def prune(self) -> list[str]:
        """Remove layers no image or container uses (and leftovers of interrupted loads)."""
        with self.lock():
            for name in os.listdir(self.tmp_dir):
                _remove_unless_busy(self.tmp_dir / name)
            out = self._free_layers(self.layers())
            self._drop_stale_cache()
            return out

    def _drop_stale_cache(self) -> None:
        """Remove build cache entries that name a layer no longer in the store."""
        for name in os.listdir(self.cache_dir):
            path = self.cache_dir / name
            try:
                layers = read_json(path).get("layers") or []
                stale = not isinstance(layers, list) or not all(
                    self.has_layer(str(d)) for d in layers
                )
            except (OSError, ValueError):
                stale = True
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def locked(path: Path) -> bool:
    """Whether a directory is flock(2)ed by someone (shared or exclusive): a staging dir by the
    load or build that made it, a RUN cache mount by the RUN that uses it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _remove_unless_busy(path: Path) -> None:
    """Remove a leftover of `ImageStore.staging()` unless a load is still using it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(path)
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        remove_tree(path)
    except BlockingIOError:
        pass  # in use
    finally:
        os.close(fd)


def _with_tags(rec: ImageRecord, tags: tuple[str, ...]) -> ImageRecord:
    return dataclasses.replace(rec, tags=tags)


def layer_size(path: Path) -> int:
    """Bytes used by a layer directory (each inode counted once)."""
    seen: set[int] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_blocks * 512
    return total
