"""The command line: fuse-overlayfs option parsing, bad input through the installed commands, and
daemonized mounts (fuse-strata, strata mount/umount, `mount -t fuse.fuse-strata`, fstab).

The commands run as the console scripts next to the test interpreter (`pip install -e .`), in child
processes, like an engine or mount(8) would run them. Every mount is undone in a `finally` (and an
autouse fixture lazily unmounts anything a failed test left under its tmp_path).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

import strata.cli as strata_cli
from tests.helpers.mounts import skip_unless_fuse, skip_unless_root
from unionfs import cli, command, libc, mountinfo, options
from unionfs.config import DEFAULT_SPIN_US, IdMapping, WhiteoutFormat
from unionfs.errors import UsageError

BIN: Final = Path(sys.executable).parent
FUSE_STRATA: Final = BIN / "fuse-strata"
STRATA: Final = BIN / "strata"
COMMAND_TIMEOUT: Final = 30.0
MOUNT_TIMEOUT: Final = 30.0
EXIT_TIMEOUT: Final = 15.0


def parse(*argv: str, euid: int = 0) -> options.MountRequest:
    return options.parse_fuse_overlayfs_args(list(argv), euid=euid)


def parse_error(*argv: str) -> str:
    with pytest.raises(UsageError) as info:
        parse(*argv)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# fuse-overlayfs command lines, parsed without mounting


def test_layers_and_mountpoint_are_read_from_o_lowerdir_upperdir_workdir() -> None:
    req = parse("-o", "lowerdir=/l/top:/l/base,upperdir=/u,workdir=/w", "/mnt")
    assert req.cfg.lowers == (Path("/l/top"), Path("/l/base"))
    assert (req.cfg.upper, req.cfg.work) == (Path("/u"), Path("/w"))
    assert req.mountpoint == Path("/mnt")
    assert not req.foreground
    assert not req.opts.read_only


@pytest.mark.parametrize(
    "argv",
    [
        ["-o", "lowerdir=/a,upperdir=/u,workdir=/w", "/mnt"],
        ["/mnt", "-o", "lowerdir=/a,upperdir=/u,workdir=/w"],
        ["src", "/mnt", "-o", "lowerdir=/a,upperdir=/u,workdir=/w"],
        ["-o", "lowerdir=/a", "-o", "upperdir=/u", "/mnt", "-o", "workdir=/w"],
        ["-olowerdir=/a,upperdir=/u", "-oworkdir=/w", "--", "/mnt"],
        ["-o", "lowerdir=/old,upperdir=/u", "-o", "lowerdir=/a,workdir=/w", "/mnt"],
    ],
)
def test_o_options_may_come_anywhere_repeat_and_accumulate(argv: list[str]) -> None:
    req = parse(*argv)
    assert req.cfg.lowers == (Path("/a"),)
    assert (req.cfg.upper, req.cfg.work, req.mountpoint) == (Path("/u"), Path("/w"), Path("/mnt"))


def test_without_upperdir_the_union_and_the_mount_are_read_only() -> None:
    req = parse("-o", "lowerdir=/a:/b", "/mnt")
    assert req.cfg.read_only
    assert req.opts.read_only


def test_relative_paths_are_made_absolute_against_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    req = parse("-o", "lowerdir=l1:l2,upperdir=u,workdir=w", "m")
    assert req.cfg.lowers == (tmp_path / "l1", tmp_path / "l2")
    assert (req.cfg.upper, req.cfg.work, req.mountpoint) == (
        tmp_path / "u",
        tmp_path / "w",
        tmp_path / "m",
    )


def test_backslash_escapes_a_colon_in_lowerdir_and_a_comma_anywhere() -> None:
    req = parse("-o", r"lowerdir=/a\:1:/b\,2:/c\\d,upperdir=/u\:x,workdir=/w", "/mnt")
    assert req.cfg.lowers == (Path("/a:1"), Path("/b,2"), Path("/c\\d"))
    assert req.cfg.upper == Path("/u:x")


def test_quoted_selinux_context_with_commas_is_ignored() -> None:
    opts = (
        'lowerdir=/a,context="system_u:object_r:container_file_t:s0:c1,c2",upperdir=/u,workdir=/w'
    )
    req = parse("-o", opts, "/mnt")
    assert req.cfg.lowers == (Path("/a"),)
    assert req.cfg.upper == Path("/u")


def test_f_stays_in_front_and_d_debugs_in_front() -> None:
    assert parse("-f", "-o", "lowerdir=/a", "/mnt").foreground
    for flag in ("-d", "--debug"):
        req = parse(flag, "-o", "lowerdir=/a", "/mnt")
        assert req.foreground
        assert req.opts.debug
    assert parse("-o", "lowerdir=/a,debug", "/mnt").opts.debug


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0:1000:1", (IdMapping(0, 1000, 1),)),
        ("0:1000:1:1:100000:65536", (IdMapping(0, 1000, 1), IdMapping(1, 100000, 65536))),
        (":0:1000:1:1:100000:65536", (IdMapping(0, 1000, 1), IdMapping(1, 100000, 65536))),
    ],
)
def test_uid_and_gid_mappings_are_colon_separated_triplets(
    value: str, expected: tuple[IdMapping, ...]
) -> None:
    req = parse("-o", f"lowerdir=/a,uidmapping={value},gidmapping={value}", "/mnt")
    assert req.cfg.uid_map == expected
    assert req.cfg.gid_map == expected


@pytest.mark.parametrize(
    "value", ["", "0:1000", "0:1000:1:2", "a:b:c", "0:-1:1", "0:1000:0", "0:4294967295:2", "1 :2:3"]
)
def test_malformed_id_mappings_are_rejected(value: str) -> None:
    message = parse_error("-o", f"lowerdir=/a,uidmapping={value}", "/mnt")
    assert message.startswith("uidmapping=")


@pytest.mark.parametrize(
    ("options", "volatile"),
    [("", False), ("volatile", True), ("fsync=0", True), ("fsync=0,fsync=1", False)],
)
def test_volatile_and_fsync_0_skip_fsync(options: str, volatile: bool) -> None:
    req = parse("-o", f"lowerdir=/a,{options}", "/mnt")
    assert req.cfg.volatile is volatile


def test_fsync_must_be_0_or_1() -> None:
    assert "fsync" in parse_error("-o", "lowerdir=/a,fsync=2", "/mnt")


@pytest.mark.parametrize(
    ("options", "uid", "gid"),
    [
        ("", None, None),
        ("squash_to_root", 0, 0),
        ("squash_to_uid=5", 5, None),
        ("squash_to_gid=7", None, 7),
        ("squash_to_root,squash_to_uid=5", 5, 0),
        ("squash_to_uid=5,squash_to_root", 5, 0),
        ("squash_to_gid=7,squash_to_root,squash_to_uid=5", 5, 7),
    ],
)
def test_squash_options_and_their_precedence(
    options: str, uid: int | None, gid: int | None
) -> None:
    req = parse("-o", f"lowerdir=/a,{options}", "/mnt")
    assert (req.cfg.squash_uid, req.cfg.squash_gid) == (uid, gid)


@pytest.mark.parametrize("option", ["squash_to_uid=x", "squash_to_gid=-1", "squash_to_uid="])
def test_squash_ids_must_be_numbers(option: str) -> None:
    parse_error("-o", f"lowerdir=/a,{option}", "/mnt")


@pytest.mark.parametrize(
    ("options", "read_only"), [("ro", True), ("rw", False), ("ro,rw", False), ("rw,ro", True)]
)
def test_ro_makes_a_read_only_mount_and_the_last_of_ro_rw_wins(
    options: str, read_only: bool
) -> None:
    req = parse("-o", f"lowerdir=/a,upperdir=/u,workdir=/w,{options}", "/mnt")
    assert req.opts.read_only is read_only
    assert "ro" not in req.opts.extra


def test_kernel_flags_pass_through_and_the_last_of_a_pair_wins() -> None:
    req = parse("-o", "lowerdir=/a,nodev,noexec,suid,nosuid,dev,noatime,sync", "/mnt", euid=1000)
    assert set(req.opts.extra) == {"nosuid", "dev", "noexec", "noatime", "sync"}


def test_root_defaults_to_allow_other_default_permissions_and_suid() -> None:
    req = parse("-o", "lowerdir=/a", "/mnt", euid=0)
    assert req.opts.allow_other
    assert req.opts.default_permissions
    assert "suid" in req.opts.extra
    assert "nosuid" in parse("-o", "lowerdir=/a,nosuid", "/mnt", euid=0).opts.extra


def test_other_users_default_to_default_permissions_only() -> None:
    req = parse("-o", "lowerdir=/a", "/mnt", euid=1000)
    assert not req.opts.allow_other
    assert req.opts.default_permissions
    assert req.opts.extra == ()
    assert parse("-o", "lowerdir=/a,allow_other", "/mnt", euid=1000).opts.allow_other


def test_allow_root_replaces_allow_other() -> None:
    req = parse("-o", "lowerdir=/a,allow_root", "/mnt", euid=0)
    assert not req.opts.allow_other
    assert "allow_root" in req.opts.extra


def test_fsname_subtype_and_source() -> None:
    req = parse("-o", "lowerdir=/a,subtype=fuse-strata", "mysrc", "/mnt")
    assert req.opts.fsname == "mysrc"
    assert "subtype=fuse-strata" in req.opts.extra
    assert parse("-o", "lowerdir=/a,fsname=img", "mysrc", "/mnt").opts.fsname == "img"
    assert parse("-o", "lowerdir=/a", "/mnt").opts.fsname == "strata"
    assert "fsname" in parse_error("-o", 'lowerdir=/a,fsname="a b"', "/mnt")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("wh", WhiteoutFormat.WH), ("chardev", WhiteoutFormat.CHARDEV), ("auto", WhiteoutFormat.AUTO)],
)
def test_whiteout_format_option(value: str, expected: WhiteoutFormat) -> None:
    assert parse("-o", f"lowerdir=/a,whiteout={value}", "/mnt").cfg.whiteout is expected


def test_bad_whiteout_format_is_rejected() -> None:
    assert "whiteout" in parse_error("-o", "lowerdir=/a,whiteout=aufs", "/mnt")


# What engines, buildah, mount(8)/mount.fuse3 and fstab pass, and what ignoring them costs nothing.
HARMLESS: Final = (
    "rw,dev,suid,exec,nofail,_netdev,auto,noauto,user,users,nouser,defaults,x-systemd.automount,"
    "comment=foo,private,rslave,userxattr,noacl,static_nlink,threaded=1,timeout=10,fast_ino=1,"
    "writeback=0,noxattrs=0,xattr_permissions=0,redirect_dir=off,metacopy=off,plugins=,"
    "relatime,norelatime,lazytime,strictatime,diratime,nodiratime,atime,default_permissions,"
    "kernel_cache,splice_read,splice_write,splice_move,allow_other,async,dirsync,fscontext=x"
)


def test_options_engines_and_mount_pass_are_accepted() -> None:
    req = parse("-o", f"lowerdir=/a,{HARMLESS}", "/mnt")
    assert req.cfg.lowers == (Path("/a"),)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("lowerdir=/a,xyz", "unknown option 'xyz'"),
        ("lowerdir=/a,xyz=1", "unknown option 'xyz'"),
        ("lowerdir=/a,suid=1", "unknown option 'suid'"),
        ("lowerdir=/a,metacopy=yes", "option 'metacopy=yes': expected metacopy=on or metacopy=off"),
        ("lowerdir=/a,xattr_permissions=2", "option 'xattr_permissions=2' is not supported"),
        ("lowerdir=/a,spin=-1", "option 'spin=-1': expected microseconds from 0 to 100000"),
        ("lowerdir=/a,spin=1ms", "option 'spin=1ms': expected microseconds from 0 to 100000"),
        ("lowerdir=/a,spin=100001", "option 'spin=100001': expected microseconds from 0 to 100000"),
        ("lowerdir=/a,plugins=/p.so", "option 'plugins=/p.so' is not supported"),
        ("lowerdir=/a,upperdir=/u", "upperdir given without workdir"),
        ("lowerdir=/a,workdir=/w", "workdir given without upperdir"),
        ("lowerdir=/a,upperdir=,workdir=/w", "upperdir= is empty"),
        ("upperdir=/u,workdir=/w", "no lowerdir given (-o lowerdir=TOP:...:BASE)"),
    ],
)
def test_unknown_and_unusable_options_are_one_clear_error(options: str, message: str) -> None:
    assert parse_error("-o", options, "/mnt") == message


@pytest.mark.parametrize("lowerdir", ["", ":", "/a:", ":/a", "/a::/b", "/a:::/b"])
def test_empty_lowerdir_elements_are_rejected(lowerdir: str) -> None:
    assert "empty path" in parse_error("-o", f"lowerdir={lowerdir}", "/mnt")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-o", "lowerdir=/a"], "no mountpoint given"),
        (
            ["-o", "lowerdir=/a", "x", "y", "/mnt"],
            "too many arguments: 'x' (expected [SOURCE] MNT)",
        ),
        (["-x", "-o", "lowerdir=/a", "/mnt"], "unknown option '-x'"),
        (["/mnt", "-o"], "option '-o' needs an argument"),
    ],
)
def test_bad_command_lines_are_one_clear_error(argv: list[str], message: str) -> None:
    assert parse_error(*argv) == message


def test_help_and_version_exit_0_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.fuse_strata_main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: fuse-strata ")
    assert cli.fuse_strata_main(["-o", "lowerdir=/a", "/mnt", "--version"]) == 0
    assert "0.1.0" in capsys.readouterr().out
    assert strata_cli.main(["--version"]) == 0
    assert "0.1.0" in capsys.readouterr().out


def test_main_prints_one_line_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.fuse_strata_main(["-o", "lowerdir=/a,xyz", "/mnt"]) != 0
    captured = capsys.readouterr()
    assert captured.err == "fuse-strata: unknown option 'xyz'\n"
    assert captured.out == ""


# strata mount / python -m unionfs


def test_strata_mount_takes_lowers_top_first() -> None:
    req = options.parse_strata_mount_args(
        ["--lower", "/top", "--lower", "/a:b", "--upper", "/u", "--work", "/w", "/mnt"], euid=1000
    )
    assert req.cfg.lowers == (Path("/top"), Path("/a:b"))
    assert (req.cfg.upper, req.cfg.work, req.mountpoint) == (Path("/u"), Path("/w"), Path("/mnt"))
    assert not req.foreground
    assert not req.opts.read_only


def test_metacopy_is_off_for_fuse_strata_and_on_for_strata_mount_by_default() -> None:
    # fuse-strata's users (container engines) read the upper directly: a metacopy file would
    # look empty to them. strata's own stack reads the marker back.
    assert not parse("-o", "lowerdir=/a", "/mnt").cfg.metacopy
    assert parse("-o", "lowerdir=/a,metacopy=on", "/mnt").cfg.metacopy
    assert options.parse_strata_mount_args(["--lower", "/a", "/mnt"]).cfg.metacopy
    off = options.parse_strata_mount_args(["--lower", "/a", "-o", "metacopy=off", "/mnt"])
    assert not off.cfg.metacopy


def test_spin_option_sets_how_long_the_daemon_polls() -> None:
    assert parse("-o", "lowerdir=/a", "/mnt").opts.spin_us == DEFAULT_SPIN_US
    assert parse("-o", "lowerdir=/a,spin=0", "/mnt").opts.spin_us == 0
    req = options.parse_strata_mount_args(["--lower", "/a", "-o", "spin=250", "/mnt"])
    assert req.opts.spin_us == 250


def test_strata_mount_options_and_flags() -> None:
    req = options.parse_strata_mount_args(
        ["--lower", "/a", "-f", "--whiteout", "wh", "-o", "volatile,nodev", "-o", "ro", "/mnt"],
        euid=0,
    )
    assert req.foreground
    assert req.cfg.whiteout is WhiteoutFormat.WH
    assert req.cfg.volatile
    assert req.opts.read_only
    assert req.opts.allow_other
    assert set(req.opts.extra) == {"nodev", "suid"}
    assert options.parse_strata_mount_args(["--lower", "/a", "-d", "/mnt"]).opts.debug


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/mnt"], "the following arguments are required: --lower (see 'strata mount --help')"),
        (["--lower", "/a", "--upper", "/u", "/mnt"], "--upper and --work must be given together"),
        (["--lower", "/a", "--work", "/w", "/mnt"], "--upper and --work must be given together"),
        (["--lower", "/a", "-o", "lowerdir=/b", "/mnt"], "option 'lowerdir' is not used here"),
        (["--lower", "/a", "-o", "bogus", "/mnt"], "unknown option 'bogus'"),
    ],
)
def test_strata_mount_bad_arguments(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        options.parse_strata_mount_args(argv)
    assert str(info.value).startswith(message)


# ---------------------------------------------------------------------------------------------
# helpers for the tests that run the installed commands


@pytest.fixture(autouse=True)
def _no_mounts_left_behind(tmp_path: Path) -> Iterator[None]:
    """Unmount (lazily) whatever a test left mounted below its tmp_path, and fail it for that."""
    yield
    root = Path(os.path.realpath(tmp_path))
    leftovers = [m for m in mountinfo.read_mountinfo() if root in m.mountpoint.parents]
    for m in reversed(leftovers):
        force_unmount(m.mountpoint)
    assert not leftovers, f"mounts left behind: {[str(m.mountpoint) for m in leftovers]}"


def run(*cmd: str | Path, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; returning at all means its stdout and stderr reached EOF."""
    if Path(cmd[0]) in (FUSE_STRATA, STRATA) and not Path(cmd[0]).exists():
        pytest.fail(f"{cmd[0]} is missing: run `{BIN / 'pip'} install -e .` first")
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], prog: str) -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: "), lines[0]
    assert result.stdout == ""
    return lines[0]


