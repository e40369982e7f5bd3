"""Scenarios for the differential tests: a lower tree, a list of operations, and the runner.

A `Scenario` is a lower tree spec (one to three layers, top first, written in the OCI form: `.wh.NAME`
whiteouts and `.wh..wh..opq` markers) plus a list of operations. `run_differential()` runs it

1. on kernel overlayfs over a copy of the lowers converted to the kernel's whiteout form (the
   oracle; `index=on` where the kernel supports it, so that copy-up keeps hard links as strata
   does; `redirect_dir=off`, so the kernel answers EXDEV to renaming a lower or merged directory),
2. on a fresh strata mount over the OCI-form lowers,

records each operation's outcome ("ok", "ok <value>" or an errno name) and compares: the outcomes,
the outcomes against those the scenario states, the final merged trees, that strata's `d_ino`
equals `st_ino`, that a re-mount of strata over the same upper shows the same tree with the same
inode numbers (persistence), and that kernel overlayfs with strata's upper as the top *lower*
layer shows the same tree again (an upper written by strata reads back correctly as a lower).

Metadata-only copy-up. strata runs with `metacopy=on` (its default) unless told otherwise. An upper
holding metacopy files cannot be read back by the kernel: strata's marker is its own xattr, not
the kernel's (`trusted.overlay.metacopy` + `redirect` are only followed by a kernel mounted with
`metacopy=on` and trusted layers, and their redirect/origin semantics are more than strata keeps),
and a bare reader sees a hole. So where the upper holds metacopy files, it is read back by strata
(read-only, the upper as the top lower) instead, which is the "upper becomes a lower" case strata
must get right; the kernel reads strata's upper back in the same scenarios run with
`metacopy=off` (see test_differential.py), which writes only the kernel's formats. The oracle may
itself run with `metacopy=on` (`kernel_metacopy=True`, needs `redirect_dir=on`): then merged trees
and outcomes are compared as always, never the raw uppers, which legitimately differ.

Where the kernel answers EXDEV to a directory rename, strata deliberately makes the rename work, so
the oracle does what `mv` does then: it moves the tree itself (`emulate_dir_rename`), and the
outcome compared is that of the emulation.

What differs for a principled reason is left out of the comparison, each with its reason where it
is done: `normalized_snapshot()` (times, directory sizes), `forgive_eager_dir_copy_up()` (st_nlink
of a directory strata copied up and the kernel did not) and `without_private_xattrs()` (strata's
bookkeeping xattrs, seen when the kernel reads its upper directly). Nothing else is.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

import pytest

from tests.helpers.mounts import (
    EntrySnapshot,
    KernelOverlay,
    StrataMount,
    UnionDirs,
    convert_oci_whiteouts,
    copy_tree,
    diff_snapshots,
    skip_unless_fuse,
    skip_unless_kernel_overlay,
    tree_snapshot,
)
from unionfs import libc

RENAME_NOREPLACE: Final = 1 << 0
RENAME_EXCHANGE: Final = 1 << 1
_AT_FDCWD: Final = -100

# Lower entries get distinct, recognisable mtimes (nanoseconds included) so a changed or kept
# mtime is visible after copy-up; see normalized_snapshot().
LOWER_MTIME_NS: Final = 1_500_000_000 * 10**9 + 123_456_789
FRESH: Final = -1  # a normalized mtime set by the clock during the run ("now")

# strata's bookkeeping xattrs: hidden by strata, but a plain file attribute to anyone reading the
# upper directly, e.g. kernel overlayfs using it as a lower layer.
STRATA_PRIVATE_XATTRS: Final = ("trusted.strata.", "user.strata.")

EXCHANGE_TMP: Final = b".oracle-exchange-tmp"

T = TypeVar("T")


# -------------------------------------------------------------------------------------------------
# the lower tree spec


@dataclass(frozen=True, slots=True)
class File:
    path: bytes
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Dir:
    path: bytes
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Symlink:
    path: bytes
    target: bytes
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True, slots=True)
class HardLink:
    """A second name for `target`, a non-directory made earlier in the same layer."""

    path: bytes
    target: bytes


@dataclass(frozen=True, slots=True)
class Fifo:
    path: bytes
    mode: int = 0o644


@dataclass(frozen=True, slots=True)
class Whiteout:
    """`.wh.NAME` in this layer: NAME is deleted from the layers below."""

    path: bytes


@dataclass(frozen=True, slots=True)
class Opaque:
    """`.wh..wh..opq` in directory `path` of this layer: the layers below do not show through."""

    path: bytes


Entry = File | Dir | Symlink | HardLink | Fifo | Whiteout | Opaque
Layer = tuple[Entry, ...]


def _join(root: bytes, rel: bytes) -> bytes:
    return root + b"/" + rel if rel else root


def _make_parents(root: bytes, rel: bytes) -> None:
    parts = rel.split(b"/")[:-1]
    cur = root
    for part in parts:
        cur += b"/" + part
        if not os.path.lexists(cur):
            os.mkdir(cur)
            os.chmod(cur, 0o755)


def build_layer(entries: Sequence[Entry], dest: Path, layer_no: int) -> None:
    """Write one lower layer in the OCI form (`.wh.` whiteouts and opaque markers) at `dest`."""
    dest.mkdir(parents=True)
    root = os.fsencode(dest)
    timed: list[bytes] = []
    for entry in entries:
        full = _join(root, entry.path)
        _make_parents(root, entry.path)
        match entry:
            case File():
                fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, entry.data)
                finally:
                    os.close(fd)
                _set_meta(full, entry.mode, entry.uid, entry.gid, entry.xattrs)
                timed.append(full)
            case Dir():
                if not os.path.isdir(full):
                    os.mkdir(full)
                _set_meta(full, entry.mode, entry.uid, entry.gid, entry.xattrs)
                timed.append(full)
            case Symlink():
                os.symlink(entry.target, full)
                os.lchown(full, entry.uid, entry.gid)
                timed.append(full)
            case HardLink():
                os.link(_join(root, entry.target), full, follow_symlinks=False)
            case Fifo():
                os.mkfifo(full)
                os.chmod(full, entry.mode)
                timed.append(full)
            case Whiteout():
                head, _, name = entry.path.rpartition(b"/")
                marker = _join(root, (head + b"/" if head else b"") + b".wh." + name)
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            case Opaque():
                if not os.path.isdir(full):
                    os.mkdir(full)
                    os.chmod(full, 0o755)
                os.close(os.open(full + b"/.wh..wh..opq", os.O_WRONLY | os.O_CREAT, 0o644))
    for i, full in enumerate(timed):
        t = LOWER_MTIME_NS + (layer_no * 1000 + i) * 10**9
        os.utime(full, ns=(t, t), follow_symlinks=False)


def _set_meta(
    full: bytes, mode: int, uid: int, gid: int, xattrs: tuple[tuple[str, bytes], ...]
) -> None:
    os.chown(full, uid, gid)
    os.chmod(full, mode)
    for name, value in xattrs:
        os.setxattr(full, name, value)


# -------------------------------------------------------------------------------------------------
# operations


class OpContext:
    """Where operations run (the merged root) and what they remember between each other."""

    def __init__(self, root: Path) -> None:
        self.root = os.fsencode(root)
        self.memory: dict[str, int] = {}

    def path(self, rel: bytes) -> bytes:
        return _join(self.root, rel)


def show_path(rel: bytes) -> str:
    """A short, readable form of a path for reports (long names and non-UTF-8 bytes included)."""
    parts = []
    for part in rel.split(b"/"):
        text = part.decode("utf-8", "backslashreplace")
        if len(part) > 24:
            text = f"{text[:6]}…({len(part)} bytes)"
        parts.append(text)
    shown = "/".join(parts)
    return shown if len(shown) <= 60 else f"{shown[:28]}…{shown[-28:]}"


@dataclass(frozen=True, kw_only=True)
class Op:
    """One operation on the merged view.

    `err` is the errno name the scenario expects (None: success) and `want`, if given, the value
    a successful operation returns; both are checked only in the hand-written table.
    """

    err: str | None = None
    want: object = None

    def run(self, ctx: OpContext) -> object:
        raise NotImplementedError

    def show(self) -> str:
        raise NotImplementedError


def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    pos = offset
    while view:
        n = os.write(fd, view) if pos is None else os.pwrite(fd, view, pos)
        view = view[n:]
        if pos is not None:
            pos += n


@contextlib.contextmanager
def _opened(path: bytes, flags: int, mode: int = 0o644) -> Iterator[int]:
    """open(2) that never blocks on a fifo (O_NONBLOCK changes nothing for regular files)."""
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    try:
        yield fd
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Create(Op):
    """open(O_CREAT|O_WRONLY [|O_EXCL]) and write `data` (an existing file is not truncated)."""

    path: bytes
    data: bytes = b""
    mode: int = 0o644
    excl: bool = False

    def run(self, ctx: OpContext) -> object:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if self.excl else 0)
        with _opened(ctx.path(self.path), flags, self.mode) as fd:
            _write_all(fd, self.data)
        return None

    def show(self) -> str:
        excl = " O_EXCL" if self.excl else ""
        return f"create{excl} {show_path(self.path)} {self.data[:16]!r} {self.mode:o}"


@dataclass(frozen=True)
class Write(Op):
    path: bytes
    data: bytes
    offset: int = 0

    def run(self, ctx: OpContext) -> object:
        with _opened(ctx.path(self.path), os.O_WRONLY) as fd:
            _write_all(fd, self.data, self.offset)
        return None

    def show(self) -> str:
        return f"write {show_path(self.path)}@{self.offset} {self.data[:16]!r}"


@dataclass(frozen=True)
class Append(Op):
    path: bytes
    data: bytes

    def run(self, ctx: OpContext) -> object:
        with _opened(ctx.path(self.path), os.O_WRONLY | os.O_APPEND) as fd:
            _write_all(fd, self.data)
        return None

    def show(self) -> str:
        return f"append {show_path(self.path)} {self.data[:16]!r}"


@dataclass(frozen=True)
class OpenTrunc(Op):
    """open(O_WRONLY|O_TRUNC), then write `data`."""

    path: bytes
    data: bytes = b""

    def run(self, ctx: OpContext) -> object:
        with _opened(ctx.path(self.path), os.O_WRONLY | os.O_TRUNC) as fd:
            _write_all(fd, self.data)
        return None

    def show(self) -> str:
        return f"open O_TRUNC {show_path(self.path)} {self.data[:16]!r}"


@dataclass(frozen=True)
class Truncate(Op):
    path: bytes
    size: int

    def run(self, ctx: OpContext) -> object:
        os.truncate(ctx.path(self.path), self.size)
        return None

    def show(self) -> str:
        return f"truncate {show_path(self.path)} {self.size}"


@dataclass(frozen=True)
class Read(Op):
    path: bytes

    def run(self, ctx: OpContext) -> object:
        with _opened(ctx.path(self.path), os.O_RDONLY) as fd:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        return b"".join(chunks)

    def show(self) -> str:
        return f"read {show_path(self.path)}"


@dataclass(frozen=True)
class ReadThroughEarlierFd(Op):
    """Open read-only, then write `data` at 0 through a second fd; read through the first one.

    The first fd was opened on the lower file; after the copy-up it must see the new data.
    """

    path: bytes
    data: bytes

    def run(self, ctx: OpContext) -> object:
        with _opened(ctx.path(self.path), os.O_RDONLY) as reader:
            with _opened(ctx.path(self.path), os.O_WRONLY) as writer:
                _write_all(writer, self.data, 0)
            return os.pread(reader, 1 << 16, 0)

    def show(self) -> str:
        return f"read {show_path(self.path)} through an fd opened before writing {self.data!r}"


@dataclass(frozen=True)
class Chmod(Op):
    """chmod(2), which follows a symlink (Linux has no lchmod)."""

    path: bytes
    mode: int

    def run(self, ctx: OpContext) -> object:
        os.chmod(ctx.path(self.path), self.mode)
        return None

    def show(self) -> str:
        return f"chmod {self.mode:o} {show_path(self.path)}"


@dataclass(frozen=True)
class Chown(Op):
    """lchown (does not follow a symlink)."""

    path: bytes
    uid: int
    gid: int

    def run(self, ctx: OpContext) -> object:
        os.lchown(ctx.path(self.path), self.uid, self.gid)
        return None

    def show(self) -> str:
        return f"chown -h {self.uid}:{self.gid} {show_path(self.path)}"


@dataclass(frozen=True)
class Utime(Op):
    """utimensat(AT_SYMLINK_NOFOLLOW) with explicit times (these mtimes are "known" ones)."""

    path: bytes
    atime_ns: int
    mtime_ns: int

    def run(self, ctx: OpContext) -> object:
        os.utime(ctx.path(self.path), ns=(self.atime_ns, self.mtime_ns), follow_symlinks=False)
        return None

    def show(self) -> str:
        return f"utime {show_path(self.path)} m={self.mtime_ns}"


@dataclass(frozen=True)
class MakeSymlink(Op):
    target: bytes
    path: bytes

    def run(self, ctx: OpContext) -> object:
        os.symlink(self.target, ctx.path(self.path))
        return None

    def show(self) -> str:
        return f"symlink {show_path(self.path)} -> {show_path(self.target)}"


@dataclass(frozen=True)
class Readlink(Op):
    path: bytes

    def run(self, ctx: OpContext) -> object:
        return os.readlink(ctx.path(self.path))

    def show(self) -> str:
        return f"readlink {show_path(self.path)}"


@dataclass(frozen=True)
class Mkfifo(Op):
    path: bytes
    mode: int = 0o644

    def run(self, ctx: OpContext) -> object:
        os.mkfifo(ctx.path(self.path), self.mode)
        return None

    def show(self) -> str:
        return f"mkfifo {show_path(self.path)}"


@dataclass(frozen=True)
class Mknod(Op):
    """A character device `major:minor` (root only)."""

    path: bytes
    major: int
    minor: int

    def run(self, ctx: OpContext) -> object:
        os.mknod(ctx.path(self.path), stat.S_IFCHR | 0o644, os.makedev(self.major, self.minor))
        return None

    def show(self) -> str:
        return f"mknod {show_path(self.path)} c {self.major} {self.minor}"


@dataclass(frozen=True)
class Mkdir(Op):
    path: bytes
    mode: int = 0o755

    def run(self, ctx: OpContext) -> object:
        os.mkdir(ctx.path(self.path), self.mode)
        return None

    def show(self) -> str:
        return f"mkdir {show_path(self.path)}"


@dataclass(frozen=True)
class Rmdir(Op):
    path: bytes

    def run(self, ctx: OpContext) -> object:
        os.rmdir(ctx.path(self.path))
        return None

    def show(self) -> str:
        return f"rmdir {show_path(self.path)}"


@dataclass(frozen=True)
class Unlink(Op):
    path: bytes

    def run(self, ctx: OpContext) -> object:
        os.unlink(ctx.path(self.path))
        return None

    def show(self) -> str:
        return f"unlink {show_path(self.path)}"


def _remove_tree(path: bytes) -> None:
    if stat.S_ISDIR(os.lstat(path).st_mode):
        for name in os.listdir(path):
            _remove_tree(path + b"/" + name)
        os.rmdir(path)
    else:
        os.unlink(path)


@dataclass(frozen=True)
class RemoveTree(Op):
    """`rm -r`: unlink/rmdir depth first; the first error is the outcome."""

    path: bytes

    def run(self, ctx: OpContext) -> object:
        _remove_tree(ctx.path(self.path))
        return None

    def show(self) -> str:
        return f"rm -r {show_path(self.path)}"


def renameat2(old: bytes, new: bytes, flags: int) -> None:
    libc.renameat2(_AT_FDCWD, old, _AT_FDCWD, new, flags)


@dataclass(frozen=True)
class Rename(Op):
    """renameat2(old, new, flags); flags RENAME_NOREPLACE and/or RENAME_EXCHANGE."""

    old: bytes
    new: bytes
    flags: int = 0

    def run(self, ctx: OpContext) -> object:
        renameat2(ctx.path(self.old), ctx.path(self.new), self.flags)
        return None

    def show(self) -> str:
        names = [
            n for bit, n in ((1, "NOREPLACE"), (2, "EXCHANGE"), (4, "WHITEOUT")) if self.flags & bit
        ]
        how = f" [{'|'.join(names)}]" if names else ""
        return f"rename{how} {show_path(self.old)} -> {show_path(self.new)}"


@dataclass(frozen=True)
class Link(Op):
    old: bytes
    new: bytes

    def run(self, ctx: OpContext) -> object:
        os.link(ctx.path(self.old), ctx.path(self.new), follow_symlinks=False)
        return None

    def show(self) -> str:
        return f"link {show_path(self.old)} -> {show_path(self.new)}"


@dataclass(frozen=True)
class SetXattr(Op):
    path: bytes
    name: str
    value: bytes
    flags: int = 0

    def run(self, ctx: OpContext) -> object:
        os.setxattr(ctx.path(self.path), self.name, self.value, self.flags, follow_symlinks=False)
        return None

    def show(self) -> str:
        return f"setxattr {show_path(self.path)} {self.name}={self.value!r}"


@dataclass(frozen=True)
class RemoveXattr(Op):
    path: bytes
    name: str

    def run(self, ctx: OpContext) -> object:
        os.removexattr(ctx.path(self.path), self.name, follow_symlinks=False)
        return None

    def show(self) -> str:
        return f"removexattr {show_path(self.path)} {self.name}"


@dataclass(frozen=True)
class GetXattr(Op):
    path: bytes
    name: str

    def run(self, ctx: OpContext) -> object:
        return os.getxattr(ctx.path(self.path), self.name, follow_symlinks=False)

    def show(self) -> str:
        return f"getxattr {show_path(self.path)} {self.name}"


@dataclass(frozen=True)
class ListXattr(Op):
    path: bytes

    def run(self, ctx: OpContext) -> object:
        return sorted(os.listxattr(ctx.path(self.path), follow_symlinks=False))

    def show(self) -> str:
        return f"listxattr {show_path(self.path)}"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "dir"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "special"


@dataclass(frozen=True)
class Stat(Op):
    """lstat -> (kind, mode, size (None for dirs), nlink, uid, gid)."""

    path: bytes

    def run(self, ctx: OpContext) -> object:
        st = os.lstat(ctx.path(self.path))
        kind = _kind(st.st_mode)
        size = None if kind == "dir" else st.st_size
        return (kind, oct(stat.S_IMODE(st.st_mode)), size, st.st_nlink, st.st_uid, st.st_gid)

    def show(self) -> str:
        return f"stat {show_path(self.path)}"


@dataclass(frozen=True)
class ListDir(Op):
    path: bytes

    def run(self, ctx: OpContext) -> object:
        return sorted(os.listdir(ctx.path(self.path)))

    def show(self) -> str:
        return f"ls {show_path(self.path)}"


@dataclass(frozen=True)
class SameFile(Op):
    """Whether two names are one object (same st_dev and st_ino)."""

    a: bytes
    b: bytes

    def run(self, ctx: OpContext) -> object:
        sa, sb = os.lstat(ctx.path(self.a)), os.lstat(ctx.path(self.b))
        return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)

    def show(self) -> str:
        return f"same file? {show_path(self.a)} {show_path(self.b)}"


@dataclass(frozen=True)
class SameInoAs(Op):
    """Whether `path`'s st_ino equals the one remembered under `key` (remembers it the first time).

    For checking that an object keeps its inode number across copy-up and rename.
    """

    path: bytes
    key: str

    def run(self, ctx: OpContext) -> object:
        ino = os.lstat(ctx.path(self.path)).st_ino
        return ctx.memory.setdefault(self.key, ino) == ino

    def show(self) -> str:
        return f"st_ino of {show_path(self.path)} == [{self.key}]?"


# -------------------------------------------------------------------------------------------------
# the oracle's emulation of a directory rename the kernel refuses with EXDEV


def move_tree(src: bytes, dst: bytes) -> None:
    """Move `src` to the absent `dst` the way `mv` does across filesystems, but keep identity.

    Directories are re-made (mode, owner, xattrs, times) and emptied; every non-directory is moved
    with rename(2), which overlayfs allows, so an object keeps its inode and its hard links to
    names outside the tree (a `cp -a` + `rm -rf` would break those: what a real rename keeps).
    """
    st = os.lstat(src)
    if not stat.S_ISDIR(st.st_mode):
        os.rename(src, dst)
        return
    os.mkdir(dst, 0o700)
    for name in os.listdir(src):
        move_tree(src + b"/" + name, dst + b"/" + name)
    for attr in os.listxattr(src, follow_symlinks=False):
        os.setxattr(dst, attr, os.getxattr(src, attr, follow_symlinks=False))
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rmdir(src)


def emulate_dir_rename(ctx: OpContext, op: Rename) -> str:
    """What renameat2 would have done had overlayfs not answered EXDEV (an outcome string).

    The VFS has already checked everything it checks before asking the filesystem (ENOENT,
    ENOTDIR/EISDIR, EEXIST for RENAME_NOREPLACE, EINVAL for a move into itself), and overlayfs
    answers EXDEV before its own emptiness check, so that one (ENOTEMPTY) is made here.
    """
    old, new = ctx.path(op.old), ctx.path(op.new)
    if op.flags & RENAME_EXCHANGE:
        tmp = ctx.path(EXCHANGE_TMP)
        move_tree(old, tmp)
        move_tree(new, old)
        move_tree(tmp, new)
        return "ok"
    try:
        st: os.stat_result | None = os.lstat(new)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        if os.listdir(new):
            return "ENOTEMPTY"
        os.rmdir(new)
    move_tree(old, new)
    return "ok"


# -------------------------------------------------------------------------------------------------
# running operations


@dataclass(frozen=True, slots=True)
class Outcome:
    text: str  # "ok", "ok <repr of the value>", or an errno name
    emulated: bool = False  # the kernel said EXDEV and the oracle moved the tree itself

    def __str__(self) -> str:
        return f"{self.text} (EXDEV, emulated)" if self.emulated else self.text


def ok_text(value: object) -> str:
    return "ok" if value is None else f"ok {value!r}"


def run_ops(root: Path, ops: Sequence[Op], *, emulate_exdev: bool) -> list[Outcome]:
    ctx = OpContext(root)
    outcomes = []
    for op in ops:
        try:
            outcome = Outcome(ok_text(op.run(ctx)))
        except OSError as exc:
            code = exc.errno or 0
            if emulate_exdev and code == errno.EXDEV and isinstance(op, Rename):
                outcome = Outcome(emulate_dir_rename(ctx, op), emulated=True)
            else:
                outcome = Outcome(errno.errorcode.get(code, str(code)))
        outcomes.append(outcome)
    return outcomes


def expected_text(op: Op) -> str | None:
    """The outcome the scenario states for `op`, or None when it states only "succeeds"."""
    if op.err is not None:
        return op.err
    if op.want is not None:
        return ok_text(op.want)
    return None


def meets_expectation(op: Op, outcome: Outcome) -> bool:
    want = expected_text(op)
    if want is None:
        return outcome.text.startswith("ok")
    return outcome.text == want


# -------------------------------------------------------------------------------------------------
# snapshots


def lower_mtimes(layer_dirs: Sequence[Path]) -> set[int]:
    """Every non-directory mtime in the lowers: an mtime from this set was kept, not set anew."""
    found = set()
    for layer in layer_dirs:
        for dirpath, _dirs, files in os.walk(layer):
            for name in files:
                found.add(os.lstat(os.path.join(dirpath, name)).st_mtime_ns)
    return found


def normalized_snapshot(root: Path, known_mtimes: set[int]) -> dict[str, EntrySnapshot]:
    """tree_snapshot() of a merged view, for comparing two runs of a scenario.

    Excluded, and why:
    - atime and ctime: reading updates atime, and copy-up, rename and link set ctime to "now";
    - directory mtime: each implementation makes and removes temporary entries (whiteouts built in
      the work dir, copy-up of parents) at its own moments;
    - directory st_size: a merged directory reports its upper directory's size, which depends on the
      history of entries made and removed there;
    - an mtime set by the clock during the run: it differs between two runs. A non-directory mtime
      is kept when it is one of `known_mtimes` (a lower's or one set by Utime), else becomes FRESH,
      so "copy-up kept the mtime" and "a write updated it" are still compared.
    Kept: directory st_nlink (overlayfs reports 1 for a merged directory and strata does the same),
    mode, owner, size, content, symlink targets, xattrs and which names are hard links of each other.
    """
    snap = tree_snapshot(root, dir_size=False)
    out = {}
    for path, entry in snap.items():
        if entry.kind == "dir":
            entry = entry._replace(mtime_ns=None)
        elif entry.mtime_ns not in known_mtimes:
            entry = entry._replace(mtime_ns=FRESH)
        out[path] = entry
    return out


def raw_snapshot(root: Path, *, ino: bool) -> dict[str, EntrySnapshot]:
    """tree_snapshot() of one upper seen twice (remount, read back): only atime/ctime excluded."""
    return tree_snapshot(root, ino=ino)


def without_private_xattrs(snap: Mapping[str, EntrySnapshot]) -> dict[str, EntrySnapshot]:
    return {
        path: entry._replace(
            xattrs=tuple(
                (k, v) for k, v in entry.xattrs or () if not k.startswith(STRATA_PRIVATE_XATTRS)
            )
        )
        for path, entry in snap.items()
    }


def dino_mismatches(root: Path) -> list[str]:
    """Entries whose readdir d_ino differs from their st_ino."""
    out = []
    stack = [os.fspath(root)]
    while stack:
        cur = stack.pop()
        with os.scandir(cur) as it:
            for entry in it:
                st = os.lstat(entry.path)
                if entry.inode() != st.st_ino:
                    rel = os.path.relpath(entry.path, root)
                    out.append(f"/{rel}: d_ino {entry.inode()} != st_ino {st.st_ino}")
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
    return out


# -------------------------------------------------------------------------------------------------
# scenarios and the differential run


@dataclass(frozen=True)
class Scenario:
    name: str
    lowers: tuple[Layer, ...]  # top first
    ops: tuple[Op, ...]
    doc: str = ""
    # Stated outcomes (`err`/`want` of each op) are checked; off for generated scenarios.
    check_expected: bool = True
    # Only the kernel with index=on keeps lower hard links on copy-up, as strata always does.
    needs_index: bool = False
    # Set where strata differs from overlayfs by design in passthrough mode (README: differences
    # from overlayfs): the scenario then runs with passthrough=off, and tests/fuse/test_passthrough.py
    # checks what passthrough does instead.
    no_passthrough: bool = False


@functools.cache
def kernel_supports_index() -> bool:
    """Whether kernel overlayfs here mounts with `index=on` (needs file handles on the layers)."""
    with tempfile.TemporaryDirectory(prefix="strata-index-probe-") as tmp:
        base = Path(tmp)
        for name in ("lower", "upper", "work", "mnt"):
            (base / name).mkdir()
        opts = f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work,index=on"
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(base / "mnt")],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            return False
        subprocess.run(["umount", str(base / "mnt")], check=True)
        return True


@functools.cache
def kernel_supports_metacopy() -> bool:
    """Whether kernel overlayfs here mounts with `metacopy=on` (and the `redirect_dir=on` it needs)."""
    with tempfile.TemporaryDirectory(prefix="strata-metacopy-probe-") as tmp:
        base = Path(tmp)
        for name in ("lower", "upper", "work", "mnt"):
            (base / name).mkdir()
        opts = f"lowerdir={base}/lower,upperdir={base}/upper,workdir={base}/work," + ",".join(
            kernel_options(index=kernel_supports_index(), metacopy=True)
        )
        result = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", opts, str(base / "mnt")],
            capture_output=True,
            check=False,
        )
        if result.returncode != 0:
            return False
        subprocess.run(["umount", str(base / "mnt")], check=True)
        return True


def kernel_options(*, index: bool, metacopy: bool = False) -> list[str]:
    if metacopy:  # metacopy needs redirect_dir=on (a moved metacopy file records its origin)
        return [f"index={'on' if index else 'off'}", "redirect_dir=on", "metacopy=on"]
    return [f"index={'on' if index else 'off'}", "redirect_dir=off", "metacopy=off"]


METADATA_OPS: Final = ("Chmod", "Chown", "Utime", "SetXattr", "RemoveXattr", "Rename")


def has_metadata_ops(scenario: Scenario) -> bool:
    """Does the scenario change metadata of (possibly) lower files: may metacopy matter?"""
    return any(type(op).__name__ in METADATA_OPS for op in scenario.ops)


def upper_holds_metacopy_files(upper: Path) -> bool:
    """strata flags an upper root before writing the first metacopy marker in it."""
    for attr in ("trusted.strata.metacopy-layer", "user.strata.metacopy-layer"):
        try:
            os.getxattr(upper, attr)
        except OSError:
            continue
        return True
    return False


def skip_unless_differential() -> None:
    """Skip (with a reason) unless both strata (FUSE) and kernel overlayfs can be mounted here."""
    skip_unless_fuse()
    skip_unless_kernel_overlay()


class Layout:
    """The directories of one differential run under `base`."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.s_lowers = base / "strata-lowers"  # OCI form, for strata
        self.k_lowers = base / "kernel-lowers"  # converted copies, for the kernel
        self.s_upper, self.s_work, self.s_mnt = (
            base / "strata" / n for n in ("upper", "work", "mnt")
        )
        self.k_upper, self.k_work, self.k_mnt = (
            base / "kernel" / n for n in ("upper", "work", "mnt")
        )
        self.readback_mnt = base / "readback-mnt"
        for d in (self.s_upper, self.s_work, self.s_mnt, self.k_upper, self.k_work, self.k_mnt):
            d.mkdir(parents=True)
        for d in (self.s_lowers, self.k_lowers, self.readback_mnt):
            d.mkdir()
        for d in (self.s_upper, self.k_upper):
            os.chmod(d, 0o755)


def build_lowers(scenario: Scenario, layout: Layout) -> tuple[list[Path], list[Path]]:
    """The OCI-form lowers for strata and converted copies for the kernel, both top first."""
    s_lowers, k_lowers = [], []
    for i, layer in enumerate(scenario.lowers):
        s_dir, k_dir = layout.s_lowers / str(i), layout.k_lowers / str(i)
        build_layer(layer, s_dir, i)
        copy_tree(s_dir, k_dir)
        convert_oci_whiteouts(k_dir)
        s_lowers.append(s_dir)
        k_lowers.append(k_dir)
    return s_lowers, k_lowers


def clip(text: str, width: int = 70) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def outcome_table(
    ops: Sequence[Op], strata: Sequence[Outcome], kernel: Sequence[Outcome], oracle: str
) -> str:
    rows = [("", "#", "operation", "strata", oracle, "stated")]
    for i, op in enumerate(ops):
        s = str(strata[i]) if i < len(strata) else "-"
        k = str(kernel[i]) if i < len(kernel) else "-"
        stated = expected_text(op) or "ok"
        bad = i < len(strata) and i < len(kernel) and strata[i].text != kernel[i].text
        rows.append(("*" if bad else "", str(i), op.show(), s, k, stated))
    widths = [min(50, max(len(r[c]) for r in rows)) for c in range(5)]
    lines = []
    for r in rows:
        cells = [clip(r[c], widths[c]).ljust(widths[c]) for c in range(5)]
        lines.append(" ".join(cells) + " " + clip(r[5], 50))
    return "\n".join(lines)


def run_differential(
    scenario: Scenario,
    base: Path,
    *,
    index: bool | None = None,
    persistence: bool = True,
    readback: bool = True,
    metacopy: bool = True,
    kernel_metacopy: bool = False,
) -> list[str]:
    """Run `scenario` on kernel overlayfs and on strata under `base`; return the problems found.

    An empty list means strata agreed with the kernel everywhere that is compared. `index` picks
    the kernel's `index=` option (default: on where supported); `metacopy` is strata's option,
    `kernel_metacopy` the oracle's (see the module doc).
    """
    skip_unless_differential()
    if index is None:
        index = kernel_supports_index()
    layout = Layout(base)
    s_lowers, k_lowers = build_lowers(scenario, layout)
    known = lower_mtimes(s_lowers) | {op.mtime_ns for op in scenario.ops if isinstance(op, Utime)}
    oracle = f"kernel (index={'on' if index else 'off'}{',metacopy=on' if kernel_metacopy else ''})"
    problems: list[str] = []

    k_dirs = UnionDirs(lowers=k_lowers, upper=layout.k_upper, work=layout.k_work, mnt=layout.k_mnt)
    with KernelOverlay(k_dirs, options=kernel_options(index=index, metacopy=kernel_metacopy)):
        # With redirect_dir=on the kernel renames directories itself; otherwise it answers EXDEV
        # and the oracle moves the tree as `mv` would.
        k_out = run_ops(layout.k_mnt, scenario.ops, emulate_exdev=not kernel_metacopy)
        k_snap = normalized_snapshot(layout.k_mnt, known)

    s_dirs = UnionDirs(lowers=s_lowers, upper=layout.s_upper, work=layout.s_work, mnt=layout.s_mnt)
    s_args = ["-o", f"metacopy={'on' if metacopy else 'off'}"]
    if scenario.no_passthrough:
        s_args += ["-o", "passthrough=off"]
    with StrataMount(s_dirs, log_path=base / "strata-1.log", extra_args=s_args):
        s_out = run_ops(layout.s_mnt, scenario.ops, emulate_exdev=False)
        walked = _walk(
            problems,
            "strata",
            lambda: (
                normalized_snapshot(layout.s_mnt, known),
                raw_snapshot(layout.s_mnt, ino=True),
                dino_mismatches(layout.s_mnt),
            ),
        )
        s_snap, s_raw, dino = walked if walked is not None else (None, None, [])

    table = outcome_table(scenario.ops, s_out, k_out, oracle)
    outcomes_differ = [o.text for o in s_out] != [o.text for o in k_out]
    if outcomes_differ:
        problems.append(f"outcomes differ (strata vs {oracle}):\n{table}")
    if scenario.check_expected:
        unmet = [
            f"op {i} ({op.show()}): {who} gave {clip(str(outs[i]))}, "
            f"the scenario states {clip(expected_text(op) or 'success')}"
            for i, op in enumerate(scenario.ops)
            for who, outs in (("strata", s_out), (oracle, k_out))
            if not meets_expectation(op, outs[i])
        ]
        if unmet:
            problems.append("\n".join(unmet) + ("" if outcomes_differ else f"\n{table}"))

    if s_snap is not None:
        forgive_eager_dir_copy_up(s_snap, k_snap, layout)
        if kernel_metacopy:
            forgive_redirected_dir_nlink(s_snap, k_snap, layout)
        diff = diff_snapshots(s_snap, k_snap, names=("strata", oracle))
        if diff:
            problems.append("final trees differ:\n  " + "\n  ".join(diff))
    if dino:
        problems.append("strata readdir d_ino != st_ino:\n  " + "\n  ".join(dino))

    if persistence and s_raw is not None:
        with StrataMount(s_dirs, log_path=base / "strata-2.log", extra_args=s_args):
            again = _walk(
                problems, "re-mounted strata", lambda: raw_snapshot(layout.s_mnt, ino=True)
            )
        diff = diff_snapshots(s_raw, again or {}, names=("strata", "strata re-mounted"))
        if again is not None and diff:
            problems.append("re-mounting strata changed the tree:\n  " + "\n  ".join(diff))

    if readback and s_raw is not None:
        mine = {
            p: e._replace(ino=None, nlink=_bare_nlink(layout.s_upper, p, e.nlink))
            for p, e in s_raw.items()
        }
        if upper_holds_metacopy_files(layout.s_upper):
            # Only strata knows its marker: it reads the upper back itself (read-only).
            r_dirs = UnionDirs(
                lowers=[layout.s_upper, *s_lowers], upper=None, work=None, mnt=layout.readback_mnt
            )
            reader = "strata over its own upper"
            with StrataMount(r_dirs, log_path=base / "strata-readback.log"):
                back = _walk(problems, reader, lambda: raw_snapshot(layout.readback_mnt, ino=False))
        else:
            r_dirs = UnionDirs(
                lowers=[layout.s_upper, *k_lowers], upper=None, work=None, mnt=layout.readback_mnt
            )
            reader = "kernel over strata's upper"
            with KernelOverlay(r_dirs):
                back = without_private_xattrs(raw_snapshot(layout.readback_mnt, ino=False))
        diff = diff_snapshots(mine, back or {}, names=("strata", reader))
        if back is not None and diff:
            problems.append(f"{reader} (as a lower) reads differently:\n  " + "\n  ".join(diff))
    return problems


def _bare_nlink(upper: Path, path: str, nlink: int | None) -> int | None:
    """The st_nlink a reader of the bare upper sees for what strata shows with `nlink`.

    A copied-up hard link whose group has names left in lower layers (shadowed or whited out)
    keeps counting them in strata, as overlayfs with index=on does; strata records how many in
    the 12-byte form of its origin xattr. Read as a plain layer, those names are not there.
    """
    if nlink is None:
        return None
    try:
        raw = os.getxattr(upper / path.lstrip("/"), "trusted.strata.origin", follow_symlinks=False)
    except OSError:
        return nlink
    return nlink - struct.unpack("<QI", raw)[1] if len(raw) == 12 else nlink


def _walk(problems: list[str], who: str, take: Callable[[], T]) -> T | None:
    """`take()`, or None with a problem noted when walking the merged tree fails."""
    try:
        return take()
    except OSError as exc:
        problems.append(f"{who}: walking the merged tree failed: {exc}")
        return None


def forgive_eager_dir_copy_up(
    s_snap: dict[str, EntrySnapshot], k_snap: dict[str, EntrySnapshot], layout: Layout
) -> None:
    """Leave out st_nlink of directories strata copied up and the kernel did not.

    A principled difference: strata copies up every name of a lower hard-link group at once (and so
    their parent directories), while overlayfs with index=on copies up only the name used and finds
    the others through its index. A directory that is in strata's upper and a lower is merged and
    reports st_nlink 1, as overlayfs reports for merged directories; the same directory that stays
    lower-only in the kernel reports the lower's count. Only that combination is left out.
    """
    for path, s in s_snap.items():
        k = k_snap.get(path)
        if k is None or s.kind != "dir" or k.kind != "dir" or s.nlink == k.nlink or s.nlink != 1:
            continue
        rel = os.fsencode(path.lstrip("/"))
        in_s_upper = os.path.isdir(_join(os.fsencode(layout.s_upper), rel))
        in_k_upper = os.path.lexists(_join(os.fsencode(layout.k_upper), rel))
        if in_s_upper and not in_k_upper:
            s_snap[path] = s._replace(nlink=None)
            k_snap[path] = k._replace(nlink=None)


def forgive_redirected_dir_nlink(
    s_snap: dict[str, EntrySnapshot], k_snap: dict[str, EntrySnapshot], layout: Layout
) -> None:
    """Leave out st_nlink of directories the kernel moved by a redirect (redirect_dir=on).

    A principled difference: the kernel renames a lower or merged directory by recording its
    origin in `trusted.overlay.redirect`, so it (and every directory below it) stays merged with
    the lower one and reports st_nlink 1; strata copies the moved tree up and makes it opaque, so
    its directories are not merged and report their real count.
    """
    k_upper = os.fsencode(layout.k_upper)
    for path, s in s_snap.items():
        k = k_snap.get(path)
        if k is None or s.kind != "dir" or k.kind != "dir" or s.nlink == k.nlink or k.nlink != 1:
            continue
        parts = os.fsencode(path.lstrip("/")).split(b"/")
        for i in range(1, len(parts) + 1):
            try:
                os.getxattr(
                    _join(k_upper, b"/".join(parts[:i])),
                    "trusted.overlay.redirect",
                    follow_symlinks=False,
                )
            except OSError:
                continue
            s_snap[path] = s._replace(nlink=None)
            k_snap[path] = k._replace(nlink=None)
            break


def assert_scenario(
    scenario: Scenario, base: Path, *, metacopy: bool = True, kernel_metacopy: bool = False
) -> None:
    """Fail the calling test with a readable report when strata and the kernel disagree."""
    problems = run_differential(scenario, base, metacopy=metacopy, kernel_metacopy=kernel_metacopy)
    if problems:
        head = f"scenario {scenario.name!r}" + (f": {scenario.doc}" if scenario.doc else "")
        pytest.fail(head + "\n\n" + "\n\n".join(problems), pytrace=False)
