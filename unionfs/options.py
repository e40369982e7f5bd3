"""The two mount command lines' vocabulary: fuse-overlayfs's (`fuse-strata -o lowerdir=...`,
as container engines, mount.fuse3 and fstab write it) and strata's own (`strata mount --lower`).

Both end in a `MountRequest`; nothing here touches the filesystem, so every mistake in a
command line is found, as one line, before anything is mounted or written.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

from .command import ArgumentParser
from .config import (
    DEFAULT_SPIN_US,
    IdMapping,
    MountOptions,
    Passthrough,
    UnionConfig,
    WhiteoutFormat,
)
from .errors import UsageError


class MountRequest(NamedTuple):
    """A parsed mount command line: what to mount, how, where, and whether to stay in front.

    `cfg` has not been through `config.validate()` yet; paths are absolute but not resolved.
    """

    cfg: UnionConfig
    opts: MountOptions
    mountpoint: Path
    foreground: bool


# ---------------------------------------------------------------------------------------------
# -o option strings (the fuse-overlayfs / mount(8) vocabulary)


def split_option_group(text: str) -> list[str]:
    """Split one `-o` argument at its commas.

    A comma does not split inside double quotes (SELinux contexts such as
    `context="system_u:object_r:container_file_t:s0:c1,c2"`, as containers/storage passes them)
    or after a backslash. Backslashes are kept: the path options remove them (`unescape_path`),
    so `\\,` and `\\:` reach `lowerdir=` the way the kernel's overlayfs reads them. Empty items
    (`a,,b`) are dropped.
    """
    items: list[str] = []
    current: list[str] = []
    quoted = False
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            current.append(ch)
            current.append(next(chars, ""))
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [item for item in items if item]


def unescape_path(text: str) -> str:
    """Remove the backslash escapes of one path (`\\:` -> `:`, `\\,` -> `,`, `\\\\` -> `\\`)."""
    return re.sub(r"\\(.)", r"\1", text, flags=re.DOTALL)


def split_lowerdir(value: str) -> list[str]:
    """The paths of `lowerdir=TOP:...:BASE`, top first.

    Unescaped colons separate the paths and `\\:` is a colon inside a path, as in the kernel's
    overlayfs and fuse-overlayfs >= 1.15. An empty element (`a::b`, a leading or trailing colon)
    is an error: the kernel reads `::` as data-only layers, which strata does not have.
    """
    paths: list[str] = []
    current: list[str] = []
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            current.append(next(chars, ""))
        elif ch == ":":
            paths.append("".join(current))
            current = []
        else:
            current.append(ch)
    paths.append("".join(current))
    if not value or any(not p for p in paths):
        raise UsageError(f"lowerdir={value!r}: empty path in the list")
    return paths


_ID_LIMIT: Final = 1 << 32


def parse_id_mappings(name: str, value: str) -> tuple[IdMapping, ...]:
    """`uidmapping=`/`gidmapping=` as fuse-overlayfs reads it: INSIDE:OUTSIDE:COUNT triplets,
    all joined by colons (`0:1000:1:1:100000:65536`).

    Empty fields are skipped as fuse-overlayfs's strtok() skips them, because containers/storage
    writes `uidmapping=:0:1000:1...` (a colon before the first triplet).
    """
    fields = [f for f in value.split(":") if f]
    usage = f"{name}={value!r}: expected INSIDE:OUTSIDE:COUNT[:INSIDE:OUTSIDE:COUNT...]"
    if not fields or len(fields) % 3:
        raise UsageError(usage)
    numbers: list[int] = []
    for f in fields:
        if not f.isascii() or not f.isdigit() or int(f) >= _ID_LIMIT:
            raise UsageError(f"{usage}; {f!r} is not an id")
        numbers.append(int(f))
    mappings = tuple(
        IdMapping(inside=numbers[i], outside=numbers[i + 1], count=numbers[i + 2])
        for i in range(0, len(numbers), 3)
    )
    for m in mappings:
        if m.count == 0 or m.inside + m.count > _ID_LIMIT or m.outside + m.count > _ID_LIMIT:
            raise UsageError(f"{usage}; the range {m.inside}:{m.outside}:{m.count} is invalid")
    return mappings


def _parse_id(name: str, value: str) -> int:
    if not value.isascii() or not value.isdigit() or int(value) >= _ID_LIMIT:
        raise UsageError(f"{name}={value!r}: not a uid/gid")
    return int(value)


# Kernel mount flags, each group resolved last-wins here because pyfuse3.init() takes a *set* of
# options (no order). Only flags libfuse 3 accepts are passed on; the other atime spellings
# (relatime, lazytime, ...) are ignored below: FUSE leaves atime to the filesystem anyway.
_KERNEL_FLAGS: Final[dict[str, str]] = {
    "suid": "suid",
    "nosuid": "suid",
    "dev": "dev",
    "nodev": "dev",
    "exec": "exec",
    "noexec": "exec",
    "atime": "atime",
    "noatime": "atime",
    "sync": "sync",
    "async": "sync",
    "dirsync": "dirsync",
}

# Accepted and ignored, and why ignoring is safe:
_IGNORED_FLAGS: Final = frozenset(
    {
        # fstab/mount(8) bookkeeping that mount.fuse3 may pass through
        "defaults", "auto", "noauto", "user", "users", "nouser", "owner", "group", "nofail",
        "_netdev",
        # mount propagation (buildah adds `private`); strata makes its mount in the caller's ns
        "private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable",
        # atime policies libfuse does not take; FUSE atime is the filesystem's business
        "relatime", "norelatime", "strictatime", "nostrictatime", "lazytime", "nolazytime",
        "diratime", "nodiratime",
        # kernel overlayfs: strata reads user.* and trusted.* overlay xattrs either way
        "userxattr",
        # fuse-overlayfs: strata keeps ACLs and real directory link counts; both are supersets
        "noacl", "static_nlink",
        # libfuse / fuse-overlayfs performance knobs without a meaning for strata
        "kernel_cache", "auto_cache", "splice_read", "splice_write", "splice_move",
        "auto_unmount",
    }
)  # fmt: skip
_IGNORED_VALUES: Final = frozenset(
    {
        "context", "fscontext", "defcontext", "rootcontext",  # SELinux labels: no LSM here
        "comment",  # util-linux fstab comment
        "timeout", "threaded", "fast_ino", "writeback", "max_read", "max_write",  # tuning
        "max_threads", "max_idle_threads",
        "noxattrs",  # strata keeps xattrs working: a superset
    }
)  # fmt: skip
# Kernel overlayfs features strata does not implement: accepted only when switched off.
_OFF_ONLY: Final[dict[str, frozenset[str]]] = {
    "redirect_dir": frozenset({"off", "nofollow"}),
    "index": frozenset({"off"}),
    "nfs_export": frozenset({"off"}),
    "xino": frozenset({"off", "auto"}),
    "xattr_permissions": frozenset({"0"}),  # fuse-overlayfs: modes stored in xattrs
    "plugins": frozenset({""}),  # fuse-overlayfs: layer plugins
}
_LAYER_OPTIONS: Final = frozenset({"lowerdir", "upperdir", "workdir"})
_NAME_VALUE: Final = re.compile(r"[^\s,\\\"']+")


@dataclass(slots=True)
class _OptionState:
    """What the options seen so far ask for; later options override earlier ones."""

    euid: int
    lowerdir: str | None = None
    upperdir: str | None = None
    workdir: str | None = None
    read_only: bool = False
    flags: dict[str, str] = field(default_factory=dict)
    allow_other: bool = False
    allow_root: bool = False
    fsname: str | None = None
    subtype: str | None = None
    debug: bool = False
    volatile: bool = False
    squash_to_root: bool = False
    squash_uid: int | None = None
    squash_gid: int | None = None
    uid_map: tuple[IdMapping, ...] = ()
    gid_map: tuple[IdMapping, ...] = ()
    whiteout: WhiteoutFormat = WhiteoutFormat.AUTO
    metacopy: bool | None = None  # None: the command's default (on for strata, off for fuse-strata)
    spin_us: int = DEFAULT_SPIN_US
    passthrough: Passthrough = Passthrough.AUTO

    def __post_init__(self) -> None:
        # Running as root: like fuse-overlayfs, let everyone in (the kernel checks the modes)
        # and honour setuid bits, as kernel overlayfs mounted by root does.
        if self.euid == 0:
            self.allow_other = True
            self.flags["suid"] = "suid"

    def apply(self, item: str, *, layers_allowed: bool = True) -> None:
        """Apply one `name[=value]` option; unknown or malformed options raise UsageError."""
        name, has_value, value = item.partition("=")
        if name in _LAYER_OPTIONS and not layers_allowed:
            raise UsageError(f"option '{name}' is not used here: give --lower/--upper/--work")
        if not has_value:
            self._apply_flag(item)
        elif name in _LAYER_OPTIONS:
            setattr(self, name, value)
        elif name in _IGNORED_VALUES or name.startswith("x-"):
            pass
        elif name in _OFF_ONLY:
            if value not in _OFF_ONLY[name]:
                raise UsageError(f"option '{item}' is not supported")
        else:
            self._apply_value(item, name, value)

    def _apply_flag(self, name: str) -> None:
        if name in _KERNEL_FLAGS:
            self.flags[_KERNEL_FLAGS[name]] = name
        elif name in ("ro", "rw"):
            self.read_only = name == "ro"
        elif name == "allow_other":
            self.allow_other, self.allow_root = True, False
        elif name == "allow_root":
            self.allow_other, self.allow_root = False, True
        elif name == "default_permissions":
            pass  # always on: the kernel checks permissions, strata does not duplicate it
        elif name == "debug":
            self.debug = True
        elif name == "volatile":
            self.volatile = True
        elif name == "squash_to_root":
            self.squash_to_root = True
        elif name in _IGNORED_FLAGS or name.startswith("x-"):
            pass
        else:
            raise UsageError(f"unknown option '{name}'")

    def _apply_value(self, item: str, name: str, value: str) -> None:
        if name == "fsync":
            if value not in ("0", "1"):
                raise UsageError(f"option '{item}': expected fsync=0 or fsync=1")
            self.volatile = value == "0"
        elif name == "squash_to_uid":
            self.squash_uid = _parse_id(name, value)
        elif name == "squash_to_gid":
            self.squash_gid = _parse_id(name, value)
        elif name == "uidmapping":
            self.uid_map = parse_id_mappings(name, value)
        elif name == "gidmapping":
            self.gid_map = parse_id_mappings(name, value)
        elif name == "whiteout":
            self.whiteout = parse_whiteout(value)
        elif name == "metacopy":
            if value not in ("on", "off"):
                raise UsageError(f"option '{item}': expected metacopy=on or metacopy=off")
            self.metacopy = value == "on"
        elif name == "spin":
            if not value.isdigit() or int(value) > 100_000:
                raise UsageError(f"option '{item}': expected microseconds from 0 to 100000")
            self.spin_us = int(value)
        elif name == "passthrough":
            try:
                self.passthrough = Passthrough(value)
            except ValueError:
                raise UsageError(f"option '{item}': expected passthrough=auto, on or off") from None
        elif name in ("fsname", "subtype"):
            if not _NAME_VALUE.fullmatch(value):
                raise UsageError(f"option '{item}': empty, or contains spaces, quotes or commas")
            setattr(self, name, value)
        else:
            raise UsageError(f"unknown option '{name}'")

    def mount_options(self, *, source: str | None = None) -> MountOptions:
        extra = [self.flags[group] for group in sorted(self.flags)]
        if self.allow_root:
            extra.append("allow_root")
        if self.subtype is not None:
            extra.append(f"subtype={self.subtype}")
        fsname = self.fsname
        if fsname is None and source is not None and _NAME_VALUE.fullmatch(source):
            fsname = source  # `mount -t fuse.fuse-strata SOURCE` shows SOURCE, as overlay does
        return MountOptions(
            fsname=fsname or MountOptions().fsname,
            allow_other=self.allow_other,
            default_permissions=True,
            read_only=self.read_only,
            debug=self.debug,
            extra=tuple(extra),
            spin_us=self.spin_us,
            passthrough=self.passthrough,
        )

    def union_config(
        self,
        lowers: Sequence[Path],
        upper: Path | None,
        work: Path | None,
        *,
        metacopy_default: bool,
    ) -> UnionConfig:
        squash_uid, squash_gid = self.squash_uid, self.squash_gid
        if self.squash_to_root:  # squash_to_uid/gid take precedence, as in fuse-overlayfs
            squash_uid = 0 if squash_uid is None else squash_uid
            squash_gid = 0 if squash_gid is None else squash_gid
        return UnionConfig(
            lowers=tuple(lowers),
            upper=upper,
            work=work,
            whiteout=self.whiteout,
            volatile=self.volatile,
            squash_uid=squash_uid,
            squash_gid=squash_gid,
            uid_map=self.uid_map,
            gid_map=self.gid_map,
            metacopy=metacopy_default if self.metacopy is None else self.metacopy,
        )


def parse_whiteout(value: str) -> WhiteoutFormat:
    try:
        return WhiteoutFormat(value)
    except ValueError:
        choices = "|".join(w.value for w in WhiteoutFormat)
        raise UsageError(f"whiteout={value!r}: expected one of {choices}") from None


def _absolute(path: str) -> Path:
    """Make a path absolute against the current directory, which the daemon leaves for `/`."""
    return Path(os.path.abspath(path))


# ---------------------------------------------------------------------------------------------
# fuse-strata: the fuse-overlayfs command line


FUSE_STRATA_HELP: Final = """\
usage: fuse-strata [-f] [-d] -o lowerdir=TOP:...:BASE[,upperdir=U,workdir=W][,OPTS] [SOURCE] MNT

