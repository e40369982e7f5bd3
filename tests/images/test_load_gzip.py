"""The gzip reader of layers (`load._Gunzip`, behind `_decompressed`) against the standard
library's: the same bytes for what gzip accepts, and a ValueError or EOFError (which `load`
turns into one line) for what it refuses, never a zlib.error or a silent short read."""

from __future__ import annotations

import gzip
import io
import os
import zlib

import pytest

from images.load import _decompressed

DATA = os.urandom(3 << 20) + b"a" * (10 << 20) + os.urandom(1000)


def _read(blob: bytes) -> bytes:
    stream = _decompressed(io.BytesIO(blob))
    chunks = []
    while chunk := stream.read(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "blob",
    [
        gzip.compress(DATA),
        gzip.compress(DATA[:5]) + gzip.compress(DATA[5:]),  # several members, as pigz may write
        gzip.compress(DATA) + b"\0" * 5000,  # zero padding after the end, as tape writers add
        gzip.compress(b""),
        gzip.compress(DATA, compresslevel=1),
    ],
    ids=["one-member", "two-members", "zero-padding", "empty", "level-1"],
)
def test_same_bytes_as_the_standard_library(blob: bytes) -> None:
    assert _read(blob) == gzip.decompress(blob)


def test_a_bomb_is_never_inflated_in_one_piece() -> None:
    """256 MiB of zeros from ~250 kB: every read returns at most 4 MiB."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    blob = b"".join(bomb.compress(b"\0" * (64 << 20)) for _ in range(4)) + bomb.flush()
    stream = _decompressed(io.BytesIO(blob))
    total = 0
    while chunk := stream.read(1 << 28):
        assert len(chunk) <= 4 << 20
        total += len(chunk)
    assert total == 1 << 28


@pytest.mark.parametrize(
    ("blob", "error"),
    [
        (gzip.compress(DATA)[:-100], EOFError),  # truncated
        (gzip.compress(DATA)[:200_000], EOFError),  # cut in the middle
        (gzip.compress(DATA) + b"garbage", ValueError),  # not another member
        (gzip.compress(DATA)[:-8] + b"\0\0\0\0" + gzip.compress(DATA)[-4:], ValueError),  # CRC
    ],
    ids=["truncated", "cut", "trailing-garbage", "bad-crc"],
)
def test_broken_streams_raise(blob: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        _read(blob)
