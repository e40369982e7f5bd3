"""Creating a container: its config (the image's defaults under the command line's choices), its
directory, writable layer and init layer; nothing runs yet.

A container gets strata's own top lower layer (`init/`): the mount points the runtime needs
(/proc, /sys, /dev, /etc/{hostname,hosts,resolv.conf}, volume targets), with the image's own
ownership and modes where the image has them. Docker does the same ("-init" layer): the container's
upper layer only ever holds what the container itself wrote, and `--read-only` works on images
that lack a mount point.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unionfs.config import IdMapping, UnionConfig
from unionfs.errors import UsageError

from . import capabilities, mounts, namespaces, security, volumes
from .images import ImageSpec
from .namespaces import IdMap, IdRange
from .network import DEFAULT_SUBNET
from .security import Confinement, SecurityOptions
from .state import ContainerConfig, ContainerDir, StateRoot, Volume, now, remove_tree
from .volumes import MountSpec


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """Everything `create`/`run` was asked for, already checked for syntax."""

    image: ImageSpec
    argv: tuple[str, ...]  # empty: the image's entrypoint + cmd
    entrypoint: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()  # -e and --env-file, K=V, in order
    workdir: str = ""
    user: str | None = None
    hostname: str = ""
    name: str = ""
    volumes: tuple[Volume, ...] = ()  # resolved already (build's script binds)
    # -v, --mount and --tmpfs as given (runtime.volumes), resolved under the lock at create;
    # `image_volumes`: an anonymous volume for each of the image's VOLUMEs, as run and create
    # give (not build's RUN)
    mounts: tuple[MountSpec, ...] = ()
    image_volumes: bool = False
    read_only_tmpfs: bool = True  # --read-only: writable tmpfs on /tmp, /run, /var/tmp (podman)
    labels: tuple[tuple[str, str], ...] = ()  # --label, --label-file (runtime.runflags)
    stop_signal: str = ""  # --stop-signal, checked
    stop_timeout: int | None = None
    ulimits: tuple[str, ...] = ()  # NAME=SOFT:HARD, checked
    shm_size: int = 0
    group_add: tuple[str, ...] = ()
    log_opts: tuple[int, int] = (0, 1)  # --log-opt max-size, max-file (runtime.logrotate)
    log_attr_opts: tuple[tuple[str, str], ...] = ()  # --log-opt labels/env[-regex] (the same)
    # the image's HEALTHCHECK under --health-* (runtime.health.merge); None: no check
    healthcheck: dict[str, object] | None = None
    network: str = "host"
    subnet: str = DEFAULT_SUBNET
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_options: tuple[str, ...] = ()
    add_hosts: tuple[str, ...] = ()  # NAME:IP as given (IP may be host-gateway)
    ports: tuple[str, ...] = ()  # PortMapping.text() each
    publish_all: bool = False
    network_aliases: tuple[str, ...] = ()
    network_id: str = ""  # a user network's (runtime.networks)
    read_only: bool = False
    tty: bool = False
    interactive: bool = False
    init: bool = False
    auto_remove: bool = False
    memory: int = 0
    pids_limit: int = 0
    restart_policy: str = "no"
    restart_retries: int = 0
    cpu_quota: int = 0
    security: SecurityOptions = field(default_factory=SecurityOptions)
    # Who runs it, decided before the caller may have entered a user namespace (where it is
    # root): None means "look at our own ids now".
    rootless: bool | None = None
    id_map: IdMap | None = None
    # --userns keep-id[:uid=,gid=] (runflags.parse_userns): the ids inside, -1 for the user's
    keep_id: tuple[int, int] | None = None
    userns: str = ""


def rootless_map() -> IdMap:
    return namespaces.rootless_id_map(os.getuid(), os.getgid(), namespaces.current_user_name())


def container_config(
    root: StateRoot, req: CreateRequest, cid: str, mounted: tuple[Volume, ...] = ()
) -> ContainerConfig:
    from .process import merge_env

    image = req.image.config
    entrypoint = req.entrypoint if req.entrypoint is not None else image.entrypoint
    argv = (*entrypoint, *(req.argv or (image.cmd if req.entrypoint is None else ())))
    if not argv:
        raise UsageError("no command given and the image defines none", 125)
    hostname = req.hostname or cid[:12]
    env = merge_env(
        image.env,
        [f"HOSTNAME={hostname}"],
        ["TERM=xterm"] if req.tty else [],
        req.env,
    )
    rootless = req.rootless if req.rootless is not None else os.geteuid() != 0
    id_map: dict[str, list[list[int]]] = {}
    userns_map: dict[str, list[list[int]]] = {}
    user = req.user if req.user is not None else image.user
    if rootless:
        rootless_ids = req.id_map or rootless_map()
        id_map = rootless_ids.to_json()
        if req.keep_id is not None:  # podman's keep-id: the user's ids (or those given) inside
            uid, gid = req.keep_id
            uid = uid if uid >= 0 else rootless_ids.uids[0].outside
            gid = gid if gid >= 0 else rootless_ids.gids[0].outside
            try:
                userns_map = namespaces.keep_id_map(rootless_ids, uid, gid).to_json()
            except OSError as exc:
                raise UsageError(f"--userns {req.userns}: {exc}", 125) from None
            user = user if req.user is not None else f"{uid}:{gid}"
    sec = req.security
    return ContainerConfig(
        id=cid,
        name=req.name or f"strata_{cid[:8]}",
        created=now(),
        image=req.image.ref,
        layers=tuple(str(p) for p in req.image.layers),
        argv=argv,
        env=env,
        workdir=req.workdir or image.workdir or "/",
        user=user,
        hostname=hostname,
        network=req.network,
        subnet=req.subnet if req.network == "bridge" else "",
        dns=req.dns,
        dns_search=req.dns_search,
        dns_options=req.dns_options,
        add_hosts=req.add_hosts,
        ports=req.ports,
        publish_all=req.publish_all,
        exposed_ports=image.exposed_ports,
        network_aliases=req.network_aliases,
        network_id=req.network_id,
        volumes=(*req.volumes, *mounted),
        read_only=req.read_only,
        tty=req.tty,
        interactive=req.interactive,
        init=req.init,
        auto_remove=req.auto_remove,
        rootless=rootless,
        id_map=id_map,
        userns=req.userns if userns_map else "",
        userns_map=userns_map,
        memory=req.memory,
        pids_limit=req.pids_limit,
        restart_policy=req.restart_policy,
        restart_retries=req.restart_retries,
        cpu_quota=req.cpu_quota,
        capabilities=tuple(capabilities.sorted_names(sec.capabilities())),
        privileged=sec.privileged,
        cap_add=sec.cap_add,
        cap_drop=sec.cap_drop,
        security_opt=sec.security_opt,
        seccomp=sec.seccomp_mode,
        seccomp_origin=sec.profile_file or "",
        no_new_privileges=sec.no_new_privileges,
        mask_paths=sec.mask_paths and not sec.privileged,
        labels=dict((*image.labels, *req.labels)),
        stop_signal=req.stop_signal or image.stop_signal,
        stop_timeout=req.stop_timeout,
        ulimits=req.ulimits,
        shm_size=req.shm_size,
        group_add=req.group_add,
        log_max_size=req.log_opts[0],
        log_max_file=req.log_opts[1],
        log_attr_opts=dict(req.log_attr_opts),
        healthcheck=req.healthcheck,
        shell=image.shell,
    )


def confinement_of(root: StateRoot, cdir: ContainerDir) -> Confinement:
    """What the container's processes apply to themselves before exec (runtime.security)."""
    cfg = cdir.config
    return security.confinement(
        caps=capabilities.recorded(cfg.capabilities),
        seccomp=cfg.seccomp,
        no_new_privileges=cfg.no_new_privileges,
        container_dir=cdir.path,
        cache_dir=root.seccomp_cache,
    )


