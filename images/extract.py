"""Safe extraction of one image layer (a tar stream) into an empty directory.

Why not `tarfile`'s extraction filters: the 'data' filter is too strict for container layers (it
refuses device nodes, drops setuid bits and owners, and rejects absolute symlink targets, which
images use everywhere: `/etc/localtime -> /usr/share/zoneinfo/UTC`), and 'fully_trusted' checks
nothing. A symlink's target is never followed here, so any target is harmless *inside* the layer;
what must never happen is that extraction itself writes through one. So each member is checked
and created by hand:

- names are relative, without `..`; `./` prefixes are dropped;
- every parent of a member must be a real directory created by this extraction (a member under a
  symlink, `symlink-then-write`, is rejected), and nothing is ever opened following a symlink;
- a hard link must name a non-directory member already extracted in this layer (a symlink is
  linked itself, never followed);
- device nodes need root; sizes beyond `MAX_MEMBER_SIZE` or the free space are rejected before
  anything is read.

Kept: modes (setuid too), numeric owners (as root), mtimes, `SCHILY.xattr.*` PAX records,
symlinks, hard links, fifos, devices. `.wh.` whiteouts and `.wh..wh..opq` markers stay as the
empty files the layer has: the union reads them as whiteouts and never shows them.

Every failure is a `LayerError` naming the member; the caller throws the directory away.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final

log = logging.getLogger(__name__)

MAX_MEMBER_SIZE: Final = 1 << 40  # 1 TiB: anything larger is a hostile or broken header
_COPY_CHUNK: Final = 1 << 20


class LayerError(Exception):
    """A layer that cannot be extracted safely (the message names the member)."""


def member_path(name: str) -> str:
    """`name` as a clean relative path ('' for the layer root); LayerError if it escapes."""
    if name.startswith("/"):
        raise LayerError(f"{name!r}: absolute member name")
    parts = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise LayerError(f"{name!r}: '..' in member name")
        parts.append(part)
    return "/".join(parts)


class _Extractor:
    def __init__(self, dest: Path, *, progress: Callable[[int], None] | None) -> None:
        self.dest = dest
        self.is_root = os.geteuid() == 0
        self.dirs: dict[str, tarfile.TarInfo] = {}  # metadata applied last (children change mtimes)
        self.linkable: set[str] = set()  # members a hard link may name
        self.progress = progress
        self.payloads: list[tuple[str, int, int, int]] = []  # rel, tar offset, size, inode

    def real(self, rel: str) -> str:
        return os.path.join(self.dest, rel) if rel else str(self.dest)

    def check_parents(self, member: str, rel: str) -> None:
        """Every parent of `rel` is a real directory (created when missing)."""
        parts = rel.split("/")[:-1]
        path = str(self.dest)
        for part in parts:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise LayerError(f"{member!r}: under a symlink ({part!r})")
            if not stat.S_ISDIR(st.st_mode):
                raise LayerError(f"{member!r}: a parent is not a directory ({part!r})")

    def clear(self, rel: str, *, keep_dir: bool) -> None:
        """Remove what is at `rel` (a later member replaces an earlier one, as tar does)."""
        path = self.real(rel)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            import shutil

            shutil.rmtree(path)
            prefix = rel + "/"
            self.linkable = {m for m in self.linkable if not m.startswith(prefix)}
            self.dirs = {m: i for m, i in self.dirs.items() if not m.startswith(prefix)}
        else:
            os.unlink(path)
        self.linkable.discard(rel)

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        name = info.name
        rel = member_path(name)
        if not rel:
            if info.isdir():
                self.dirs[""] = info
                return
            raise LayerError(f"{name!r}: the layer root must be a directory")
        if info.size > MAX_MEMBER_SIZE:
            raise LayerError(f"{name!r}: absurd size {info.size}")
        if info.isreg() and info.size > 0:
            vfs = os.statvfs(self.dest)
            if info.size > vfs.f_bavail * vfs.f_frsize:
                raise LayerError(f"{name!r}: size {info.size} exceeds the free space")
        self.check_parents(name, rel)
        path = self.real(rel)
        self.clear(rel, keep_dir=info.isdir())
        if info.isdir():
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            self.dirs[rel] = info
            return
        if info.islnk():
            self.link(info, rel, path)
        elif info.issym():
            os.symlink(info.linkname, path)
        elif info.isreg():
            self.write_file(tar, info, path)
            if not info.issparse():  # a sparse member's stored data is not the file's bytes
                self.payloads.append((rel, info.offset_data, info.size, os.lstat(path).st_ino))
        elif info.isfifo():
            os.mkfifo(path, 0o600)
        elif info.ischr() or info.isblk():
            if not self.is_root:
                raise LayerError(f"{name!r}: device node (needs root)")
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(info.devmajor, info.devminor))
        else:
            raise LayerError(f"{name!r}: unsupported member type {info.type!r}")
        if not info.islnk():
            self.apply(info, path)
            self.linkable.add(rel)  # a hard link to a symlink links the symlink itself

    def link(self, info: tarfile.TarInfo, rel: str, path: str) -> None:
        try:
            target = member_path(info.linkname)
        except LayerError:
            target = None
        if target is None or target not in self.linkable:
            raise LayerError(
                f"{info.name!r}: hard link to {info.linkname!r}, not an earlier member of the layer"
            )
        self.check_parents(info.name, target)
        os.link(self.real(target), path, follow_symlinks=False)

    def write_file(self, tar: tarfile.TarFile, info: tarfile.TarInfo, path: str) -> None:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "wb") as out:
            src = tar.extractfile(info)
            if src is None:
                raise LayerError(f"{info.name!r}: no data")
            left = info.size
            while left > 0:
                chunk = src.read(min(left, _COPY_CHUNK))
                if not chunk:
                    raise LayerError(f"{info.name!r}: truncated")
                out.write(chunk)
                left -= len(chunk)
                if self.progress is not None:
                    self.progress(len(chunk))

    def apply(self, info: tarfile.TarInfo, path: str) -> None:
        """Owner, xattrs, mode and mtime of `path` (never following a symlink)."""
        if self.is_root:
            os.lchown(path, info.uid, info.gid)
        for key, value in info.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                attr = key[len("SCHILY.xattr.") :]
                raw = value.encode("utf-8", "surrogateescape")
                try:
                    os.setxattr(path, attr, raw, follow_symlinks=False)
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                        raise
                    log.warning("%s: xattr %s not kept: %s", info.name, attr, e.strerror)
        if not info.issym():
            os.chmod(path, stat.S_IMODE(info.mode))
        os.utime(path, ns=(int(info.mtime * 1e9),) * 2, follow_symlinks=False)

    def finish(self) -> None:
        for rel in sorted(self.dirs, key=lambda r: r.count("/") + bool(r), reverse=True):
            self.apply(self.dirs[rel], self.real(rel))


def extract_layer(
    stream: IO[bytes], dest: Path, *, progress: Callable[[int], None] | None = None
) -> list[tuple[str, int, int, int]]:
    """Extract the uncompressed tar `stream` into the empty directory `dest` (see module doc).

    Returns where regular files' contents were: (path, offset in the tar, size, inode)."""
    extractor = _Extractor(dest, progress=progress)
    try:
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=2) as tar:
            for info in tar:
                extractor.add(tar, info)
        extractor.finish()
    except tarfile.TarError as e:
        raise LayerError(f"not a valid tar: {e}") from None
    return extractor.payloads
