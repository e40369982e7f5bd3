"""The Debian example of issue 4: a bookworm minbase rootfs (mmdebstrap, with python3) imported
as an image, a Dockerfile FROM it that changes, deletes, replaces a directory, copies files and
sets ENV/CMD; built, run, saved (the layer tars hold the right whiteouts and opaque markers) and
rebuilt entirely from the cache.

Also measured, never asserted: the tar's size, the times of import, build and cached rebuild,
and the store's growth per step with each layer's size. They are printed (run with `-s`) as
lines starting with `debian-example:`.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from images.store import ImageStore, layer_size
from tests.helpers.images import DebianRootfs
from tests.runtime.conftest import Strata

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.fuse]

DOCKERFILE = """\
FROM debian-minbase:bookworm
# a file change, a deletion, a directory removed and made again (opaque in the layer)
RUN echo 'built by strata' >> /etc/issue && rm /etc/motd \\
 && rm -rf /usr/share/doc && mkdir -p /usr/share/doc/strata \\
 && echo 'only this now' > /usr/share/doc/strata/README
COPY app/ /opt/app/
# /bin is a symlink to usr/bin in bookworm: the file lands in /usr/bin
COPY greet /bin/greet
ENV GREETING="hello from strata" PYTHONDONTWRITEBYTECODE=1
CMD ["python3", "/opt/app/main.py"]
"""

MAIN_PY = """\
import os, pathlib
print(os.environ["GREETING"])
print(pathlib.Path("/opt/app/data.txt").read_text().strip())
print(open("/etc/issue").read().splitlines()[-1])
print("motd" if os.path.exists("/etc/motd") else "no motd")
print(sorted(os.listdir("/usr/share/doc")))
"""


def _store_bytes(store: ImageStore) -> int:
    """Bytes used by the store's layers (each inode once)."""
    return sum(layer_size(store.layer_path(d)) for d in store.layers())


def _disk_bytes(store: ImageStore) -> int:
    """Bytes used by all of the store (layers, tar maps, configs, records, the build cache)."""
    return layer_size(store.path)


def _layer_members(archive: Path) -> list[list[tarfile.TarInfo]]:
    """The members of each layer of an OCI archive written by `strata save`, base first."""
    with tarfile.open(archive) as outer:

        def blob(digest: str) -> bytes:
            member = outer.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
            assert member is not None
            return member.read()

        index = json.loads(outer.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        layers = []
        for desc in manifest["layers"]:
            path = archive.with_name(f"layer-{desc['digest'].split(':')[1][:12]}.tar")
            path.write_bytes(blob(desc["digest"]))
            _say(f"saved layer {desc['digest'][7:19]}: tar {desc['size']} bytes")
            with tarfile.open(path) as inner:
                layers.append(inner.getmembers())
            path.unlink()
        return layers


def _say(what: str) -> None:
    print(f"debian-example: {what}")


def test_debian_example(debian_rootfs: DebianRootfs, strata: Strata) -> None:
    store = ImageStore(strata.root)
    rootfs_tar = strata.tmp / "bookworm-minbase-python3.tar"
    tar = ["tar", "-C", str(debian_rootfs.path), "--numeric-owner", "--xattrs"]
    subprocess.run([*tar, "-cf", str(rootfs_tar), "."], check=True)
    _say(f"rootfs tar {rootfs_tar.stat().st_size} bytes")

    started = time.monotonic()
    strata.run("import", str(rootfs_tar), "debian-minbase:bookworm", check=True, timeout=600)
    seconds = time.monotonic() - started
    _say(f"import {seconds:.1f} s, store {_store_bytes(store)} bytes in layers")
    _say(f"store after import {_disk_bytes(store)} bytes on disk in all")
    rootfs_tar.unlink()
    base = store.get("debian-minbase:bookworm")

    ctx = strata.tmp / "ctx"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app/main.py").write_text(MAIN_PY)
    (ctx / "app/data.txt").write_text("data from the build context\n")
    (ctx / "greet").write_text("#!/bin/sh\necho greetings\n")
    os.chmod(ctx / "greet", 0o755)
    (ctx / "Dockerfile").write_text(DOCKERFILE)

    before, disk_before = _store_bytes(store), _disk_bytes(store)
    started = time.monotonic()
    first = strata.run("build", "-t", "debian-example:1", str(ctx), check=True, timeout=600)
    _say(f"first build {time.monotonic() - started:.1f} s")
    rec = store.get("debian-example:1")
    _say(f"store growth by the build {_store_bytes(store) - before} bytes in layers")
    _say(f"store growth by the build {_disk_bytes(store) - disk_before} bytes on disk in all")
    new_layers = rec.layers[len(base.layers) :]
    assert len(new_layers) == 3  # RUN, COPY, COPY
    for step, diff_id in zip(("RUN", "COPY app/", "COPY greet"), new_layers, strict=True):
        _say(f"layer {step}: {layer_size(store.layer_path(diff_id))} bytes")
    assert "Using cache" not in first.stdout

    run = strata.run("run", "--rm", "debian-example:1", check=True)
    assert run.stdout.splitlines() == [
        "hello from strata",
        "data from the build context",
        "built by strata",
        "no motd",
        "['strata']",
    ]
    greet = strata.run("run", "--rm", "debian-example:1", "greet", check=True)
    assert greet.stdout == "greetings\n"

    # the saved layers: whiteout, opaque marker, the changed and the copied files
    archive = strata.tmp / "debian-example.tar"
    strata.run("save", "debian-example:1", "-o", str(archive), check=True, timeout=600)
    layers = _layer_members(archive)
    assert len(layers) == len(rec.layers)
    run_layer = {m.name: m for m in layers[len(base.layers)]}
    assert "etc/.wh.motd" in run_layer
    assert run_layer["etc/.wh.motd"].size == 0
    assert "usr/share/doc/.wh..wh..opq" in run_layer
    assert "usr/share/doc/strata/README" in run_layer
    assert "etc/issue" in run_layer
    assert {n for n in run_layer if n.startswith("usr/share/doc/")} == {
        "usr/share/doc/.wh..wh..opq",
        "usr/share/doc/strata",
        "usr/share/doc/strata/README",
    }
    _say(f"RUN layer members: {' '.join(sorted(run_layer))}")
    copied = {m.name for m in layers[len(base.layers) + 1]}
    assert copied == {"opt", "opt/app", "opt/app/main.py", "opt/app/data.txt"}
    greet_layer = {m.name: m for m in layers[len(base.layers) + 2]}
    assert greet_layer["usr/bin/greet"].mode == 0o755
    archive.unlink()

    started = time.monotonic()
    again = strata.run("build", "-t", "debian-example:2", str(ctx), check=True, timeout=600)
    _say(f"cached rebuild {time.monotonic() - started:.1f} s")
    assert again.stdout.count("Using cache") == 5
    assert store.get("debian-example:2").id == rec.id
    _say(f"store total {_store_bytes(store)} bytes")