def _check_profile(root: StateRoot, req: CreateRequest) -> bytes | None:
    """A --security-opt seccomp=FILE profile, read and compiled once to refuse a bad one before
    anything is created; its bytes (None without a profile file)."""
    sec = req.security
    path = sec.profile_file
    if path is None:
        return None
    from . import seccomp as sc

    profile, raw = sc.read_profile(path)
    sc.program(profile, sec.capabilities(), root.seccomp_cache, where=path)
    return raw


def create(root: StateRoot, req: CreateRequest) -> ContainerDir:
    """Make a container (its dir, writable layer, init layer); nothing runs yet."""
    with root.lock():
        # The image was resolved before the lock was taken: an `rmi` may have removed it since.
        for layer in req.image.layers:
            if not layer.is_dir():
                raise UsageError(f"image {req.image.ref}: layer {layer} is gone (removed?)", 125)
        if req.name:
            root.check_name(req.name)
        profile = _check_profile(root, req)
        cid = root.new_id()
        staging = root.staging_dir(cid)
        made: list[str] = []
        try:
            mounted, made = volumes.resolve(
                root,
                list(req.mounts),
                image_volumes=req.image.config.volumes if req.image_volumes else (),
                read_only_tmpfs=req.read_only and req.read_only_tmpfs,
            )
            config = container_config(root, req, cid, mounted)
            staging.mkdir(mode=0o700)
            for sub in ("rootfs",) if req.read_only else ("rootfs", "upper", "work"):
                (staging / sub).mkdir(mode=0o755 if sub != "work" else 0o700)
            build_init_layer(staging / "init", req.image.layers, config.volumes)
            if config.userns_map:  # hook: --userns keep-id, the user's /etc/passwd entry
                add_keep_id_user(staging / "init", req.image.layers, config, req.id_map)
            for name in mounts.ETC_FILES:
                (staging / name).touch(mode=0o644)
            if profile is not None:
                (staging / security.PROFILE_FILE).write_bytes(profile)
            return root.commit(staging, config)
        except BaseException:
            with contextlib.suppress(OSError):
                remove_tree(staging)
            for name in made:  # the volumes this create made, still empty
                with contextlib.suppress(OSError, UsageError):
                    volumes.remove(root, name)
            raise


