"""`strata save A B`: several images in one archive, as `docker save A B` writes it (each
layer once, a manifest per image); loading it restores each with its id and layers; podman
loads it too, and what `podman save -m` writes loads into strata."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from images.load import import_rootfs, load
from images.save import save
from images.store import ImageRecord, ImageStore
from tests.helpers.mounts import skip_unless_root
from tests.helpers.podman import PrivatePodman

from .hostile import layer_tar, member
from .test_load import _archive

FORMATS = ("oci-archive", "docker-archive")
STRATA = str(Path(sys.executable).parent / "strata")


def _two_images(tmp_path: Path) -> tuple[ImageStore, ImageRecord, ImageRecord]:
    """The busybox test image and a small imported one, in a fresh store."""
    store = ImageStore(tmp_path / "root")
    (busybox,) = load(store, _archive("oci"), say=lambda _: None)
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(layer_tar([member("hello", data=b"hi\n")]))
    small = import_rootfs(store, str(rootfs), "small:1")
    return store, busybox, small


def _names(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return tar.getnames()


@pytest.mark.parametrize("fmt", FORMATS)
def test_two_images_round_trip(tmp_path: Path, fmt: str) -> None:
    store, busybox, small = _two_images(tmp_path)
    out = tmp_path / "two.tar"
    save(store, ["uniontest:1", "small:1"], out, fmt)
    again = ImageStore(tmp_path / "again")
    said: list[str] = []
    loaded = load(again, out, say=said.append)
    assert said == ["Loaded image: localhost/uniontest:1", "Loaded image: localhost/small:1"]
    assert [(r.id, r.layers) for r in loaded] == [
        (busybox.id, busybox.layers),
        (small.id, small.layers),
    ]
    assert {r.id: r.tags for r in again.images()} == {
        busybox.id: ("localhost/uniontest:1",),
        small.id: ("localhost/small:1",),
    }
    # one image alone is written as before: no docker manifest beside the OCI index
    save(store, "small:1", tmp_path / "one.tar", fmt)
    one = _names(tmp_path / "one.tar")
    assert ("manifest.json" in one) == (fmt == "docker-archive")


def test_shared_layers_are_written_once(tmp_path: Path) -> None:
    store, busybox, _ = _two_images(tmp_path)
    store_tags = tmp_path / "tags.tar"
    save(store, ["uniontest:1", "uniontest:1", busybox.id[:12]], store_tags, "docker-archive")
    names = _names(store_tags)
    assert sorted(names) == sorted({*names})  # no member twice
    with tarfile.open(store_tags) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest == [
        {
            "Config": f"{busybox.id}.json",
            "RepoTags": ["localhost/uniontest:1"],
            "Layers": [f"{d}.tar" for d in busybox.layers],
        }
    ]


def test_one_image_by_two_names(tmp_path: Path) -> None:
    """Both names go with the image; the OCI index lists it under each, and the docker
    manifest beside it lets podman read it."""
    store, busybox, _ = _two_images(tmp_path)
    store.tag(busybox.id, "bb")
    out = tmp_path / "tags.tar"
    save(store, ["uniontest:1", "bb"], out, "oci-archive")
    with tarfile.open(out) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    refs = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
    assert refs == ["localhost/uniontest:1", "localhost/bb:latest"]
    assert manifest[0]["RepoTags"] == refs
    again = ImageStore(tmp_path / "again")
    (rec,) = {r.id: r for r in load(again, out, say=lambda _: None)}.values()
    assert set(again.get(rec.id).tags) == set(refs)


def test_a_missing_image_writes_nothing(tmp_path: Path) -> None:
    store, _, _ = _two_images(tmp_path)
    env = dict(os.environ)
    done = subprocess.run(
        [STRATA, "save", "--root", str(store.path.parent), "-o", str(tmp_path / "x.tar"),
         "small:1", "nothere:1"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (1, "strata: no such image: nothere:1\n")
    assert not [n for n in os.listdir(tmp_path) if "x.tar" in n]


@pytest.mark.root
@pytest.mark.parametrize("fmt", FORMATS)
def test_podman_loads_several_and_we_load_podmans(tmp_path: Path, fmt: str) -> None:
    skip_unless_root()
    store, busybox, small = _two_images(tmp_path)
    out = tmp_path / "two.tar"
    save(store, ["uniontest:1", "small:1"], out, fmt)
    with PrivatePodman(tmp_path) as podman:
        said = podman.run("load", "-i", str(out))
        assert "localhost/uniontest:1" in said
        assert "localhost/small:1" in said
        for name, rec in (("localhost/uniontest:1", busybox), ("localhost/small:1", small)):
            (info,) = json.loads(podman.run("image", "inspect", name))
            assert info["Id"].removeprefix("sha256:") == rec.id
            assert info["RootFS"]["Layers"] == [f"sha256:{d}" for d in rec.layers]
        theirs = tmp_path / "podman-m.tar"
        podman.run("save", "-m", "-o", str(theirs), "localhost/uniontest:1", "localhost/small:1")
    again = ImageStore(tmp_path / "again")
    loaded = load(again, theirs, say=lambda _: None)
    assert {(r.id, r.layers) for r in loaded} == {
        (busybox.id, busybox.layers),
        (small.id, small.layers),
    }
