"""A layer's tar, minus file contents, kept so `save` can give back the exact bytes loaded.

The idea of containers/storage's tar-split: while a layer is extracted, every byte of its tar
that is not the content of a regular file still in the layer directory (headers, PAX records,
padding, the end blocks, contents later replaced) is kept; a file's content is a reference to its
path in the layer. Rebuilding the stream from the map and the layer gives the original tar, whose
sha256 is the diff_id: `save` checks it, so an image saved after its layer changed on disk fails
instead of handing out wrong digests.

File format (gzip): records of `R` + 8-byte length + raw bytes, or `F` + 8-byte size + 2-byte
path length + path (relative to the layer directory).
"""

from __future__ import annotations

import gzip
import os
import stat
import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Final

_CHUNK: Final = 1 << 20

Payload = tuple[str, int, int, int]  # path in the layer, offset in the tar, size, inode


def write_map(raw_tar: Path, layer: Path, payloads: Sequence[Payload], dest: Path) -> None:
    """The map of `raw_tar` (extracted into `layer`, file contents at `payloads`) into `dest`."""
    times_named = Counter(p[0] for p in payloads)
    kept = []
    for rel, offset, size, ino in payloads:
        try:
            st = os.lstat(layer / rel)
        except FileNotFoundError:
            continue
        if (
            size > 0
            and times_named[rel] == 1
            and stat.S_ISREG(st.st_mode)
            and st.st_ino == ino
            and st.st_size == size
        ):
            kept.append((offset, size, rel))
    kept.sort()
    with open(raw_tar, "rb") as src, gzip.open(dest, "wb", compresslevel=6) as out:
        pos = 0
        for offset, size, rel in kept:
            _copy_raw(src, out, offset - pos)
            encoded = rel.encode("utf-8", "surrogateescape")
            out.write(b"F" + struct.pack(">QH", size, len(encoded)) + encoded)
            src.seek(size, os.SEEK_CUR)
            pos = offset + size
        while chunk := src.read(_CHUNK):
            out.write(b"R" + struct.pack(">Q", len(chunk)) + chunk)


def _copy_raw(src: IO[bytes], out: gzip.GzipFile, length: int) -> None:
    while length > 0:
        chunk = src.read(min(length, _CHUNK))
        if not chunk:
            raise ValueError("tar map: raw tar ended early")
        out.write(b"R" + struct.pack(">Q", len(chunk)) + chunk)
        length -= len(chunk)


def rebuild(map_path: Path, layer: Path) -> Iterator[bytes]:
    """The layer's original tar, in chunks."""
    with gzip.open(map_path, "rb") as f:
        while kind := f.read(1):
            if kind == b"R":
                (length,) = struct.unpack(">Q", f.read(8))
                yield f.read(length)
            elif kind == b"F":
                size, name_len = struct.unpack(">QH", f.read(10))
                rel = f.read(name_len).decode("utf-8", "surrogateescape")
                fd = os.open(layer / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as content:
                    left = size
                    while left > 0:
                        chunk = content.read(min(left, _CHUNK))
                        if not chunk:
                            raise ValueError(f"{rel}: shorter than when it was loaded")
                        yield chunk
                        left -= len(chunk)
            else:
                raise ValueError(f"{map_path}: corrupt tar map")


def tar_size(map_path: Path) -> int:
    """The size of the layer's original tar (its uncompressed size, which podman and docker
    report for a layer), from its map alone."""
    total = 0
    with gzip.open(map_path, "rb") as f:
        while kind := f.read(1):
            if kind == b"R":
                (length,) = struct.unpack(">Q", f.read(8))
                f.seek(length, os.SEEK_CUR)
                total += length
            elif kind == b"F":
                size, name_len = struct.unpack(">QH", f.read(10))
                f.seek(name_len, os.SEEK_CUR)
                total += size
            else:
                raise ValueError(f"{map_path}: corrupt tar map")
    return total
