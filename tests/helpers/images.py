"""Real container images as layer directories: the busybox test image and a Debian rootfs.

Layers are extracted with GNU tar as OCI layer tars are meant to be applied, except that `.wh.`
whiteout files are kept as files: strata reads that form itself. (For kernel overlayfs, copy the
layers and run `mounts.convert_oci_whiteouts()` on the copies.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

TESTDATA: Final = Path("/work/shared/testdata")
BUSYBOX_DOCKER_ARCHIVE: Final = TESTDATA / "uniontest-busybox.docker-archive.tar"
BUSYBOX_OCI_ARCHIVE: Final = TESTDATA / "uniontest-busybox.oci-archive.tar"

DEBIAN_CACHE: Final = Path("/var/cache/strata-tests")

# tar's flags for decompressing an OCI layer blob, by media type
_LAYER_COMPRESSION: Final = {
    "application/vnd.oci.image.layer.v1.tar": [],
    "application/vnd.oci.image.layer.v1.tar+gzip": ["--gzip"],
    "application/vnd.oci.image.layer.v1.tar+zstd": ["--zstd"],
    "application/vnd.docker.image.rootfs.diff.tar.gzip": ["--gzip"],
}


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """The parts of an image config that running the image needs."""

    env: dict[str, str]
    cmd: list[str]


def extract_layer(layer_tar: Path, dest: Path, *, tar_flags: Sequence[str] = ()) -> None:
    """Extract one layer tar into the existing directory `dest`, keeping owners, modes, xattrs.

    As root ownership is kept (`--same-owner`); otherwise files belong to the caller.
    """
    owner = ["--same-owner", "--numeric-owner"] if os.geteuid() == 0 else ["--no-same-owner"]
    subprocess.run(
        [
            "tar",
            "-x",
            *tar_flags,
            "--xattrs",
            "--xattrs-include=*",
            *owner,
            "-p",
            "-f",
            str(layer_tar),
            "-C",
            str(dest),
        ],
        check=True,
        capture_output=True,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _unpack_archive(archive: Path, staging: Path) -> None:
    subprocess.run(["tar", "-x", "-f", str(archive), "-C", str(staging)], check=True)


def extract_docker_archive(archive: Path, dest: Path) -> list[Path]:
    """Extract each layer of a `docker save` archive into `dest/layer<i>/`; return them base first.

    Checks each layer tar against its DiffID (the file name is the sha256 of the uncompressed tar).
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        staging = Path(tmp)
        _unpack_archive(archive, staging)
        (manifest,) = json.loads((staging / "manifest.json").read_text())
        layers = []
        for i, name in enumerate(manifest["Layers"]):
            layer_tar = staging / name
            diff_id = Path(name).stem
            if len(diff_id) == 64 and _sha256(layer_tar) != diff_id:
                raise ValueError(f"{archive}: layer {name} does not match its DiffID")
            layer_dir = dest / f"layer{i}"
            layer_dir.mkdir()
            extract_layer(layer_tar, layer_dir)
            layers.append(layer_dir)
    return layers


def _oci_blob(layout: Path, digest: str) -> Path:
    algo, _, hexdigest = digest.partition(":")
    blob = layout / "blobs" / algo / hexdigest
    if algo == "sha256" and _sha256(blob) != hexdigest:
        raise ValueError(f"{blob}: content does not match its digest")
    return blob


def _oci_manifest(layout: Path, ref: str | None) -> dict[str, object]:
    index = json.loads((layout / "index.json").read_text())
    candidates = index["manifests"]
    if ref is not None:
        candidates = [
            m
            for m in candidates
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref
        ]
    if len(candidates) != 1:
        raise ValueError(f"{layout}: expected one manifest for {ref!r}, found {len(candidates)}")
    manifest: dict[str, object] = json.loads(_oci_blob(layout, candidates[0]["digest"]).read_text())
    return manifest


