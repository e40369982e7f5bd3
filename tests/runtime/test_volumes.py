"""Named and anonymous volumes, `--mount`, `--tmpfs` and `--read-only`'s scratch tmpfs, against
docker's documented behaviour: a named volume outlives its container, an anonymous one goes with
`rm -v`/`--rm`, an empty volume is filled from the image, bad input is one line and 125."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from runtime.images import ImageConfig
from runtime.state import StateRoot
from runtime.volumes import (
    BIND,
    TMPFS,
    VOLUME,
    MountSpec,
    parse_mount_flag,
    parse_tmpfs_flag,
    resolve,
)
from unionfs.errors import UsageError

from .conftest import Strata


def test_mount_flag_takes_dockers_keys() -> None:
    assert parse_mount_flag("type=bind,source=/tmp,target=/data,readonly") == MountSpec(
        BIND, os.path.realpath("/tmp"), "/data", read_only=True
    )
    assert parse_mount_flag("src=cache,dst=/cache,volume-nocopy") == MountSpec(
        VOLUME, "cache", "/cache", nocopy=True
    )
    assert parse_mount_flag("type=tmpfs,destination=/scratch,tmpfs-size=1m") == MountSpec(
        TMPFS, "", "/scratch", options="size=1m"
    )
    assert parse_tmpfs_flag("/run:size=2m,mode=700,exec") == MountSpec(
        TMPFS, "", "/run", options="size=2m,mode=700,exec"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("type=bind,target=/x", "field Source must not be empty"),
        ("type=bind,source=/nonexistent,target=/x", "bind source path does not exist"),
        ("type=volume,source=v", "field Target must not be empty"),
        ("type=tmpfs,source=/tmp,target=/x", "field Source must not be specified"),
        ("type=nfs,target=/x", "mount type unknown"),
        ("type=volume,target=/x,bogus", "must be a key=value pair"),
        ("type=volume,target=/x,colour=red", "unexpected key 'colour'"),
        ("type=bind,source=/tmp,target=/x,readonly=maybe", "invalid value for readonly"),
        ("type=volume,source=a b,target=/x", "invalid characters"),
        ("type=tmpfs,target=/x,tmpfs-size=lots", "invalid size"),
        ("type=bind,source=/tmp,target=relative", "must be absolute"),
    ],
)
def test_bad_mount_flags_are_one_line_and_125(spec: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_mount_flag(spec)
    assert message in str(caught.value)
    assert caught.value.exit_code == 125


@pytest.mark.parametrize("spec", ["relative", "/x:bogus", "/x:size=big", "/:size=1m", "/x:mode=9"])
def test_bad_tmpfs_flags(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_tmpfs_flag(spec)


def test_image_volumes_become_anonymous_volumes_unless_mounted_otherwise(tmp_path: Path) -> None:
    root = StateRoot(tmp_path / "state")
    config = ImageConfig.from_oci({"config": {"Volumes": {"/data": {}, "/logs": {}}}})
    assert config.volumes == ("/data", "/logs")
    with root.lock():
        mounts, made = resolve(
            root,
            [MountSpec(VOLUME, "mine", "/data")],
            image_volumes=config.volumes,
            read_only_tmpfs=True,
        )
    by_target = {m.target: m for m in mounts}
    assert by_target["/data"].name == "mine"
    assert not by_target["/data"].anonymous
    assert by_target["/logs"].anonymous
    assert len(by_target["/logs"].name) == 64
    assert {t for t, m in by_target.items() if m.kind == TMPFS} == {"/tmp", "/run", "/var/tmp"}
    assert sorted(made) == sorted(["mine", by_target["/logs"].name])
    with pytest.raises(UsageError, match="duplicate mount point"):
        resolve(root, [MountSpec(VOLUME, "a1", "/x"), MountSpec(TMPFS, "", "/x")])


def test_named_volume_outlives_its_container_and_is_filled_from_the_image(
    strata: Strata, busybox: list[str]
) -> None:
    # /etc of the image is copied into the empty volume, owners and modes included
    done = strata.run(
        "run", "--name", "v1", "-v", "etcvol:/etc", *busybox, "/bin/sh", "-c",
        "cat /etc/passwd | head -1; echo kept > /etc/new",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("root:")
    data = strata.root / "volumes" / "etcvol" / "_data"
    assert (data / "new").read_text() == "kept\n"
    assert (data / "passwd").stat().st_uid == 0
    assert strata.inspect("v1")["Mounts"] == [{
        "Type": "volume", "Name": "etcvol", "Driver": "local", "Source": str(data),
        "Destination": "/etc", "Mode": "", "RW": True, "Propagation": "",
    }]  # fmt: skip
    assert strata.run("rm", "-v", "v1").returncode == 0
    assert (data / "new").exists()  # a named volume stays after rm -v
    # a second container sees what the first wrote, and the image no longer fills it
    done = strata.run("run", "--rm", "-v", "etcvol:/etc:ro", *busybox, "/bin/cat", "/etc/new")
    assert (done.returncode, done.stdout) == (0, "kept\n"), done.stderr
    done = strata.run(
        "run", "--rm", "--mount", "source=etcvol,target=/etc,readonly", *busybox,
        "/bin/sh", "-c", "echo x > /etc/new 2>/dev/null || echo ro",
    )  # fmt: skip
    assert done.stdout == "ro\n", done.stderr
    listed = strata.run("volume", "ls", check=True).stdout.splitlines()
    assert listed == ["DRIVER    VOLUME NAME", "local     etcvol"]
    (info,) = json.loads(strata.run("volume", "inspect", "etcvol", check=True).stdout)
    assert info["Mountpoint"] == str(data)
    assert (info["Driver"], info["Scope"], info["Name"]) == ("local", "local", "etcvol")
    assert strata.run("volume", "rm", "etcvol", check=True).stdout == "etcvol\n"
    assert not data.exists()


def test_a_volume_in_use_is_not_removed_and_nocopy_leaves_it_empty(
    strata: Strata, busybox: list[str]
) -> None:
    assert strata.run("volume", "create", "--label", "a=b", "keep", check=True).stdout == "keep\n"
    done = strata.run(
        "create", "--name", "c1", "-v", "keep:/etc:nocopy", *busybox, "/bin/true", check=True
    )
    cid = done.stdout.strip()
    gone = strata.run("volume", "rm", "keep")
    assert gone.returncode == 1
    assert gone.stderr.strip() == f"strata: remove keep: volume is in use - [{cid}]"
    assert strata.run("volume", "ls", "-q", "-f", "label=a=b").stdout == "keep\n"
    assert strata.run("volume", "ls", "-q", "-f", "dangling=true").stdout == ""
    assert strata.run("start", "-a", "c1").returncode == 0
    assert os.listdir(strata.root / "volumes" / "keep" / "_data") == []
    assert strata.run("rm", "c1").returncode == 0
    assert strata.run("volume", "ls", "-q", "-f", "dangling=true").stdout == "keep\n"
    # prune keeps named volumes unless -a, as docker 23's
    assert "keep" not in strata.run("volume", "prune", "-f", check=True).stdout
    pruned = strata.run("volume", "prune", "-a", "-f", check=True).stdout
    assert pruned.startswith("Deleted Volumes:\nkeep\n")
    assert strata.run("volume", "ls", "-q").stdout == ""


def test_anonymous_volumes_go_with_rm_v_and_rm(strata: Strata, busybox: list[str]) -> None:
    done = strata.run(
        "run", "--rm", "-v", "/scratch", *busybox, "/bin/sh", "-c", "echo x>/scratch/f"
    )
    assert done.returncode == 0, done.stderr
    assert strata.run("volume", "ls", "-q").stdout == ""
    strata.run("run", "--name", "a1", "-v", "/scratch", *busybox, "/bin/true", check=True)
    strata.run("run", "--name", "a2", "-v", "/scratch", *busybox, "/bin/true", check=True)
    assert len(strata.run("volume", "ls", "-q").stdout.split()) == 2
    strata.run("rm", "a1", check=True)  # without -v: kept, as docker keeps it
    strata.run("rm", "-v", "a2", check=True)
    (left,) = strata.run("volume", "ls", "-q").stdout.split()
    assert "Deleted Volumes:\n" + left in strata.run("volume", "prune", "-f", check=True).stdout


def test_tmpfs_and_read_only_scratch_dirs(strata: Strata, busybox: list[str]) -> None:
    done = strata.run(
        "run", "--rm", "--read-only", "--tmpfs", "/cache:size=1m,mode=700", *busybox,
        "/bin/sh", "-c",
        "for d in /tmp /run /var/tmp /cache; do touch $d/x && echo $d; done;"
        " touch /etc/x 2>/dev/null || echo refused; grep -E ' /(cache|tmp) ' /proc/mounts",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:5] == ["/tmp", "/run", "/var/tmp", "/cache", "refused"]
    cache = next(line for line in lines if " /cache " in line)
    assert "size=1024k" in cache
    assert "noexec" in cache
    assert "mode=700" in cache
    tmp = next(line for line in lines if " /tmp " in line)
    assert "nosuid,nodev" in tmp
    assert "noexec" not in tmp  # podman's --read-only-tmpfs: exec allowed
    done = strata.run(
        "run", "--rm", "--read-only", "--read-only-tmpfs=false", *busybox, "/bin/sh", "-c",
        "touch /tmp/x 2>/dev/null || echo refused",
    )  # fmt: skip
    assert done.stdout == "refused\n", done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["-v", "a:/x:bogus"],
        ["-v", "b$d:/x"],
        ["--mount", "type=bind,target=/x"],
        ["--mount", "type=volume,target=/x,colour=red"],
        ["--tmpfs", "x"],
        ["-v", "dup:/x", "--tmpfs", "/x"],
    ],
)
def test_bad_mounts_change_nothing(strata: Strata, busybox: list[str], args: list[str]) -> None:
    done = strata.run("run", "--rm", *args, *busybox, "/bin/true")
    assert done.returncode == 125
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert strata.container_ids() == []
    assert not os.listdir(strata.root / "volumes") if (strata.root / "volumes").exists() else True


def test_volume_commands_refuse_bad_input(strata: Strata) -> None:
    bad = strata.run("volume", "create", "-")
    assert (bad.returncode, len(bad.stderr.splitlines())) == (125, 1)
    assert strata.run("volume", "create", "--opt", "type=nfs", "v1").returncode == 125
    missing = strata.run("volume", "inspect", "nothere")
    assert (missing.returncode, missing.stdout.strip()) == (1, "[]")
    assert strata.run("volume", "rm", "nothere").returncode == 1
    assert strata.run("volume", "rm", "-f", "nothere").returncode == 0
    assert strata.run("volume", "ls", "-f", "colour=red").returncode == 125
    assert strata.run("volume", "ls", "-q").stdout == ""


def test_an_images_volume_gets_an_anonymous_volume_filled_from_the_image(
    strata: Strata, tmp_path: Path
) -> None:
    from tests.helpers.images import BUSYBOX_DOCKER_ARCHIVE

    if not BUSYBOX_DOCKER_ARCHIVE.exists():
        pytest.skip(f"{BUSYBOX_DOCKER_ARCHIVE} missing")
    strata.run("load", "-i", str(BUSYBOX_DOCKER_ARCHIVE), check=True)
    (image,) = json.loads(strata.run("images", "--format", "json", check=True).stdout)
    context = tmp_path / "ctx"
    context.mkdir()
    (context / "Dockerfile").write_text(
        f"FROM {image['RepoTags'][0]}\nRUN mkdir /data && echo seed > /data/seed\nVOLUME /data\n"
    )
    strata.run("build", "-q", "-t", "withvol", str(context), check=True, timeout=300)
    done = strata.run(
        "run", "--name", "iv", "withvol", "/bin/sh", "-c", "cat /data/seed; echo new > /data/new"
    )
    assert (done.returncode, done.stdout) == (0, "seed\n"), done.stderr
    mounts = strata.inspect("iv")["Mounts"]
    assert isinstance(mounts, list)
    (mount,) = mounts
    assert mount["Destination"] == "/data"
    assert (Path(mount["Source"]) / "new").read_text() == "new\n"
    # -v on the same target replaces the image's volume; --rm removes the anonymous one
    strata.run("run", "--rm", "-v", "named:/data", "withvol", "/bin/true", check=True)
    assert sorted(strata.run("volume", "ls", "-q").stdout.split()) == sorted(
        ["named", mount["Name"]]
    )
    strata.run("rm", "-v", "iv", check=True)
    assert strata.run("volume", "ls", "-q").stdout.split() == ["named"]


def test_volume_commands_match_podmans(strata: Strata, tmp_path: Path) -> None:
    """podman 4.3 in a private store: the same `volume ls` rows, the layout under the root,
    docker's `volume inspect` fields with the same values, and the same refusals."""
    from tests.helpers.podman import PrivatePodman

    with PrivatePodman(tmp_path) as podman:
        for run in (podman.run, lambda *a: strata.run(*a, check=True).stdout):
            assert run("volume", "create", "--label", "a=b", "v1") == "v1\n"
        # the same table; the columns as docker's tabwriter pads them (podman pads wider)
        assert [line.split() for line in strata.run("volume", "ls").stdout.splitlines()] == [
            line.split() for line in podman.run("volume", "ls").splitlines()
        ]
        (theirs,) = json.loads(podman.run("volume", "inspect", "v1"))
        (ours,) = json.loads(strata.run("volume", "inspect", "v1", check=True).stdout)
        for key in ("Name", "Driver", "Labels", "Scope", "Options"):
            assert ours[key] == theirs[key], key
        relative = Path(theirs["Mountpoint"]).relative_to(podman.root)
        assert Path(ours["Mountpoint"]).relative_to(strata.root) == relative
        for args in (["volume", "rm", "nothere"], ["volume", "create", "-"]):
            mine = strata.run(*args)
            done = subprocess.run(
                [*podman.base, *args], capture_output=True, text=True, check=False
            )
            assert (mine.returncode != 0, done.returncode != 0) == (True, True), args
            if args[1] == "rm":
                assert mine.returncode == done.returncode == 1


