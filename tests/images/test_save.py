"""`strata save`: load -> save -> load keeps the image id and diff_ids, in both formats; podman
loads what we save with the same digests; a layer changed on disk is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from images.load import import_rootfs, load
from images.save import save
from images.store import ImageStore
from tests.helpers.mounts import skip_unless_root
from tests.helpers.podman import PrivatePodman

from .hostile import layer_tar, member
from .test_formats import _oci_layout
from .test_load import IMAGE_ID, _archive

FORMATS = ("oci-archive", "docker-archive")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("form", ["oci", "docker", "oci-dir-zstd"])
def test_round_trip(tmp_path: Path, fmt: str, form: str) -> None:
    store = ImageStore(tmp_path / "root")
    source = _oci_layout(tmp_path, zstd=True) if form == "oci-dir-zstd" else _archive(form)
    (first,) = load(store, source, say=lambda _: None)
    out = tmp_path / "saved.tar"
    save(store, "uniontest:1", out, fmt)
    again = ImageStore(tmp_path / "again")
    said: list[str] = []
    (second,) = load(again, out, say=said.append)
    assert said == ["Loaded image: localhost/uniontest:1"]
    assert (second.id, second.layers) == (first.id, first.layers) == (IMAGE_ID, first.layers)
    assert again.config_bytes(second.id) == store.config_bytes(first.id)
    # saving the reloaded image gives the same bytes
    out2 = tmp_path / "saved2.tar"
    save(again, IMAGE_ID[:12], out2, fmt)
    assert out2.read_bytes() == out.read_bytes()


def test_save_refuses_a_changed_layer(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(layer_tar([member("f", data=b"one\n"), member("g", data=b"x")]))
    rec = import_rootfs(store, str(rootfs), "small:1")
    save(store, "small:1", tmp_path / "ok.tar", "oci-archive")
    (store.layer_path(rec.layers[0]) / "f").write_bytes(b"two\n")
    with pytest.raises(Exception, match="changed on disk"):
        save(store, "small:1", tmp_path / "bad.tar", "oci-archive")
    assert not (tmp_path / "bad.tar").exists()
    assert [n for n in os.listdir(tmp_path) if n.startswith(".bad")] == []


@pytest.mark.root
@pytest.mark.parametrize("fmt", FORMATS)
def test_podman_loads_what_we_save(tmp_path: Path, fmt: str) -> None:
    skip_unless_root()
    store = ImageStore(tmp_path / "root")
    (rec,) = load(store, _archive("oci"), say=lambda _: None)
    out = tmp_path / "saved.tar"
    save(store, "uniontest:1", out, fmt)
    with PrivatePodman(tmp_path) as podman:
        assert "localhost/uniontest:1" in podman.run("load", "-i", str(out))
        (info,) = json.loads(podman.run("image", "inspect", "localhost/uniontest:1"))
        assert info["Id"].removeprefix("sha256:") == rec.id
        assert info["RootFS"]["Layers"] == [f"sha256:{d}" for d in rec.layers]
