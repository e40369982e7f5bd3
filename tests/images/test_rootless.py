"""A user without root loads, pulls, builds, saves and removes images in their own store. These
commands run in the user's user namespace, so with subordinate ids the layers keep their owners
(as podman's rootless storage); without them every file belongs to the user, root in the
container."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.images import BUSYBOX_OCI_ARCHIVE
from tests.runtime.conftest import Strata
from tests.runtime.test_rootless import rootless as rootless

from .test_load import IMAGE_ID, _archive


def test_rootless_load_and_run(rootless: tuple[Strata, list[str], bool]) -> None:
    strata, _, with_subids = rootless
    done = strata.run("load", "-i", str(_archive("oci")), check=True)
    assert done.stdout == "Loaded image: localhost/uniontest:1\n"
    layers = Path(strata.root) / "images/layers"
    assert all(os.stat(layers / d).st_uid == strata.user for d in os.listdir(layers))
    run = strata.run("run", "--rm", IMAGE_ID[:12], check=True)
    assert run.stdout.split() == ["FOO=bar", "reborn", "n"]
    run = strata.run("run", "--rm", "uniontest:1", "stat", "-c", "%u %a", "/opt/suid", check=True)
    assert run.stdout == "0 4755\n"
    # the first layer's 65534-owned file (a later layer removes it): kept through a subordinate
    # id, else the user's (root in the container)
    (kept,) = list(layers.glob("*/opt/keep/k"))
    owner = os.stat(kept).st_uid
    assert owner != strata.user if with_subids else owner == strata.user


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


ROOTLESS_DOCKERFILE = """\
FROM uniontest:1 AS base
RUN mkdir -p /data && chown 1000:1000 /data && chmod 700 /data
FROM base AS build
RUN --mount=type=cache,target=/cache,uid=1000 echo made > /built && chown 1001:1002 /built
FROM base
COPY --from=build /built /data/built
COPY --chown=1000:1000 hello.txt /data/hello.txt
USER 1000:1000
WORKDIR /data/work
RUN echo from-app > /data/by-app && id -u > /data/uid
CMD ["cat", "/data/by-app"]
"""


def _layer_trees(
    strata: Strata, ref: str
) -> list[list[tuple[str, bytes, int, int, int, int, str]]]:
    """The image's layers as their tars list them: name, type, mode, owner, size, link."""
    import io
    import tarfile

    from images.store import ImageStore
    from images.tarsplit import rebuild

    store = ImageStore(Path(strata.root))
    trees = []
    for diff_id in store.get(ref).layers:
        data = b"".join(rebuild(store.map_path(diff_id), store.layer_path(diff_id)))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            trees.append([(m.name, m.type, m.mode, m.uid, m.gid, m.size, m.linkname) for m in tar])
    return trees


def test_rootless_build_keeps_owners_as_a_root_build_does(
    rootless: tuple[Strata, list[str], bool], strata: Strata
) -> None:
    """The whole build runs in the user's user namespace (as `buildah unshare`): with
    subordinate ids a RUN as another user, a chown and `COPY --chown` give the layers the same
    owners as the same build as root, and save, rmi and prune handle files of those ids."""
    user, _, with_subids = rootless
    ctx = Path(user.tmp) / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(ROOTLESS_DOCKERFILE)
    (ctx / "hello.txt").write_text("hi\n")
    for who in (user, strata):
        who.run("load", "-q", "-i", str(_archive("oci")), check=True)
    if not with_subids:
        # only the user's own id is mapped: a chown to another id fails the RUN, in one line
        done = user.run("build", "-t", "app:1", str(ctx))
        assert done.returncode == 1
        assert done.stderr.splitlines()[-1].startswith("strata: Dockerfile:2: RUN /bin/sh -c")
        assert done.stderr.endswith(": exit status 1\n")
        assert user.container_ids() == []
        return
    layers = Path(user.root) / "images/layers"
    loaded = set(os.listdir(layers))
    built = user.run("build", "-t", "app:1", str(ctx), check=True)
    assert built.stdout.splitlines()[-1] == "Successfully tagged localhost/app:1"
    strata.run("build", "-t", "app:1", str(ctx), check=True)
    assert _layer_trees(user, "app:1") == _layer_trees(strata, "app:1")
    run = user.run("run", "--rm", "app:1", check=True)
    assert run.stdout == "from-app\n"
    shown = user.run(
        "run", "--rm", "app:1", "stat", "-c", "%n %u %g %a",
        "/data", "/data/built", "/data/hello.txt", "/data/by-app", "/data/uid",
    )  # fmt: skip
    assert shown.stdout.splitlines() == [
        "/data 1000 1000 700",
        "/data/built 1001 1002 644",
        "/data/hello.txt 1000 1000 644",
        "/data/by-app 1000 1000 644",
        "/data/uid 1000 1000 644",
    ], shown.stderr
    # on disk they belong to subordinate ids: save reads them, rmi and prune remove them
    out = Path(user.env["HOME"]) / "app.tar"
    user.run("save", "-o", str(out), "app:1", check=True)
    assert os.stat(out).st_uid == user.user
    assert len(os.listdir(layers)) > len(loaded)
    user.run("rmi", "app:1", check=True)
    user.run("image", "prune", check=True)
    assert set(os.listdir(layers)) == loaded
    assert user.run("load", "-q", "-i", str(out), check=True).stdout.startswith("Loaded image")
    assert user.run("run", "--rm", "app:1", check=True).stdout == "from-app\n"
    user.run("rmi", "app:1", check=True)
    assert user.container_ids() == []


NO_USERNS = """\
import errno, os, sys
import pyseccomp as sc
f = sc.SyscallFilter(sc.ALLOW)  # a sandbox as docker's default profile: no unshare without root
f.add_rule(sc.ERRNO(errno.EPERM), "unshare")
f.load()
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_rootless_build_without_user_namespaces_says_why_in_one_line(
    rootless: tuple[Strata, list[str], bool],
) -> None:
    """Where a user may not make a user namespace (here a seccomp filter, as in docker's
    default profile), a rootless build, load or pull ends with one line saying what it needs."""
    import subprocess
    import sys

    strata, _, _ = rootless
    ctx = Path(strata.tmp) / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM uniontest:1\nRUN true\n")
    for args in (["build", str(ctx)], ["load", "-i", str(_archive("oci"))]):
        done = subprocess.run(
            [sys.executable, "-c", NO_USERNS, *strata.argv(*args)],
            capture_output=True, text=True, env=strata.env, user=strata.user,
            group=strata.group, extra_groups=[], stdin=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        assert done.returncode == 125, done.stderr
        assert done.stderr.startswith(
            "strata: rootless: cannot enter a user namespace (Operation not permitted): strata"
            " needs unprivileged user namespaces"
        ), done.stderr
        assert len(done.stderr.splitlines()) == 1
    assert not (strata.root / "images/layers").exists() or not os.listdir(
        strata.root / "images/layers"
    )
