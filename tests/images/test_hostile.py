"""Hostile layers are rejected with an error naming the member, and the store is left as it was.

Each case is a docker archive generated here; the store sits beside a canary directory that a
successful escape would write into. No root needed (the device case pretends not to be root).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
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


def test_devices_are_skipped_with_one_warning_when_not_root(
    setup: tuple[ImageStore, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rootless, every mmdebstrap/debootstrap tarball's /dev nodes cannot be made: they are
    skipped and counted, as podman does, and the rest of the layer loads."""
    store, _ = setup
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    devices = []
    for name, (major, minor) in {"dev/null": (1, 3), "dev/zero": (1, 5), "dev/sda": (8, 0)}.items():
        dev = member(name, tarfile.BLKTYPE if name == "dev/sda" else tarfile.CHRTYPE, mode=0o666)
        dev[0].devmajor, dev[0].devminor = major, minor
        devices.append(dev)
    layer = layer_tar(
        [member("dev", tarfile.DIRTYPE, mode=0o755), *devices, member("f", data=b"x")]
    )
    archive = docker_archive(tmp_path / "dev.tar", [layer], tag="localhost/dev:1")
    (rec,) = load(store, archive, say=lambda _: None)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("strata: warning: ")
    assert "skipped 3 device node(s)" in err
    path = store.layer_path(rec.layers[0])
    assert sorted(os.listdir(path / "dev")) == []
    assert (path / "f").read_bytes() == b"x"


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
    extract.extract_layer(io.BytesIO(data), dest)
    assert os.readlink(dest / "etc/localtime") == "/usr/share/zoneinfo/UTC"
    assert os.readlink(dest / "up") == "../../.."
    assert os.stat(dest / "f").st_ino == os.stat(dest / "g").st_ino
    assert (dest / "f2").read_text() == "three"
    assert os.lstat(dest / "hl").st_ino == os.lstat(dest / "etc/localtime").st_ino
    assert (dest / "f").stat().st_mtime == 1_700_000_000


# ---------------------------------------------------------------------------------------------
# issue 12: metadata never lands outside the layer, bombs and broken tars are refused


def _extract(tmp_path: Path, data: bytes, **kwargs: object) -> Path:
    dest = tmp_path / "layer"
    dest.mkdir()
    extract.extract_layer(io.BytesIO(data), dest, **kwargs)  # type: ignore[arg-type]
    return dest


def test_a_replaced_directory_takes_its_metadata_with_it(tmp_path: Path) -> None:
    """A directory `x` (mode 04777) and then a symlink `x` to a host path: the directory's saved
    mode was applied through the symlink, making a host file setuid and world-writable."""
    canary = tmp_path / "canary"
    canary.mkdir(mode=0o700)
    (canary / "file").write_text("canary\n")
    os.chmod(canary / "file", 0o600)
    before = {p: os.stat(p) for p in (canary, canary / "file")}
    data = layer_tar(
        [
            member("x", tarfile.DIRTYPE, mode=0o4777),
            member("x", tarfile.SYMTYPE, link=str(canary / "file")),
            member("y", tarfile.DIRTYPE, mode=0o777),
            member("y", tarfile.SYMTYPE, link=str(canary)),
            member("z", tarfile.DIRTYPE, mode=0o4777),
            member("z", data=b"a file now", mode=0o640),
        ]
    )
    dest = _extract(tmp_path, data)
    for path, st in before.items():
        now = os.stat(path)
        assert (now.st_mode, now.st_uid, now.st_mtime_ns) == (st.st_mode, st.st_uid, st.st_mtime_ns)
    assert os.readlink(dest / "x") == str(canary / "file")
    assert os.readlink(dest / "y") == str(canary)
    assert stat.S_IMODE(os.lstat(dest / "z").st_mode) == 0o640  # its own mode, not the dir's


