"""`strata cp`: docker's path rules in both directions, `-` tar streams, -a and -L, running and
stopped containers, and a container's symlinks never leading out of it."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.runtime.conftest import STRATA, Strata, wait_running

pytestmark = [pytest.mark.root, pytest.mark.fuse]

SETUP = (
    "mkdir -p /data/sub && echo one > /data/a && echo two > /data/sub/b"
    " && chown 1000:1001 /data/a && chmod 640 /data/a"
    " && ln -s /etc /tmp/etc-link && ln -s ../../.. /tmp/up && ln -s /etc/motd /tmp/motd-link"
)


@pytest.fixture
def stopped(strata: Strata, busybox: list[str]) -> str:
    """A stopped container whose upper layer holds /data and some symlinks."""
    strata.run("run", "--name", "c1", *busybox, "/bin/sh", "-c", SETUP, check=True)
    return "c1"


def cp(
    strata: Strata, *args: str, input: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [STRATA, "cp", "--root", str(strata.root), *args],
        input=input,
        capture_output=True,
        check=False,
        timeout=60,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def cat(strata: Strata, ref: str, path: str) -> str:
    """A file's content in a (stopped) container, read back with `cp ... -`."""
    done = cp(strata, f"{ref}:{path}", "-")
    assert done.returncode == 0, done.stderr
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        member = tar.next()
        assert member is not None
        f = tar.extractfile(member)
        assert f is not None
        return f.read().decode()


def test_file_out_to_a_new_name_and_into_a_directory(strata: Strata, stopped: str) -> None:
    out = strata.tmp / "out"
    out.mkdir()
    assert cp(strata, "c1:/data/a", str(out / "renamed")).returncode == 0
    assert (out / "renamed").read_text() == "one\n"
    assert cp(strata, "c1:data/a", str(out)).returncode == 0  # the leading / is optional
    st = os.stat(out / "a")
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o640, 0, 0)  # the caller's owner
    (out / "a").unlink()
    assert cp(strata, "-a", "c1:/data/a", str(out)).returncode == 0
    st = os.stat(out / "a")
    assert (st.st_uid, st.st_gid) == (1000, 1001)


def test_directory_rules(strata: Strata, stopped: str) -> None:
    out = strata.tmp / "out"
    out.mkdir()
    # DEST missing: made, with SRC's content
    assert cp(strata, "c1:/data", str(out / "new")).returncode == 0
    assert sorted(os.listdir(out / "new")) == ["a", "sub"]
    assert (out / "new/sub/b").read_text() == "two\n"
    # DEST a directory: SRC goes into it
    assert cp(strata, "c1:/data", str(out / "new")).returncode == 0
    assert sorted(os.listdir(out / "new")) == ["a", "data", "sub"]
    # SRC ending in /. : its content only
    (out / "dot").mkdir()
    assert cp(strata, "c1:/data/.", str(out / "dot")).returncode == 0
    assert sorted(os.listdir(out / "dot")) == ["a", "sub"]
    # a directory onto a file: refused, the file kept
    (out / "file").write_text("keep")
    done = cp(strata, "c1:/data", str(out / "file"))
    assert done.returncode == 1
    assert done.stderr.decode().count("\n") == 1
    assert b"cannot copy a directory to a file" in done.stderr
    assert (out / "file").read_text() == "keep"


def test_file_rules_and_errors(strata: Strata, stopped: str) -> None:
    out = strata.tmp / "out"
    out.mkdir()
    (out / "exists").write_text("old")
    assert cp(strata, "c1:/data/a", str(out / "exists")).returncode == 0
    assert (out / "exists").read_text() == "one\n"
    for args, words in (
        (("c1:/data/a", str(out / "missing") + "/"), b"must exist"),
        (("c1:/data/a", str(out / "no/such/dir")), b"no such directory"),
        (("c1:/data/a/", str(out)), b"not a directory"),
        (("c1:/nonexistent", str(out)), b"could not find the file /nonexistent in container c1"),
        (("nosuch:/etc", str(out)), b"no such container: nosuch"),
    ):
        done = cp(strata, *args)
        assert done.returncode == 1, args
        assert words in done.stderr, done.stderr
        assert done.stderr.count(b"\n") == 1, done.stderr
    # a directory the file would replace is never thrown away
    (out / "sub").mkdir()
    (out / "sub/keep").write_text("x")
    done = cp(strata, "c1:/data/sub/b", str(out / "sub2"))
    assert done.returncode == 0
    (out / "b").mkdir()
    (out / "b/keep").write_text("x")
    done = cp(strata, "c1:/data/sub/b", str(out))
    assert done.returncode == 1
    assert b"cannot overwrite directory" in done.stderr
    assert (out / "b/keep").read_text() == "x"