A drop-in for fuse-overlayfs: mounts the union of the lower layers (top first) and the optional
upper layer at MNT. Without upperdir the union is read-only. `-o` may come before or after the
positionals and be repeated; its options accumulate (later ones win). `\\:` is a colon inside a
lowerdir path.

  -f              stay in the foreground (default: daemonize once the mount is live)
  -d, --debug     debug logging; implies -f
  -o OPTS         comma-separated mount options (below)
  -h, --help      show this help
  -V, --version   show the version

options:
  lowerdir=, upperdir=, workdir=      the layers (upperdir and workdir go together)
  ro, rw                              read-only or read-write mount
  suid, nosuid, dev, nodev, exec, noexec, atime, noatime, sync, async, dirsync
                                      kernel mount flags
  allow_other, allow_root, default_permissions, fsname=NAME, subtype=NAME
  volatile, fsync=0                   skip fsync (fsync=1 keeps it)
  squash_to_root, squash_to_uid=N, squash_to_gid=N
  uidmapping=IN:OUT:N[:IN:OUT:N...], gidmapping=...
  whiteout=auto|chardev|wh            how whiteouts are written (default auto)
  metacopy=on|off                     metadata-only copy-up (default off for fuse-strata:
                                      engines read the upper directly; on for strata mount)
  spin=US                             keep polling for requests this long before sleeping
                                      (default 100; 0 never polls)
  passthrough=auto|on|off             FUSE passthrough: the kernel reads and writes the layer
                                      files itself, one page cache for all mounts of a layer
                                      (default auto: when the kernel offers it and the daemon
                                      has CAP_SYS_ADMIN; off: no-open mode, fewer requests)
