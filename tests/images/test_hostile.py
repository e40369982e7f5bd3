"""Hostile layers are rejected with an error naming the member, and the store is left as it was.

Each case is a docker archive generated here; the store sits beside a canary directory that a
successful escape would write into. No root needed (the device case pretends not to be root).
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from images import extract
from images.load import LoadError, load
from images.store import ImageStore

from .hostile import docker_archive, layer_tar, member


def _snapshot(path: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            full = os.path.join(dirpath, name)
            found.append(os.path.relpath(full, path))
    return sorted(found)


def _absurd_layer() -> bytes:
    info = tarfile.TarInfo("huge")
    info.size = 1 << 50
    return info.tobuf(tarfile.PAX_FORMAT) + b"\0" * 1024


CASES = {
    "dotdot": ([member("../canary/pwned", data=b"x")], "../canary/pwned"),
    "dotdot-inner": ([member("a/../../canary/pwned", data=b"x")], "a/../../canary/pwned"),
    "absolute": ([member("/tmp/pwned", data=b"x")], "/tmp/pwned"),
    "symlink-then-write": (
        [member("evil", tarfile.SYMTYPE, link="../../canary"), member("evil/pwned", data=b"x")],
        "evil/pwned",
    ),
    "symlink-dir-then-write": (
        [
            member("d", tarfile.DIRTYPE, mode=0o755),
            member("d/up", tarfile.SYMTYPE, link="/"),
            member("d/up/tmp/pwned", data=b"x"),
        ],
        "d/up/tmp/pwned",
    ),
    "hardlink-outside": ([member("h", tarfile.LNKTYPE, link="/etc/passwd")], "h"),
    "hardlink-dotdot": ([member("h", tarfile.LNKTYPE, link="../canary/file")], "h"),
    "hardlink-not-yet": (
        [member("h", tarfile.LNKTYPE, link="later"), member("later", data=b"x")],
        "h",
    ),
    "hardlink-missing": ([member("h", tarfile.LNKTYPE, link="nosuch")], "h"),
    "hardlink-through-symlink": (
        [
            member("s", tarfile.SYMTYPE, link="/etc"),
            member("h", tarfile.LNKTYPE, link="s/passwd"),
        ],
        "h",
    ),
}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ImageStore, Path]:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "file").write_text("canary\n")
    store = ImageStore(tmp_path / "root")
    # a good image first: the store is not empty, and must stay exactly as it is
    good = docker_archive(tmp_path / "good.tar", [layer_tar([member("ok", data=b"ok\n")])])
    load(store, good, say=lambda _: None)
    return store, canary


def _check_rejected(store: ImageStore, canary: Path, archive: Path, name: str) -> None:
    before = _snapshot(store.path)
    records = [r.to_json() for r in store.images()]
    with pytest.raises(LoadError) as err:
        load(store, archive, say=lambda _: None)
    message = str(err.value)
    assert repr(name) in message, message
    assert "\n" not in message
    assert _snapshot(store.path) == before
    assert [r.to_json() for r in store.images()] == records
    assert _snapshot(canary) == ["file"]
    assert (canary / "file").read_text() == "canary\n"
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_layer_rejected(setup: tuple[ImageStore, Path], tmp_path: Path, case: str) -> None:
    store, canary = setup
    members, name = CASES[case]
    # a harmless first layer, so a partly loaded image would show
    archive = docker_archive(
        tmp_path / f"{case}.tar", [layer_tar([member("base", data=b"b")]), layer_tar(members)]
    )
    _check_rejected(store, canary, archive, name)


def test_absurd_size_rejected(setup: tuple[ImageStore, Path], tmp_path: Path) -> None:
    store, canary = setup
    archive = docker_archive(tmp_path / "huge.tar", [_absurd_layer()])
    _check_rejected(store, canary, archive, "huge")


def test_device_rejected_when_not_root(
    setup: tuple[ImageStore, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, canary = setup
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    dev = member("dev/null", tarfile.CHRTYPE, mode=0o666)
    dev[0].devmajor, dev[0].devminor = 1, 3
    archive = docker_archive(tmp_path / "dev.tar", [layer_tar([dev])])
    _check_rejected(store, canary, archive, "dev/null")


def test_symlinks_with_any_target_are_kept(tmp_path: Path) -> None:
    """Targets are never followed, so absolute and `..` targets are fine inside a layer."""
    dest = tmp_path / "layer"
    dest.mkdir()
    data = layer_tar(
        [
            member("etc", tarfile.DIRTYPE, mode=0o755),
            member("etc/localtime", tarfile.SYMTYPE, link="/usr/share/zoneinfo/UTC"),
            member("up", tarfile.SYMTYPE, link="../../.."),
            member("f", data=b"one"),
            member("g", tarfile.LNKTYPE, link="f"),
            member("f2", data=b"two"),
            member("f2", data=b"three"),  # a later member replaces an earlier one
            member("hl", tarfile.LNKTYPE, link="etc/localtime"),  # links the symlink itself
        ]
    )
    import io

    extract.extract_layer(io.BytesIO(data), dest)
    assert os.readlink(dest / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert os.readlink(dest / "up") == "../../.."
    assert os.stat(dest / "f").st_ino == os.stat(dest / "g").st_ino
    assert (dest / "f2").read_text() == "three"
    assert os.lstat(dest / "hl").st_ino == os.lstat(dest / "etc/localtime").st_ino
    assert (dest / "f").stat().st_mtime == 1_700_000_000
