"""Named volumes, and the mount options of `run`/`create` that use them: `-v`, `--mount`,
`--tmpfs` and `--read-only`'s writable scratch directories.

A volume is a directory of the state root that outlives its containers, as docker's local
driver keeps one:

    volumes/<name>/volume.json   name, created, labels, anonymous
    volumes/<name>/_data/        what containers see at the mount point

Named volumes (`-v NAME:/path`, `--mount type=volume,source=NAME`, `strata volume create`) stay
until `strata volume rm` or `prune`. Anonymous ones (`-v /path`, `--mount type=volume` without a
source, the image's VOLUMEs) get a random 64-hex name and go with their container under
`rm -v` or `--rm`, as docker's. A volume that is empty when a container starts is filled from
the image's content at the mount point (unless `nocopy`), done by PID 1 through the container's
own union (`runtime.mounts`).

The parsers turn the flags into `MountSpec`s (syntax only, one line and exit status 125 on bad
input); `create` turns those into the container's recorded mounts (`state.Volume`) with
`resolve()`, under the state root's lock, creating the named volumes they use.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

from .state import StateRoot, Volume, now, read_json, remove_tree, write_json

BIND: Final = "bind"
VOLUME: Final = "volume"
TMPFS: Final = "tmpfs"
DEVICE: Final = "device"  # --device: a host device node bound in (`options`: its rwm)

# docker's rule for a local volume's name
_NAME: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")

# What `--read-only` gets writable, as podman's `--read-only-tmpfs` (its default) gives:
# nosuid and nodev as podman mounts them; /tmp and /var/tmp sticky and world-writable.
READ_ONLY_TMPFS: Final = (("/tmp", "mode=1777"), ("/run", "mode=755"), ("/var/tmp", "mode=1777"))

# tmpfs options: the mount flags docker's --tmpfs takes, and the filesystem's own data options
_TMPFS_FLAGS: Final = frozenset(
    {"ro", "rw", "exec", "noexec", "suid", "nosuid", "dev", "nodev", "atime", "noatime"}
    | {"relatime", "norelatime", "strictatime", "diratime", "nodiratime", "sync", "async"}
)
_TMPFS_DATA: Final = frozenset({"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks"})


@dataclass(frozen=True, slots=True)
class MountSpec:
    """One mount as the command line asked for it (not yet resolved to a host path)."""

    kind: str  # BIND, VOLUME or TMPFS
    source: str  # a host path (bind), a volume name ("" for an anonymous one), "" (tmpfs)
    target: str
    read_only: bool = False
    nocopy: bool = False  # volume: do not fill an empty volume from the image
    options: str = ""  # tmpfs: its options, checked (size=64m,mode=1777,noexec...)


def _target(flag: str, spec: str, target: str) -> str:
    if not target:
        raise UsageError(f"{flag} {spec}: no container path", 125)
    if not os.path.isabs(target):
        raise UsageError(f"{flag} {spec}: the container path must be absolute", 125)
    if os.path.normpath(target) in ("/", "//"):
        raise UsageError(f"{flag} {spec}: cannot mount over the container's /", 125)
    return os.path.normpath(target)


def check_name(name: str, flag: str = "volume") -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"{flag} {name!r}: includes invalid characters for a local volume name, only"
            " [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed (at least two)",
            125,
        )
    return name


def parse_volume_flag(spec: str) -> MountSpec:
    """`-v HOST:CTR[:OPTS]` (a bind), `-v NAME:CTR[:OPTS]` (a named volume) or `-v CTR` (an
    anonymous volume); OPTS is `ro`, `rw`, `nocopy` (volumes), comma-separated."""
    parts = spec.split(":")
    if len(parts) > 3 or not all(parts):
        raise UsageError(f"-v {spec}: expected [HOST-DIR|NAME:]CONTAINER-DIR[:OPTIONS]", 125)
    if len(parts) == 1:
        return MountSpec(VOLUME, "", _target("-v", spec, parts[0]))
    source, target = parts[0], _target("-v", spec, parts[1])
    read_only = nocopy = False
    for opt in parts[2].split(",") if len(parts) == 3 else ():
        if opt in ("ro", "rw"):
            read_only = opt == "ro"
        elif opt == "nocopy" and not source.startswith("/"):
            nocopy = True
        elif opt in ("z", "Z"):  # SELinux relabelling: strata has no SELinux (as label=disable)
            continue
        else:
            raise UsageError(f"-v {spec}: invalid mode: {opt} (ro, rw, nocopy)", 125)
    if source.startswith("/"):
        return MountSpec(BIND, _bind_source("-v", spec, source), target, read_only)
    if source.startswith("."):
        raise UsageError(f"-v {spec}: the host path must be absolute", 125)
    return MountSpec(VOLUME, check_name(source, "-v"), target, read_only, nocopy)


def _bind_source(flag: str, spec: str, source: str) -> str:
    if not os.path.isabs(source):
        raise UsageError(f"{flag} {spec}: the host path must be absolute", 125)
    if not os.path.exists(source):
        what = "bind source path does not exist" if flag == "--mount" else "does not exist"
        raise UsageError(f"{flag} {spec}: {what}: {source}", 125)
    return os.path.realpath(source)


def _boolean(spec: str, key: str, value: str | None) -> bool:
    if value is None or value.lower() in ("1", "true"):
        return True
    if value.lower() in ("0", "false"):
        return False
    raise UsageError(f"--mount {spec}: invalid value for {key}: {value}", 125)


def parse_mount_flag(spec: str) -> MountSpec:
    """`--mount type=bind|volume|tmpfs,source=...,target=...,readonly,...`, docker's syntax
    (type defaults to volume, as docker's)."""
    fields: dict[str, str | None] = {}
    for item in spec.split(","):
        name, eq, text = item.partition("=")
        name = name.strip().lower()
        if not eq:
            if name not in ("readonly", "ro", "volume-nocopy"):
                raise UsageError(
                    f"--mount {spec}: invalid field '{item}' must be a key=value pair", 125
                )
            fields[name] = None
            continue
        fields[name] = text
    kind = fields.pop("type", None) or VOLUME
    source = target = ""
    read_only = nocopy = False
    size = mode = ""
    for key, value in fields.items():
        if key in ("source", "src"):
            source = value or ""
        elif key in ("target", "destination", "dst"):
            target = value or ""
        elif key in ("readonly", "ro"):
            read_only = _boolean(spec, key, value)
        elif key == "volume-nocopy" and kind == VOLUME:
            nocopy = _boolean(spec, key, value)
        elif key == "bind-propagation" and kind == BIND:
            if value != "rprivate":  # strata's binds are private
                raise UsageError(f"--mount {spec}: bind-propagation={value}: only rprivate", 125)
        elif key == "tmpfs-size" and kind == TMPFS and value:
            size = value
        elif key == "tmpfs-mode" and kind == TMPFS and value:
            mode = value
        else:
            raise UsageError(f"--mount {spec}: unexpected key '{key}' in '{key}={value}'", 125)
    if kind not in (BIND, VOLUME, TMPFS):
        raise UsageError(f"--mount {spec}: invalid mount config: mount type unknown: {kind}", 125)
    if not target:
        raise UsageError(
            f"--mount {spec}: invalid mount config for type {kind!r}: field Target must not"
            " be empty",
            125,
        )
    target = _target("--mount", spec, target)
    if kind == BIND:
        if not source:
            raise UsageError(
                f"--mount {spec}: invalid mount config for type 'bind': field Source must not"
                " be empty",
                125,
            )
        return MountSpec(BIND, _bind_source("--mount", spec, source), target, read_only)
    if kind == TMPFS:
        if source:
            raise UsageError(
                f"--mount {spec}: invalid mount config for type 'tmpfs': field Source must not"
                " be specified",
                125,
            )
        opts = [o for o in (f"size={size}" if size else "", f"mode={mode}" if mode else "") if o]
        if read_only:
            opts.append("ro")
        return MountSpec(TMPFS, "", target, read_only, options=check_tmpfs_options(
            "--mount", spec, ",".join(opts)))  # fmt: skip
    return MountSpec(VOLUME, check_name(source, "--mount") if source else "", target,
                     read_only, nocopy)  # fmt: skip


def parse_tmpfs_flag(spec: str) -> MountSpec:
    """`--tmpfs /path[:OPTS]`: OPTS are mount(8)'s for tmpfs (size=64m,mode=1777,noexec,...)."""
    target, _, options = spec.partition(":")
    target = _target("--tmpfs", spec, target)
    options = check_tmpfs_options("--tmpfs", spec, options)
    return MountSpec(TMPFS, "", target, "ro" in options.split(","), options=options)


def parse_device_flag(spec: str) -> MountSpec:
    """`--device HOST[:CONTAINER][:PERMISSIONS]`: a host device node (or a directory of them)
    bound at CONTAINER (default: the same path); PERMISSIONS of `rwm` (default all). strata
    keeps no device cgroup, and a read-only mount does not stop writes to a device node, so
    permissions without both `r` and `w` are refused rather than silently not enforced; `m`
    changes nothing (the container lacks CAP_MKNOD unless --cap-add MKNOD)."""
    parts = spec.split(":")
    perms = "rwm"
    if len(parts) > 1 and re.fullmatch(r"[rwm]{1,3}", parts[-1]) and not parts[-1].startswith("/"):
        perms = parts.pop()
    if len(parts) > 2 or not parts[0]:
        raise UsageError(f"--device {spec}: expected HOST[:CONTAINER][:rwm]", 125)
    host = parts[0]
    target = parts[1] if len(parts) == 2 else host
    if len(set(perms)) != len(perms):
        raise UsageError(f"--device {spec}: invalid device mode: {perms}", 125)
    if "r" not in perms or "w" not in perms:
        raise UsageError(
            f"--device {spec}: permissions {perms} cannot be enforced without a device cgroup"
            " (give rw or rwm)",
            125,
        )
    if not os.path.isabs(host):
        raise UsageError(f"--device {spec}: the host path must be absolute", 125)
    try:
        st = os.stat(host)
    except OSError as exc:
        raise UsageError(
            f"--device {spec}: error gathering device information while adding custom device"
            f" {host!r}: {exc.strerror}",
            125,
        ) from None
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UsageError(f"--device {spec}: {host} is not a device node", 125)
    return MountSpec(
        DEVICE, os.path.realpath(host), _target("--device", spec, target), options=perms,
    )  # fmt: skip


def check_tmpfs_options(flag: str, spec: str, options: str) -> str:
    """The tmpfs options, checked: flags docker knows, and size/mode/uid/gid/nr_inodes."""
    for opt in (o for o in options.split(",") if o):
        key, eq, value = opt.partition("=")
        if not eq and key in _TMPFS_FLAGS:
            continue
        if eq and key in _TMPFS_DATA and value:
            if key == "size" and not re.fullmatch(r"\d+[kKmMgG%]?", value):
                raise UsageError(f"{flag} {spec}: invalid size: {value}", 125)
            if key == "mode" and not re.fullmatch(r"[0-7]{1,4}", value):
                raise UsageError(f"{flag} {spec}: invalid mode: {value}", 125)
            if key != "size" and key != "mode" and not value.isdigit():
                raise UsageError(f"{flag} {spec}: invalid {key}: {value}", 125)
            continue
        raise UsageError(f"{flag} {spec}: unknown tmpfs option {opt!r}", 125)
    return options


# -- the store of volumes ---------------------------------------------------------------------


def volumes_dir(root: StateRoot) -> Path:
    return root.path / "volumes"


@dataclass(frozen=True, slots=True)
class VolumeInfo:
    """A volume of the state root (volume.json), and where it lives."""

    name: str
    path: Path
    created: str
    labels: dict[str, str]
    anonymous: bool

    @property
    def data(self) -> Path:
        return self.path / "_data"

    def inspect(self) -> dict[str, object]:
        """docker's `volume inspect` fields."""
        labels: dict[str, str] = dict(self.labels)
        if self.anonymous:
            labels.setdefault("com.docker.volume.anonymous", "")
        return {
            "CreatedAt": self.created,
            "Driver": "local",
            "Labels": labels,
            "Mountpoint": str(self.data),
            "Name": self.name,
            "Options": {},
            "Scope": "local",
        }


def _read(path: Path) -> VolumeInfo | None:
    try:
        data = read_json(path / "volume.json")
    except (OSError, ValueError):
        return None
    labels = data.get("labels") or {}
    assert isinstance(labels, dict)
    return VolumeInfo(
        name=path.name,
        path=path,
        created=str(data.get("created", "")),
        labels={str(k): str(v) for k, v in labels.items()},
        anonymous=bool(data.get("anonymous", False)),
    )


def all_volumes(root: StateRoot) -> list[VolumeInfo]:
    """Every volume, by name (no lock needed: volume.json is written before the rename)."""
    try:
        names = sorted(os.listdir(volumes_dir(root)))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        info = None if name.startswith(".") else _read(volumes_dir(root) / name)
        if info is not None:
            found.append(info)
    return found


def find(root: StateRoot, name: str) -> VolumeInfo:
    info = _read(volumes_dir(root) / name) if _NAME.fullmatch(name) else None
    if info is None:
        raise UsageError(f"no such volume: {name}", 1)
    return info


def ensure(
    root: StateRoot, name: str, *, labels: dict[str, str] | None = None, anonymous: bool = False
) -> VolumeInfo:
    """The volume `name`, created if missing (call with the lock held). Built under a
    temporary name and renamed into place, so a failure leaves nothing."""
    path = volumes_dir(root) / name
    info = _read(path)
    if info is not None:
        return info
    volumes_dir(root).mkdir(mode=0o700, exist_ok=True)
    staging = volumes_dir(root) / f".new-{name}"
    try:
        staging.mkdir(mode=0o700)
        (staging / "_data").mkdir(mode=0o755)
        record = {"created": now(), "labels": labels or {}, "anonymous": anonymous}
        write_json(staging / "volume.json", record)
        os.rename(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_tree(staging)
        raise
    info = _read(path)
    assert info is not None
    return info


def users(root: StateRoot, name: str) -> list[str]:
    """The ids of the containers (running or not) that mount volume `name`."""
    return [
        c.id
        for c in root.containers()
        if any(v.kind == VOLUME and v.name == name for v in c.config.volumes)
    ]


def remove(root: StateRoot, name: str, *, force: bool = False) -> None:
    """Remove a volume no container uses (call with the lock held); `force` only makes a
    missing one no error, as docker's `volume rm -f`."""
    try:
        info = find(root, name)
    except UsageError:
        if force:
            return
        raise
    using = users(root, name)
    if using:
        raise UsageError(f"remove {name}: volume is in use - [{', '.join(using)}]", 1)
    doomed = info.path.with_name(f".rm-{name}")
    os.rename(info.path, doomed)
    remove_owned_tree(doomed)


def remove_owned_tree(path: Path) -> None:
    """rm -rf of a volume: rootless, inside the user's user namespace, where the files of its
    subordinate ids (written by a container) are the user's to remove."""
    from . import namespaces

    if os.geteuid() == 0 or namespaces.in_user_namespace():
        remove_tree(path)
        return
    id_map = namespaces.rootless_id_map(os.getuid(), os.getgid(), namespaces.current_user_name())
    try:
        namespaces.remove_tree_in(id_map, path)
    except OSError as e:
        raise UsageError(str(e), 1) from None


def prune(root: StateRoot, *, all_unused: bool) -> list[tuple[str, int]]:
    """Remove the anonymous volumes no container uses (`all_unused`: every unused one, as
    docker's `volume prune -a`); their names and sizes."""
    removed = []
    with root.lock():
        in_use = {v.name for c in root.containers() for v in c.config.volumes if v.kind == VOLUME}
        for info in all_volumes(root):
            if info.name in in_use or not (all_unused or info.anonymous):
                continue
            size = disk_usage(info.data)
            remove(root, info.name)
            removed.append((info.name, size))
    return removed


def disk_usage(path: Path) -> int:
    """Bytes allocated under `path` (as `du`), without following symlinks."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def resolve(
    root: StateRoot,
    specs: list[MountSpec],
    *,
    image_volumes: tuple[str, ...] = (),
    read_only_tmpfs: bool = False,
) -> tuple[tuple[Volume, ...], list[str]]:
    """The container's mounts (call with the lock held), and the names of the volumes this
    made (for the caller to remove if the container is not made after all): named volumes created if missing,
    anonymous ones made, then an anonymous volume for each of the image's VOLUMEs and, with
    `read_only_tmpfs`, a tmpfs for /tmp, /run and /var/tmp, each unless a mount of the command
    line has that target. Two mounts on one target are an error, as docker's."""
    seen: set[str] = set()
    for spec in specs:
        if spec.target in seen:
            raise UsageError(f"duplicate mount point: {spec.target}", 125)
        seen.add(spec.target)
    wanted = list(specs)
    for path in image_volumes:
        target = os.path.normpath(path) if os.path.isabs(path) else ""
        if target and target != "/" and target not in seen:
            seen.add(target)
            wanted.append(MountSpec(VOLUME, "", target))
    if read_only_tmpfs:
        for target, options in READ_ONLY_TMPFS:
            if target not in seen:
                wanted.append(MountSpec(TMPFS, "", target, options=f"exec,nosuid,nodev,{options}"))
    result = []
    made: list[str] = []
    for spec in wanted:
        if spec.kind in (BIND, DEVICE):
            result.append(
                Volume(
                    spec.source, spec.target, spec.read_only, kind=spec.kind, options=spec.options
                )
            )
        elif spec.kind == TMPFS:
            result.append(
                Volume("tmpfs", spec.target, spec.read_only, kind=TMPFS, options=spec.options)
            )
        else:
            name = spec.source or os.urandom(32).hex()
            if _read(volumes_dir(root) / name) is None:
                made.append(name)
            info = ensure(root, name, anonymous=not spec.source)
            result.append(
                Volume(
                    str(info.data),
                    spec.target,
                    spec.read_only,
                    kind=VOLUME,
                    name=name,
                    anonymous=info.anonymous and not spec.source,
                    copy=not spec.nocopy,
                )
            )
    return tuple(result), made