ignored: context=, noacl, static_nlink, userxattr, timeout=, threaded=, private, nofail,
_netdev, auto, noauto, user, users, defaults, x-*, relatime and other atime spellings.
As root the defaults are allow_other, default_permissions and suid.
"""


@dataclass(slots=True)
class FuseArgv:
    options: list[str] = field(default_factory=list)  # each -o argument, in order
    positionals: list[str] = field(default_factory=list)
    foreground: bool = False
    debug: bool = False
    show_help: bool = False
    show_version: bool = False


def scan_fuse_argv(argv: Sequence[str]) -> FuseArgv:
    """Sort a libfuse-style argv into flags, `-o` groups and positionals (in any order)."""
    scanned = FuseArgv()
    args = iter(argv)
    for arg in args:
        if arg == "--":
            scanned.positionals.extend(args)
        elif arg == "-o":
            value = next(args, None)
            if value is None:
                raise UsageError("option '-o' needs an argument")
            scanned.options.append(value)
        elif arg.startswith("-o"):
            scanned.options.append(arg[2:])
        elif arg == "-f":
            scanned.foreground = True
        elif arg in ("-d", "--debug"):
            scanned.debug = True
        elif arg == "-s":
            pass  # libfuse's single-threaded flag: strata serves from one trio thread anyway
        elif arg in ("-h", "--help"):
            scanned.show_help = True
        elif arg in ("-V", "--version"):
            scanned.show_version = True
        elif arg.startswith("-") and arg != "-":
            raise UsageError(f"unknown option '{arg}'")
        else:
            scanned.positionals.append(arg)
    return scanned


def parse_fuse_overlayfs_args(argv: Sequence[str], *, euid: int | None = None) -> MountRequest:
    """Parse a fuse-overlayfs command line (without the program name).

    `euid` (default: the real one) picks the defaults: root gets allow_other and suid.
    Raises UsageError with one line for anything it cannot honour.
    """
    scanned = scan_fuse_argv(argv)
    if scanned.show_help or scanned.show_version:
        raise UsageError("--help and --version are handled by fuse_strata_main()")
    return fuse_request(scanned, os.geteuid() if euid is None else euid)


def fuse_request(scanned: FuseArgv, euid: int) -> MountRequest:
    state = _OptionState(euid=euid)
    for group in scanned.options:
        for item in split_option_group(group):
            state.apply(item)
    state.debug = state.debug or scanned.debug
    if not scanned.positionals:
        raise UsageError("no mountpoint given")
    if len(scanned.positionals) > 2:
        extra = " ".join(scanned.positionals[:-2])
        raise UsageError(f"too many arguments: {extra!r} (expected [SOURCE] MNT)")
    source = scanned.positionals[0] if len(scanned.positionals) == 2 else None
    mountpoint = scanned.positionals[-1]
    if state.lowerdir is None:
        raise UsageError("no lowerdir given (-o lowerdir=TOP:...:BASE)")
    lowers = [_absolute(p) for p in split_lowerdir(state.lowerdir)]
    upper, work = state.upperdir, state.workdir
    if upper is not None and work is None:
        raise UsageError("upperdir given without workdir")
    if work is not None and upper is None:
        raise UsageError("workdir given without upperdir")
    upper_path = None if upper is None else _absolute(_nonempty("upperdir", unescape_path(upper)))
    work_path = None if work is None else _absolute(_nonempty("workdir", unescape_path(work)))
    if upper_path is None:
        state.read_only = True  # a union without an upper layer is read-only: say so to the kernel
    return MountRequest(
        # Off by default: engines diff the upper themselves and would read a metacopy file as a
        # hole (data loss in their commits and image builds).
        cfg=state.union_config(lowers, upper_path, work_path, metacopy_default=False),
        opts=state.mount_options(source=source),
        mountpoint=_absolute(mountpoint),
        foreground=scanned.foreground or state.debug,
    )


def _nonempty(name: str, value: str) -> str:
    if not value:
        raise UsageError(f"{name}= is empty")
    return value


def add_mount_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lower",
        action="append",
        required=True,
        metavar="DIR",
        help="a lower layer; repeat it, top layer first (one path each; colons are literal)",
    )
    parser.add_argument("--upper", metavar="DIR", help="the writable upper layer (needs --work)")
    parser.add_argument("--work", metavar="DIR", help="work dir, on the upper's filesystem")
    parser.add_argument(
        "-f", "--foreground", action="store_true", help="do not daemonize; serve until unmounted"
    )
    parser.add_argument("-d", "--debug", action="store_true", help="debug logging; implies -f")
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="mount options as for fuse-strata (ro, nosuid, volatile, squash_to_root, ...)",
    )
    parser.add_argument(
        "--whiteout",
        choices=[w.value for w in WhiteoutFormat],
        help="how to write whiteouts (default auto: 0/0 chardevs, .wh. files if mknod fails)",
    )
    parser.add_argument("mountpoint", metavar="MNT", help="where to mount the union")


def parse_strata_mount_args(argv: Sequence[str], *, euid: int | None = None) -> MountRequest:
    """Parse the arguments of `strata mount` (and `python -m unionfs`)."""
    parser = ArgumentParser(prog="strata mount")
    add_mount_arguments(parser)
    return strata_mount_request(parser.parse_args(argv), os.geteuid() if euid is None else euid)


def strata_mount_request(args: argparse.Namespace, euid: int) -> MountRequest:
    state = _OptionState(euid=euid)
    for group in args.options:
        for item in split_option_group(group):
            state.apply(item, layers_allowed=False)
    if args.whiteout is not None:
        state.whiteout = WhiteoutFormat(args.whiteout)
    state.debug = state.debug or bool(args.debug)
    if (args.upper is None) != (args.work is None):
        raise UsageError("--upper and --work must be given together")
    lowers = [_absolute(_nonempty("--lower", p)) for p in args.lower]
    upper = None if args.upper is None else _absolute(args.upper)
    work = None if args.work is None else _absolute(args.work)
    if upper is None:
        state.read_only = True
    return MountRequest(
        cfg=state.union_config(lowers, upper, work, metacopy_default=True),
        opts=state.mount_options(),
        mountpoint=_absolute(args.mountpoint),
        foreground=bool(args.foreground) or state.debug,
    )