def _image_stat(layers: Sequence[Path], rel: str) -> os.stat_result | None:
    """The path's attributes in the topmost layer that has it (whiteouts are not considered:
    this only picks modes and owners for strata's own mount points)."""
    for layer in layers:
        try:
            return os.lstat(layer / rel)
        except OSError:
            continue
    return None


def build_init_layer(init: Path, layers: Sequence[Path], volumes: Sequence[Volume]) -> None:
    """strata's top lower layer: mount points, with the image's owner/mode where it has them."""
    dirs = list(mounts.MOUNTPOINT_DIRS)
    files = list(mounts.MOUNTPOINT_FILES)
    for volume in volumes:
        if volume.kind == "device":  # in /dev, a tmpfs (or made by the bind)
            continue
        rel = os.path.normpath(volume.target).lstrip("/")
        is_dir = volume.kind != "bind" or os.path.isdir(volume.source)
        (dirs if is_dir else files).append(rel)
    init.mkdir(mode=0o755)
    root_st = _image_stat(layers, ".")
    if root_st is not None:
        _copy_attrs(init, root_st)
    made: set[str] = set()

    def make_dir(rel: str) -> None:
        if not rel or rel in made:
            return
        make_dir(os.path.dirname(rel))
        made.add(rel)
        path = init / rel
        st = _image_stat(layers, rel)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            st = None  # a symlink or file in the image: strata's dir shadows it (as Docker's)
        path.mkdir(mode=0o755, exist_ok=True)
        if st is not None:
            _copy_attrs(path, st)

    for rel in dirs:
        make_dir(rel)
    for rel in files:
        make_dir(os.path.dirname(rel))
        path = init / rel
        if not path.exists():
            path.touch(mode=0o644)