def mounts_at(path: Path) -> list[mountinfo.MountEntry]:
    return mountinfo.mounts_at(Path(os.path.realpath(path)))


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie whose parent does not reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def daemon_pids(mnt: Path) -> set[int]:
    """The processes serving the FUSE mount at `mnt` (holding its /dev/fuse connection)."""
    top = mounts_at(mnt)[-1]
    return {pid for pid, _ in mountinfo.fuse_device_holders(top.minor)}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def force_unmount(mnt: Path) -> None:
    """Undo whatever is mounted at `mnt`: fusermount3 -u, then -uz, then umount -l; then make
    sure the FUSE daemons that served it are gone (TERM, then KILL)."""
    for _ in range(10):
        entries = mounts_at(mnt)
        if not entries:
            return
        top = entries[-1]
        pids = daemon_pids(mnt) if top.fstype.startswith("fuse") and top.major == 0 else set()
        for cmd in (["fusermount3", "-u"], ["fusermount3", "-uz"], ["umount", "-l"]):
            if run(*cmd, mnt).returncode == 0:
                break
        deadline = time.monotonic() + EXIT_TIMEOUT
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                if alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, sig)
            time.sleep(0.2)


@contextlib.contextmanager
def unmounted_afterwards(mnt: Path) -> Iterator[None]:
    try:
        yield
    finally:
        force_unmount(mnt)


