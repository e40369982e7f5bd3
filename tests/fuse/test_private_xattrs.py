"""The union's private xattrs cannot be forged (issue 12, finding 2).

On a union mounted by root, strata honoured `user.strata.metacopy` markers: a user who owns a
file in the upper layer (user xattrs need only ownership) pointed one at root's 0600 file and,
after a remount, read it. A root mount now honours only `trusted.*` (which only root may set), as
overlayfs does without `userxattr`. A bad origin marker makes that one object EIO instead of
breaking every path of the mount.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.mounts import StrataMountFactory, UnionDirs, skip_unless_root

pytestmark = [pytest.mark.fuse, pytest.mark.root]

NOBODY = 65534
SECRET = b"root's secret, 0600\n"


@pytest.fixture
def dirs(tmp_path: Path) -> UnionDirs:
    skip_unless_root()
    d = UnionDirs.create(tmp_path, nlowers=1)
    base = d.lowers[0]
    (base / "secret").write_bytes(SECRET)
    os.chmod(base / "secret", 0o600)
    (base / "tmp").mkdir(mode=0o1777)
    os.chmod(base / "tmp", 0o1777)
    (base / "plain").write_bytes(b"plain\n")
    (base / "dir").mkdir()
    (base / "dir/inside").write_bytes(b"inside\n")
    return d


def as_nobody(cwd_fd: int, action: Callable[[], object]) -> int:
    """Run `action` as uid/gid 65534 in a forked child whose working directory is `cwd_fd`;
    its exit status (0: it worked)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.fchdir(cwd_fd)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            action()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_users_metacopy_marker_is_not_honoured_on_a_root_mount(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    assert dirs.upper is not None
    with union_mount(dirs, extra_args=["-o", "allow_other"]) as m:
        mnt_fd = os.open(m.mnt, os.O_PATH | os.O_DIRECTORY)
        try:
            # the user makes a file of the secret's size through the mount
            mine = Path("tmp/mine")
            assert as_nobody(mnt_fd, lambda: mine.write_bytes(b"x" * len(SECRET))) == 0
        finally:
            os.close(mnt_fd)
        os.chmod(m.mnt / "plain", 0o600)  # a metacopy copy-up: the upper root gets its flag
    mine = dirs.upper / "tmp/mine"
    assert os.stat(mine).st_uid == NOBODY
    assert os.getxattr(dirs.upper, "trusted.strata.metacopy-layer")
    # then, on the upper copy it owns, the marker that names root's file
    upper_fd = os.open(dirs.upper, os.O_PATH | os.O_DIRECTORY)
    try:
        forge = lambda: os.setxattr("tmp/mine", "user.strata.metacopy", b"secret")  # noqa: E731
        assert as_nobody(upper_fd, forge) == 0
    finally:
        os.close(upper_fd)
    os.truncate(mine, len(SECRET))  # as a metacopy file would be: the size, no data
    with union_mount(dirs, extra_args=["-o", "allow_other"]) as m:
        assert (m.mnt / "tmp/mine").read_bytes() != SECRET
        assert (m.mnt / "plain").read_bytes() == b"plain\n"  # root's own marker still works


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (struct.pack("<Q", 1), "the root's node id"),
        (b"\x01\x02", "a wrong length"),
        (struct.pack("<Q", (7 << 56) | 12345), "a layer that does not exist"),
        (struct.pack("<Q", 12345), "the upper layer itself"),
    ],
)
def test_a_bad_origin_makes_one_object_eio_and_leaves_the_mount_working(
    union_mount: StrataMountFactory, dirs: UnionDirs, value: bytes, why: str
) -> None:
    assert dirs.upper is not None
    with union_mount(dirs) as m:
        (m.mnt / "forged").write_bytes(b"forged\n")
    os.setxattr(dirs.upper / "forged", "trusted.strata.origin", value)
    with union_mount(dirs, allowed_log_errors=["bad origin marker"]) as m:
        (m.mnt / "dir/inside").read_bytes()  # looked up first: a directory with a live node
        with pytest.raises(OSError, match="Input/output error") as err:
            os.stat(m.mnt / "forged")
        assert err.value.errno == errno.EIO, why
        assert (m.mnt / "plain").read_bytes() == b"plain\n"
        assert (m.mnt / "dir/inside").read_bytes() == b"inside\n"
        assert sorted(os.listdir(m.mnt / "dir")) == ["inside"]
        # listings carry attributes (READDIRPLUS): the broken object is left out of them
        assert sorted(os.listdir(m.mnt)) == ["dir", "plain", "secret", "tmp"]


def test_an_origin_claiming_another_live_files_number_is_eio(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    """An upper file whose origin names another (single-link) lower file: once that file is
    known, the forged one is EIO instead of being served as the same object."""
    assert dirs.upper is not None
    with union_mount(dirs) as m:
        (m.mnt / "forged").write_bytes(b"forged\n")
    plain_ino = os.stat(dirs.lowers[0] / "plain").st_ino
    os.setxattr(
        dirs.upper / "forged", "trusted.strata.origin", struct.pack("<Q", 1 << 56 | plain_ino)
    )
    with union_mount(dirs, allowed_log_errors=["bad origin marker"]) as m:
        assert (m.mnt / "plain").read_bytes() == b"plain\n"
        with pytest.raises(OSError, match="Input/output error"):
            (m.mnt / "forged").read_bytes()
        assert (m.mnt / "plain").read_bytes() == b"plain\n"


def test_a_forged_origin_never_shows_one_files_content_under_another_name(
    union_mount: StrataMountFactory, dirs: UnionDirs
) -> None:
    """The forged file looked up first: the real one, looked up next, is refused (EIO) rather
    than served as the forged file's node; the forged file keeps its own content."""
    assert dirs.upper is not None
    with union_mount(dirs) as m:
        (m.mnt / "forged").write_bytes(b"forged\n")
    plain_ino = os.stat(dirs.lowers[0] / "plain").st_ino
    value = struct.pack("<Q", 1 << 56 | plain_ino)
    os.setxattr(dirs.upper / "forged", "trusted.strata.origin", value)
    with union_mount(dirs, allowed_log_errors=["bad origin marker"]) as m:
        assert (m.mnt / "forged").read_bytes() == b"forged\n"
        with pytest.raises(OSError, match="Input/output error"):
            (m.mnt / "plain").read_bytes()
        assert (m.mnt / "forged").read_bytes() == b"forged\n"
        assert (m.mnt / "dir/inside").read_bytes() == b"inside\n"
