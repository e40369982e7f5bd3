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
- device nodes need root (rootless, they are skipped and counted, as podman does);
- a member that replaces another (tar's rule: the later one wins) takes only its own metadata: a
  directory's saved mode, owner and times go with it when it is replaced;
- metadata (owner, xattrs, mode, times) is applied through a descriptor of the parent directory,
  walked from the layer root with O_NOFOLLOW, to a last component that is never followed;
- the bytes written are bounded (`limit`: by default the free space minus a reserve), so a
  decompression bomb stops early; sparse members are written as holes;
- the tar is read strictly: a header that is not valid in the middle of the stream fails the
  layer (tarfile alone ends the archive there without a word).

Kept: modes (setuid too), numeric owners (as root), mtimes, `SCHILY.xattr.*` PAX records but the
union's own (`trusted.strata.*`, `*.overlay.*`: an image must not forge a marker; dropped with a
warning),
symlinks, hard links, fifos, devices. `.wh.` whiteouts and `.wh..wh..opq` markers stay as the
empty files the layer has: the union reads them as whiteouts and never shows them.

Every failure is a `LayerError` naming the member; the caller throws the directory away.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Final, cast

from unionfs import _sys
from unionfs.whiteout import is_private_xattr

log = logging.getLogger(__name__)

MAX_MEMBER_SIZE: Final = 1 << 40  # 1 TiB: anything larger is a hostile or broken header
_COPY_CHUNK: Final = 1 << 20
# Left free on the store's filesystem by default: 5 % of it, at most 1 GiB.
RESERVE_FRACTION: Final = 0.05
RESERVE_MAX: Final = 1 << 30


class LayerError(Exception):
    """A layer that cannot be extracted safely (the message names the member)."""


LIMIT_VARIABLE: Final = "STRATA_MAX_LAYER_SIZE"
_SIZE: Final = re.compile(r"(\d+)([kmgt]?)", re.IGNORECASE)


def default_limit(dest: Path) -> int:
    """How many bytes an extraction into `dest` may write: the free space minus a reserve, and
    at most $STRATA_MAX_LAYER_SIZE (bytes, or a number with k, m, g or t) when it is set."""
    vfs = os.statvfs(dest)
    reserve = min(RESERVE_MAX, int(vfs.f_blocks * vfs.f_frsize * RESERVE_FRACTION))
    limit = max(0, vfs.f_bavail * vfs.f_frsize - reserve)
    setting = os.environ.get(LIMIT_VARIABLE, "").strip()
    if setting:
        m = _SIZE.fullmatch(setting)
        if m is None:
            raise LayerError(f"{LIMIT_VARIABLE}={setting}: expected a size such as 500m or 20g")
        limit = min(limit, int(m[1]) << 10 * " kmgt".index(m[2].lower() or " "))
    return limit