def _pax_sparse(name: str, realsize: int, blocks: list[tuple[int, bytes]]) -> bytes:
    """A GNU sparse member in PAX format 1.0 (what GNU tar writes with --sparse --format=pax):
    the map of data blocks, then the blocks, in the member's data area."""
    sparse_map = f"{len(blocks)}\n" + "".join(f"{off}\n{len(d)}\n" for off, d in blocks)
    head = sparse_map.encode()
    head += b"\0" * (-len(head) % tarfile.BLOCKSIZE)
    body = head + b"".join(d for _, d in blocks)
    info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    info.size = len(body)
    info.mtime = 1_700_000_000
    info.mode = 0o644
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(realsize),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(body))
        after = tarfile.TarInfo("after")
        after.size = 5
        tar.addfile(after, io.BytesIO(b"after"))
    return buf.getvalue()


def test_sparse_members_are_written_as_holes(tmp_path: Path) -> None:
    """A 20 GiB sparse member (a few KB in the archive) was written out as 20 GiB of zeros."""
    size = 20 << 30
    data = _pax_sparse("big", size, [(0, b"head"), (1 << 30, b"middle"), (size - 4, b"tail")])
    assert len(data) < 16 * 1024
    dest = _extract(tmp_path, data)
    st = os.stat(dest / "big")
    assert st.st_size == size
    assert st.st_blocks * 512 < 1 << 20  # holes, not zeros
    with open(dest / "big", "rb") as f:
        assert f.read(4) == b"head"
        f.seek(1 << 30)
        assert f.read(6) == b"middle"
        f.seek(size - 4)
        assert f.read() == b"tail"
    assert (dest / "after").read_bytes() == b"after"


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[ImageStore]:
    """An image store on a 32 MiB tmpfs of its own (root: it mounts), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], check=True)
    try:
        yield ImageStore(mnt / "root")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_decompression_bomb_stops_early_and_changes_nothing(
    small_store: ImageStore, tmp_path: Path
) -> None:
    """A gzip layer of a few hundred KB that expands to 256 MiB, loaded into a store with 32 MiB:
    the only guard was "each member fits the free space". Now the bytes written are counted
    against the free space less a reserve, and the load stops there."""
    good = docker_archive(tmp_path / "good.tar", [layer_tar([member("ok", data=b"ok\n")])])
    load(small_store, good, say=lambda _: None)
    zeros = layer_tar([member(f"zeros{i}", data=b"\0" * (16 << 20)) for i in range(16)])
    bomb = gzip.compress(zeros, compresslevel=9)
    assert len(bomb) < 1 << 20
    archive = docker_archive(tmp_path / "bomb.tar", [bomb], tag="localhost/bomb:1")
    before = _snapshot(small_store.path)
    free = os.statvfs(small_store.path).f_bavail
    with pytest.raises(LoadError, match="expands beyond") as err:
        load(small_store, archive, say=lambda _: None)
    assert "\n" not in str(err.value)
    assert _snapshot(small_store.path) == before
    assert os.statvfs(small_store.path).f_bavail == free  # nothing kept


def test_the_limit_can_be_set(
    setup: tuple[ImageStore, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, _ = setup
    archive = docker_archive(
        tmp_path / "4m.tar", [layer_tar([member("f", data=b"x" * (4 << 20))])], tag="localhost/m:1"
    )
    before = _snapshot(store.path)
    monkeypatch.setenv("STRATA_MAX_LAYER_SIZE", "2m")
    with pytest.raises(LoadError, match="expands beyond 1048576 bytes"):
        load(store, archive, say=lambda _: None)
    assert _snapshot(store.path) == before
    monkeypatch.setenv("STRATA_MAX_LAYER_SIZE", "lots")
    with pytest.raises(LoadError, match="STRATA_MAX_LAYER_SIZE=lots: expected a size"):
        load(store, archive, say=lambda _: None)
    monkeypatch.setenv("STRATA_MAX_LAYER_SIZE", "16M")
    assert load(store, archive, say=lambda _: None)


def test_extraction_counts_bytes_before_writing_them(tmp_path: Path) -> None:
    data = layer_tar([member("a", data=b"x" * 1000), member("b", data=b"y" * 1000)])
    with pytest.raises(extract.LayerError, match="'b': the layer expands beyond 1500 bytes"):
        _extract(tmp_path, data, limit=1500)
    assert not (tmp_path / "layer/b").exists()


def test_a_tar_broken_in_the_middle_is_refused(
    setup: tuple[ImageStore, Path], tmp_path: Path
) -> None:
    """A header with a bad checksum after the first member: tarfile ended the archive there and
    the image silently lacked everything after it; podman says "invalid tar header"."""
    store, _ = setup
    data = bytearray(
        layer_tar([member("first", data=b"1"), member("second", data=b"2"), member("third")])
    )
    second = data.index(b"second")
    data[second + 148 : second + 156] = b"0000000\0"  # the header checksum field
    archive = docker_archive(tmp_path / "broken.tar", [bytes(data)])
    before = _snapshot(store.path)
    with pytest.raises(LoadError, match="invalid tar header") as err:
        load(store, archive, say=lambda _: None)
    assert "\n" not in str(err.value)
    assert _snapshot(store.path) == before


def test_the_unions_private_xattrs_are_dropped_from_layers(tmp_path: Path) -> None:
    """A layer cannot bring metacopy, origin or opaque markers of the union: a root extraction
    would set them (trusted.* is settable by root) and the union would honour them."""
    warnings: list[str] = []
    root = member(".", tarfile.DIRTYPE, mode=0o755)
    root[0].pax_headers = {"SCHILY.xattr.trusted.strata.metacopy-layer": "y"}
    f = member("f", data=b"0123456789")
    f[0].pax_headers = {
        "SCHILY.xattr.trusted.strata.metacopy": "etc/shadow",
        "SCHILY.xattr.user.strata.origin": "x",
        "SCHILY.xattr.user.keep": "kept",
    }
    d = member("d", tarfile.DIRTYPE, mode=0o755)
    d[0].pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y"}
    dest = _extract(tmp_path, layer_tar([root, f, d]), warn=warnings.append)
    assert os.getxattr(dest / "f", "user.keep") == b"kept"
    for path in (dest, dest / "f", dest / "d"):
        assert not [a for a in os.listxattr(path) if ".strata." in a or ".overlay." in a]
    assert warnings == [
        "dropped 4 xattr(s) private to the union (*.strata.*, *.overlay.*): an image cannot set them"
    ]


# ---------------------------------------------------------------------------------------------
# issue 12, finding 8: malformed manifests are one clear line, never "unexpected error"


def _manifest(files: dict[str, bytes]) -> list[dict[str, object]]:
    value = json.loads(files["manifest.json"])
    assert isinstance(value, list)
    return value


def _set_manifest(files: dict[str, bytes], value: object) -> None:
    files["manifest.json"] = json.dumps(value).encode()


def _layer_path(files: dict[str, bytes], path: str) -> None:
    manifest = _manifest(files)
    manifest[0]["Layers"] = [path]
    _set_manifest(files, manifest)


def _tag(files: dict[str, bytes], tag: str) -> None:
    manifest = _manifest(files)
    manifest[0]["RepoTags"] = [tag]
    _set_manifest(files, manifest)


MALFORMED: dict[str, tuple[Callable[[dict[str, bytes]], None], str]] = {
    "nested json": (
        lambda f: f.__setitem__("manifest.json", b"[" * 100_000),
        "manifest.json: invalid JSON (nested too deeply)",
    ),
    "dotdot layer path": (
        lambda f: _layer_path(f, "../../../etc/passwd"),
        "'../../../etc/passwd': not a path inside the archive",
    ),
    "absolute layer path": (
        lambda f: _layer_path(f, "/etc/passwd"),
        "'/etc/passwd': not a path inside the archive",
    ),
    "entry not an object": (lambda f: _set_manifest(f, ["x"]), "an entry is not a JSON object"),
    "no config": (
        lambda f: _set_manifest(f, [{"Layers": []}]),
        "manifest.json: 'Config' missing or not a JSON string",
    ),
    "layers not a list": (
        lambda f: _set_manifest(f, [{**_manifest(f)[0], "Layers": "x"}]),
        "'Layers' missing or not a JSON array",
    ),
    "tag with dotdot": (
        lambda f: _tag(f, "localhost/../../../x:1"),
        "invalid image reference 'localhost/../../../x:1'",
    ),
    "invalid tag": (lambda f: _tag(f, "Not A Tag!"), "invalid image reference 'Not A Tag!'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_archives_are_one_line(
    setup: tuple[ImageStore, Path], tmp_path: Path, case: str
) -> None:
    store, _ = setup
    mangle, message = MALFORMED[case]
    archive = docker_archive(
        tmp_path / "bad.tar", [layer_tar([member("f", data=b"x")])], mangle=mangle
    )
    before = _snapshot(store.path)
    tags = sorted(t for r in store.images() for t in r.tags)
    with pytest.raises(LoadError) as err:
        load(store, archive, say=lambda _: None)
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert err.value.exit_code == 125
    assert _snapshot(store.path) == before
    assert sorted(t for r in store.images() for t in r.tags) == tags


def _oci_layout(path: Path, *, layer_size_delta: int = 0) -> Path:
    """A one-layer OCI image layout; the layer descriptor's size is off by `layer_size_delta`."""
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}", len(data)

    layer = layer_tar([member("f", data=b"x")])
    layer_digest, layer_size = blob(layer)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    ).encode()
    config_digest, config_size = blob(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"digest": config_digest, "size": config_size},
            "layers": [{"digest": layer_digest, "size": layer_size + layer_size_delta}],
        }
    ).encode()
    manifest_digest, manifest_size = blob(manifest)
    (path / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (path / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "digest": manifest_digest,
                        "size": manifest_size,
                        "annotations": {"org.opencontainers.image.ref.name": "localhost/oci:1"},
                    }
                ],
            }
        )
    )
    return path


