"""Rootless: a real unprivileged user, created for the test and removed afterwards, runs
`strata` from this checkout's venv (Debian's /usr/bin/python3) in a user namespace.

The image's layers are copied and given to the user first: a rootless runtime can only show
files it owns (or that its subordinate ids own) under their real owners; that is how rootless
engines store images too.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.images import BUSYBOX_DOCKER_ARCHIVE
from tests.runtime.conftest import (
    STRATA,
    Strata,
    _pid_namespaces,
    check_no_leftovers,
    lowers_args,
    wait_for,
)
from tests.runtime.test_tty import Terminal

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def _userns_possible() -> str | None:
    if shutil.which("useradd") is None:
        return "useradd is missing"
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                return "user namespaces are disabled (user.max_user_namespaces = 0)"
    except OSError:
        pass
    try:
        with open("/proc/sys/kernel/unprivileged_userns_clone") as f:
            if f.read().strip() == "0":
                return "unprivileged user namespaces are disabled"
    except OSError:
        pass
    if os.stat("/dev/fuse").st_mode & 0o006 != 0o006:
        return "/dev/fuse is not usable by other users (chmod 0666 /dev/fuse)"
    return None


@pytest.fixture(params=["subids", "no-subids"])
def rootless(
    request: pytest.FixtureRequest, busybox_layers: list[Path]
) -> Iterator[tuple[Strata, list[str], bool]]:
    """A fresh user (with or without /etc/subuid ranges), its copy of the image, its `strata`."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create the test user")
    reason = _userns_possible()
    if reason:
        pytest.skip(reason)
    if request.param == "subids" and shutil.which("newuidmap") is None:
        pytest.skip("newuidmap is missing (apt install uidmap)")
    name = f"strt{secrets.token_hex(4)}"
    # not below tmp_path: pytest's base temp dir is private to root
    base = Path(tempfile.mkdtemp(prefix="strata-rootless-"))
    os.chmod(base, 0o755)
    home = base / "home"
    extra = [] if request.param == "subids" else ["-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0"]
    subprocess.run(
        ["useradd", "-M", "-d", str(home), "-s", "/bin/sh", *extra, name],
        check=True,
        capture_output=True,
    )
    before = _pid_namespaces()
    own = os.stat("/proc/self/ns/pid").st_ino
    handle: Strata | None = None
    try:
        user = pwd.getpwnam(name)
        home.mkdir()
        image = home / "image"
        image.mkdir()
        layers = []
        for i, layer in enumerate(busybox_layers):
            copy = image / f"layer{i}"
            subprocess.run(["cp", "-a", str(layer), str(copy)], check=True)
            layers.append(copy)
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(home)], check=True)
        env = {
            "HOME": str(home),
            "USER": name,
            "LOGNAME": name,
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
        }
        handle = Strata(
            root=home / ".local/share/strata", tmp=base, env=env,
            user=user.pw_uid, group=user.pw_gid,
        )  # fmt: skip
        yield handle, lowers_args(layers), request.param == "subids"
    finally:
        try:
            if handle is not None:
                handle.cleanup()
                check_no_leftovers(base, handle.root, before, own)
        finally:
            subprocess.run(["userdel", name], check=False, capture_output=True)
            shutil.rmtree(base, ignore_errors=True)