class _StrictTarInfo(tarfile.TarInfo):
    """tarfile ends an archive quietly at a broken header after the first member; docker and
    podman refuse it ("invalid tar header"), and so does this."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            if type(e).__name__ in ("EOFHeaderError", "EmptyHeaderError"):
                raise  # the end of the archive: zero blocks, or the end of the data
            raise LayerError(f"invalid tar header at byte {tar.offset}: {e}") from None


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
    def __init__(
        self,
        dest: Path,
        *,
        progress: Callable[[int], None] | None,
        limit: int | None,
        warn: Callable[[str], None],
    ) -> None:
        self.warn = warn
        self.dest = dest
        # root may chown; in a rootless user namespace (`build`) only to the ids it maps, and
        # only root of the initial namespace may make device nodes
        self.may_chown = os.geteuid() == 0
        self.in_user_namespace = not _sys.in_initial_user_namespace()
        self.may_mknod = self.may_chown and not self.in_user_namespace
        self.dirs: dict[str, tarfile.TarInfo] = {}  # metadata applied last (children change mtimes)
        self.linkable: set[str] = set()  # members a hard link may name
        # directories this extraction made or checked: what is below one needs no lstat walk
        # (only the extraction writes here, and `clear` forgets the ones it removes)
        self.real_dirs: set[str] = {""}
        self.progress = progress
        self.payloads: list[tuple[str, int, int, int]] = []  # rel, tar offset, size, inode
        self.limit = default_limit(dest) if limit is None else limit
        self.written = 0
        self.skipped_devices = 0
        self.stripped_xattrs = 0

    def real(self, rel: str) -> str:
        return os.path.join(self.dest, rel) if rel else str(self.dest)

    def check_parents(self, member: str, rel: str) -> None:
        """Every parent of `rel` is a real directory (created when missing)."""
        if rel.rpartition("/")[0] in self.real_dirs:
            return
        parts = rel.split("/")[:-1]
        path = str(self.dest)
        for i, part in enumerate(parts):
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                os.mkdir(path, 0o755)
            else:
                if stat.S_ISLNK(st.st_mode):
                    raise LayerError(f"{member!r}: under a symlink ({part!r})")
                if not stat.S_ISDIR(st.st_mode):
                    raise LayerError(f"{member!r}: a parent is not a directory ({part!r})")
            self.real_dirs.add("/".join(parts[: i + 1]))

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
            self.real_dirs = {d for d in self.real_dirs if d != rel and not d.startswith(prefix)}
            self.dirs = {
                m: i for m, i in self.dirs.items() if m != rel and not m.startswith(prefix)
            }
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
        if info.isreg():
            self.account(name, _data_size(info))
        if (info.ischr() or info.isblk()) and not self.may_mknod:
            self.skipped_devices += 1  # podman skips them too: only root may make one
            return
        self.check_parents(name, rel)
        path = self.real(rel)
        self.clear(rel, keep_dir=info.isdir())
        if info.isdir():
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            self.dirs[rel] = info
            self.real_dirs.add(rel)
            return
        if info.islnk():
            self.link(info, rel, path)
        elif info.issym():
            os.symlink(info.linkname, path)
        elif info.isreg():
            ino = self.write_file(tar, info, path)
            if not info.issparse():  # a sparse member's stored data is not the file's bytes
                self.payloads.append((rel, info.offset_data, info.size, ino))
            self.linkable.add(rel)
            return  # write_file applied the metadata, through the file's descriptor
        elif info.isfifo():
            os.mkfifo(path, 0o600)
        elif info.ischr() or info.isblk():
            kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(info.devmajor, info.devminor))
        else:
            raise LayerError(f"{name!r}: unsupported member type {info.type!r}")
        if not info.islnk():
            self.apply(info, rel)
            self.linkable.add(rel)  # a hard link to a symlink links the symlink itself

    def account(self, name: str, size: int) -> None:
        """Count `size` more bytes against the limit, before they are written."""
        self.written += size
        if self.written > self.limit:
            raise LayerError(
                f"{name!r}: the layer expands beyond {self.limit} bytes (the free space of the"
                " store, less a reserve): a decompression bomb, or too little space"
            )

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

    def write_file(self, tar: tarfile.TarFile, info: tarfile.TarInfo, path: str) -> int:
        """The member's data, then its metadata (through the descriptor of the file just
        created: no path walk); its inode number. A sparse member's holes stay holes: its data
        blocks, stored one after the other in the archive, are read from the stream and written
        at their offsets, then the file is extended to its size (tarfile would hand out every
        hole as zeros)."""
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        with os.fdopen(fd, "wb") as out:
            if info.issparse():
                src = cast(IO[bytes] | None, tar.fileobj)
                if src is None or src.tell() != info.offset_data:
                    raise LayerError(f"{info.name!r}: cannot read the sparse member's data")
            else:
                src = tar.extractfile(info)
                if src is None:
                    raise LayerError(f"{info.name!r}: no data")
            for offset, size in _data_blocks(info):
                out.seek(offset)
                left = size
                while left > 0:
                    chunk = src.read(min(left, _COPY_CHUNK))
                    if not chunk:
                        raise LayerError(f"{info.name!r}: truncated")
                    out.write(chunk)
                    left -= len(chunk)
                    if self.progress is not None:
                        self.progress(len(chunk))
            if info.issparse():
                out.truncate(info.size)
            out.flush()
            self.set_metadata(fd, info)
            return os.fstat(fd).st_ino

    def set_metadata(
        self, target: int | str, info: tarfile.TarInfo, parent: int | None = None
    ) -> None:
        """Owner, xattrs, mode and mtime, in that order (chown clears setuid bits): on a
        descriptor, or on the name `target` in the directory `parent` (never followed)."""
        if isinstance(target, int):
            if self.may_chown:
                self.chown(target, info)
            self.set_xattrs(target, info)
            os.chmod(target, stat.S_IMODE(info.mode))
            os.utime(target, ns=(int(info.mtime * 1e9),) * 2)
            return
        assert parent is not None
        st = os.stat(target, dir_fd=parent, follow_symlinks=False)
        if self.may_chown:
            self.chown(target, info, parent)
        self.set_xattrs(f"/proc/self/fd/{parent}/{target}", info)
        if not stat.S_ISLNK(st.st_mode):  # checked: chmod cannot follow it
            os.chmod(target, stat.S_IMODE(info.mode), dir_fd=parent)
        os.utime(target, ns=(int(info.mtime * 1e9),) * 2, dir_fd=parent, follow_symlinks=False)

    def chown(self, target: int | str, info: tarfile.TarInfo, parent: int | None = None) -> None:
        """The member's owner; in a user namespace an id it does not map (EINVAL) leaves the
        file to the namespace's root, as a rootless load does for every file."""
        try:
            if isinstance(target, int):
                os.chown(target, info.uid, info.gid)
            else:
                os.chown(target, info.uid, info.gid, dir_fd=parent, follow_symlinks=False)
        except OSError as e:
            if e.errno != errno.EINVAL or not self.in_user_namespace:
                raise

    def set_xattrs(self, target: int | str, info: tarfile.TarInfo) -> None:
        for key, value in info.pax_headers.items():
            if key.startswith("SCHILY.xattr."):
                attr = key[len("SCHILY.xattr.") :]
                if is_private_xattr(attr):
                    self.stripped_xattrs += 1
                    continue
                raw = value.encode("utf-8", "surrogateescape")
                try:
                    # a descriptor is the file itself; a name is never followed
                    os.setxattr(target, attr, raw, follow_symlinks=isinstance(target, int))
                except OSError as e:
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                        raise
                    log.warning("%s: xattr %s not kept: %s", info.name, attr, e.strerror)

    def apply(self, info: tarfile.TarInfo, rel: str) -> None:
        """Owner, xattrs, mode and mtime of the member at `rel`: through a descriptor of its
        parent directory (walked without following a symlink), on a last component that is
        never followed either, so nothing outside the layer can be touched."""
        parent, name = self.open_parent(rel)
        try:
            self.set_metadata(name, info, parent)
        finally:
            os.close(parent)

    def open_parent(self, rel: str) -> tuple[int, str]:
        """An O_PATH descriptor of the directory holding `rel` and its last name (`.` for the
        layer root), walked from the layer root without following any symlink."""
        fd = os.open(self.dest, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if not rel:
            return fd, "."
        *parents, name = rel.split("/")
        try:
            for part in parents:
                child = os.open(
                    part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
                os.close(fd)
                fd = child
        except OSError as e:
            os.close(fd)
            raise LayerError(f"{rel!r}: a parent is not a directory ({e.strerror})") from None
        return fd, name

    def finish(self) -> None:
        for rel in sorted(self.dirs, key=lambda r: r.count("/") + bool(r), reverse=True):
            self.apply(self.dirs[rel], rel)
        if self.skipped_devices:
            self.warn(f"skipped {self.skipped_devices} device node(s): only root may make them")
        if self.stripped_xattrs:
            self.warn(
                f"dropped {self.stripped_xattrs} xattr(s) private to the union (*.strata.*,"
                " *.overlay.*): an image cannot set them"
            )


def _data_blocks(info: tarfile.TarInfo) -> list[tuple[int, int]]:
    """(offset, size) of a regular member's data: one block, or a sparse member's map."""
    sparse: list[tuple[int, int]] | None = info.sparse  # type: ignore[assignment]
    return [(0, info.size)] if sparse is None else sparse


def _data_size(info: tarfile.TarInfo) -> int:
    """The bytes a regular member writes (a sparse member's holes are free)."""
    return sum(size for _, size in _data_blocks(info))


def extract_layer(
    stream: IO[bytes],
    dest: Path,
    *,
    progress: Callable[[int], None] | None = None,
    limit: int | None = None,
    warn: Callable[[str], None] = log.warning,
) -> list[tuple[str, int, int, int]]:
    """Extract the uncompressed tar `stream` into the empty directory `dest` (see module doc),
    writing at most `limit` bytes of data (None: `default_limit(dest)`); what is skipped is
    told to `warn` in one line.

    Returns where regular files' contents were: (path, offset in the tar, size, inode)."""
    extractor = _Extractor(dest, progress=progress, limit=limit, warn=warn)
    try:
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=2, tarinfo=_StrictTarInfo) as tar:
            for info in tar:
                extractor.add(tar, info)
        extractor.finish()
    except tarfile.TarError as e:
        raise LayerError(f"not a valid tar: {e}") from None
    return extractor.payloads


def extract_into(
    stream: IO[bytes],
    dest: Path,
    *,
    rename: Callable[[str], str],
    owner: tuple[int, int] | None,
    warn: Callable[[str], None] = log.warning,
) -> None:
    """Extract the tar `stream` into the existing directory `dest` (`strata cp`), with the
    checks of `extract_layer`: each member's clean relative path goes through `rename` (which
    raises LayerError for a member that does not belong), `owner` replaces every member's owner
    when given, and a member never replaces a directory with a non-directory or the reverse
    (docker's "cannot overwrite"), so that no existing tree is thrown away."""
    extractor = _Extractor(dest, progress=None, limit=None, warn=warn)
    try:
        with tarfile.open(fileobj=stream, mode="r|", errorlevel=2, tarinfo=_StrictTarInfo) as tar:
            for info in tar:
                rel = rename(member_path(info.name))
                if info.islnk():
                    info.linkname = rename(member_path(info.linkname))
                if owner is not None:
                    info.uid, info.gid = owner
                try:
                    st = os.lstat(extractor.real(rel))
                except (FileNotFoundError, NotADirectoryError):
                    pass
                else:
                    if stat.S_ISDIR(st.st_mode) and not info.isdir():
                        raise LayerError(f"cannot overwrite directory {rel!r} with non-directory")
                    if info.isdir() and not stat.S_ISDIR(st.st_mode):
                        raise LayerError(f"cannot overwrite non-directory {rel!r} with directory")
                info.name = rel or "."
                extractor.add(tar, info)
        extractor.finish()
    except tarfile.TarError as e:
        raise LayerError(f"not a valid tar: {e}") from None
