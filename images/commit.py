"""`strata commit CONTAINER [NAME[:TAG]]`: a container's upper dir becomes a layer of a new image.

The upper is written as an OCI image-spec changeset (a deterministic tar, names sorted, the opaque
marker first in its directory):

- a 0/0 character device (strata's whiteout) or a `.wh.NAME` file -> an empty `.wh.NAME` member;
- a directory marked opaque (`trusted.overlay.opaque`, `user.overlay.opaque`,
  `user.fuseoverlayfs.opaque`, or a `.wh..wh..opq` file in it) -> a `.wh..wh..opq` member;
- modes, numeric owners, mtimes (whole seconds), xattrs as PAX `SCHILY.xattr.*` (never strata's
  private ones nor overlay markers), hard links within the upper as tar hard links, symlinks,
  fifos, devices.

The tar is then extracted into the store exactly as a loaded layer is (same checks, same tar map,
so `save` gives back the same bytes), and the image record gets the container's image config
with the new diff_id and a history entry appended.

A running container is paused while its upper is read (`runtime.pause`: its cgroup v2 frozen, or its
processes stopped with SIGSTOP), and always resumed. The container's image must be in the store (a container made from a plain directory
has no config or diff_ids to build on).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import stat
import tarfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from runtime.namespaces import IdMap
from runtime.state import RUNNING, ContainerDir, process_alive
from unionfs import _sys, metacopy
from unionfs.errors import UsageError
from unionfs.whiteout import (
    OPAQUE_MARKER,
    OPAQUE_XATTRS,
    is_chardev_whiteout,
    is_opaque_value,
    is_private_xattr,
)

from .load import extract_verified
from .store import ImageRecord, ImageStore, normalize_ref

_OPQ: Final = OPAQUE_MARKER.decode()


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for name in names:
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def _is_opaque(attrs: dict[str, bytes]) -> bool:
    return any(is_opaque_value(attrs.get(a)) for a in OPAQUE_XATTRS)


def _entries(upper: Path) -> Iterator[str]:
    """Relative paths under `upper`, depth first, names sorted, `.wh..wh..opq` first in a dir."""

    def walk(rel: str) -> Iterator[str]:
        names = sorted(os.listdir(os.path.join(upper, rel) if rel else upper))
        if _OPQ in names:
            names.remove(_OPQ)
            names.insert(0, _OPQ)
        for name in names:
            child = f"{rel}/{name}" if rel else name
            yield child
            if stat.S_ISDIR(os.lstat(os.path.join(upper, child)).st_mode):
                yield from walk(child)

    yield from walk("")


def _marker(name: str, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    info.mtime = mtime
    return info


def write_changeset(upper: Path, out: Path, below: Sequence[Path], id_map: IdMap | None) -> None:
    """The OCI changeset of the upper dir `upper` as an uncompressed tar at `out`.

    `below` are the union's lower layers under `upper` (top first): a metacopy file in the upper
    (a chmod, chown or utimes of a lower file: metadata only, see `unionfs.metacopy`) has no data
    of its own, and its data is read from there -- opening it would store a hole.
    `id_map` is the container's user namespace map (None when it had none): a rootless
    container's files belong on disk to the user and their subordinate ids, and the layer
    records the owners the container saw.
    """
    links: dict[tuple[int, int], str] = {}
    # the namespace of the markers the container's union wrote: trusted.* as root, user.* in a
    # rootless container's user namespace (unionfs.metacopy), also when read from inside one
    # (a rootless `build`, where lstat gives the namespace's ids already)
    ns = "trusted" if id_map is None and _sys.in_initial_user_namespace() else "user"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in _entries(upper):
            path = os.path.join(upper, rel)
            st = os.lstat(path)
            head, _, name = rel.rpartition("/")
            mtime = int(st.st_mtime)
            if is_chardev_whiteout(st.st_mode, st.st_rdev):
                tar.addfile(_marker(f"{head}/.wh.{name}" if head else f".wh.{name}", mtime))
                continue
            if name.startswith(".wh."):  # `.wh.NAME` / opaque marker files: empty, as the spec
                tar.addfile(_marker(rel, mtime))
                continue
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = st.st_uid, st.st_gid
            if id_map is not None:
                info.uid, info.gid = id_map.uid_inside(st.st_uid), id_map.gid_inside(st.st_gid)
            info.uname = info.gname = ""
            info.mtime = mtime
            attrs = _xattrs(path)
            info.pax_headers = {
                f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                for k, v in sorted(attrs.items())
                if not is_private_xattr(k)
            }
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                if _is_opaque(attrs) and not os.path.lexists(os.path.join(path, _OPQ)):
                    tar.addfile(_marker(f"{rel}/{_OPQ}", mtime))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    info.type = tarfile.LNKTYPE
                    info.linkname = links[key]
                    tar.addfile(info)
                    continue
                links[key] = rel
                info.size = st.st_size
                if f"{ns}.{metacopy.MARKER_NAME}" in attrs:
                    fd = metacopy.open_data(upper, os.fsencode(rel), below, ns)
                else:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with os.fdopen(fd, "rb") as f:
                    tar.addfile(info, f)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
                info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
                tar.addfile(info)
            # sockets are not kept (as docker)


def layer_from_upper(
    upper: Path,
    below: Sequence[Path],
    staging: Path,
    name: str,
    id_map: IdMap | None = None,
) -> tuple[str, Path, Path]:
    """The upper dir `upper` (over the lower layers `below`, top first) as a layer extracted
    under `staging` (not yet in the store): its diff_id, directory and tar map, for
    `ImageStore.add_layer`. `strata build` makes its RUN and COPY layers with this too.
    `id_map`: see `write_changeset`."""
    raw_tar = staging / f"{name}.tar"
    write_changeset(upper, raw_tar, below, id_map)
    dest = staging / name
    dest.mkdir()
    tar_map = staging / f"{name}.map"
    try:
        with open(raw_tar, "rb") as stream:
            diff_id = extract_verified(stream, dest, tar_map, name, None)
    finally:
        os.unlink(raw_tar)
    return diff_id, dest, tar_map


@contextlib.contextmanager
def _paused_if_running(cdir: ContainerDir) -> Iterator[None]:
    """A running container is paused while its upper is read (see `runtime.pause`)."""
    from runtime.pause import paused

    state = cdir.effective_state()
    if (
        state.status != RUNNING
        or state.paused  # paused by `strata pause`: it stays so
        or not process_alive(state.init_pid, state.init_start)
    ):
        yield
        return
    with paused(state.init_pid, cdir.id):
        yield


def _image_of(store: ImageStore, cdir: ContainerDir) -> ImageRecord:
    mine = tuple(cdir.config.layers)
    for rec in store.images():
        if tuple(str(store.layer_path(d)) for d in reversed(rec.layers)) == mine:
            return rec
    raise UsageError(
        f"container {cdir.name}: its image ({cdir.config.image}) is not in the image store", 125
    )


def commit(
    store: ImageStore, container: str, reference: str | None, message: str = ""
) -> ImageRecord:
    """`strata commit`: see the module doc."""
    from runtime.create import id_map_of, union_config

    tags = [normalize_ref(reference)] if reference else []
    cdir = store.state.find(container)
    upper = cdir.sub("upper")
    if cdir.config.read_only or not upper.is_dir():
        raise UsageError(f"container {cdir.name} has no writable layer (--read-only)", 125)
    base = _image_of(store, cdir)
    with store.staging() as staging:
        with _paused_if_running(cdir):
            below = union_config(cdir).lowers
            id_map = id_map_of(cdir.config) if cdir.config.id_map else None
            diff_id, dest, tar_map = layer_from_upper(upper, below, staging, "commit", id_map)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        config = copy.deepcopy(base.config)
        config["created"] = created
        rootfs = dict(config.get("rootfs") or {})  # type: ignore[call-overload]
        rootfs["type"] = "layers"
        rootfs["diff_ids"] = [f"sha256:{d}" for d in (*base.layers, diff_id)]
        config["rootfs"] = rootfs
        history = list(config.get("history") or [])  # type: ignore[call-overload]
        entry: dict[str, object] = {"created": created, "created_by": f"strata commit {cdir.name}"}
        if message:
            entry["comment"] = message
        history.append(entry)
        config["history"] = history
        raw = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
        with store.lock():
            for d in base.layers:
                if not store.has_layer(d):
                    raise UsageError(f"layer sha256:{d} was removed during the commit", 125)
            store.add_layer(diff_id, dest, tar_map)
            return store.add_image(raw, config, [*base.layers, diff_id], tags)
