"""The hand-written scenario table, each run on strata and on kernel overlayfs and compared.

Every operation states what it should give (`err="ENOENT"`, `want=b"..."`; nothing stated means
"succeeds"). Both strata and the kernel are held to that, and to each other: per-op outcomes, the
final merged tree, persistence across a re-mount, and the upper read back by the kernel as a lower
(see tests/model/scenarios.py). Where the kernel answers EXDEV to a directory rename, the oracle
moves the tree itself, because strata makes that rename work on purpose.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model.scenarios import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    Append,
    Chmod,
    Chown,
    Create,
    Dir,
    Fifo,
    File,
    GetXattr,
    HardLink,
    Layer,
    Link,
    ListDir,
    ListXattr,
    MakeSymlink,
    Mkdir,
    Mkfifo,
    Mknod,
    Op,
    Opaque,
    OpenTrunc,
    Read,
    Readlink,
    ReadThroughEarlierFd,
    RemoveTree,
    RemoveXattr,
    Rename,
    Rmdir,
    SameFile,
    SameInoAs,
    Scenario,
    SetXattr,
    Stat,
    Symlink,
    Truncate,
    Unlink,
    Utime,
    Whiteout,
    Write,
    assert_scenario,
    has_metadata_ops,
    kernel_supports_index,
    kernel_supports_metacopy,
    skip_unless_differential,
)

pytestmark = [pytest.mark.fuse, pytest.mark.root]

XATTR_CREATE = 1
T1 = 1_234_567_890_123_456_789  # an explicit mtime (ns) set by utime
T2 = 1_300_000_000_000_000_001

# A small lower tree most scenarios start from: d/ with two files, in one layer.
HELLO: Layer = (File(b"d/f", b"hello\n"), File(b"d/g", b"gee\n"))
# d/ merged from two layers, with a subdirectory only in the base layer.
MERGED_TOP: Layer = (File(b"d/f", b"hello\n"),)
MERGED_BASE: Layer = (File(b"d/g", b"gee\n"), File(b"d/sub/x", b"x\n"), Dir(b"e"))
# A lower file with two names, in two directories.
TWO_NAMES: Layer = (File(b"d/f", b"hello\n"), HardLink(b"e/f2", b"d/f"), File(b"d/g", b"gee\n"))


def stat_of(
    kind: str, mode: int, size: int | None, nlink: int, uid: int = 0, gid: int = 0
) -> tuple[str, str, int | None, int, int, int]:
    """What the Stat operation returns."""
    return (kind, oct(mode), size, nlink, uid, gid)


def scenario(
    name: str,
    lowers: tuple[Layer, ...],
    *ops: Op,
    doc: str = "",
    needs_index: bool = False,
    no_passthrough: bool = False,
) -> Scenario:
    return Scenario(
        name=name,
        lowers=lowers,
        ops=ops,
        doc=doc,
        needs_index=needs_index,
        no_passthrough=no_passthrough,
    )


SCENARIOS = [
    # ---- copy-up on data and metadata changes
    scenario(
        "write-to-lower-file",
        ((File(b"d/f", b"hello\n", mode=0o640, uid=1000, gid=1001, xattrs=(("user.k", b"v"),)),),),
        SameInoAs(b"d/f", "f"),
        Write(b"d/f", b"J"),
        Read(b"d/f", want=b"Jello\n"),
        SameInoAs(b"d/f", "f", want=True),
        Stat(b"d/f", want=stat_of("file", 0o640, 6, 1, 1000, 1001)),
        doc="copy-up keeps owner, mode, xattrs and st_ino; the write updates mtime",
    ),
    scenario(
        "append-to-lower-file",
        (HELLO,),
        Append(b"d/f", b"more\n"),
        Read(b"d/f", want=b"hello\nmore\n"),
    ),
    scenario(
        "open-o-trunc-lower-file",
        (HELLO, (File(b"empty"),)),
        OpenTrunc(b"d/f", b"new"),
        Read(b"d/f", want=b"new"),
        OpenTrunc(b"empty"),
        Read(b"empty", want=b""),
        doc="O_TRUNC copies up without data; on an empty file too",
    ),
    scenario(
        "truncate-grow-lower-file",
        (HELLO,),
        Truncate(b"d/f", 100_000),
        Stat(b"d/f", want=stat_of("file", 0o644, 100_000, 1)),
        Read(b"d/g", want=b"gee\n"),
    ),
    scenario(
        "truncate-shrink-lower-file",
        (HELLO,),
        Truncate(b"d/f", 2),
        Read(b"d/f", want=b"he"),
        Truncate(b"d/g", 4),
        Read(b"d/g", want=b"gee\n"),
        doc="truncate to the same size still copies up and updates mtime",
    ),
    scenario(
        "chmod-lower-file",
        (HELLO,),
        SameInoAs(b"d/f", "f"),
        Chmod(b"d/f", 0o4711),
        Stat(b"d/f", want=stat_of("file", 0o4711, 6, 1)),
        SameInoAs(b"d/f", "f", want=True),
        Read(b"d/f", want=b"hello\n"),
        doc="metadata-only copy-up keeps data, mtime and st_ino",
    ),
    scenario(
        "chown-lower-file",
        (HELLO,),
        Chown(b"d/f", 1000, 1001),
        Stat(b"d/f", want=stat_of("file", 0o644, 6, 1, 1000, 1001)),
    ),
    scenario(
        "utime-lower-file",
        (HELLO,),
        Utime(b"d/f", T2, T1),
        Read(b"d/f", want=b"hello\n"),
    ),
    scenario(
        "chmod-chown-lower-dir",
        ((Dir(b"p", mode=0o750, uid=7, gid=8, xattrs=(("user.dir", b"x"),)), File(b"p/q/f")),),
        Chmod(b"p/q", 0o700),
        Chown(b"p", 9, 10),
        ListDir(b"p/q", want=[b"f"]),
    ),
    scenario(
        "copy-up-of-nested-file-copies-parents-with-their-metadata",
        (
            (
                Dir(b"p", mode=0o750, uid=7, gid=8, xattrs=(("user.dir", b"x"),)),
                Dir(b"p/q", mode=0o711, uid=9, gid=9),
                File(b"p/q/f", b"deep\n"),
            ),
        ),
        Append(b"p/q/f", b"er\n"),
        Read(b"p/q/f", want=b"deep\ner\n"),
    ),
    scenario(
        "dir-stat-after-copy-up-of-a-child",
        ((File(b"d/f", b"hello\n"), File(b"d/sub/x")),),
        Stat(b"d", want=stat_of("dir", 0o755, None, 3)),
        Write(b"d/f", b"J"),
        Stat(b"d", want=stat_of("dir", 0o755, None, 1)),
        doc="copying up a child makes its lower-only parent merged: st_nlink 1 from then on",
    ),
    scenario(
        "fd-opened-before-copy-up-reads-the-new-data",
        (HELLO,),
        ReadThroughEarlierFd(b"d/f", b"J", want=b"Jello\n"),
        no_passthrough=True,  # with passthrough the writer gets ETXTBSY
    ),
    # ---- whiteouts and opaque directories
    scenario(
        "unlink-lower-file-then-re-create-it",
        (HELLO,),
        Unlink(b"d/f"),
        Stat(b"d/f", err="ENOENT"),
        ListDir(b"d", want=[b"g"]),
        Unlink(b"d/f", err="ENOENT"),
        Create(b"d/f", b"new", excl=True),
        Read(b"d/f", want=b"new"),
        ListDir(b"d", want=[b"f", b"g"]),
    ),
    scenario(
        "rm-r-lower-dir-then-mkdir-makes-it-opaque",
        ((File(b"d/f"), File(b"d/sub/x")), (File(b"d/g"), File(b"d/sub/y"))),
        RemoveTree(b"d"),
        Stat(b"d", err="ENOENT"),
        Mkdir(b"d"),
        ListDir(b"d", want=[]),
        Create(b"d/n", b"n"),
        ListDir(b"d", want=[b"n"]),
        Mkdir(b"d/sub"),
        ListDir(b"d/sub", want=[]),
    ),
    scenario(
        "rmdir-of-dir-holding-only-whiteouts",
        ((File(b"d/f"),), (File(b"d/g"), Dir(b"e"))),
        Unlink(b"d/f"),
        Unlink(b"d/g"),
        ListDir(b"d", want=[]),
        Rmdir(b"d"),
        Stat(b"d", err="ENOENT"),
        Rmdir(b"e"),
        ListDir(b"", want=[]),
    ),
    scenario(
        "rmdir-of-non-empty-merged-dir",
        (MERGED_TOP, MERGED_BASE),
        Rmdir(b"d", err="ENOTEMPTY"),
        Unlink(b"d/f"),
        Unlink(b"d/g"),
        Rmdir(b"d", err="ENOTEMPTY"),
        RemoveTree(b"d/sub"),
        Create(b"d/new"),
        Rmdir(b"d", err="ENOTEMPTY"),
        Unlink(b"d/new"),
        Rmdir(b"d"),
    ),
    scenario(
        "oci-whiteouts-and-opaque-markers-in-lowers",
        (
            (Whiteout(b"d/a"), Opaque(b"e"), File(b"e/y"), Whiteout(b"gone")),
            (File(b"d/a"), File(b"d/b"), File(b"e/x"), File(b"gone/z")),
        ),
        ListDir(b"d", want=[b"b"]),
        ListDir(b"e", want=[b"y"]),
        Stat(b"gone", err="ENOENT"),
        Stat(b"e/x", err="ENOENT"),
        Create(b"d/a", b"back", excl=True),
        Mkdir(b"gone"),
        ListDir(b"gone", want=[]),
        Unlink(b"e/y"),
        Rmdir(b"e"),
        ListDir(b"", want=[b"d", b"gone"]),
    ),
    scenario(
        "oci-whiteout-beside-a-same-named-dir-hides-the-lower-dir",
        ((Whiteout(b"s"), File(b"s/new")), (File(b"s/old"),)),
        ListDir(b"s", want=[b"new"]),
        doc="OCI: `.wh.s` beside `s/` in one layer means s was deleted and re-made (opaque)",
    ),
    scenario(
        "dir-made-where-a-file-hid-a-lower-dir-is-opaque",
        ((File(b"x", b"file"),), (File(b"x/y"), File(b"x/z"))),
        ListDir(b"", want=[b"x"]),
        Unlink(b"x"),
        Mkdir(b"x"),
        ListDir(b"x", want=[]),
        Stat(b"x/y", err="ENOENT"),
        doc="the base layer's dir x must not show through the new dir",
    ),
    scenario(
        "lower-dir-replaced-by-a-file-and-back",
        (MERGED_TOP, MERGED_BASE),
        RemoveTree(b"d"),
        Create(b"d", b"now a file"),
        Read(b"d", want=b"now a file"),
        Unlink(b"d"),
        Mkdir(b"d"),
        ListDir(b"d", want=[]),
    ),
    scenario(
        "three-layers-with-whiteouts-and-opaque-dirs",
        (
            (Whiteout(b"a/x"), File(b"b/top")),
            (File(b"a/x", b"mid"), Opaque(b"b"), File(b"b/m"), File(b"c/mid")),
            (File(b"a/y"), File(b"a/x", b"base"), File(b"b/z"), File(b"c/base")),
        ),
        ListDir(b"a", want=[b"y"]),
        ListDir(b"b", want=[b"m", b"top"]),
        ListDir(b"c", want=[b"base", b"mid"]),
        Create(b"a/x", b"new", excl=True),
        Rename(b"b", b"c/b"),
        ListDir(b"c/b", want=[b"m", b"top"]),
        Rename(b"c", b"a/c"),
        ListDir(b"a/c", want=[b"b", b"base", b"mid"]),
        RemoveTree(b"a/c/b"),
        Mkdir(b"a/c/b"),
        ListDir(b"a/c/b", want=[]),
    ),
    scenario(
        "new-files-follow-umask-and-setgid-dirs",
        ((Dir(b"sg", mode=0o2775, gid=50), Dir(b"plain", mode=0o777)),),
        Create(b"sg/f", mode=0o777),
        Stat(b"sg/f", want=stat_of("file", 0o755, 0, 1, 0, 50)),
        Mkdir(b"sg/sub", mode=0o777),
        Stat(b"sg/sub", want=stat_of("dir", 0o2755, None, 2, 0, 50)),
        Create(b"plain/f", mode=0o666),
        Stat(b"plain/f", want=stat_of("file", 0o644, 0, 1)),
        doc="the test process runs with umask 022",
    ),
    # ---- errors on creating and removing
    scenario(
        "name-clashes-with-lower-entries",
        (HELLO,),
        Create(b"d/f", excl=True, err="EEXIST"),
        Mkdir(b"d/f", err="EEXIST"),
        Mkdir(b"d", err="EEXIST"),
        Rmdir(b"d/f", err="ENOTDIR"),
        Unlink(b"d", err="EISDIR"),
        Link(b"d", b"d2", err="EPERM"),
        Create(b"d/f/x", err="ENOTDIR"),
        Write(b"d/missing", b"x", err="ENOENT"),
        Mkdir(b"missing/x", err="ENOENT"),
        Chmod(b"d/missing", 0o600, err="ENOENT"),
        Unlink(b"d/f"),
        Mkdir(b"d/f/x", err="ENOENT"),
    ),
    # ---- rename
    scenario(
        "rename-lower-file-over-lower-file",
        (HELLO,),
        SameInoAs(b"d/f", "f"),
        Rename(b"d/f", b"d/g"),
        Read(b"d/g", want=b"hello\n"),
        SameInoAs(b"d/g", "f", want=True),
        Stat(b"d/f", err="ENOENT"),
        ListDir(b"d", want=[b"g"]),
    ),
    scenario(
        "rename-file-across-dirs",
        (MERGED_TOP, MERGED_BASE),
        Rename(b"d/f", b"e/f"),
        Rename(b"d/sub/x", b"x"),
        Rename(b"e/f", b"d/sub/f"),
        ListDir(b"d", want=[b"g", b"sub"]),
        ListDir(b"d/sub", want=[b"f"]),
        ListDir(b"e", want=[]),
        Read(b"x", want=b"x\n"),
    ),
    scenario(
        "rename-lower-dir",
        (MERGED_TOP, MERGED_BASE),
        SameInoAs(b"d/sub/x", "x"),
        Rename(b"d", b"moved"),
        ListDir(b"moved", want=[b"f", b"g", b"sub"]),
        Read(b"moved/sub/x", want=b"x\n"),
        SameInoAs(b"moved/sub/x", "x", want=True),
        Stat(b"d", err="ENOENT"),
        Mkdir(b"d"),
        ListDir(b"d", want=[]),
        Create(b"moved/new"),
        Rename(b"moved/sub", b"d/sub"),
        ListDir(b"d/sub", want=[b"x"]),
        doc="kernel: EXDEV (emulated); strata renames, and the old name stays empty when re-made",
    ),
    scenario(
        "rename-merged-dir-with-upper-entries",
        (MERGED_TOP, MERGED_BASE),
        Create(b"d/up", b"up"),
        Unlink(b"d/g"),
        Rename(b"d", b"e2"),
        ListDir(b"e2", want=[b"f", b"sub", b"up"]),
        Rename(b"e2", b"d"),
        ListDir(b"d", want=[b"f", b"sub", b"up"]),
    ),
    scenario(
        "rename-upper-dir-into-and-out-of-lower-dirs",
        (MERGED_TOP, MERGED_BASE),
        Mkdir(b"n"),
        Create(b"n/x"),
        Rename(b"n", b"d/sub/n"),
        Rename(b"d/sub/n", b"e/n"),
        ListDir(b"e/n", want=[b"x"]),
    ),
    scenario(
        "rename-dir-over-empty-dir",
        (MERGED_TOP, MERGED_BASE),
        Rename(b"d", b"e"),
        ListDir(b"e", want=[b"f", b"g", b"sub"]),
        Stat(b"d", err="ENOENT"),
    ),
    scenario(
        "rename-dir-over-non-empty-dir",
        ((File(b"d/f"), File(b"e/g")),),
        Rename(b"d", b"e", err="ENOTEMPTY"),
        Mkdir(b"n"),
        Rename(b"n", b"e", err="ENOTEMPTY"),
        Rename(b"n", b"d", err="ENOTEMPTY"),
        ListDir(b"e", want=[b"g"]),
    ),
    scenario(
        "rename-dir-over-dir-holding-only-whiteouts",
        ((File(b"d/f"), File(b"e/g")),),
        Unlink(b"e/g"),
        Rename(b"d", b"e"),
        ListDir(b"e", want=[b"f"]),
        Mkdir(b"d"),
        Create(b"d/x"),
        Unlink(b"e/f"),
        Rename(b"d", b"e"),
        ListDir(b"e", want=[b"x"]),
    ),
    scenario(
        "rename-type-errors",
        ((File(b"d/f"), File(b"d/sub/x"), File(b"e/g")),),
        Rename(b"d/f", b"e", err="EISDIR"),
        Rename(b"e", b"d/f", err="ENOTDIR"),
        Rename(b"d", b"d/sub/in", err="EINVAL"),
        Rename(b"d/missing", b"e/m", err="ENOENT"),
        Rename(b"d/f", b"missing/f", err="ENOENT"),
        Rename(b"d/f", b"d/f"),
        Rename(b"d/f", b"d/f2", flags=4, err="EINVAL"),
        ListDir(b"d", want=[b"f", b"sub"]),
        doc="flags=4 is RENAME_WHITEOUT, which neither supports through the union",
    ),
    scenario(
        "rename-noreplace",
        (HELLO, (Dir(b"e"),)),
        Rename(b"d/f", b"d/g", flags=RENAME_NOREPLACE, err="EEXIST"),
        Rename(b"d", b"e", flags=RENAME_NOREPLACE, err="EEXIST"),
        Unlink(b"d/g"),
        Rename(b"d/f", b"d/g", flags=RENAME_NOREPLACE),
        Read(b"d/g", want=b"hello\n"),
        Rmdir(b"e"),
        Rename(b"d", b"e", flags=RENAME_NOREPLACE),
        ListDir(b"e", want=[b"g"]),
    ),
    scenario(
        "rename-exchange-two-lower-files",
        (HELLO,),
        Rename(b"d/f", b"d/g", flags=RENAME_EXCHANGE),
        Read(b"d/f", want=b"gee\n"),
        Read(b"d/g", want=b"hello\n"),
        Rename(b"d/f", b"d/missing", flags=RENAME_EXCHANGE, err="ENOENT"),
        Rename(b"d/f", b"d/g", flags=RENAME_EXCHANGE | RENAME_NOREPLACE, err="EINVAL"),
    ),
    scenario(
        "rename-exchange-file-and-lower-dir",
        ((File(b"d/f", b"F"), File(b"e/x", b"X")),),
        Rename(b"d/f", b"e", flags=RENAME_EXCHANGE),
        Read(b"e", want=b"F"),
        ListDir(b"d/f", want=[b"x"]),
        Read(b"d/f/x", want=b"X"),
        doc="kernel: EXDEV for the lower dir (emulated)",
    ),
    scenario(
        "rename-exchange-upper-dir-and-lower-file",
        (HELLO,),
        Mkdir(b"n"),
        Create(b"n/x", b"X"),
        Rename(b"n", b"d/f", flags=RENAME_EXCHANGE),
        Read(b"n", want=b"hello\n"),
        ListDir(b"d/f", want=[b"x"]),
    ),
    scenario(
        "rename-dir-holding-hard-links-to-names-outside-it",
        ((File(b"d/f", b"hello\n"), HardLink(b"out", b"d/f")),),
        Rename(b"d", b"e"),
        SameFile(b"e/f", b"out", want=True),
        Append(b"out", b"!"),
        Read(b"e/f", want=b"hello\n!"),
        doc="a renamed directory keeps its files' identity (the oracle moves files, not copies)",
        needs_index=True,
    ),
    scenario(
        "unlink-then-rename-onto-the-whited-out-name",
        (HELLO,),
        Unlink(b"d/f"),
        Rename(b"d/g", b"d/f"),
        Read(b"d/f", want=b"gee\n"),
        ListDir(b"d", want=[b"f"]),
        RemoveTree(b"d"),
        Mkdir(b"n"),
        Rename(b"n", b"d"),
        ListDir(b"d", want=[]),
    ),
    # ---- hard links
    scenario(
        "hard-link-of-lower-file-then-write-through-the-link",
        (HELLO,),
        Link(b"d/f", b"d/h"),
        SameFile(b"d/f", b"d/h", want=True),
        Write(b"d/h", b"J"),
        Read(b"d/f", want=b"Jello\n"),
        Stat(b"d/f", want=stat_of("file", 0o644, 6, 2)),
        Link(b"d/g", b"top"),
        Chmod(b"top", 0o600),
        Stat(b"d/g", want=stat_of("file", 0o600, 4, 2)),
        Unlink(b"d/f"),
        Stat(b"d/h", want=stat_of("file", 0o644, 6, 1)),
        doc="the link is made on the copied-up file, so both names stay one file",
    ),
    scenario(
        "lower-file-with-two-names-written-through-one",
        (TWO_NAMES,),
        SameFile(b"d/f", b"e/f2", want=True),
        Write(b"d/f", b"J"),
        Read(b"e/f2", want=b"Jello\n"),
        SameFile(b"d/f", b"e/f2", want=True),
        Stat(b"e/f2", want=stat_of("file", 0o644, 6, 2)),
        doc="kernel: with index=on; strata: always (its hard-link index of the lowers)",
        needs_index=True,
    ),
    scenario(
        "lower-file-with-two-names-chmod-through-one",
        (TWO_NAMES,),
        Chmod(b"e/f2", 0o600),
        Stat(b"d/f", want=stat_of("file", 0o600, 6, 2)),
        Append(b"d/f", b"!"),
        Read(b"e/f2", want=b"hello\n!"),
        Rename(b"d/f", b"e/f2"),
        SameFile(b"d/f", b"e/f2", want=True),
        doc="renaming a name onto another name of the same file does nothing",
        needs_index=True,
    ),
    scenario(
        "lower-file-with-two-names-unlink-and-rename-one",
        (TWO_NAMES,),
        Rename(b"e/f2", b"d/moved"),
        SameFile(b"d/f", b"d/moved", want=True),
        Unlink(b"d/f"),
        Stat(b"d/moved", want=stat_of("file", 0o644, 6, 1)),
        Write(b"d/moved", b"J"),
        Read(b"d/moved", want=b"Jello\n"),
        needs_index=True,
    ),
    scenario(
        "lower-file-with-two-names-unlink-one",
        (TWO_NAMES,),
        Unlink(b"e/f2"),
        Stat(b"d/f", want=stat_of("file", 0o644, 6, 1)),
        Read(b"d/f", want=b"hello\n"),
        doc="the remaining name counts one link (kernel: with index=on)",
        needs_index=True,
    ),
    scenario(
        "lower-hard-link-whose-other-name-is-shadowed",
        ((File(b"a", b"top"),), (File(b"a", b"base"), HardLink(b"b", b"a"))),
        Stat(b"b", want=stat_of("file", 0o644, 4, 2)),
        Append(b"b", b"!"),
        Stat(b"b", want=stat_of("file", 0o644, 5, 2)),
        Read(b"a", want=b"top"),
        doc="b's other name is hidden by the top layer's a; copy-up must not change b's st_nlink",
        needs_index=True,
    ),
    scenario(
        "lower-file-with-two-names-link-a-third",
        (TWO_NAMES,),
        Link(b"e/f2", b"third"),
        Stat(b"d/f", want=stat_of("file", 0o644, 6, 3)),
        Truncate(b"third", 1),
        Read(b"d/f", want=b"h"),
        Read(b"e/f2", want=b"h"),
        needs_index=True,
    ),
    # ---- other kinds of file
    scenario(
        "symlinks",
        (
            (
                *HELLO,
                Symlink(b"d/l", b"f", uid=5, gid=6),
                Symlink(b"dangling", b"nowhere"),
                Symlink(b"dl", b"d"),
            ),
        ),
        Readlink(b"d/l", want=b"f"),
        Read(b"d/l", want=b"hello\n"),
        Read(b"dangling", err="ENOENT"),
        MakeSymlink(b"../d/g", b"d/l2"),
        Readlink(b"d/l2", want=b"../d/g"),
        Read(b"d/l2", want=b"gee\n"),
        Chown(b"d/l", 1000, 1000),
        Stat(b"d/l", want=stat_of("symlink", 0o777, 1, 1, 1000, 1000)),
        Rename(b"dangling", b"d/moved-link"),
        Readlink(b"d/moved-link", want=b"nowhere"),
        MakeSymlink(b"x", b"d/f", err="EEXIST"),
        SetXattr(b"d/l", "user.x", b"1", err="EPERM"),
        Readlink(b"d/f", err="EINVAL"),
        Create(b"dl/new", b"through a lower symlink to a lower dir"),
        ListDir(b"d", want=[b"f", b"g", b"l", b"l2", b"moved-link", b"new"]),
    ),
    scenario(
        "fifos-and-device-nodes",
        (HELLO, (Fifo(b"d/lowerfifo", mode=0o600),)),
        Mkfifo(b"d/p"),
        Stat(b"d/p", want=stat_of("special", 0o644, 0, 1)),
        Chmod(b"d/lowerfifo", 0o640),
        Rename(b"d/lowerfifo", b"fifo2"),
        Mknod(b"d/null", 1, 3),
        Mknod(b"d/fake-whiteout", 0, 0, err="EPERM"),
        Mknod(b"d/f", 1, 3, err="EEXIST"),
    ),
    scenario(
        "xattrs-on-lower-files-and-dirs",
        (
            (
                File(b"d/f", b"x", xattrs=(("user.a", b"1"), ("user.b", b"2"))),
                Dir(b"d", xattrs=(("user.dir", b"d"),)),
            ),
        ),
        GetXattr(b"d/f", "user.a", want=b"1"),
        GetXattr(b"d/f", "user.none", err="ENODATA"),
        ListXattr(b"d/f", want=["user.a", "user.b"]),
        SetXattr(b"d/f", "user.c", b"3"),
        RemoveXattr(b"d/f", "user.b"),
        GetXattr(b"d/f", "user.b", err="ENODATA"),
        ListXattr(b"d/f", want=["user.a", "user.c"]),
        SetXattr(b"d/f", "user.a", b"again", flags=XATTR_CREATE, err="EEXIST"),
        RemoveXattr(b"d/f", "user.none", err="ENODATA"),
        SetXattr(b"d", "user.dir2", b"e"),
        RemoveXattr(b"d", "user.dir"),
        ListXattr(b"d", want=["user.dir2"]),
        Read(b"d/f", want=b"x"),
    ),
    # ---- names and paths
    scenario(
        "non-utf8-names",
        ((File(b"caf\xe9/\xff\xfe", b"latin1"), File(b"caf\xe9/ok")),),
        Read(b"caf\xe9/\xff\xfe", want=b"latin1"),
        Create(b"caf\xe9/n\x80w", b"new"),
        Rename(b"caf\xe9/\xff\xfe", b"\xc3\x28"),
        Unlink(b"caf\xe9/ok"),
        ListDir(b"caf\xe9", want=[b"n\x80w"]),
        Mkdir(b"\xfe\xed"),
        Rename(b"caf\xe9", b"\xfe\xed/\x81"),
        ListDir(b"\xfe\xed/\x81", want=[b"n\x80w"]),
    ),
    scenario(
        "long-names",
        ((File(b"d/" + b"l" * 255, b"long"), File(b"d/f")),),
        Read(b"d/" + b"l" * 255, want=b"long"),
        Create(b"d/" + b"n" * 255, b"x"),
        Create(b"d/" + b"n" * 256, err="ENAMETOOLONG"),
        Mkdir(b"d/" + b"m" * 256, err="ENAMETOOLONG"),
        Stat(b"d/" + b"s" * 256, err="ENAMETOOLONG"),
        Rename(b"d/f", b"d/" + b"r" * 256, err="ENAMETOOLONG"),
        Link(b"d/f", b"d/" + b"k" * 256, err="ENAMETOOLONG"),
        MakeSymlink(b"f", b"d/" + b"y" * 256, err="ENAMETOOLONG"),
        Rename(b"d/f", b"d/" + b"r" * 255),
        Mkdir(b"d/" + b"m" * 255),
        Unlink(b"d/" + b"l" * 255),
        ListDir(b"d", want=[b"m" * 255, b"n" * 255, b"r" * 255]),
    ),
]

DEPTH = 120
LOWER_CHAIN = b"/".join(b"d%03d" % i for i in range(DEPTH))  # ~600 bytes
UPPER_CHAIN = b"/".join(b"u%03d" % i for i in range(DEPTH))
SCENARIOS.append(
    Scenario(
        name="deep-directory-chains",
        lowers=((File(LOWER_CHAIN + b"/bottom", b"deep"),),),
        ops=(
            Append(LOWER_CHAIN + b"/bottom", b"er"),
            *(Mkdir(LOWER_CHAIN + b"/" + UPPER_CHAIN[: 5 * (i + 1) - 1]) for i in range(DEPTH)),
            Create(LOWER_CHAIN + b"/" + UPPER_CHAIN + b"/leaf", b"leaf"),
            Rename(b"d000/d001", b"top"),
            Read(b"top/" + LOWER_CHAIN.split(b"/", 2)[2] + b"/bottom", want=b"deeper"),
            Stat(LOWER_CHAIN + b"/bottom", err="ENOENT"),
        ),
        doc="copy-up of a file 120 dirs down, 120 more dirs made, the chain renamed half-way",
    )
)


# ---- metadata-only copy-up (metacopy): a metadata change, then the data is read, written, moved
BIG_DATA = bytes(range(256)) * 1024  # 256 KiB: more than one FUSE read request
SCENARIOS += [
    scenario(
        "metacopy-chmod-then-append",
        (HELLO,),
        Chmod(b"d/f", 0o600),
        Read(b"d/f", want=b"hello\n"),
        Append(b"d/f", b"more\n"),
        Read(b"d/f", want=b"hello\nmore\n"),
        Stat(b"d/f", want=stat_of("file", 0o600, 11, 1)),
        doc="the data moves up at the first write, keeping the changed mode",
    ),
    scenario(
        "metacopy-chown-then-truncate",
        (HELLO,),
        Chown(b"d/f", 1000, 1001),
        Truncate(b"d/f", 3),
        Read(b"d/f", want=b"hel"),
        Chown(b"d/g", 7, 7),
        OpenTrunc(b"d/g", b"x"),
        Read(b"d/g", want=b"x"),
        Stat(b"d/g", want=stat_of("file", 0o644, 1, 1, 7, 7)),
    ),
    scenario(
        "metacopy-utime-then-rename-then-write",
        (MERGED_TOP, MERGED_BASE),
        Utime(b"d/g", T2, T1),
        Rename(b"d/g", b"e/moved"),
        Read(b"e/moved", want=b"gee\n"),
        Create(b"d/g", b"new at the old name"),
        Read(b"e/moved", want=b"gee\n"),
        Write(b"e/moved", b"G"),
        Read(b"e/moved", want=b"Gee\n"),
        Read(b"d/g", want=b"new at the old name"),
        doc="a renamed metacopy file finds its data at the original path",
    ),
    scenario(
        "metacopy-setxattr-then-read-through-earlier-fd",
        ((File(b"big", BIG_DATA),),),
        SetXattr(b"big", "user.k", b"v"),
        Read(b"big", want=BIG_DATA),
        ReadThroughEarlierFd(b"big", b"NEW"),
        GetXattr(b"big", "user.k", want=b"v"),
        Read(b"big", want=b"NEW" + BIG_DATA[3:]),
        no_passthrough=True,  # with passthrough the writer gets ETXTBSY (data still below)
    ),
    scenario(
        "metacopy-chmod-then-link-and-rename-dir",
        ((File(b"d/f", b"hello\n"), File(b"d/sub/x", b"x\n")),),
        Chmod(b"d/f", 0o700),
        Link(b"d/f", b"d/f2"),
        Chmod(b"d/sub/x", 0o600),
        Rename(b"d", b"e"),
        Read(b"e/f2", want=b"hello\n"),
        Read(b"e/sub/x", want=b"x\n"),
        SameFile(b"e/f", b"e/f2", want=True),
        Stat(b"e/sub/x", want=stat_of("file", 0o600, 2, 1)),
        doc="a link copies the data first; a moved directory's metacopy files keep their data",
    ),
    scenario(
        "metacopy-chmod-lower-hard-link",
        (TWO_NAMES,),
        Chmod(b"d/f", 0o600),
        Stat(b"e/f2", want=stat_of("file", 0o600, 6, 2)),
        Append(b"e/f2", b"!"),
        Read(b"d/f", want=b"hello\n!"),
        needs_index=True,
        doc="hard-linked lower files are copied whole (no metacopy): the names stay one file",
    ),
]


def test_scenario_names_are_unique() -> None:
    names = [s.name for s in SCENARIOS]
    assert len(names) == len(set(names))


def _skip_unless_runnable(scenario: Scenario) -> None:
    skip_unless_differential()
    if scenario.needs_index and not kernel_supports_index():
        pytest.skip("kernel overlayfs here cannot mount with index=on (keeps hard links)")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_strata_matches_kernel_overlayfs(scenario: Scenario, tmp_path: Path) -> None:
    """strata as mounted by default (metacopy=on) against the kernel's default copy-up."""
    _skip_unless_runnable(scenario)
    assert_scenario(scenario, tmp_path)


METADATA_SCENARIOS = [s for s in SCENARIOS if has_metadata_ops(s)]


@pytest.mark.parametrize("scenario", METADATA_SCENARIOS, ids=lambda s: s.name)
def test_strata_with_metacopy_off_matches_kernel_overlayfs(
    scenario: Scenario, tmp_path: Path
) -> None:
    """metacopy=off (fuse-strata's default): the whole copy-up, and an upper the kernel reads
    back as a lower layer (with metacopy files in it, only strata can)."""
    _skip_unless_runnable(scenario)
    assert_scenario(scenario, tmp_path, metacopy=False)


@pytest.mark.parametrize("scenario", METADATA_SCENARIOS, ids=lambda s: s.name)
def test_strata_matches_kernel_overlayfs_with_metacopy(scenario: Scenario, tmp_path: Path) -> None:
    """The second oracle: the kernel with metacopy=on (and the redirect_dir=on it needs). The
    raw uppers differ by design (markers, redirects); merged trees and outcomes may not."""
    _skip_unless_runnable(scenario)
    if not kernel_supports_metacopy():
        pytest.skip("kernel overlayfs here cannot mount with metacopy=on,redirect_dir=on")
    assert_scenario(scenario, tmp_path, kernel_metacopy=True)
