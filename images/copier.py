"""COPY and ADD: context paths copied into an image mounted as a union (`images.build`
mounts it), by Docker's rules (see the README): directories by their contents, a file into a
directory destination by its name, `--chown` resolved against the image's own /etc/passwd and
/etc/group, and ADD of a local tar archive (plain, gzip, bzip2, xz or zstd) extracted.

Writing through the mount (not into the upper dir) makes copy-up, whiteouts and symlinks in the
destination path (`/bin -> usr/bin`) behave as they do in a container.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Final, Protocol, cast


class CopyError(Exception):
    pass


def _read_db(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_chown(root: Path, spec: str) -> tuple[int, int] | None:
    """`--chown=USER[:GROUP]` against the image's /etc/passwd and /etc/group (names or ids). As
    Docker documents it, a user without a group gives the same number as gid."""
    from runtime.mounts import resolve_in_root

    user, _, group = spec.partition(":")
    etc = resolve_in_root(root, "/etc")
    uid: int | None = int(user) if user.isdigit() else None
    if uid is None:
        for entry in _read_db(etc / "passwd"):
            if len(entry) >= 3 and entry[0] == user and entry[2].isdigit():
                uid = int(entry[2])
                break
    if uid is None:
        return None
    if not group:
        return uid, uid
    gid: int | None = int(group) if group.isdigit() else None
    if gid is None:
        for entry in _read_db(etc / "group"):
            if len(entry) >= 3 and entry[0] == group and entry[2].isdigit():
                gid = int(entry[2])
                break
    return None if gid is None else (uid, gid)


def make_dirs(target: Path, root: Path, owner: tuple[int, int] | None) -> None:
    """mkdir -p below the mount `root`: missing directories 0755, root's (or `owner`'s)."""
    missing = []
    path = target
    while not os.path.lexists(path) and path != root:
        missing.append(path)
        path = path.parent
    if os.path.lexists(path) and not path.is_dir():
        raise CopyError(f"{path.relative_to(root)} exists and is not a directory")
    for d in reversed(missing):
        os.mkdir(d, 0o755)
        os.chmod(d, 0o755)
        if owner is not None:
            os.chown(d, *owner)


_TAR_MAGIC_OFFSET: Final = 257


@contextlib.contextmanager
def _decompressing(path: Path, head: bytes) -> Iterator[IO[bytes]]:
    """`path` opened for reading, decompressed by what its first bytes say it is."""
    with open(path, "rb") as raw:
        if head.startswith(b"\x1f\x8b"):
            stream = cast(IO[bytes], gzip.GzipFile(fileobj=raw))
        elif head.startswith(b"BZh"):
            stream = cast(IO[bytes], bz2.BZ2File(raw))
        elif head.startswith(b"\xfd7zXZ\x00"):
            stream = cast(IO[bytes], lzma.LZMAFile(raw))  # noqa: SIM115 (closed below)
        elif head.startswith(b"\x28\xb5\x2f\xfd"):
            import zstandard

            stream = cast(
                IO[bytes],
                zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
            )
        else:
            yield raw
            return
        with stream:
            yield stream


_Reader = Callable[[], contextlib.AbstractContextManager[IO[bytes]]]


def archive_reader(path: Path) -> _Reader | None:
    """How to open `path` as an uncompressed tar stream, when it is a (plain, gzip, bzip2, xz
    or zstd) tar; None for any other file (ADD then copies it as it is, as Docker)."""
    with open(path, "rb") as f:
        head = f.read(6)

    def reader() -> contextlib.AbstractContextManager[IO[bytes]]:
        return _decompressing(path, head)

    try:
        with reader() as stream:
            block = stream.read(512)
    except (OSError, EOFError, ValueError, lzma.LZMAError):
        return None
    if len(block) == 512 and block[_TAR_MAGIC_OFFSET : _TAR_MAGIC_OFFSET + 5] == b"ustar":
        return reader
    return None


class Source(Protocol):
    """Where COPY's sources come from: the build context, a stage's root (COPY --from), or
    here-document files. Paths are source-relative `str`s, as `Context` has them."""

    root: Path
    keeps_owner: bool  # files keep their owners (COPY --from), else they become root's

    def host(self, rel: str) -> Path: ...

    def below(self, rel: str) -> list[str]: ...


class Copier:
    """Copies source paths into the mounted image (Docker's COPY/ADD rules, see README)."""

    def __init__(
        self,
        context: Source,
        root: Path,
        owner: tuple[int, int] | None,
        staging: Path,
        *,
        mode: int | None = None,
    ) -> None:
        self.context = context
        self.root = root
        self.owner = owner
        self.staging = staging
        self.mode = mode  # --chmod: of every file and directory copied

    def _owner(self, st: os.stat_result) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        return (st.st_uid, st.st_gid) if self.context.keeps_owner else (0, 0)

    def copy(self, rel: str, target: Path, *, as_dir: bool, extract: bool) -> None:
        src = self.context.host(rel)
        st = os.lstat(src)
        if stat.S_ISDIR(st.st_mode):
            make_dirs(target, self.root, self.owner)
            if not target.is_dir() or target.is_symlink():
                raise CopyError(f"{rel}: the destination is not a directory")
            self.copy_tree(rel, target)
            return
        if extract and stat.S_ISREG(st.st_mode):
            reader = archive_reader(src)
            if reader is not None:
                self.extract(rel, reader, target)
                return
        if as_dir or (target.is_dir() and not target.is_symlink()):
            make_dirs(target, self.root, None)
            target = target / posixpath.basename(rel)
        else:
            make_dirs(target.parent, self.root, None)
        self.copy_one(src, target, st)

    def copy_tree(self, rel: str, target: Path) -> None:
        below = self.context.below(rel)
        prefix = "" if rel == "." else rel + "/"
        dirs: list[tuple[Path, os.stat_result]] = []
        for child in below:  # sorted: a directory before what is in it
            src = self.context.host(child)
            st = os.lstat(src)
            dst = target / child[len(prefix) :]
            if stat.S_ISDIR(st.st_mode):
                if os.path.lexists(dst) and not (dst.is_dir() and not dst.is_symlink()):
                    os.unlink(dst)
                if not os.path.lexists(dst):
                    os.mkdir(dst, 0o700)
                self.set_attrs(dst, st, owner=self._owner(st))
                dirs.append((dst, st))
            else:
                self.copy_one(src, dst, st)
        for dst, st in reversed(dirs):  # contents first: writing them changed the mtimes
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def copy_one(self, src: Path, dst: Path, st: os.stat_result) -> None:
        if os.path.lexists(dst):
            if dst.is_dir() and not dst.is_symlink():
                raise CopyError(f"cannot overwrite directory {dst.relative_to(self.root)}")
            os.unlink(dst)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISREG(st.st_mode):
            with open(src, "rb") as fin, open(dst, "xb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            os.mknod(dst, st.st_mode, st.st_rdev)  # a stage's /dev entries, say
        else:
            raise CopyError(f"{src.relative_to(self.context.root)}: a socket cannot be copied")
        self.set_attrs(dst, st, owner=self._owner(st))
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def set_attrs(
        self, dst: Path, st: os.stat_result, *, owner: tuple[int, int], chmod: bool = True
    ) -> None:
        """Owner and mode of a copy: `--chmod`'s mode when given (not for ADD's extraction,
        which keeps the archive's, as `--chown` does there)."""
        os.chown(dst, *owner, follow_symlinks=False)
        if not stat.S_ISLNK(st.st_mode):
            mode = self.mode if self.mode is not None and chmod else stat.S_IMODE(st.st_mode)
            os.chmod(dst, mode)

    def extract(self, rel: str, reader: _Reader, target: Path) -> None:
        """ADD of a local tar: extracted (by the store's safe extractor) into a scratch dir,
        then copied into `target` with the archive's owners, modes, times and hard links."""
        from .extract import LayerError, extract_layer

        scratch = Path(os.path.join(self.staging, f"add-{os.urandom(4).hex()}"))
        scratch.mkdir()
        try:
            with reader() as stream:
                extract_layer(stream, scratch)
        except (LayerError, OSError, EOFError, ValueError) as e:
            raise CopyError(f"{rel}: cannot extract it ({e})") from None
        make_dirs(target, self.root, None)
        links: dict[int, Path] = {}
        dirs: list[tuple[Path, os.stat_result]] = []
        for dirpath, dirnames, filenames in os.walk(scratch):
            dirnames.sort()
            for name in sorted(filenames) + [
                d for d in dirnames if os.path.islink(f"{dirpath}/{d}")
            ]:
                src = Path(dirpath, name)
                st = os.lstat(src)
                dst = target / src.relative_to(scratch)
                if st.st_nlink > 1 and st.st_ino in links:
                    if os.path.lexists(dst):
                        os.unlink(dst)
                    os.link(links[st.st_ino], dst)
                    continue
                links[st.st_ino] = dst
                if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                    if os.path.lexists(dst) and not (dst.is_dir() and not dst.is_symlink()):
                        os.unlink(dst)
                    if stat.S_ISLNK(st.st_mode):
                        os.symlink(os.readlink(src), dst)
                    else:
                        with open(src, "rb") as fin, open(dst, "xb") as fout:
                            shutil.copyfileobj(fin, fout, 1 << 20)
                    self.set_attrs(dst, st, owner=(st.st_uid, st.st_gid), chmod=False)
                    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
                elif (
                    stat.S_ISFIFO(st.st_mode)
                    or stat.S_ISCHR(st.st_mode)
                    or stat.S_ISBLK(st.st_mode)
                ):
                    if os.path.lexists(dst) and not (dst.is_dir() and not dst.is_symlink()):
                        os.unlink(dst)
                    os.mknod(dst, st.st_mode, st.st_rdev)
                    self.set_attrs(dst, st, owner=(st.st_uid, st.st_gid), chmod=False)
            for name in dirnames:
                src = Path(dirpath, name)
                st = os.lstat(src)
                if stat.S_ISLNK(st.st_mode):
                    continue
                dst = target / src.relative_to(scratch)
                if os.path.lexists(dst) and not (dst.is_dir() and not dst.is_symlink()):
                    os.unlink(dst)
                if not os.path.lexists(dst):
                    os.mkdir(dst, 0o700)
                self.set_attrs(dst, st, owner=(st.st_uid, st.st_gid), chmod=False)
                dirs.append((dst, st))
        for dst, st in reversed(dirs):
            os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