def add_keep_id_user(
    init: Path, layers: Sequence[Path], cfg: ContainerConfig, rootless: IdMap | None
) -> None:
    """podman's keep-id: the image's /etc/passwd (and /etc/group) with an entry for the user
    under its own name, its ids inside and the working directory as home (so HOME too, unless
    set), when the image has none for that name or id; written into the init layer. An image
    whose /etc/passwd is no regular file (a symlink) gets none."""
    import grp
    import pwd

    ids = rootless or rootless_map()
    outside, gid_outside = ids.uids[0].outside, ids.gids[0].outside
    # the ids inside that the user's own (the rootless namespace's 0) are
    uid, gid = (str(next(r[0] for r in cfg.userns_map[k] if r[1] == 0)) for k in ("uids", "gids"))
    try:
        me = pwd.getpwuid(outside)
    except KeyError:
        return
    try:
        group = grp.getgrgid(gid_outside).gr_name
    except KeyError:
        group = me.pw_name
    entries = {
        "passwd": (
            me.pw_name,
            uid,
            f"{me.pw_name}:*:{uid}:{gid}:{me.pw_gecos}:{cfg.workdir}:/bin/sh",
        ),
        "group": (group, gid, f"{group}:x:{gid}:{me.pw_name}"),
    }
    for name, (who, ident, line) in entries.items():
        found = _read_image_file(layers, "etc", name)
        if found is None:
            continue
        text, st = found
        fields = [line.split(":") for line in text.decode(errors="replace").splitlines()]
        if any(f[0] == who or f[2:3] == [ident] for f in fields if len(f) >= 3):
            continue  # the image has the user (group) already, by name or by id
        path = init / "etc" / name
        sep = b"" if not text or text.endswith(b"\n") else b"\n"
        path.write_bytes(text + sep + line.encode() + b"\n")
        _copy_attrs(path, st)


def _read_image_file(layers: Sequence[Path], *names: str) -> tuple[bytes, os.stat_result] | None:
    """The file `names` (a path, one name each) of the topmost layer that has it, read through
    directory fds that follow no symlink; None if that is no regular file (a symlink, a
    whiteout) or no layer has it."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    for layer in layers:
        fd = os.open(layer, flags | os.O_DIRECTORY)
        try:
            for i, name in enumerate(names):
                last = i == len(names) - 1
                try:
                    nfd = os.open(name, flags | (0 if last else os.O_DIRECTORY), dir_fd=fd)
                except FileNotFoundError:
                    break
                except OSError:  # a symlink (ELOOP, ENOTDIR) or a whiteout device
                    return None
                os.close(fd)
                fd = nfd
            else:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    return None
                with os.fdopen(os.dup(fd), "rb") as f:
                    return f.read(), st
        finally:
            os.close(fd)
    return None


def _copy_attrs(path: Path, st: os.stat_result) -> None:
    with contextlib.suppress(OSError):
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    with contextlib.suppress(OSError):
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def union_config(cdir: ContainerDir) -> UnionConfig:
    cfg = cdir.config
    lowers = (cdir.sub("init"), *(Path(p) for p in cfg.layers))
    # --userns keep-id: a file of id N on disk (the image's ids, as the rootless namespace sees
    # them) is shown as the id that the container's namespace maps to N
    uid_map = tuple(IdMapping(r[1], r[0], r[2]) for r in cfg.userns_map.get("uids", []))
    gid_map = tuple(IdMapping(r[1], r[0], r[2]) for r in cfg.userns_map.get("gids", []))
    if cfg.read_only:
        return UnionConfig(lowers=lowers, uid_map=uid_map, gid_map=gid_map)
    return UnionConfig(
        lowers=lowers,
        upper=cdir.sub("upper"),
        work=cdir.sub("work"),
        uid_map=uid_map,
        gid_map=gid_map,
    )


def id_map_of(cfg: ContainerConfig) -> IdMap:
    return _id_map(cfg.id_map)


def userns_map_of(cfg: ContainerConfig) -> IdMap | None:
    """--userns keep-id: the map of the container's own user namespace (None: it has none)."""
    return _id_map(cfg.userns_map) if cfg.userns_map else None


def _id_map(data: dict[str, list[list[int]]]) -> IdMap:
    def ranges(key: str) -> tuple[IdRange, ...]:
        return tuple(IdRange(*r) for r in data.get(key, []))

    return IdMap(uids=ranges("uids"), gids=ranges("gids"))
