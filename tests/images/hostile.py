"""Builders of small image archives (docker-archive form) for the tests, hostile ones included."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

Member = tuple[tarfile.TarInfo, bytes | None]


def member(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    link: str = "",
    mode: int = 0o644,
    size: int | None = None,
) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.mtime = 1_700_000_000
    if kind == tarfile.REGTYPE:
        info.size = len(data) if size is None else size
        return info, data
    return info, None


def layer_tar(members: Sequence[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def docker_archive(
    path: Path,
    layers: Sequence[bytes],
    *,
    tag: str = "localhost/t:1",
    cmd: Sequence[str] = ("/bin/sh",),
    mangle: Callable[[dict[str, bytes]], None] | None = None,
) -> Path:
    """A `docker save` archive of `layers` (uncompressed tars, base first)."""
    files: dict[str, bytes] = {}
    diff_ids = []
    for data in layers:
        digest = hashlib.sha256(data).hexdigest()
        diff_ids.append(f"sha256:{digest}")
        files[f"{digest}.tar"] = data
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": list(cmd)},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
        }
    ).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    files[config_name] = config
    files["manifest.json"] = json.dumps(
        [
            {
                "Config": config_name,
                "RepoTags": [tag],
                "Layers": [f"{d.removeprefix('sha256:')}.tar" for d in diff_ids],
            }
        ]
    ).encode()
    if mangle is not None:
        mangle(files)
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