@contextlib.contextmanager
def tmpfs_at(path: Path, *options: str) -> Iterator[Path]:
    skip_unless_root()
    path.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options) or "rw", "strata-test", path], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


@contextlib.contextmanager
def read_only_bind(path: Path) -> Iterator[Path]:
    skip_unless_root()
    subprocess.run(["mount", "--bind", path, path], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", path, path], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", path], check=False)


Snapshot = dict[str, tuple[int, int, int, bytes]]


def snapshot(*roots: Path) -> Snapshot:
    """Every entry below the roots (and the roots): mode, size, mtime and file contents."""
    entries: Snapshot = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in ["", *dirnames, *filenames]:
                path = Path(dirpath, name)
                st = path.lstat()
                data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
                entries[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return entries


@dataclass(frozen=True)
class Layers:
    """lower1/ (top), lower2/ (base), upper/, work/ and mnt/ in one tmp dir."""

    root: Path
    lower1: Path
    lower2: Path
    upper: Path
    work: Path
    mnt: Path

    @classmethod
    def create(cls, root: Path) -> Layers:
        root = Path(os.path.realpath(root))
        layers = cls(
            root, root / "lower1", root / "lower2", root / "upper", root / "work", root / "mnt"
        )
        for d in (layers.lower1, layers.lower2, layers.upper, layers.work, layers.mnt):
            d.mkdir()
        (layers.lower1 / "both").write_text("from lower1\n")
        (layers.lower2 / "both").write_text("from lower2\n")
        (layers.lower2 / "base-only").write_text("base\n")
        (layers.lower1 / "dir").mkdir()
        (layers.lower1 / "dir" / "f").write_text("f\n")
        (layers.upper / "upper-only").write_text("upper\n")
        return layers

    @property
    def lowerdir(self) -> str:
        return f"lowerdir={self.lower1}:{self.lower2}"

    @property
    def rw_options(self) -> str:
        return f"{self.lowerdir},upperdir={self.upper},workdir={self.work}"

    def snapshot(self) -> Snapshot:
        return snapshot(self.lower1, self.lower2, self.upper, self.work)


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    return Layers.create(tmp_path)


# ---------------------------------------------------------------------------------------------
# bad input through the installed commands: one line, non-zero, nothing mounted, nothing changed


def _missing_lower(x: Layers) -> list[str]:
    return ["-o", f"lowerdir={x.lower1}:{x.root}/nope,upperdir={x.upper},workdir={x.work}"]


def _lower_is_a_file(x: Layers) -> list[str]:
    return ["-o", f"lowerdir={x.lower2}/base-only,upperdir={x.upper},workdir={x.work}"]


def _upper_without_work(x: Layers) -> list[str]:
    return ["-o", f"{x.lowerdir},upperdir={x.upper}"]


def _upper_inside_a_lower(x: Layers) -> list[str]:
    return ["-o", f"{x.lowerdir},upperdir={x.lower1}/dir,workdir={x.work}"]


def _malformed_lowerdir(x: Layers) -> list[str]:
    return ["-o", f"lowerdir={x.lower1}::{x.lower2},upperdir={x.upper},workdir={x.work}"]


def _unknown_option(x: Layers) -> list[str]:
    return ["-o", f"{x.rw_options},frobnicate"]


def _bad_mapping(x: Layers) -> list[str]:
    return ["-o", f"{x.rw_options},uidmapping=0:1000"]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (_missing_lower, "does not exist"),
        (_lower_is_a_file, "not a directory"),
        (_upper_without_work, "upperdir given without workdir"),
        (_upper_inside_a_lower, "must not be inside one another"),
        (_malformed_lowerdir, "empty path"),
        (_unknown_option, "fuse-strata: unknown option 'frobnicate'"),
        (_bad_mapping, "uidmapping="),
    ],
)
def test_fuse_strata_rejects_bad_layers_and_options(
    layers: Layers, make_args: Callable[[Layers], list[str]], message: str
) -> None:
    before = layers.snapshot()
    line = assert_one_line_error(run(FUSE_STRATA, *make_args(layers), layers.mnt), "fuse-strata")
    assert message in line
    assert not mounts_at(layers.mnt)
    assert layers.snapshot() == before


