"""The mount command lines, parsed without mounting: fuse-overlayfs's `-o` vocabulary
(unionfs.options) and `strata mount`'s arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pytest

import strata.cli as strata_cli
from unionfs import cli, options
from unionfs.config import DEFAULT_SPIN_US, IdMapping, WhiteoutFormat
from unionfs.errors import UsageError


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
