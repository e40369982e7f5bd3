"""`strata cp`: copy files and directories between a container and the host, as `docker cp`.

    strata cp [-a] [-L] CONTAINER:SRC DEST|-
    strata cp [-a] [-L] SRC|- CONTAINER:DEST

Everything travels as a tar stream, as with docker: one side writes a tar of SRC (its top member
named after SRC's last component), the other extracts it with the store's hardened extractor
(`extract.extract_into`: no member escapes, nothing is written through a symlink, hard links only
to members of the same stream), renaming the top member per docker's rules (`place`). The
container's side runs in a child whose `/` is the container's root filesystem
(`runtime.access`), so the container's symlinks, absolute ones included, resolve inside it.

Docker's path rules: a container path is relative to the container's `/`, a host path to the
current directory. SRC a file: to DEST if DEST is a file or does not exist (its parent must), into
DEST if it is a directory; DEST ending in `/` must then be an existing directory. SRC a directory:
DEST is created with SRC's content if it does not exist, SRC is copied into DEST if it is a
directory, and only SRC's content when SRC ends in `/.`; a file DEST is an error. A symlink SRC is
copied as the link unless `-L` (or SRC ends in `/`). `-` reads a tar from stdin into the directory
DEST, or writes the tar of SRC to stdout. Owners: the destination's user (root in the container,
the caller on the host), or the source's with `-a`.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from runtime.access import Channel, run_in_rootfs
from runtime.state import ContainerDir, StateRoot
from unionfs.errors import UsageError

from .extract import LayerError, extract_into

_CHUNK: Final = 1 << 20
_NOT_FOUND: Final = 1  # docker's status for a path that is not there


@dataclass(frozen=True, slots=True)
class Source:
    """What a tar of SRC holds: its top member's name, whether SRC is a directory, whether only
    its content is wanted (SRC ends in `/.`), and whether SRC itself is followed if a symlink
    (-L, or a trailing `/`)."""

    name: str
    is_dir: bool
    content_only: bool
    follow: bool = False


def split_endpoint(arg: str) -> tuple[str | None, str]:
    """`CONTAINER:PATH` or a host path (docker's rule: a path starting with `/` or `.`, or
    without `:`, is the host's)."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None, arg
    container, _, path = arg.partition(":")
    return container, path


def resolve_source(path: str, *, follow: bool) -> tuple[Source, str]:
    """SRC's `Source` and the path to read (UsageError, status 1, if it is not there)."""
    content_only = path == "." or path.endswith("/.")
    trailing = content_only or path.endswith("/")
    try:
        st = os.stat(path) if follow or trailing else os.lstat(path)
    except FileNotFoundError:
        raise UsageError(f"no such file or directory: {path}", _NOT_FOUND) from None
    except NotADirectoryError:
        raise UsageError(f"not a directory: {path}", _NOT_FOUND) from None
    is_dir = stat.S_ISDIR(st.st_mode)
    if trailing and not is_dir:
        raise UsageError(f"not a directory: {path}", _NOT_FOUND)
    clean = os.path.normpath(path)
    name = os.path.basename(clean) if clean not in ("/", ".") else "."
    if name in ("", ".") and is_dir:
        content_only = True
    return Source(name or ".", is_dir, content_only and is_dir, follow or trailing), clean


def place(src: Source, dest: str) -> tuple[str, str]:
    """Where a tar of `src` goes for DEST `dest` (docker's rules, see the module doc): the
    directory to extract into and the name its top member takes there ('' for its content)."""
    trailing = dest.endswith(("/", "/."))
    try:
        st = os.stat(dest)
    except (FileNotFoundError, NotADirectoryError):
        if trailing and not src.is_dir:
            raise UsageError(f"destination directory {dest} must exist", 1) from None
        parent = os.path.dirname(os.path.normpath(dest)) or "."
        if not os.path.isdir(parent):
            raise UsageError(f"no such directory: {parent}", 1) from None
        return parent, os.path.basename(os.path.normpath(dest))
    if stat.S_ISDIR(st.st_mode):
        return dest, "" if src.content_only else src.name
    if src.is_dir:
        raise UsageError(f"cannot copy a directory to a file: {dest}", 1)
    if trailing:
        raise UsageError(f"not a directory: {dest}", 1)
    return os.path.dirname(os.path.normpath(dest)) or ".", os.path.basename(os.path.normpath(dest))


def renamer(src: Source, new: str) -> Callable[[str], str]:
    """Member path -> its path under the extraction directory: the top member `src.name`
    becomes `new`."""

    def rename(rel: str) -> str:
        if src.name == ".":
            rest = rel
        else:
            head, _, rest = rel.partition("/")
            if head != src.name:
                raise LayerError(f"{rel!r}: not below {src.name!r}")
        return "/".join(p for p in (new, rest) if p)

    return rename


# -- writing a tar of SRC -----------------------------------------------------------------------


def write_tar(
    out: IO[bytes], path: str, name: str, *, follow: bool, skip_devs: frozenset[int]
) -> None:
    """A tar of `path` (never following a symlink below it) with top member `name`: modes,
    numeric owners, mtimes, xattrs, hard links, symlinks, fifos, devices (no sockets, as docker).
    No user or group names are looked up (see runtime.access). `follow`: `path` itself may be a
    symlink to follow (-L). Directories on a device in `skip_devs` (a running container's /proc
    and /sys) are written empty."""
    links: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:

        def add(real: str, arc: str, st: os.stat_result, nofollow: int = os.O_NOFOLLOW) -> None:
            info = tarfile.TarInfo(arc)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            info.uname = info.gname = ""
            info.mtime = int(st.st_mtime)
            info.pax_headers = _xattr_headers(real)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                if st.st_dev in skip_devs:
                    return
                for child in sorted(os.listdir(real)):
                    full = os.path.join(real, child)
                    add(full, f"{arc}/{child}", os.lstat(full))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    info.type = tarfile.LNKTYPE
                    info.linkname = links[key]
                    tar.addfile(info)
                    return
                links[key] = arc
                fd = os.open(real, os.O_RDONLY | nofollow | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    info.size = os.fstat(fd).st_size
                    tar.addfile(info, f)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(real)
                tar.addfile(info)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tar.addfile(info)

        if follow:
            add(path, name, os.stat(path), 0)
        else:
            add(path, name, os.lstat(path))


def _xattr_headers(path: str) -> dict[str, str]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    headers = {}
    for attr in sorted(names):
        try:
            value = os.getxattr(path, attr, follow_symlinks=False)
        except OSError:
            continue
        headers[f"SCHILY.xattr.{attr}"] = value.decode("utf-8", "surrogateescape")
    return headers


def _pseudo_devices() -> frozenset[int]:
    """The devices of /proc and /sys inside a container (not copied, as docker)."""
    root = os.stat("/").st_dev
    devs = set()
    for path in ("/proc", "/sys"):
        try:
            dev = os.stat(path).st_dev
        except OSError:
            continue
        if dev != root:
            devs.add(dev)
    return frozenset(devs)


# -- the two directions -------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"strata: {message}", file=sys.stderr, flush=True)


def _failed(exc: BaseException) -> int:
    """One line for a failure on either side; the status (docker: 1)."""
    if isinstance(exc, UsageError):
        _say(str(exc))
        return exc.exit_code
    if isinstance(exc, OSError):
        what = f"{exc.filename}: " if exc.filename else ""
        _say(f"{what}{exc.strerror or exc}")
        return 1
    _say(str(exc))
    return 1


def copy_out(
    root: StateRoot, cdir: ContainerDir, src: str, dest: str, *, follow: bool, archive: bool
) -> int:
    """`strata cp CONTAINER:SRC DEST|-`."""
    src = "/" + src.lstrip("/") if src else "/"
    if dest != "-":
        # docker checks DEST's parent before it reads anything from the container
        parent = os.path.dirname(os.path.normpath(dest)) or "."
        if not os.path.isdir(parent):
            raise UsageError(f"no such directory: {parent}", 1)

    def work(ch: Channel) -> int:
        os.close(ch.inbound)
        with os.fdopen(ch.outbound, "wb") as out:
            try:
                source, path = resolve_source(src, follow=follow)
            except UsageError as exc:
                missing = str(exc).startswith("no such file")
                _say(
                    f"could not find the file {src} in container {cdir.name}"
                    if missing
                    else f"{exc} (in container {cdir.name})"
                )
                return exc.exit_code
            skip = _pseudo_devices()
            try:
                if dest == "-":
                    out.close()
                    with os.fdopen(1, "wb", closefd=False) as stdout:
                        write_tar(stdout, path, source.name, follow=source.follow, skip_devs=skip)
                    return 0
                out.write(json.dumps(_source_json(source)).encode() + b"\n")
                out.flush()
                write_tar(out, path, source.name, follow=source.follow, skip_devs=skip)
            except BrokenPipeError:
                return 1  # the host side failed and said why
            except (OSError, tarfile.TarError) as exc:
                return _failed(exc)
        return 0

    failure: list[BaseException] = []

    def host(ch: Channel) -> None:
        os.close(ch.outbound)
        with os.fdopen(ch.inbound, "rb") as stream:
            line = stream.readline()
            if not line:
                return  # the container's side said why
            try:
                source = _source_of(json.loads(line))
                where, new = place(source, dest)
                owner = None if archive or os.geteuid() != 0 else (os.getuid(), os.getgid())
                extract_into(
                    stream, Path(where), rename=renamer(source, new), owner=owner, warn=_say
                )
            except (UsageError, LayerError, OSError, ValueError, KeyError) as exc:
                failure.append(exc)

    code = run_in_rootfs(root, cdir, work, host)
    # DEST refused before reading (UsageError): the container's side only saw a closed pipe;
    # a broken stream after the container's side failed: that side has said why
    if failure and (code == 0 or isinstance(failure[0], UsageError)):
        return _failed(failure[0])
    return code


def copy_in(
    root: StateRoot, cdir: ContainerDir, src: str, dest: str, *, follow: bool, archive: bool
) -> int:
    """`strata cp SRC|- CONTAINER:DEST`."""
    dest = "/" + dest.lstrip("/") if dest else "/"
    source: Source | None = None
    path = ""
    if src != "-":
        source, path = resolve_source(src, follow=follow)
    elif sys.stdin.isatty():
        raise UsageError("cp: '-' reads a tar archive from stdin, which is a terminal", 125)

    def work(ch: Channel) -> int:
        os.close(ch.outbound)
        rename: Callable[[str], str]
        try:
            if source is None:  # a tar on stdin: into the directory DEST, as it is
                os.close(ch.inbound)
                if not os.path.isdir(dest):
                    raise UsageError(f"destination {dest} must be a directory", 1)
                where, rename = dest, _as_is
                stream = os.fdopen(0, "rb", closefd=False)
            else:
                where, new = place(source, dest)
                rename = renamer(source, new)
                stream = os.fdopen(ch.inbound, "rb")
            with stream:
                owner = None if archive else (0, 0)
                extract_into(stream, Path(where), rename=rename, owner=owner, warn=_say)
        except (UsageError, LayerError, OSError) as exc:
            return _failed(exc)
        return 0

    def host(ch: Channel) -> None:
        os.close(ch.inbound)
        with os.fdopen(ch.outbound, "wb") as out:
            if source is None:
                return
            try:
                write_tar(out, path, source.name, follow=source.follow, skip_devs=frozenset())
            except BrokenPipeError:
                pass  # the container's side failed and says why

    return run_in_rootfs(root, cdir, work, host)


def _as_is(rel: str) -> str:
    return rel


def _source_json(src: Source) -> dict[str, object]:
    return {"name": src.name, "is_dir": src.is_dir, "content_only": src.content_only}


def _source_of(data: object) -> Source:
    if not isinstance(data, dict):
        raise UsageError("bad reply from the container's side", 125)
    return Source(str(data["name"]), bool(data["is_dir"]), bool(data["content_only"]))


def copy(root: StateRoot, src: str, dest: str, *, follow: bool, archive: bool) -> int:
    """`strata cp SRC DEST`: exactly one of them names a container."""
    src_container, src_path = split_endpoint(src)
    dest_container, dest_path = split_endpoint(dest)
    if src_container is not None and dest_container is not None:
        raise UsageError("copying between containers is not supported", 125)
    if src_container is None and dest_container is None:
        raise UsageError("must specify at least one container source (CONTAINER:PATH)", 125)
    if src_container is not None:
        if not src_container:
            raise UsageError(f"{src}: no container name before ':'", 125)
        cdir = root.find(src_container)
        return copy_out(root, cdir, src_path, dest_path, follow=follow, archive=archive)
    assert dest_container is not None
    if not dest_container:
        raise UsageError(f"{dest}: no container name before ':'", 125)
    cdir = root.find(dest_container)
    return copy_in(root, cdir, src_path, dest_path, follow=follow, archive=archive)