def test_missing_mountpoint_is_rejected(layers: Layers) -> None:
    before = layers.snapshot()
    result = run(FUSE_STRATA, "-o", layers.rw_options, layers.root / "nomnt")
    assert "mountpoint" in assert_one_line_error(result, "fuse-strata")
    assert "does not exist" in result.stderr
    assert layers.snapshot() == before


def test_mountpoint_that_is_a_file_is_rejected(layers: Layers) -> None:
    result = run(FUSE_STRATA, "-o", layers.rw_options, layers.lower2 / "base-only")
    assert "not a directory" in assert_one_line_error(result, "fuse-strata")


def test_mountpoint_inside_a_layer_is_rejected(layers: Layers) -> None:
    before = layers.snapshot()
    result = run(FUSE_STRATA, "-o", layers.rw_options, layers.lower1 / "dir")
    assert "inside the layer" in assert_one_line_error(result, "fuse-strata")
    assert layers.snapshot() == before


def test_mountpoint_already_mounted_is_rejected(layers: Layers) -> None:
    with tmpfs_at(layers.mnt):
        before = layers.snapshot()
        result = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert "already mounted" in assert_one_line_error(result, "fuse-strata")
        assert len(mounts_at(layers.mnt)) == 1
        assert layers.snapshot() == before


