"""The command line: `strata` (subcommands), `fuse-strata` (a fuse-overlayfs drop-in) and
`python -m unionfs` (= `strata mount`).

Why the code is shaped this way:

- Start-up stays fast: this module imports only the standard library and `config`/`errors`.
  `mount` (trio, pyfuse3, the union core) is imported in the process that serves the mount,
  after the fork, so `--help`, bad input and the waiting parent never pay for it.
- Every check that can fail on bad input runs in the parent before anything is mounted or
  written (`config.validate()`, the mount point checks), so a mistake costs one line on stderr
  and leaves the layers untouched.
- Daemonizing follows what container engines and mount(8) rely on with fuse-overlayfs: the
  parent exits 0 only once the mount answers (statfs shows FUSE), and the daemon has by then
  let go of stdin/stdout/stderr, because engines read the helper's stderr until EOF.
- Errors are one line and never a traceback (`UsageError`, `OSError`); only `-d` shows the
  traceback of an unexpected exception.

Subcommands of `strata` are `Subcommand` records in `SUBCOMMANDS`: a name, how to add its
arguments, and a handler. Later subcommands (run, images, build, bench) add one record each and
import their heavy modules inside the handler.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple, NoReturn

from . import __version__
from .config import DEFAULT_SPIN_US, IdMapping, MountOptions, UnionConfig, WhiteoutFormat, validate
from .errors import UsageError

STRATA: Final = "strata"
FUSE_STRATA: Final = "fuse-strata"

FUSE_SUPER_MAGIC: Final = 0x65735546  # statfs f_type of every FUSE mount
UMOUNT_TIMEOUT: Final = 10.0  # seconds `strata umount` waits for the daemon to let go
_POLL_INTERVAL: Final = 0.05
_FUSECTL_DIR: Final = "/sys/fs/fuse/connections"

log = logging.getLogger(__name__)


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
ignored: context=, noacl, static_nlink, userxattr, timeout=, threaded=, private, nofail,
_netdev, auto, noauto, user, users, defaults, x-*, relatime and other atime spellings.
As root the defaults are allow_other, default_permissions and suid.
"""


@dataclass(slots=True)
class _FuseArgv:
    options: list[str] = field(default_factory=list)  # each -o argument, in order
    positionals: list[str] = field(default_factory=list)
    foreground: bool = False
    debug: bool = False
    show_help: bool = False
    show_version: bool = False


def _scan_fuse_argv(argv: Sequence[str]) -> _FuseArgv:
    """Sort a libfuse-style argv into flags, `-o` groups and positionals (in any order)."""
    scanned = _FuseArgv()
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
    scanned = _scan_fuse_argv(argv)
    if scanned.show_help or scanned.show_version:
        raise UsageError("--help and --version are handled by fuse_strata_main()")
    return _fuse_request(scanned, os.geteuid() if euid is None else euid)


def _fuse_request(scanned: _FuseArgv, euid: int) -> MountRequest:
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


def fuse_strata_main(argv: list[str] | None = None) -> int:
    """`fuse-strata`: mount like fuse-overlayfs (engines' mount_program, mount.fuse3, fstab)."""
    args = sys.argv[1:] if argv is None else argv
    runner = _Runner(FUSE_STRATA)
    return runner.run(lambda: _fuse_strata(runner, args))


def _fuse_strata(runner: _Runner, argv: Sequence[str]) -> int:
    scanned = _scan_fuse_argv(argv)
    runner.debug = scanned.debug
    if scanned.show_help:
        sys.stdout.write(FUSE_STRATA_HELP)
        return 0
    if scanned.show_version:
        print(f"{FUSE_STRATA}: version {__version__} (strata)")
        return 0
    request = _fuse_request(scanned, os.geteuid())
    runner.debug = request.opts.debug
    return mount_request(request, prog=FUSE_STRATA)


# ---------------------------------------------------------------------------------------------
# strata: subcommands