def test_a_wrong_oci_descriptor_size_is_refused(
    setup: tuple[ImageStore, Path], tmp_path: Path
) -> None:
    store, _ = setup
    before = _snapshot(store.path)
    with pytest.raises(LoadError, match="its descriptor says") as err:
        load(store, _oci_layout(tmp_path / "bad", layer_size_delta=-1), say=lambda _: None)
    assert "\n" not in str(err.value)
    assert _snapshot(store.path) == before
    (rec,) = load(store, _oci_layout(tmp_path / "good"), say=lambda _: None)
    assert rec.tags == ("localhost/oci:1",)


def _config(files: dict[str, bytes], change: dict[str, object]) -> None:
    """Replace the image config by one with `change` merged in (and a manifest naming it)."""
    name = str(_manifest(files)[0]["Config"])
    config = json.loads(files.pop(name))
    for key, value in change.items():
        if key.startswith("config."):
            config.setdefault("config", {})[key[7:]] = value
        else:
            config[key] = value
    raw = json.dumps(config).encode()
    new = f"{hashlib.sha256(raw).hexdigest()}.json"
    files[new] = raw
    manifest = _manifest(files)
    manifest[0]["Config"] = new
    _set_manifest(files, manifest)


BAD_CONFIGS: dict[str, tuple[dict[str, object], str]] = {
    "config a string": ({"config": "x"}, "config is not a JSON object"),
    "env a string": ({"config.Env": "PATH=/bin"}, "config.Env is not an array of strings"),
    "cmd of numbers": ({"config.Cmd": [1, 2]}, "config.Cmd is not an array of strings"),
    "user a number": ({"config.User": 1000}, "config.User is not a string"),
    "history strings": ({"history": ["x"]}, "history is not an array of objects"),
    "rootfs a string": ({"rootfs": "x"}, "rootfs.diff_ids is not a JSON array"),
    "created a number": ({"created": 1e400}, "created is not a string"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_mistyped_config_values_are_one_line(
    setup: tuple[ImageStore, Path], tmp_path: Path, case: str
) -> None:
    store, _ = setup
    change, message = BAD_CONFIGS[case]
    archive = docker_archive(
        tmp_path / "bad.tar",
        [layer_tar([member("f", data=b"x")])],
        mangle=lambda files: _config(files, change),
    )
    before = _snapshot(store.path)
    with pytest.raises(LoadError, match=message) as err:
        load(store, archive, say=lambda _: None)
    assert "\n" not in str(err.value)
    assert _snapshot(store.path) == before