def test_filling_a_volume_copies_symlinks_owners_and_modes_without_following(
    strata: Strata, busybox: list[str], tmp_path: Path
) -> None:
    top = tmp_path / "top"
    (top / "data/sub").mkdir(parents=True)
    (top / "data/sub/file").write_text("in the image\n")
    os.chown(top / "data/sub/file", 1234, 5678)
    os.chmod(top / "data/sub", 0o750)
    os.symlink("/etc/shadow", top / "data/escape")  # absolute: means the container's
    os.symlink("..", top / "data/sub/up")
    done = strata.run(
        "run", "--rm", "-v", "filled:/data", "--lower", str(top), *busybox, "/bin/true"
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = strata.root / "volumes/filled/_data"
    assert os.readlink(data / "escape") == "/etc/shadow"
    assert os.readlink(data / "sub/up") == ".."
    st = os.stat(data / "sub/file")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert (data / "sub/file").read_text() == "in the image\n"
    assert os.stat(data / "sub").st_mode & 0o777 == 0o750
    assert sorted(os.listdir(data)) == ["escape", "sub"]


def test_image_config_keeps_volumes_labels_and_stop_signal() -> None:
    config = ImageConfig.from_oci(
        {"config": {"Volumes": {"/d": {}}, "Labels": {"a": "b"}, "StopSignal": "SIGUSR1"}}
    )
    assert (config.volumes, config.labels, config.stop_signal) == (
        ("/d",), (("a", "b"),), "SIGUSR1"
    )  # fmt: skip
    assert ImageConfig.from_json(config.to_json()) == config