def extract_oci_archive(archive: Path, dest: Path, *, ref: str | None = None) -> list[Path]:
    """Extract each layer of an OCI archive into `dest/layer<i>/`; return them base first.

    index.json -> the image manifest (the only one, or the one annotated with `ref`) -> layer blobs,
    each checked against its digest and decompressed according to its media type.
    """
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        layout = Path(tmp)
        _unpack_archive(archive, layout)
        manifest = _oci_manifest(layout, ref)
        layers = []
        descriptors = manifest["layers"]
        assert isinstance(descriptors, list)
        for i, desc in enumerate(descriptors):
            media_type = desc["mediaType"]
            if media_type not in _LAYER_COMPRESSION:
                raise ValueError(f"{archive}: unsupported layer media type {media_type}")
            layer_dir = dest / f"layer{i}"
            layer_dir.mkdir()
            extract_layer(
                _oci_blob(layout, desc["digest"]),
                layer_dir,
                tar_flags=_LAYER_COMPRESSION[media_type],
            )
            layers.append(layer_dir)
    return layers


def read_docker_archive_config(archive: Path) -> ImageConfig:
    """The Env and Cmd of the (single) image in a `docker save` archive."""
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        _unpack_archive(archive, staging)
        (manifest,) = json.loads((staging / "manifest.json").read_text())
        config = json.loads((staging / manifest["Config"]).read_text())["config"]
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return ImageConfig(env=env, cmd=list(config.get("Cmd") or []))


# -------------------------------------------------------------------------------------------------
# Debian rootfs


@dataclass(frozen=True, slots=True)
class DebianRootfs:
    path: Path
    build_seconds: float  # how long mmdebstrap took when this tree was built
    built_now: bool  # False when it came from the cache


def debian_cache_key(suite: str, variant: str, include: Sequence[str]) -> str:
    parts = [suite, variant, *sorted(include)]
    return "-".join(parts)


def ensure_mmdebstrap() -> str:
    """The path of mmdebstrap, installing it with apt when missing (root only)."""
    found = shutil.which("mmdebstrap")
    if found is None:
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "mmdebstrap"],
            check=True,
            capture_output=True,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
        )
        found = shutil.which("mmdebstrap")
    if found is None:
        raise RuntimeError("mmdebstrap is not installed and apt-get could not install it")
    return found


def build_debian_rootfs(
    *,
    suite: str = "bookworm",
    variant: str = "minbase",
    include: Sequence[str] = ("python3",),
    cache: Path = DEBIAN_CACHE,
) -> DebianRootfs:
    """A Debian rootfs directory built by mmdebstrap, cached across runs under `cache`.

    The tree is built into a temporary directory beside its final place and renamed there when
    complete, so an interrupted build never leaves a half tree in the cache. Needs root.
    """
    key = debian_cache_key(suite, variant, include)
    final = cache / key
    info_file = cache / f"{key}.json"
    if final.is_dir():
        seconds = json.loads(info_file.read_text())["build_seconds"] if info_file.exists() else 0.0
        return DebianRootfs(final, float(seconds), built_now=False)
    mmdebstrap = ensure_mmdebstrap()
    cache.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=cache))
    try:
        started = time.monotonic()
        cmd = [mmdebstrap, f"--variant={variant}", "--mode=root"]
        if include:
            cmd.append("--include=" + ",".join(include))
        cmd += [suite, str(building)]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-4000:]}")
        seconds = time.monotonic() - started
        try:
            building.rename(final)
        except OSError:
            if not final.is_dir():  # not a concurrent build that finished first
                raise
        else:
            building = final
            info_file.write_text(json.dumps({"build_seconds": seconds, "command": cmd}) + "\n")
    finally:
        if building != final:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(building)
    return DebianRootfs(final, seconds, built_now=True)


__all__ = [
    "BUSYBOX_DOCKER_ARCHIVE",
    "BUSYBOX_OCI_ARCHIVE",
    "DebianRootfs",
    "ImageConfig",
    "build_debian_rootfs",
    "debian_cache_key",
    "ensure_mmdebstrap",
    "extract_docker_archive",
    "extract_layer",
    "extract_oci_archive",
    "read_docker_archive_config",
]