def test_work_dir_that_is_not_writable_is_rejected(layers: Layers) -> None:
    with read_only_bind(layers.work):
        before = layers.snapshot()
        result = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert "not writable" in assert_one_line_error(result, "fuse-strata")
        assert not mounts_at(layers.mnt)
        assert layers.snapshot() == before


def test_work_dir_on_another_filesystem_than_upper_is_rejected(layers: Layers) -> None:
    with tmpfs_at(layers.root / "otherfs") as other:
        work = other / "work"
        work.mkdir()
        before = layers.snapshot()
        options = f"{layers.lowerdir},upperdir={layers.upper},workdir={work}"
        result = run(FUSE_STRATA, "-o", options, layers.mnt)
        assert "not on the same filesystem" in assert_one_line_error(result, "fuse-strata")
        assert not mounts_at(layers.mnt)
        assert layers.snapshot() == before
        assert list(work.iterdir()) == []


@pytest.mark.parametrize(
    "command",
    [[STRATA, "mount"], [sys.executable, "-m", "unionfs"]],
    ids=["strata-mount", "python-m-unionfs"],
)
def test_strata_mount_rejects_bad_input(layers: Layers, command: list[str | Path]) -> None:
    before = layers.snapshot()
    missing = run(*command, "--lower", layers.root / "nope", layers.mnt)
    assert "does not exist" in assert_one_line_error(missing, "strata")
    no_work = run(*command, "--lower", layers.lower1, "--upper", layers.upper, layers.mnt)
    assert "--upper and --work" in assert_one_line_error(no_work, "strata")
    usage = run(*command, layers.mnt)
    assert "--lower" in assert_one_line_error(usage, "strata")
    assert not mounts_at(layers.mnt)
    assert layers.snapshot() == before


