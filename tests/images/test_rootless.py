"""A user without root loads the busybox image into their own store and runs it (owners are
not kept: the files belong to the user, who is root in the container)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.images import BUSYBOX_OCI_ARCHIVE
from tests.runtime.conftest import Strata
from tests.runtime.test_rootless import rootless as rootless

from .test_load import IMAGE_ID, _archive


def test_rootless_load_and_run(rootless: tuple[Strata, list[str], bool]) -> None:
    strata, _, _ = rootless
    done = strata.run("load", "-i", str(_archive("oci")), check=True)
    assert done.stdout == "Loaded image: localhost/uniontest:1\n"
    layers = Path(strata.root) / "images/layers"
    assert all(os.stat(layers / d).st_uid == strata.user for d in os.listdir(layers))
    run = strata.run("run", "--rm", IMAGE_ID[:12], check=True)
    assert run.stdout.split() == ["FOO=bar", "reborn", "n"]
    run = strata.run("run", "--rm", "uniontest:1", "stat", "-c", "%u %a", "/opt/suid", check=True)
    assert run.stdout == "0 4755\n"


def test_rootless_commit_records_container_owners(rootless: tuple[Strata, list[str], bool]) -> None:
    """The upper's files belong to the user on disk, to root in the container: the committed
    layer must say root (the container's view), or the image would hand them to a stranger."""
    import io
    import tarfile

    from images.store import ImageStore
    from images.tarsplit import rebuild

    strata, _, _ = rootless
    strata.run("load", "-q", "-i", str(_archive("oci")), check=True)
    strata.run("run", "--name", "rc", "uniontest:1", "sh", "-c", "echo x > /opt/new", check=True)
    strata.run("commit", "rc", "rc:1", check=True)
    store = ImageStore(Path(strata.root))
    diff_id = store.get("rc:1").layers[-1]
    data = b"".join(rebuild(store.map_path(diff_id), store.layer_path(diff_id)))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        owners = {m.name: (m.uid, m.gid) for m in tar.getmembers()}
    assert owners["opt/new"] == (0, 0), owners
    run = strata.run("run", "--rm", "rc:1", "stat", "-c", "%u %g", "/opt/new", check=True)
    assert run.stdout == "0 0\n"
    strata.run("rm", "rc", check=True)


def test_rootless_import_of_a_rootfs_tarball_with_device_nodes(
    rootless: tuple[Strata, list[str], bool],
) -> None:
    """Every mmdebstrap/debootstrap tarball holds /dev nodes, which only root may make: a
    rootless import skips them with one warning naming how many (it stopped with "device node
    (needs root)"), as podman does, and the image runs."""
    import io
    import tarfile

    from .hostile import member

    strata, _, _ = rootless
    with open("/bin/busybox", "rb") as f:
        busybox = f.read()
    sh = member("bin/busybox", data=busybox, mode=0o755)
    devices = []
    for name, (major, minor) in {"dev/null": (1, 3), "dev/zero": (1, 5), "dev/tty": (5, 0)}.items():
        dev = member(name, tarfile.CHRTYPE, mode=0o666)
        dev[0].devmajor, dev[0].devminor = major, minor
        devices.append(dev)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in [
            member("bin", tarfile.DIRTYPE, mode=0o755),
            sh,
            member("bin/sh", tarfile.SYMTYPE, link="busybox"),
            member("dev", tarfile.DIRTYPE, mode=0o755),
            *devices,
        ]:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    rootfs = Path(strata.env["HOME"]) / "rootfs.tar"
    rootfs.write_bytes(buf.getvalue())
    os.chown(rootfs, strata.user or 0, strata.group or 0)
    done = strata.run("import", str(rootfs), "devs:1")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("\n") == 1
    assert "skipped 3 device node(s)" in done.stderr
    run = strata.run("run", "--rm", "devs:1", "/bin/sh", "-c", "echo ran", check=True)
    assert run.stdout == "ran\n"


def test_rootless_run_pulls_with_the_users_own_login(
    rootless: tuple[Strata, list[str], bool],
) -> None:
    """A user logs in (to their default auth file, ~/.config/containers/auth.json without
    $XDG_RUNTIME_DIR), then `strata run` pulls the image it lacks. The run looks the image up
    inside the user namespace it entered, where the kernel says uid 0: the credentials must
    still be the user's, not root's /run/containers/0/auth.json."""
    import subprocess

    from tests.helpers.registry import RegistryServer, seed
    from tests.runtime.conftest import STRATA

    from .registry_fixtures import EXPECTED_RUN, REPO

    strata, _, _ = rootless
    conf = strata.tmp / "registries.conf"
    conf.write_text("unqualified-search-registries = []\n")
    os.chmod(conf, 0o644)
    strata.env["CONTAINERS_REGISTRIES_CONF"] = str(conf)
    strata.env.pop("REGISTRY_AUTH_FILE", None)
    with RegistryServer(strata.tmp / "registry", tls=True, users={"u": "pw"}) as reg:
        seed(reg, BUSYBOX_OCI_ARCHIVE, f"{REPO}:1")
        login = subprocess.run(
            [STRATA, "login", "-u", "u", "--password-stdin", reg.host],
            input="pw\n",
            capture_output=True,
            text=True,
            env=strata.env,
            user=strata.user,
            group=strata.group,
            extra_groups=[],
            timeout=60,
            check=False,
        )
        assert login.returncode == 0, login.stderr
        home = Path(strata.env["HOME"])
        assert (home / ".config/containers/auth.json").stat().st_uid == strata.user
        done = strata.run("run", "--rm", "-q", f"{reg.host}/{REPO}:1")
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == EXPECTED_RUN


def test_rootless_build_is_refused_in_one_line(rootless: tuple[Strata, list[str], bool]) -> None:
    strata, _, _ = rootless
    ctx = Path(strata.tmp) / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM uniontest:1\nRUN true\n")
    done = strata.run("build", str(ctx))
    assert done.returncode == 1
    assert done.stderr.startswith("strata: strata build needs root: its COPY and RUN steps")
    assert len(done.stderr.strip().splitlines()) == 1
