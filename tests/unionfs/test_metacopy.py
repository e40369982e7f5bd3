"""Unit tests of unionfs.metacopy on its own: marker paths and `open_data()`, the helper for code
that reads a bare layer directory (an image commit of an upper written with metacopy on)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from unionfs import metacopy


def put(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_metacopy(layer: Path, rel: str, marker: bytes, size: int) -> None:
    f = put(layer / rel)
    os.truncate(f, size)
    os.setxattr(f, "trusted.strata.metacopy", marker)
    os.setxattr(layer, "trusted.strata.metacopy-layer", b"y")


def read_fd(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read()


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        (b"a", (b"a",)),
        (b"a/b/c", (b"a", b"b", b"c")),
        (b"", None),
        (b"/a", None),
        (b"a/../b", None),
        (b"..", None),
        (b"a/./b", None),
        (b"a//b", None),
        (b"a/", None),
        (b"a\0b", None),
        (b"x" * 256, None),
    ],
)
def test_split_relpath_accepts_only_plain_layer_relative_paths(
    raw: bytes, parts: tuple[bytes, ...] | None
) -> None:
    assert metacopy.split_relpath(raw) == parts


def test_open_data_of_a_plain_file_opens_the_file(tmp_path: Path) -> None:
    put(tmp_path / "upper" / "d" / "f", b"plain")
    assert read_fd(metacopy.open_data(tmp_path / "upper", b"d/f", [], "trusted")) == b"plain"


@pytest.mark.root
def test_open_data_of_a_metacopy_file_opens_its_data_below(tmp_path: Path) -> None:
    upper, top, base = tmp_path / "upper", tmp_path / "top", tmp_path / "base"
    make_metacopy(upper, "renamed", b"d/f", 4)
    put(top / "unrelated")
    put(base / "d" / "f", b"data")
    assert read_fd(metacopy.open_data(upper, b"renamed", [top, base], "trusted")) == b"data"
    # fds work as well as paths, and stay open
    fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in (upper, top, base)]
    try:
        assert read_fd(metacopy.open_data(fds[0], b"renamed", fds[1:], "trusted")) == b"data"
        os.fstat(fds[2])
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.root
def test_open_data_follows_a_chain_of_metacopy_layers(tmp_path: Path) -> None:
    upper, mid, base = tmp_path / "upper", tmp_path / "mid", tmp_path / "base"
    make_metacopy(upper, "a", b"b", 3)
    make_metacopy(mid, "b", b"c", 3)
    put(base / "c", b"abc")
    assert read_fd(metacopy.open_data(upper, b"a", [mid, base], "trusted")) == b"abc"


@pytest.mark.root
@pytest.mark.parametrize("marker", [b"../outside", b"/etc/passwd", b"gone"])
def test_open_data_of_a_metacopy_file_without_data_is_eio(tmp_path: Path, marker: bytes) -> None:
    upper, base = tmp_path / "upper", tmp_path / "base"
    make_metacopy(upper, "f", marker, 7)
    put(tmp_path / "outside", b"outside")
    base.mkdir()
    with pytest.raises(OSError, match="metacopy") as info:
        metacopy.open_data(upper, b"f", [base], "trusted")
    assert info.value.errno == errno.EIO


def test_open_data_never_follows_a_symlink_in_the_layer(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    put(tmp_path / "outside" / "f", b"outside")
    upper.mkdir()
    os.symlink(tmp_path / "outside", upper / "d")
    with pytest.raises(OSError, match="metacopy") as info:
        metacopy.open_data(upper, b"d/f", [], "trusted")
    assert info.value.errno == errno.EIO
