"""Loading the busybox test image (both archive forms), digest checks, the store's commands.

Loading needs no root; running containers needs root and FUSE (the `strata` fixture skips).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from images.load import LoadError, import_rootfs, load
from images.store import ImageStore, layer_size
from tests.helpers.images import BUSYBOX_DOCKER_ARCHIVE, BUSYBOX_OCI_ARCHIVE
from tests.runtime.conftest import Strata

from .hostile import layer_tar, member
from .test_hostile import _snapshot

IMAGE_ID = "3d1c289ad1a5d8c3658fb1563c193b1ab0cb6c81c146fbce02e24a1c80993931"
DIFF_IDS = ("3c69ab86", "c84646e3", "728a2e09", "cfd73606")
ARCHIVES = {"oci": BUSYBOX_OCI_ARCHIVE, "docker": BUSYBOX_DOCKER_ARCHIVE}


def _archive(form: str) -> Path:
    path = ARCHIVES[form]
    if not path.exists():
        pytest.skip(f"test image {path} is missing")
    return path


@pytest.mark.parametrize("form", sorted(ARCHIVES))
def test_load_busybox(tmp_path: Path, form: str) -> None:
    store = ImageStore(tmp_path / "root")
    said: list[str] = []
    (rec,) = load(store, _archive(form), say=said.append)
    assert said == ["Loaded image: localhost/uniontest:1"]
    assert rec.id == IMAGE_ID
    assert tuple(d[:8] for d in rec.layers) == DIFF_IDS
    assert rec.tags == ("localhost/uniontest:1",)
    assert rec.runtime_config.env == ("PATH=/bin", "FOO=bar")
    assert store.get("uniontest:1").id == IMAGE_ID
    assert store.get("3d1c28").id == IMAGE_ID
    assert store.find("uniontest") is None  # :latest
    base, l2, _, l4 = (store.layer_path(d) for d in rec.layers)
    # whiteouts and opaque markers stay as the files the union reads
    assert (l2 / "etc/.wh.motd").is_file()
    assert (l2 / "opt/tree/.wh..wh..opq").is_file()
    assert (l4 / "opt/.wh.added.txt").is_file()
    assert os.getxattr(base / "opt/xattr", "user.pmp") == b"hello"
    assert (base / "opt/suid").stat().st_mode & 0o7777 == 0o4755
    assert (base / "opt/h1").stat().st_ino == (base / "opt/h2").stat().st_ino
    assert (l2 / "etc/group").stat().st_ino == (l2 / "opt/group-hardlink").stat().st_ino
    assert os.readlink(base / "opt/motd-link") == "../etc/motd"
    if os.geteuid() == 0:
        assert (base / "opt/keep/k").stat().st_uid == 65534
    # both forms are the same image: loading the other one adds nothing
    other = _archive("docker" if form == "oci" else "oci")
    layers_before = _snapshot(store.layers_dir)
    (again,) = load(store, other, say=said.append)
    assert again.id == IMAGE_ID
    assert _snapshot(store.layers_dir) == layers_before
    assert len(store.images()) == 1
    assert os.listdir(store.tmp_dir) == []


def _flip_byte(src: Path, dst: Path, member_name_part: str) -> None:
    shutil.copyfile(src, dst)
    with tarfile.open(src) as tar:
        info = max(
            (m for m in tar.getmembers() if member_name_part in m.name and m.isreg()),
            key=lambda m: m.size,
        )
    offset = info.offset_data + info.size // 2
    with open(dst, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


@pytest.mark.parametrize(("form", "part"), [("docker", ".tar"), ("oci", "blobs/")])
def test_corrupted_archive_rejected(tmp_path: Path, form: str, part: str) -> None:
    store = ImageStore(tmp_path / "root")
    bad = tmp_path / "bad.tar"
    _flip_byte(_archive(form), bad, part)
    store.ensure()
    before = _snapshot(store.path)
    with pytest.raises(LoadError, match=r"does not match|cannot read|not a valid tar"):
        load(store, bad, say=lambda _: None)
    assert _snapshot(store.path) == before


def test_tag_rmi_prune(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    load(store, _archive("oci"), say=lambda _: None)
    store.tag("localhost/uniontest:1", "other:2")
    assert store.get("other:2").tags == ("localhost/uniontest:1", "localhost/other:2")
    # an image with only the base layer shares it
    import_tar = tmp_path / "rootfs.tar"
    import_tar.write_bytes(layer_tar([member("hello", data=b"hi\n")]))
    small = import_rootfs(store, str(import_tar), "small", ['CMD ["/hello"]'])
    assert small.runtime_config.cmd == ("/hello",)
    assert store.get("small:latest").id == small.id
    assert (store.layer_path(small.layers[0]) / "hello").read_text() == "hi\n"
    # removing one of two tags only untags
    assert store.remove("other:2", force=False) == ["Untagged: localhost/other:2"]
    out = store.remove("uniontest:1", force=False)
    assert out[:2] == ["Untagged: localhost/uniontest:1", f"Deleted: sha256:{IMAGE_ID}"]
    assert len([line for line in out if line.startswith("Deleted layer")]) == 4
    assert store.layers() == [small.layers[0]]
    # prune frees nothing in use, but leftovers and unused layers go
    (store.tmp_dir / "leftover").mkdir()
    assert store.prune() == []
    assert os.listdir(store.tmp_dir) == []
    assert store.layers() == [small.layers[0]]
    store.remove(small.id[:12], force=False)
    assert store.layers() == []
    assert os.listdir(store.maps_dir) == []
    assert store.images() == []


def test_import_rejects_hostile_rootfs(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "root")
    bad = tmp_path / "bad.tar"
    bad.write_bytes(layer_tar([member("../x", data=b"x")]))
    with pytest.raises(LoadError, match=r"'\.\./x'"):
        import_rootfs(store, str(bad), "bad")
    assert store.images() == []
    assert store.layers() == []


# -- through the CLI and the runtime (root + FUSE) ---------------------------------------------

EXPECTED_SCRIPT = r"""
cat /etc/motd; tail -n1 /etc/passwd; ls -A /opt/tree; ls -A /opt/keep; cat /opt/keep/k2
test -e /opt/added.txt && echo added-present
cat /opt/h1 /opt/h2; stat -c '%h %a %s' /opt/h1 /opt/suid /opt/sparse
test "$(stat -c %i /etc/group)" = "$(stat -c %i /opt/group-hardlink)" && echo group-linked
stat -c '%h' /etc/group; test -p /opt/fifo && echo fifo
find / -xdev -name '.wh.*' | head -n1
echo end
"""

EXPECTED_OUTPUT = [
    "reborn",
    "appended",
    "n",
    "k2",
    "k2",
    "two-layer",
    "linked",
    "1 644 10",
    "1 4755 5",
    "1 644 1048580",
    "group-linked",
    "2",
    "fifo",
    "end",
]


@pytest.mark.parametrize("form", sorted(ARCHIVES))
def test_load_and_run(strata: Strata, form: str) -> None:
    archive = _archive(form)
    done = strata.run("load", "-i", str(archive), check=True)
    assert done.stdout == "Loaded image: localhost/uniontest:1\n"
    run = strata.run("run", "--rm", "localhost/uniontest:1", check=True)
    assert run.stdout.split() == ["FOO=bar", "reborn", "n"]
    run = strata.run("run", "--rm", IMAGE_ID[:12], "sh", "-c", EXPECTED_SCRIPT, check=True)
    assert run.stdout.splitlines() == EXPECTED_OUTPUT
    xattr = strata.run("run", "--rm", "uniontest:1", "getfattr", "-n", "user.pmp", "/opt/xattr")
    if xattr.returncode == 0:  # busybox may lack getfattr
        assert "hello" in xattr.stdout


def test_load_from_stdin_and_images_json(strata: Strata) -> None:
    archive = _archive("docker")
    with open(archive, "rb") as f:
        done = subprocess.run(
            strata.argv("load", "-q"), stdin=f, capture_output=True, text=True, check=False
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Loaded image: localhost/uniontest:1\n"
    rows = json.loads(strata.run("images", "--format", "json", check=True).stdout)
    assert [(r["Id"], r["RepoTags"], r["Layers"]) for r in rows] == [
        (f"sha256:{IMAGE_ID}", ["localhost/uniontest:1"], 4)
    ]
    table = strata.run("images", check=True).stdout.splitlines()
    assert table[1].split()[:3] == ["localhost/uniontest", "1", IMAGE_ID[:12]]
    inspect = json.loads(strata.run("image", "inspect", "uniontest:1", check=True).stdout)
    assert inspect[0]["Config"]["Env"] == ["PATH=/bin", "FOO=bar"]
    history = strata.run("history", "uniontest:1", check=True).stdout.splitlines()
    assert history[0].split()[:2] == ["IMAGE", "CREATED"]  # docker's header
    missing = strata.run("run", "--rm", "nosuch:1")
    assert missing.returncode == 125
    assert "no such image: nosuch:1" in missing.stderr
    bad = strata.run("load", "-i", str(strata.tmp / "nonexistent.tar"))
    assert bad.returncode == 125
    assert len(bad.stderr.splitlines()) == 1


def test_containers_share_layers(strata: Strata) -> None:
    strata.run("load", "-i", str(_archive("oci")), check=True)
    store = ImageStore(strata.root)
    layers_before = _snapshot(store.layers_dir)
    size_before = sum(layer_size(store.layers_dir / d) for d in store.layers())
    for name in ("c1", "c2"):
        strata.run(
            "run",
            "--name",
            name,
            "uniontest:1",
            "sh",
            "-c",
            f"echo {name} > /opt/mine; rm /etc/motd",
            check=True,
        )
    assert _snapshot(store.layers_dir) == layers_before
    assert sum(layer_size(store.layers_dir / d) for d in store.layers()) == size_before
    image_layers = [str(store.layer_path(d)) for d in reversed(store.get("uniontest:1").layers)]
    for name in ("c1", "c2"):
        cdir = strata.container_dir(name)
        config = json.loads((cdir / "config.json").read_text())
        assert config["layers"] == image_layers
        assert (cdir / "upper/opt/mine").read_text() == f"{name}\n"
    # rmi refuses while containers use the image; -f keeps the layers they use
    refused = strata.run("rmi", "uniontest:1")
    assert refused.returncode != 0
    assert "in use by container" in refused.stderr
    strata.run("rmi", "-f", "uniontest:1", check=True)
    assert store.images() == []
    assert _snapshot(store.layers_dir) == layers_before
    assert strata.run("prune").stdout == ""
    strata.run("rm", "c1", "c2", check=True)
    pruned = strata.run("image", "prune", check=True).stdout.splitlines()
    assert len(pruned) == 4
    assert store.layers() == []


def test_import_rootfs_and_run(strata: Strata, tmp_path: Path) -> None:
    """The busybox base layer is a plain rootfs tarball (GNU tar, `./` names, xattrs)."""
    archive = _archive("docker")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        base = tar.extractfile(manifest[0]["Layers"][0])
        assert base is not None
        rootfs = tmp_path / "rootfs.tar"
        rootfs.write_bytes(base.read())
    done = strata.run(
        "import", str(rootfs), "imported:1", "-c", "CMD /bin/echo imported", check=True
    )
    assert done.stdout.startswith("sha256:")
    run = strata.run("run", "--rm", "imported:1", check=True)
    assert run.stdout == "imported\n"
    run = strata.run("run", "--rm", "imported:1", "cat", "/etc/motd", check=True)
    assert run.stdout.strip()


def test_prune_spares_a_load_in_progress(tmp_path: Path) -> None:
    """Loads extract without the state root's lock; prune must not pull their staging away."""
    store = ImageStore(tmp_path / "root")
    store.ensure()
    (store.tmp_dir / "leftover-file").write_text("x")
    with store.staging() as staging:
        (staging / "partial").write_text("x")
        assert store.prune() == []
        assert (staging / "partial").exists()
        assert not (store.tmp_dir / "leftover-file").exists()
    assert os.listdir(store.tmp_dir) == []