def test_rootless_run_maps_the_user_to_root_and_writes_land_in_its_upper(
    rootless: tuple[Strata, list[str], bool],
) -> None:
    strata, image, _ = rootless
    done = strata.run(
        "run", "--name", "r1", "--hostname", "rl", *image, "/bin/sh", "-c",
        "echo $$; hostname; id -u; cat /proc/self/uid_map | wc -l; echo w > /opt/w; rm /etc/motd;"
        " mount | head -1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["1", "rl", "0"]
    assert lines[4].startswith("strata on / type fuse.strata")
    assert strata.root == Path(strata.env["HOME"]) / ".local/share/strata"  # the XDG default
    upper = strata.container_dir("r1") / "upper"
    assert (upper / "opt/w").read_text() == "w\n"
    assert os.stat(upper / "opt/w").st_uid == strata.user  # root inside is the user outside
    assert not (upper / "etc/motd").exists() or os.stat(upper / "etc/motd").st_rdev == 0


def test_rootless_lifecycle_and_other_ids(rootless: tuple[Strata, list[str], bool]) -> None:
    strata, image, with_subids = rootless
    strata.run("run", "-d", "--name", "bg", "--network", "none", *image, "/bin/sleep", "60",
               check=True)  # fmt: skip
    inside = strata.run("exec", "bg", "/bin/sh", "-c", "ps -o pid,comm | grep -c sleep; id -u")
    assert inside.stdout.split() == ["1", "0"], inside.stderr
    other = strata.run("exec", "-u", "1000:1000", "bg", "/bin/sh", "-c", "id -u; touch /tmp/o")
    if with_subids:
        assert other.stdout == "1000\n", other.stderr
        st = os.stat(strata.container_dir("bg") / "upper/tmp/o")
        assert st.st_uid != strata.user  # a subordinate id on the host
    else:
        assert other.returncode == 125
        assert "not mapped in the user namespace" in other.stderr
    assert strata.run("stop", "-t", "2", "bg").returncode == 0
    assert strata.run("rm", "bg").returncode == 0  # also files owned by subordinate ids
    assert strata.container_ids() == []


def test_rootless_bridge_network_is_refused_clearly(
    rootless: tuple[Strata, list[str], bool],
) -> None:
    strata, image, _ = rootless
    done = strata.run("run", "--rm", "--network", "bridge", *image, "/bin/true")
    assert done.returncode == 125
    assert (
        done.stderr
        == "strata: --network bridge needs root (rootless: use pasta, slirp4netns, none or host)\n"
    )


def test_rootless_limits_without_a_delegated_cgroup_are_skipped_with_a_warning(
    rootless: tuple[Strata, list[str], bool],
) -> None:
    strata, image, _ = rootless
    done = strata.run("run", "--rm", "--pids-limit", "50", *image, "/bin/echo", "ran")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ran\n"
    if done.stderr:  # a cgroup we may write to would make it work instead
        assert done.stderr.startswith("strata: warning: --pids-limit ignored")
        assert done.stderr.count("\n") == 1


def test_rootless_containers_get_the_same_confinement(
    rootless: tuple[Strata, list[str], bool],
) -> None:
    """Inside its user namespace a rootless container has podman's capability set and the
    default seccomp filter, /proc/sys is read-only and mount(2) fails, for run, --init and
    exec alike."""
    strata, image, _ = rootless
    script = (
        "grep -E '^(CapEff|CapBnd|Seccomp):' /proc/self/status;"
        " echo 1 > /proc/sys/vm/drop_caches || echo sys-ro;"
        " mkdir -p /m; mount -t tmpfs t /m || echo no-mount"
    )
    expected = ["CapEff:\t00000000800405fb", "CapBnd:\t00000000800405fb", "Seccomp:\t2",
                "sys-ro", "no-mount"]  # fmt: skip
    for init in ([], ["--init"]):
        done = strata.run("run", "--rm", *init, *image, "/bin/sh", "-c", script)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == expected
    strata.run("run", "-d", "--name", "c", "--network", "none", *image, "/bin/sleep", "60",
               check=True)  # fmt: skip
    inside = strata.run("exec", "c", "/bin/sh", "-c", script)
    assert inside.stdout.splitlines() == expected, inside.stderr
    assert strata.run("rm", "-f", "c").returncode == 0


def test_rootless_cp_diff_pause(rootless: tuple[Strata, list[str], bool]) -> None:
    """Issue 17's container commands as a user: cp both ways on a stopped and a running
    container (in their user namespace), diff, pause/unpause (no delegated cgroup: signals)."""
    strata, image, _ = rootless
    src = strata.tmp / "home" / "note"
    src.write_text("note\n")
    os.chown(src, strata.user or 0, strata.group or 0)
    strata.run("create", "--name", "c", "--network", "none", *image, "true", check=True)
    done = strata.run("cp", str(src), "c:/opt/")
    assert done.returncode == 0, done.stderr
    back = strata.tmp / "home" / "back"
    done = strata.run("cp", "c:/opt/note", str(back))
    assert done.returncode == 0, done.stderr
    assert back.read_text() == "note\n"
    assert os.stat(back).st_uid == strata.user
    assert strata.run("diff", "c", check=True).stdout.splitlines() == ["C /opt", "A /opt/note"]
    strata.run("run", "-d", "--name", "r", "--network", "none", *image, "/bin/sleep", "60",
               check=True)  # fmt: skip
    done = strata.run("cp", str(src), "r:/tmp/")
    assert done.returncode == 0, done.stderr
    inside = strata.run("exec", "r", "/bin/sh", "-c", "cat /tmp/note; stat -c %u /tmp/note")
    assert inside.stdout.split() == ["note", "0"], inside.stderr
    assert strata.run("pause", "r").returncode == 0
    assert strata.inspect("r")["State"]["Paused"] is True  # type: ignore[index]
    assert strata.run("unpause", "r").returncode == 0
    assert strata.run("exec", "r", "true").returncode == 0
    assert strata.run("rm", "-f", "r").returncode == 0


def test_rootless_volumes_tmpfs_and_ulimit(rootless: tuple[Strata, list[str], bool]) -> None:
    strata, image, with_subids = rootless
    done = strata.run(
        "run", "--name", "rv", "-v", "etcvol:/etc", "-v", "/anon", "--read-only",
        "--tmpfs", "/cache:size=1m", "--ulimit", "nofile=64:128", "--network", "none", *image,
        "/bin/sh", "-c",
        "head -1 /etc/passwd; echo w > /etc/new; touch /tmp/t /cache/c /anon/a && ulimit -n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("root:")
    assert done.stdout.splitlines()[-1] == "64"
    data = strata.root / "volumes" / "etcvol" / "_data"
    assert os.stat(data / "new").st_uid == strata.user  # root inside is the user outside
    if with_subids:  # a file of a subordinate id, written by the container, removable
        strata.run("run", "--rm", "-v", "etcvol:/etc", "--network", "none", *image,
                   "/bin/sh", "-c", "touch /etc/sub && chown 1000 /etc/sub", check=True)  # fmt: skip
        assert os.stat(data / "sub").st_uid != strata.user
    assert strata.run("rm", "-v", "rv").returncode == 0
    assert strata.run("volume", "ls", "-q").stdout == "etcvol\n"
    assert strata.run("volume", "rm", "etcvol").returncode == 0
    assert not data.exists()


def test_rootless_userns_keep_id(rootless: tuple[Strata, list[str], bool]) -> None:
    """podman's `--userns keep-id`: the user's ids are the same inside (so what it writes to a
    bind mount is its own on the host), the subordinate ids around them as podman lays them
    out (`podman create --userns keep-id` + inspect here: 0:1:U, U:0:1, U+1:U+1:65536-U), the
    image's files keep their owners, the command runs as the user with an /etc/passwd entry and
    HOME as podman makes them."""
    strata, image, with_subids = rootless
    uid, gid = strata.user, strata.group
    assert uid is not None
    assert gid is not None
    name = strata.env["USER"]
    vol = Path(strata.env["HOME"]) / "vol"
    vol.mkdir()
    os.chown(vol, uid, gid)
    script = (
        "id -u; id -g; echo $HOME; stat -c %u:%g /bin/busybox; grep ^$USER_NAME: /etc/passwd;"
        " grep ^$USER_NAME: /etc/group; cat /proc/self/uid_map; touch /vol/mine"
    )
    done = strata.run(
        "run", "--name", "k", "--userns", "keep-id", "-e", f"USER_NAME={name}", "-v",
        f"{vol}:/vol", *image, "/bin/sh", "-c", script,
    )  # fmt: skip
    if not with_subids:
        assert done.returncode == 125
        assert done.stderr.startswith("strata: --userns keep-id: keep-id needs uid"), done.stderr
        assert strata.container_ids() == []
        return
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == [str(uid), str(gid), "/", "0:0"]
    assert lines[4] == f"{name}:*:{uid}:{gid}::/:/bin/sh"
    assert lines[5] == f"{name}:x:{gid}:{name}"
    assert [line.split() for line in lines[6:9]] == [
        ["0", "1", str(uid)],
        [str(uid), "0", "1"],
        [str(uid + 1), str(uid + 1), str(65536 - uid)],
    ]
    assert os.stat(vol / "mine").st_uid == uid  # the user's own file on the host
    host_config = strata.inspect("k")["HostConfig"]
    assert host_config["UsernsMode"] == "keep-id"  # type: ignore[index]
    mappings = host_config["IDMappings"]  # type: ignore[index]
    assert [line.split() for line in lines[6:9]] == [m.split(":") for m in mappings["UidMap"]]
    podman = _podman_keep_id_map(strata)
    if podman is not None:  # the same map as podman's, as it reports it
        assert mappings == podman
    strata.run("rm", "k", check=True)
    # exec joins the container's user namespace: the same user by default
    strata.run("run", "-d", "--name", "e", "--userns", "keep-id", "--network", "none", *image,
               "/bin/sleep", "60", check=True)  # fmt: skip
    src = Path(strata.env["HOME"]) / "copied"
    src.write_text("c\n")
    os.chown(src, uid, gid)
    strata.run("cp", str(src), "e:/tmp/copied", check=True)
    inside = strata.run(
        "exec", "e", "/bin/sh", "-c", "id -u; stat -c %u:%g /bin/busybox /tmp/copied"
    )
    # cp gives the user's ids, as podman's cp gives the container's main user's
    assert inside.stdout.split() == [str(uid), "0:0", f"{uid}:{gid}"], inside.stderr
    strata.run("rm", "-f", "e", check=True)
    other = strata.run("run", "--rm", "--userns", "keep-id:uid=200,gid=300", *image, "/bin/sh",
                       "-c", "id -u; id -g; cat /proc/self/uid_map")  # fmt: skip
    assert other.returncode == 0, other.stderr
    assert [line.split() for line in other.stdout.splitlines()] == [
        ["200"], ["300"], ["0", "1", "200"], ["200", "0", "1"], ["201", "201", "65336"]
    ]  # fmt: skip


def _podman_keep_id_map(strata: Strata) -> dict[str, list[str]] | None:
    """`podman create --userns keep-id` as the test user (its own store and runtime dir in its
    home) and the IDMappings `podman inspect` reports; None without podman. The pause process that
    rootless podman leaves holding its user namespace is killed (by its pid file)."""
    found = shutil.which("podman")
    if found is None:
        return None
    home = Path(strata.env["HOME"])
    run = Path(tempfile.mkdtemp(prefix="strata-pk", dir="/tmp"))  # (runroot: < 50 characters)
    os.chown(run, strata.user or 0, strata.group or 0)
    env = {**strata.env, "XDG_RUNTIME_DIR": str(run)}
    base = [found, "--root", str(home / "podman"), "--runroot", str(run / "storage"),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none"]  # fmt: skip

    def podman(*args: str) -> str:
        done = subprocess.run(
            [*base, *args], env=env, user=strata.user, group=strata.group, cwd=home,
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        podman("load", "-q", "-i", str(BUSYBOX_DOCKER_ARCHIVE))
        image = podman("images", "-q").split()[0]
        podman("create", "--name", "k", "--userns", "keep-id", image, "true")
        maps = podman("inspect", "k", "--format", "{{json .HostConfig.IDMappings}}")
        return dict(json.loads(maps))
    finally:
        pause = run / "libpod/tmp/pause.pid"
        if pause.exists():
            pid = int(pause.read_text())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while Path(f"/proc/{pid}").exists():
                time.sleep(0.02)
        shutil.rmtree(run, ignore_errors=True)


def test_rootless_run_it_detaches_and_attach_rejoins(
    rootless: tuple[Strata, list[str], bool],
) -> None:
    strata, image, _ = rootless
    argv = [STRATA, "run", "--root", str(strata.root), "--rm", "-it", "--name", "t", "--network",
            "none", *image, "/bin/sh"]  # fmt: skip
    term = Terminal(argv, as_user=strata)
    try:
        term.read_until(b"# ")
        term.type("echo in$((1+1))\r")
        term.read_until(b"in2")
        term.type("\x10\x11")
        assert term.wait() == 0
    finally:
        term.close()
    again = Terminal([STRATA, "attach", "--root", str(strata.root), "t"], as_user=strata)
    try:
        again.type("id -u; exit 3\r")
        assert again.wait() == 3
    finally:
        again.close()
    assert b"\r\n0\r\n" in again.output
    wait_for(lambda: not strata.container_ids(), "--rm to remove the container")