def test_strata_umount_of_something_not_mounted_fails_clearly(tmp_path: Path) -> None:
    result = run(STRATA, "umount", tmp_path)
    assert assert_one_line_error(result, "strata") == f"strata: {tmp_path}: not mounted"
    assert result.returncode == 1


def test_strata_umount_refuses_a_mount_that_is_not_fuse(tmp_path: Path) -> None:
    with tmpfs_at(tmp_path / "t") as t:
        result = run(STRATA, "umount", t)
        assert "not a FUSE mount" in assert_one_line_error(result, "strata")
        assert mounts_at(t)


# A FUSE mount whose daemon was killed: stat() of the mount point fails with ENOTCONN.
_DEAD_MOUNT_SCRIPT: Final = textwrap.dedent(
    """
    import os, signal, sys
    import pyfuse3
    pyfuse3.init(pyfuse3.Operations(), sys.argv[1], set())
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.fuse
def test_dead_fuse_mount_at_the_mountpoint_is_reported_and_strata_umount_clears_it(
    layers: Layers,
) -> None:
    skip_unless_fuse()
    with unmounted_afterwards(layers.mnt):
        subprocess.run(
            [sys.executable, "-c", _DEAD_MOUNT_SCRIPT, str(layers.mnt)], check=False, timeout=30
        )
        assert mounts_at(layers.mnt), "could not make a dead FUSE mount"
        with pytest.raises(OSError, match=os.strerror(errno.ENOTCONN)):
            os.stat(layers.mnt)
        result = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert "dead FUSE mount" in assert_one_line_error(result, "fuse-strata")
        cleared = run(STRATA, "umount", layers.mnt)
        assert cleared.returncode == 0, cleared.stderr
        assert not mounts_at(layers.mnt)


# ---------------------------------------------------------------------------------------------
# real mounts


@pytest.mark.fuse
def test_fuse_strata_daemonizes_and_returns_once_the_mount_is_live(layers: Layers) -> None:
    skip_unless_fuse()
    link = (
        layers.root / "low:er"
    )  # a symlinked lower (as containers/storage's l/ links) with a colon
    link.symlink_to(layers.lower2)
    lowerdir = f"lowerdir={layers.lower1}:{layers.root}/low\\:er"
    options = f"{lowerdir},upperdir={layers.upper},workdir={layers.work}"
    with unmounted_afterwards(layers.mnt):
        # capture_output: run() returns only when the daemon has let go of our stdout/stderr.
        result = run(FUSE_STRATA, "-o", options, layers.mnt)
        assert result.returncode == 0, result.stderr
        assert (result.stdout, result.stderr) == ("", "")
        assert (layers.mnt / "both").read_text() == "from lower1\n"  # right away
        assert (layers.mnt / "base-only").read_text() == "base\n"
        assert (layers.mnt / "upper-only").read_text() == "upper\n"
        assert libc.statfs_type(layers.mnt) == mountinfo.FUSE_SUPER_MAGIC
        pids = daemon_pids(layers.mnt)
        assert pids
        for pid in pids:
            assert os.getsid(pid) != os.getsid(0)  # its own session
            for fd in (0, 1, 2):
                assert os.readlink(f"/proc/{pid}/fd/{fd}") == os.devnull
            assert os.readlink(f"/proc/{pid}/cwd") == "/"


@pytest.mark.fuse
def test_strata_umount_unmounts_and_waits_until_the_daemon_is_gone(layers: Layers) -> None:
    skip_unless_fuse()
    with unmounted_afterwards(layers.mnt):
        mounted = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert mounted.returncode == 0, mounted.stderr
        (layers.mnt / "new").write_text("written through the union\n")
        pids = daemon_pids(layers.mnt)
        result = run(STRATA, "umount", layers.mnt)
        assert result.returncode == 0, result.stderr
        assert (result.stdout, result.stderr) == ("", "")
        assert not mounts_at(layers.mnt)
        assert not any(alive(pid) for pid in pids)
        assert (layers.upper / "new").read_text() == "written through the union\n"
        again = run(STRATA, "umount", layers.mnt)
        assert "not mounted" in assert_one_line_error(again, "strata")


@pytest.mark.fuse
def test_strata_umount_times_out_clearly_when_the_daemon_does_not_let_go(layers: Layers) -> None:
    skip_unless_fuse()
    skip_unless_root()  # unmounting without the daemon's help: umount(2)
    with unmounted_afterwards(layers.mnt):
        mounted = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert mounted.returncode == 0, mounted.stderr
        pids = daemon_pids(layers.mnt)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            result = run(STRATA, "umount", "--timeout", "0.5", layers.mnt)
            line = assert_one_line_error(result, "strata")
            assert "still holds the FUSE connection" in line
            assert not mounts_at(layers.mnt)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        wait_for(lambda: not any(alive(p) for p in pids), EXIT_TIMEOUT, "the daemon to exit")


@pytest.mark.fuse
def test_strata_mount_without_upper_is_a_read_only_union(layers: Layers) -> None:
    skip_unless_fuse()
    with unmounted_afterwards(layers.mnt):
        before = layers.snapshot()
        result = run(
            STRATA, "mount", "--lower", layers.lower1, "--lower", layers.lower2, layers.mnt
        )
        assert result.returncode == 0, result.stderr
        assert (result.stdout, result.stderr) == ("", "")
        assert (layers.mnt / "both").read_text() == "from lower1\n"
        assert sorted(os.listdir(layers.mnt)) == ["base-only", "both", "dir"]
        with pytest.raises(OSError, match=os.strerror(errno.EROFS)):
            (layers.mnt / "new").write_text("x")
        umounted = run(STRATA, "umount", layers.mnt)
        assert umounted.returncode == 0, umounted.stderr
        assert layers.snapshot() == before


@pytest.mark.fuse
def test_python_m_unionfs_f_serves_in_the_foreground_until_unmounted(layers: Layers) -> None:
    skip_unless_fuse()
    log = layers.root / "daemon.log"
    cmd = [sys.executable, "-m", "unionfs", "-f", "--lower", str(layers.lower1)]
    cmd += ["--upper", str(layers.upper), "--work", str(layers.work), str(layers.mnt)]
    with unmounted_afterwards(layers.mnt), log.open("wb") as err:
        proc = subprocess.Popen(cmd, stderr=err)
        try:
            wait_for(
                lambda: bool(mounts_at(layers.mnt)) or proc.poll() is not None,
                MOUNT_TIMEOUT,
                "the mount",
            )
            assert proc.poll() is None, log.read_text()
            assert (layers.mnt / "both").read_text() == "from lower1\n"
            assert daemon_pids(layers.mnt) == {proc.pid}
            result = run(STRATA, "umount", layers.mnt)
            assert result.returncode == 0, result.stderr
            assert proc.wait(timeout=EXIT_TIMEOUT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert b"Traceback" not in log.read_bytes()


@pytest.mark.fuse
def test_a_failure_in_the_daemon_reaches_the_parent_as_one_line(layers: Layers) -> None:
    skip_unless_fuse()
    second = layers.root / "mnt2"
    second.mkdir()
    with unmounted_afterwards(layers.mnt), unmounted_afterwards(second):
        first = run(FUSE_STRATA, "-o", layers.rw_options, layers.mnt)
        assert first.returncode == 0, first.stderr
        # The same upper and work dir again: validation in the parent passes, the mount itself
        # refuses layers in use by another strata mount.
        result = run(FUSE_STRATA, "-o", layers.rw_options, second)
        assert_one_line_error(result, "fuse-strata")
        assert not mounts_at(second)


@pytest.fixture
def fuse_strata_on_default_path() -> Iterator[None]:
    """mount(8) runs mount.fuse3 without PATH, and it runs `sh -c 'fuse-strata ...'`, so sh
    searches its default PATH. Link the venv's fuse-strata into /usr/local/bin for the test and
    remove the link afterwards (a link we did not make is left alone)."""
    skip_unless_root()
    if shutil.which("mount.fuse3", path="/sbin:/usr/sbin") is None:
        pytest.skip("mount.fuse3 is not installed (apt install fuse3)")
    link = Path("/usr/local/bin/fuse-strata")
    if os.path.lexists(link):
        if link.resolve() != FUSE_STRATA.resolve():
            pytest.skip(f"{link} exists and is not this checkout's fuse-strata")
        yield
        return
    link.symlink_to(FUSE_STRATA)
    try:
        yield
    finally:
        link.unlink(missing_ok=True)


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_strata_on_default_path")
def test_mount_t_fuse_fuse_strata_works(layers: Layers) -> None:
    skip_unless_fuse()
    with unmounted_afterwards(layers.mnt):
        result = run(
            "mount", "-t", "fuse.fuse-strata", "layers", layers.mnt, "-o", layers.rw_options
        )
        assert result.returncode == 0, result.stderr
        assert (layers.mnt / "both").read_text() == "from lower1\n"
        assert mounts_at(layers.mnt)[-1].fstype.startswith("fuse")
        umounted = run(STRATA, "umount", layers.mnt)
        assert umounted.returncode == 0, umounted.stderr


@pytest.mark.fuse
@pytest.mark.usefixtures("fuse_strata_on_default_path")
def test_an_fstab_line_works_with_mount_T(layers: Layers) -> None:
    skip_unless_fuse()
    fstab = layers.root / "fstab"
    options = f"{layers.rw_options},nofail,_netdev,noatime,x-systemd.requires=/"
    fstab.write_text(f"layers {layers.mnt} fuse.fuse-strata {options} 0 0\n")
    with unmounted_afterwards(layers.mnt):
        result = run("mount", "-T", fstab, layers.mnt)
        assert result.returncode == 0, result.stderr
        assert (layers.mnt / "dir" / "f").read_text() == "f\n"
        umounted = run("umount", layers.mnt)
        assert umounted.returncode == 0, umounted.stderr
        assert not mounts_at(layers.mnt)


def test_a_lower_layer_given_twice_or_inside_another_is_refused(tmp_path: Path) -> None:
    """As kernel overlayfs refuses overlapping layers (issue 12: `--lower l1 --lower l1`
    mounted)."""
    (tmp_path / "l1/sub").mkdir(parents=True)
    (tmp_path / "m").mkdir()
    l1 = str(tmp_path / "l1")
    twice = run(STRATA, "mount", "--lower", l1, "--lower", l1 + "/", tmp_path / "m")
    assert assert_one_line_error(twice, "strata") == f"strata: lower layer {l1}: given twice"
    nested = run(STRATA, "mount", "--lower", l1 + "/sub", "--lower", l1, tmp_path / "m")
    assert "one is inside the other" in assert_one_line_error(nested, "strata")
    assert not os.path.ismount(tmp_path / "m")
    assert cli_unique(l1, l1 + "/", l1 + "/sub") == (l1, l1 + "/sub")


def cli_unique(*paths: str) -> tuple[str, ...]:
    from unionfs.config import unique_lowers

    return tuple(str(p) for p in unique_lowers([Path(p) for p in paths]))


def test_an_unexpected_error_is_one_line_with_status_125(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug still ends in one line (issue 12: it named a `-d` flag most commands lack); the
    traceback is there with STRATA_DEBUG=1."""

    def broken() -> int:
        raise RuntimeError("a bug")

    monkeypatch.delenv("STRATA_DEBUG", raising=False)
    assert command.Runner("strata").run(broken) == 125
    assert capsys.readouterr().err == (
        "strata: unexpected error: RuntimeError: a bug (STRATA_DEBUG=1 shows the traceback)\n"
    )
    monkeypatch.setenv("STRATA_DEBUG", "1")
    with pytest.raises(RuntimeError, match="a bug"):
        command.Runner("strata").run(broken)


SUBCOMMANDS: Final = (
    "mount", "umount", "run", "create", "start", "exec", "ps", "stop", "kill", "rm", "logs",
    "inspect", "load", "save", "import", "commit", "build", "images", "rmi", "tag", "history",
    "image", "bench",
)  # fmt: skip


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_usage_errors_exit_125_in_every_subcommand(command: str) -> None:
    """docker's convention (issue 12, finding 9: argparse's 2 in some, 125 promised)."""
    result = run(STRATA, command, "--no-such-option")
    assert result.returncode == 125, result.stderr
    assert assert_one_line_error(result, "strata").startswith("strata: ")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["rm", "nosuch"], 1, "no such container: nosuch"),
        (["stop", "nosuch"], 1, "no such container: nosuch"),
        (["kill", "nosuch"], 1, "no such container: nosuch"),
        (["logs", "nosuch"], 1, "no such container: nosuch"),
        (["start", "nosuch"], 1, "no such container: nosuch"),
        (["exec", "nosuch", "true"], 1, "no such container: nosuch"),
        (["rmi", "nosuch:1"], 1, "no such image: nosuch:1"),
        (["history", "nosuch:1"], 1, "no such image: nosuch:1"),
        (["tag", "nosuch:1", "other:1"], 1, "no such image: nosuch:1"),
        (["run", "nosuch:1"], 125, "no such image: nosuch:1"),
        (["create", "nosuch:1"], 125, "no such image: nosuch:1"),
    ],
)
def test_not_found_exits_as_docker_does(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    """A name that is not there: 1 in the management commands, 125 when run or create cannot
    make a container, as docker answers."""
    root = ["--root", str(tmp_path / "state")]
    result = run(STRATA, args[0], *root, *args[1:])
    assert result.returncode == code, result.stderr
    assert message in assert_one_line_error(result, "strata")


def test_ctrl_c_while_strata_starts_is_quiet(tmp_path: Path) -> None:
    """SIGINT while strata is still importing its modules (issue 12: a Python traceback): exit
    status 130 and no traceback. Python's verbose import log is the readiness signal: the
    signal goes out as the command line module starts to load."""
    env = dict(os.environ, PYTHONVERBOSE="1")
    proc = subprocess.Popen(
        [str(STRATA), "images", "--root", str(tmp_path / "state")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    seen = []
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        seen.append(line)
        if "unionfs/cli.py" in line or "import 'unionfs.cli'" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    proc.wait(timeout=COMMAND_TIMEOUT)
    assert any("unionfs/cli" in line for line in seen)
    assert "Traceback" not in rest
    assert proc.returncode == 130