def test_bad_command_lines(strata: Strata, stopped: str) -> None:
    for args, words in (
        (("c1:/a", "c1:/b"), b"between containers"),
        (("/tmp/a", "/tmp/b"), b"at least one container"),
        ((":/a", "/tmp/b"), b"no container name"),
        (("c1:/a",), b"arguments are required"),
    ):
        done = cp(strata, *args)
        assert done.returncode == 125, args
        assert words in done.stderr, done.stderr
        assert b"Traceback" not in done.stderr


def test_symlinks_resolve_inside_the_container(strata: Strata, stopped: str) -> None:
    marker = f"strata-cp-test-{os.getpid()}"
    src = strata.tmp / marker
    src.write_text("inside\n")
    # /tmp/etc-link -> /etc, /tmp/up -> ../../.. (stops at its /): the container's /etc, never the host's
    assert cp(strata, str(src), "c1:/tmp/etc-link/").returncode == 0
    assert cp(strata, str(src), f"c1:/tmp/up/etc/{marker}.2").returncode == 0
    assert not os.path.lexists(f"/etc/{marker}")
    assert not os.path.lexists(f"/etc/{marker}.2")
    assert cat(strata, "c1", f"/etc/{marker}") == "inside\n"
    assert cat(strata, "c1", f"/etc/{marker}.2") == "inside\n"
    # out: a symlink is copied as the link, -L copies what it names (the container's motd)
    out = strata.tmp / "out"
    out.mkdir()
    assert cp(strata, "c1:/tmp/motd-link", str(out / "link")).returncode == 0
    assert os.readlink(out / "link") == "/etc/motd"
    assert cp(strata, "-L", "c1:/tmp/motd-link", str(out / "followed")).returncode == 0
    assert (out / "followed").read_text() == cat(strata, "c1", "/etc/motd")
    assert cp(strata, "-L", "c1:/tmp/etc-link", str(out / "etc")).returncode == 0
    assert (out / "etc" / marker).read_text() == "inside\n"


def test_tar_on_stdin_and_stdout(strata: Strata, stopped: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"from a tar\n"
        info = tarfile.TarInfo("dir/f")
        info.size = len(data)
        info.uid = 4242
        tar.addfile(info, io.BytesIO(data))
    assert cp(strata, "-", "c1:/data", input=buf.getvalue()).returncode == 0
    assert cat(strata, "c1", "/data/dir/f") == "from a tar\n"
    listing = cp(strata, "c1:/data", "-")
    with tarfile.open(fileobj=io.BytesIO(listing.stdout)) as tar:
        owners = {m.name: m.uid for m in tar.getmembers()}
    assert owners["data/a"] == 1000
    assert owners["data/dir/f"] == 0  # without -a, the destination's root
    assert {"data", "data/sub", "data/sub/b"} <= set(owners)
    # DEST of a stdin tar must be a directory; a member escaping it is refused
    assert cp(strata, "-", "c1:/data/a", input=buf.getvalue()).returncode == 1
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../../escaped")
        tar.addfile(info, io.BytesIO(b""))
    done = cp(strata, "-", "c1:/data", input=evil.getvalue())
    assert done.returncode == 1
    assert b"'..'" in done.stderr
    assert cp(strata, "c1:/escaped", "-").returncode == 1


def test_running_container_both_ways(strata: Strata, busybox: list[str]) -> None:
    strata.run("run", "-d", "--name", "r1", *busybox, "/bin/sleep", "60", check=True)
    wait_running(strata, "r1")
    src = strata.tmp / "hello"
    src.write_text("hello\n")
    os.chown(src, 1234, 1234)
    assert cp(strata, str(src), "r1:/tmp/").returncode == 0
    assert cp(strata, "-a", str(src), "r1:/tmp/kept").returncode == 0
    done = strata.run(
        "exec", "r1", "/bin/sh", "-c", "cat /tmp/hello; stat -c %u /tmp/hello /tmp/kept"
    )
    assert done.stdout.split() == ["hello", "0", "1234"]
    out = strata.tmp / "back"
    assert cp(strata, "r1:/tmp/hello", str(out)).returncode == 0
    assert out.read_text() == "hello\n"
    # /proc and /sys are not copied (written as empty directories)
    proc = strata.tmp / "proc"
    assert cp(strata, "r1:/proc", str(proc)).returncode == 0
    assert os.listdir(proc) == []


def test_read_only_container_refuses_writes(strata: Strata, busybox: list[str]) -> None:
    strata.run("create", "--name", "ro", "--read-only", *busybox, "true", check=True)
    src = strata.tmp / "f"
    src.write_text("x")
    done = cp(strata, str(src), "ro:/tmp/")
    assert done.returncode == 1
    assert b"Read-only file system" in done.stderr
    assert cp(strata, "ro:/etc/motd", str(strata.tmp / "motd")).returncode == 0


def test_cp_leaves_no_mount_behind(strata: Strata, stopped: str) -> None:
    cp(strata, "c1:/data", str(strata.tmp / "x"))
    with open("/proc/self/mountinfo") as f:
        assert str(strata.root) not in f.read()
    assert Path(strata.tmp / "x" / "a").exists()