class _ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (a UsageError) instead of usage text plus exit(2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


@dataclass(frozen=True, slots=True)
class Subcommand:
    """One `strata` subcommand: `add_arguments` fills its parser, `run` handles it.

    `run` gets the runner so it can switch tracebacks on (`runner.debug`) once it knows.
    Keep imports of heavy modules inside `run`.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, _Runner], int]


def _add_mount_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser = _ArgumentParser(prog=f"{STRATA} mount")
    _add_mount_arguments(parser)
    return _strata_mount_request(parser.parse_args(argv), os.geteuid() if euid is None else euid)


def _strata_mount_request(args: argparse.Namespace, euid: int) -> MountRequest:
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


def _run_mount(args: argparse.Namespace, runner: _Runner) -> int:
    runner.debug = bool(args.debug)
    request = _strata_mount_request(args, os.geteuid())
    runner.debug = request.opts.debug
    return mount_request(request, prog=STRATA)


def _add_umount_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-z", "--lazy", action="store_true", help="detach now even if busy (umount -l)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=UMOUNT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for the daemon to let go (default {UMOUNT_TIMEOUT:g})",
    )
    parser.add_argument("mountpoint", metavar="MNT", help="the mounted union")


def _run_umount(args: argparse.Namespace, runner: _Runner) -> int:
    unmount(Path(args.mountpoint), lazy=bool(args.lazy), timeout=float(args.timeout))
    return 0


SUBCOMMANDS: Final[tuple[Subcommand, ...]] = (
    Subcommand("mount", "mount a union (daemonizes unless -f)", _add_mount_arguments, _run_mount),
    Subcommand(
        "umount",
        "unmount a union and wait until its daemon has let go of the layers",
        _add_umount_arguments,
        _run_umount,
    ),
)


def _strata_parser(only: str | None = None) -> _ArgumentParser:
    """The whole command line; with `only` (a subcommand's name), that subcommand alone:
    building all ~25 subparsers costs `strata run` ~10 ms of start-up, on the path to the
    container's first instruction. Anything else (`--help`, a typo) gets them all."""
    parser = _ArgumentParser(
        prog=STRATA, description="strata: a union filesystem (and container tools) in Python."
    )
    parser.add_argument("--version", action="version", version=f"{STRATA} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    subs = (*SUBCOMMANDS, *_image_subcommands(_runtime_subcommands()), *_bench_subcommands())
    if any(sub.name == only for sub in subs):
        subs = tuple(sub for sub in subs if sub.name == only)
    for sub in subs:
        sub_parser = commands.add_parser(sub.name, help=sub.help, description=sub.help)
        sub.add_arguments(sub_parser)
        sub_parser.set_defaults(subcommand=sub)
    return parser


def _runtime_subcommands() -> tuple[Subcommand, ...]:
    """The container runtime's subcommands (run, ps, ...), when the runtime is installed."""
    try:
        from runtime.cli import SUBCOMMANDS as runtime_subcommands
    except ImportError:
        return ()
    return runtime_subcommands


def _image_subcommands(runtime: tuple[Subcommand, ...]) -> tuple[Subcommand, ...]:
    """The runtime's subcommands resolving images in the image store, and the store's own
    (load, images, ...), when the image store is installed."""
    try:
        from images.cli import SUBCOMMANDS as image_subcommands
        from images.cli import with_image_store
    except ImportError:
        return runtime
    return (*with_image_store(runtime), *image_subcommands)


def _bench_subcommands() -> tuple[Subcommand, ...]:
    """`strata bench`, when the bench package is installed; bench.cli imports only the standard
    library at the top, so building the parser for `strata mount` stays as fast as before."""
    try:
        from bench.cli import SUBCOMMANDS as bench_subcommands
    except ImportError:
        return ()
    return bench_subcommands


def strata_main(argv: list[str] | None = None) -> int:
    """`strata COMMAND ...`."""
    args = sys.argv[1:] if argv is None else argv
    runner = _Runner(STRATA)

    def main() -> int:
        only = args[0] if args and not args[0].startswith("-") else None
        namespace = _strata_parser(only).parse_args(args)
        sub: Subcommand = namespace.subcommand
        return sub.run(namespace, runner)

    return runner.run(main)


def mount_main(argv: list[str] | None = None) -> int:
    """`python -m unionfs ...` is `strata mount ...`."""
    args = sys.argv[1:] if argv is None else argv
    return strata_main(["mount", *args])


@dataclass(slots=True)
class _Runner:
    """The top-level error boundary of a command: one line per error, tracebacks only with -d."""

    prog: str
    debug: bool = False

    def run(self, main: Callable[[], int]) -> int:
        try:
            return main()
        except UsageError as exc:
            self.say(str(exc))
            return exc.exit_code
        except OSError as exc:
            self.say(describe_os_error(exc))
            return 125
        except KeyboardInterrupt:
            return 130
        except SystemExit as exc:  # argparse --help/--version
            return exc.code if isinstance(exc.code, int) else 0
        except Exception as exc:  # a bug: one line, or the whole story with $STRATA_DEBUG
            if self.debug or os.environ.get("STRATA_DEBUG"):
                raise
            self.say(
                f"unexpected error: {type(exc).__name__}: {exc}"
                " (STRATA_DEBUG=1 shows the traceback)"
            )
            return 125

    def say(self, message: str) -> None:
        one_line = " ".join(message.split())
        print(f"{self.prog}: {one_line}", file=sys.stderr, flush=True)


def describe_os_error(exc: OSError) -> str:
    what = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{os.fsdecode(exc.filename)}: {what}"
    return what


# ---------------------------------------------------------------------------------------------
# mounting


def mount_request(request: MountRequest, *, prog: str) -> int:
    """Validate everything, then serve in the foreground or daemonize; the exit status."""
    _configure_logging(request.opts.debug)
    cfg = validate(request.cfg)
    mountpoint = check_mountpoint(request.mountpoint)
    check_mountpoint_outside_layers(cfg, mountpoint)
    if request.foreground:
        from . import mount  # trio, pyfuse3 and the core: only now

        mount.run(cfg, request.opts, mountpoint)
        return 0
    return _daemonize(cfg, request.opts, mountpoint, prog=prog)


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s:%(name)s:%(message)s",
    )


def check_mountpoint(path: Path) -> Path:
    """The resolved mount point, or UsageError: missing, not a directory, already mounted.

    mountinfo is consulted before stat(): stat() of a mount whose daemon hangs would hang too.
    """
    _refuse_if_mounted(path, _resolve_parent(path))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"mountpoint {path}: does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise UsageError(_dead_mount_message(path)) from None
        raise UsageError(f"mountpoint {path}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"mountpoint {path}: not a directory")
    resolved = Path(os.path.realpath(path))
    _refuse_if_mounted(path, resolved)
    return resolved


def _resolve_parent(path: Path) -> Path:
    """`path` with its parent resolved but without looking at the last component itself."""
    absolute = Path(os.path.abspath(path))
    return Path(os.path.realpath(absolute.parent)) / absolute.name


def _refuse_if_mounted(path: Path, resolved: Path) -> None:
    mounted = mounts_at(resolved)
    if not mounted:
        return
    top = mounted[-1]
    if _is_fuse(top) and fuse_connection_held(top.minor) is False:
        raise UsageError(_dead_mount_message(path))
    raise UsageError(f"mountpoint {path}: already mounted ({top.fstype} from {top.source})")


def _dead_mount_message(path: Path) -> str:
    return (
        f"mountpoint {path}: a dead FUSE mount (transport endpoint is not connected);"
        f" remove it with 'fusermount3 -u {path}' or 'strata umount {path}'"
    )


def _is_fuse(entry: MountEntry) -> bool:
    """A FUSE mount with a connection (fuseblk mounts have a real block device instead)."""
    return entry.fstype.split(".")[0] == "fuse" and entry.major == 0


def check_mountpoint_outside_layers(cfg: UnionConfig, mountpoint: Path) -> None:
    """Refuse a mount point at or below a layer: the union would contain itself, and a lookup
    through the layer would re-enter the daemon that is serving it (a deadlock)."""
    layers = [*cfg.lowers, *(p for p in (cfg.upper, cfg.work) if p is not None)]
    for layer in layers:
        if mountpoint == layer or layer in mountpoint.parents:
            raise UsageError(f"mountpoint {mountpoint}: inside the layer {layer}")


def _daemonize(cfg: UnionConfig, opts: MountOptions, mountpoint: Path, *, prog: str) -> int:
    """Fork; the child serves the mount, the parent waits until it is live and exits.

    The child reports over a pipe: `ok` once mounted (then it detaches stdio), or
    `<exit status> <message>` on failure. EOF without a report means it died.
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _serve_as_daemon(cfg, opts, mountpoint, write_fd)
    os.close(write_fd)
    try:
        report = _read_all(read_fd)
    except KeyboardInterrupt:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        raise
    finally:
        os.close(read_fd)
    if report == b"ok\n":
        _check_live(mountpoint, pid)
        return 0
    _, status = os.waitpid(pid, 0)
    if report:
        code, _, message = report.decode(errors="replace").partition(" ")
        raise UsageError(message.strip(), int(code) if code.isdigit() else 1)
    raise UsageError(f"the mount daemon died without a word ({_describe_status(status)})", 1)


def _serve_as_daemon(
    cfg: UnionConfig, opts: MountOptions, mountpoint: Path, report_fd: int
) -> NoReturn:
    """The daemon child: its own session, `/` as cwd, serve until unmounted, never return."""
    reported = False

    def report(data: bytes) -> None:
        nonlocal reported
        if not reported:
            reported = True
            with contextlib.suppress(OSError):
                os.write(report_fd, data)
            os.close(report_fd)

    def on_mounted() -> None:
        report(b"ok\n")
        _detach_stdio()

    status = 1
    try:
        os.setsid()
        os.chdir("/")
        from . import mount

        mount.run(cfg, opts, mountpoint, on_mounted=on_mounted)
        status = 0
    except UsageError as exc:
        status = exc.exit_code
        report(f"{status} {exc}\n".encode())
    except OSError as exc:
        report(f"1 {describe_os_error(exc)}\n".encode())
    except BaseException as exc:  # the daemon has nobody else to tell; then it must exit
        report(f"1 cannot mount: {type(exc).__name__}: {exc}\n".encode())
    finally:
        report(b"1 the mount daemon stopped before mounting\n")
        os._exit(status)


def _detach_stdio() -> None:
    """Point fds 0-2 at /dev/null: engines read our stderr until EOF, so the daemon must let go."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(sig).name}"
        return f"killed by signal {sig}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _check_live(mountpoint: Path, pid: int) -> None:
    """After the daemon's `ok`: a FUSE mount is at the mount point and answers statfs."""
    mounted = mounts_at(mountpoint)
    if not mounted or not mounted[-1].fstype.startswith("fuse"):
        raise UsageError(
            f"the daemon (pid {pid}) reported success but {mountpoint} is not mounted", 1
        )
    f_type = statfs_type(mountpoint)  # answered by the daemon: it is serving
    if f_type != FUSE_SUPER_MAGIC:
        raise UsageError(f"{mountpoint}: not a FUSE mount after mounting (f_type {f_type:#x})", 1)


def statfs_type(path: Path) -> int:
    """statfs(2) f_type, which os.statvfs does not report."""
    import ctypes  # only the waiting parent needs it

    class _Statfs(ctypes.Structure):
        # f_type is the first field (__fsword_t, a long); the rest we do not read.
        _fields_ = (("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256))

    libc = ctypes.CDLL(None, use_errno=True)
    buf = _Statfs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))
    return int(buf.f_type)


# ---------------------------------------------------------------------------------------------
# /proc/self/mountinfo


class MountEntry(NamedTuple):
    mount_id: int
    major: int
    minor: int
    mountpoint: Path
    fstype: str
    source: str


def _unescape_mountinfo(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field_)


def read_mountinfo() -> list[MountEntry]:
    entries = []
    with open("/proc/self/mountinfo", "rb") as f:
        for raw in f:
            left, _, right = os.fsdecode(raw.rstrip(b"\n")).partition(" - ")
            fields = left.split(" ")
            major, _, minor = fields[2].partition(":")
            fstype, source, *_ = right.split(" ")
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    major=int(major),
                    minor=int(minor),
                    mountpoint=Path(_unescape_mountinfo(fields[4])),
                    fstype=fstype,
                    source=_unescape_mountinfo(source),
                )
            )
    return entries


def mounts_at(path: Path) -> list[MountEntry]:
    """The mounts whose mount point is `path` (already resolved), oldest first."""
    return [m for m in read_mountinfo() if m.mountpoint == path]


# ---------------------------------------------------------------------------------------------
# unmounting


def unmount(mountpoint: Path, *, lazy: bool = False, timeout: float = UMOUNT_TIMEOUT) -> None:
    """Unmount a FUSE mount and wait until its daemon has closed its /dev/fuse fd.

    The wait matters to callers that reuse the layers right away (a container engine, a test):
    until the daemon has let go it may still write to the upper and work dirs. The daemon is
    found by the FUSE connection id (the minor of the mount's st_dev): the kernel names it in
    the fdinfo of every /dev/fuse fd (`fuse_connection:`), and fusectl lists it under
    /sys/fs/fuse/connections while the connection exists.
    """
    path = _resolve_parent(mountpoint)  # no stat(): the mount may be dead or hung
    mounted = mounts_at(path)
    if not mounted:
        raise UsageError(f"{mountpoint}: not mounted", 1)
    top = mounted[-1]
    if not _is_fuse(top):
        raise UsageError(f"{mountpoint}: not a FUSE mount ({top.fstype})", 1)
    holders = fuse_device_holders(top.minor)
    _unmount_now(path, lazy=lazy)
    deadline = time.monotonic() + timeout
    while _connection_in_use(top.minor, holders):
        if time.monotonic() >= deadline:
            pids = " ".join(sorted({str(pid) for pid, _ in holders}))
            raise UsageError(
                f"{mountpoint}: unmounted, but the daemon (pid {pids or '?'}) still holds the"
                f" FUSE connection after {timeout:g} s",
                1,
            )
        time.sleep(_POLL_INTERVAL)


def _unmount_now(path: Path, *, lazy: bool) -> None:
    if os.geteuid() == 0:
        _umount2(path, lazy=lazy)
        return
    import shutil
    import subprocess

    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount is None:
        raise UsageError("fusermount3 not found (apt install fuse3)", 1)
    cmd = [fusermount, "-u", *(["-z"] if lazy else []), str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise UsageError(f"cannot unmount {path}: {detail}", 1)


def _umount2(path: Path, *, lazy: bool) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    mnt_detach = 2
    if libc.umount2(os.fsencode(path), mnt_detach if lazy else 0) != 0:
        err = ctypes.get_errno()
        hint = " (in use; close files and leave the directory, or use --lazy)"
        raise UsageError(
            f"cannot unmount {path}: {os.strerror(err)}{hint if err == errno.EBUSY else ''}", 1
        )


def _fuse_dev_fds() -> Iterator[tuple[int, int, str]]:
    """(pid, fd, fdinfo text) of every /dev/fuse fd this process can see."""
    for pid_name in os.listdir("/proc"):
        if not pid_name.isdigit():
            continue
        fd_dir = f"/proc/{pid_name}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd_name in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd_name}") != "/dev/fuse":
                    continue
                with open(f"/proc/{pid_name}/fdinfo/{fd_name}") as f:
                    info = f.read()
            except OSError:
                continue
            yield int(pid_name), int(fd_name), info


_FDINFO_CONNECTION: Final = re.compile(r"^fuse_connection:\s*(\d+)\s*$", re.MULTILINE)


def fuse_device_holders(connection: int) -> set[tuple[int, int]]:
    """The (pid, fd) pairs whose /dev/fuse fd serves FUSE connection `connection`."""
    holders = set()
    for pid, fd, info in _fuse_dev_fds():
        m = _FDINFO_CONNECTION.search(info)
        if m is not None and int(m[1]) == connection:
            holders.add((pid, fd))
    return holders


def fuse_connection_held(connection: int) -> bool | None:
    """Whether some process serves FUSE connection `connection`; None when we cannot tell
    (a kernel whose fdinfo does not name the connection)."""
    unknown = False
    for _, _, info in _fuse_dev_fds():
        m = _FDINFO_CONNECTION.search(info)
        if m is None:
            unknown = True
        elif int(m[1]) == connection:
            return True
    return None if unknown else False


def _holds(pid: int, fd: int, connection: int) -> bool:
    try:
        if os.readlink(f"/proc/{pid}/fd/{fd}") != "/dev/fuse":
            return False
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            m = _FDINFO_CONNECTION.search(f.read())
    except OSError:
        return False
    return m is not None and int(m[1]) == connection


def _connection_in_use(connection: int, holders: set[tuple[int, int]]) -> bool:
    if any(_holds(pid, fd, connection) for pid, fd in holders):
        return True
    # Without fdinfo's fuse_connection (older kernels) fusectl is the only witness left.
    return _fusectl_mounted() and os.path.isdir(f"{_FUSECTL_DIR}/{connection}")


def _fusectl_mounted() -> bool:
    return any(m.fstype == "fusectl" for m in mounts_at(Path(_FUSECTL_DIR)))
