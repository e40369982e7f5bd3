"""The runtime's `strata` subcommands: run, create, start, exec, ps, stop, kill, rm, logs, inspect.

`strata.cli` lists `subcommands()`. This module imports only the standard library's
argparse-level modules and `unionfs.command`; each handler imports what it needs, so `strata --help`
and `strata mount` do not pay for the runtime.

Errors are one line with Docker's exit statuses: 125 when strata itself fails (bad input, the
container cannot be set up), 126/127 when the command cannot be run or is not found, otherwise
the command's own status (128+N when signal N killed it).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from unionfs.command import Runner, Subcommand
from unionfs.errors import UsageError

from .formats import FORMAT_HELP, is_template
from .formats import check as check_format

if TYPE_CHECKING:
    from .create import CreateRequest
    from .images import ImageSource, ImageSpec, Resolver
    from .namespaces import IdMap
    from .rootfs import UnionRootfs
    from .state import ContainerDir, StateRoot

_NETWORKS: Final = ("none", "host", "bridge", "pasta", "slirp4netns")


def default_network(rootless: bool) -> str:
    """The network a container gets without `--network`: its own namespace on the NAT'd bridge
    for root, as docker and podman give; rootless containers, which cannot make a bridge, pasta,
    else slirp4netns, else none (runtime.usernet), as podman's."""
    if not rootless:
        return "bridge"
    from .usernet import rootless_default

    return rootless_default()[0]


def _default_network_help() -> str:
    """--help's word on the default in force for whoever asks (a rootless user's depends on
    what is installed)."""
    if os.geteuid() == 0:
        return "bridge"
    from .usernet import rootless_default

    return rootless_default()[1]


def add_root(parser: argparse.ArgumentParser) -> None:
    """`--root DIR`: where containers and images live (the image store's commands take it too)."""
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="state root (default /var/lib/strata as root, $XDG_DATA_HOME/strata otherwise;"
        " or $STRATA_ROOT)",
    )


def root_path(args: argparse.Namespace) -> Path:
    """The state root `--root` names, else the default for this user."""
    from .state import default_root

    return Path(os.path.abspath(args.root)) if args.root else default_root()


def _state_root(args: argparse.Namespace) -> StateRoot:
    from .state import StateRoot

    return StateRoot(root_path(args))


def _add_create_arguments(parser: argparse.ArgumentParser, *, run: bool) -> None:
    add_root(parser)
    parser.add_argument("--name", default="", help="a unique name for the container")
    parser.add_argument(
        "--lower",
        action="append",
        default=[],
        metavar="DIR",
        help="an image layer; repeat it, top layer first (instead of IMAGE)",
    )
    parser.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    parser.add_argument("--env-file", action="append", default=[], metavar="FILE")
    parser.add_argument("-w", "--workdir", default="", metavar="DIR", help="working directory")
    parser.add_argument("-u", "--user", metavar="USER[:GROUP]", help="names or numeric ids")
    parser.add_argument("--hostname", default="", help="default: the short container id")
    parser.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    parser.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    parser.add_argument(
        "-v",
        "--volume",
        action="append",
        default=[],
        metavar="[HOST-DIR|NAME:]CTR[:OPTS]",
        help="bind a host path, or mount a named volume (made if missing) or an anonymous one;"
        " OPTS: ro, rw, nocopy",
    )
    parser.add_argument(
        "--mount", action="append", default=[], metavar="type=bind|volume|tmpfs,...",
        help="docker's --mount: type, source, target, readonly, volume-nocopy, tmpfs-size,"
        " tmpfs-mode",
    )  # fmt: skip
    parser.add_argument(
        "--device", action="append", default=[], metavar="HOST[:CTR][:rwm]",
        help="bind a host device node into the container (without w: read-only)",
    )  # fmt: skip
    parser.add_argument(
        "--tmpfs", action="append", default=[], metavar="PATH[:OPTS]",
        help="a tmpfs at PATH (OPTS: size=64m,mode=1777,noexec,...)",
    )  # fmt: skip
    parser.add_argument(
        "--read-only", action="store_true",
        help="no writable layer (but tmpfs on /tmp, /run, /var/tmp: see --read-only-tmpfs)",
    )  # fmt: skip
    parser.add_argument(
        "--read-only-tmpfs", default="true", choices=("true", "false"), metavar="true|false",
        help="with --read-only, writable tmpfs on /tmp, /run and /var/tmp (default true,"
        " as podman's)",
    )  # fmt: skip
    parser.add_argument("--rm", action="store_true", help="remove the container when it exits")
    parser.add_argument(
        "--network",
        "--net",
        default="",
        metavar="MODE",
        help="bridge: own namespace, veth on strata0, NAT out (root's default); none: only lo;"
        " host: the host's; pasta, slirp4netns: user-mode networking, the rootless default;"
        " NAME|ID: a user network (strata network create)"
        f" (default here: {_default_network_help()})",
    )
    parser.add_argument("--subnet", default="", metavar="CIDR", help="bridge subnet")
    parser.add_argument(
        "--dns", action="append", default=[], metavar="IP", help="a name server (repeat it)"
    )
    parser.add_argument(
        "--dns-search", action="append", default=[], metavar="DOMAIN", help="a search domain"
    )
    parser.add_argument(
        "--dns-option", action="append", default=[], metavar="OPT", help="a resolv.conf option"
    )
    parser.add_argument(
        "--add-host",
        action="append",
        default=[],
        metavar="NAME:IP",
        help="an /etc/hosts entry (IP may be host-gateway)",
    )
    parser.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[IP:][HOST_PORT:]PORT[/PROTO]",
        help="publish a container port (or range) on the host",
    )
    parser.add_argument(
        "-P",
        "--publish-all",
        action="store_true",
        help="publish the image's exposed ports on free host ports",
    )
    parser.add_argument(
        "--network-alias",
        action="append",
        default=[],
        metavar="NAME",
        help="another name for the container on a user network",
    )
    parser.add_argument(
        "--init",
        action="store_true",
        help="run a tiny init as PID 1 that reaps zombies and forwards signals",
    )
    parser.add_argument("--entrypoint", default=None, metavar="CMD", help="override it")
    parser.add_argument(
        "--cap-add", action="append", default=[], metavar="CAP",
        help="add a capability to the default set (NET_ADMIN or CAP_NET_ADMIN; ALL)",
    )  # fmt: skip
    parser.add_argument(
        "--cap-drop", action="append", default=[], metavar="CAP",
        help="drop a capability from the default set (ALL: every one)",
    )  # fmt: skip
    parser.add_argument(
        "--privileged", action="store_true",
        help="every capability, no seccomp filter, no masked paths, /sys writable",
    )  # fmt: skip
    parser.add_argument(
        "--security-opt", action="append", default=[], metavar="OPT",
        help="seccomp=unconfined|PROFILE.json, no-new-privileges, systempaths=unconfined,"
        " label=disable, apparmor=unconfined",
    )  # fmt: skip
    parser.add_argument(
        "-m", "--memory", default="", metavar="SIZE", help="memory limit (512m, 2g; cgroups)"
    )
    parser.add_argument(
        "--pids-limit", type=int, default=0, metavar="N", help="process limit (cgroups)"
    )
    parser.add_argument(
        "--restart", default="no", metavar="POLICY",
        help="no, on-failure[:N], always, unless-stopped: restart it when it exits",
    )  # fmt: skip
    parser.add_argument("--cpus", default="", metavar="N", help="CPU limit, 1.5 (cgroups)")
    # runtime.runflags
    parser.add_argument("-l", "--label", action="append", default=[], metavar="K=V")
    parser.add_argument("--label-file", action="append", default=[], metavar="FILE")
    parser.add_argument("--cidfile", default="", metavar="FILE", help="write the id to FILE")
    parser.add_argument(
        "--stop-signal", default="", metavar="SIGNAL",
        help="what 'strata stop' sends (default: the image's STOPSIGNAL, else SIGTERM)",
    )  # fmt: skip
    parser.add_argument(
        "--stop-timeout", type=int, default=None, metavar="SECONDS",
        help="how long 'strata stop' waits before SIGKILL (default 10; -1: forever)",
    )  # fmt: skip
    parser.add_argument(
        "--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]",
        help="a resource limit (nofile=1024:2048; -1: unlimited)",
    )  # fmt: skip
    parser.add_argument("--shm-size", default="", metavar="SIZE", help="/dev/shm (default 64m)")
    parser.add_argument(
        "--group-add", action="append", default=[], metavar="GROUP",
        help="another supplementary group (a name of the container's /etc/group, or a gid)",
    )  # fmt: skip
    parser.add_argument(
        "--userns", default="", metavar="MODE",
        help="host (rootless: its own), or keep-id[:uid=N,gid=N] (rootless: the user's ids inside)",
    )  # fmt: skip
    parser.add_argument(
        "--log-opt", action="append", default=[], metavar="K=V",
        help="max-size=SIZE, max-file=N: rotate the container's log (runtime.logrotate)",
    )  # fmt: skip
    # runtime.health: docker's health check flags (over the image's HEALTHCHECK)
    parser.add_argument("--health-cmd", default="", metavar="CMD", help="a check (sh -c CMD)")
    for flag, what in (
        ("--health-interval", "between checks (default 30s)"),
        ("--health-timeout", "before a check is killed (default 30s)"),
        ("--health-start-period", "when failures do not count yet (default 0s)"),
        ("--health-start-interval", "between checks in the start period (default 5s)"),
    ):
        parser.add_argument(flag, default="", metavar="DURATION", help=what)
    parser.add_argument(
        "--health-retries", type=int, default=0, metavar="N",
        help="failures in a row that make it unhealthy (default 3)",
    )  # fmt: skip
    parser.add_argument(
        "--no-healthcheck", action="store_true", help="no health check (not even the image's)"
    )
    if run:
        parser.add_argument("-d", "--detach", action="store_true", help="run in the background")
        _add_detach_keys(parser)
    parser.add_argument("-D", "--debug", action="store_true", help="tracebacks on errors")
    parser.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        metavar="IMAGE [CMD [ARG...]]",
        help="an image of the store (NAME[:TAG] or an id prefix) or a rootfs directory"
        " (nothing, with --lower), then the command",
    )


def _image_and_argv(
    args: argparse.Namespace, root: StateRoot, resolver: Resolver | None
) -> tuple[ImageSpec, list[str]]:
    """The image (`--lower` or IMAGE, found by `resolver`, which may pull it) and the command
    after it."""
    from .images import layers_image, lookup_image
    from .runflags import check_platform

    check_platform(getattr(args, "platform", None) or "")  # the image source's --platform
    rest = list(args.rest)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if args.lower:
        return layers_image(args.lower), rest
    if not rest:
        raise UsageError("no image given (IMAGE or --lower DIR)", 125)
    return lookup_image(rest.pop(0), root.path, resolver), rest


def _container_network(args: argparse.Namespace, root: StateRoot, mode: str) -> tuple[str, str]:
    """`--network container:NAME|ID`: the other container's network namespace, and with it its
    hostname, /etc/hosts and resolv.conf (as docker); what would configure a network of our own
    conflicts, as in docker. Kept as `container:ID` (the name may be reused later)."""
    ref = mode.removeprefix("container:")
    conflicts = [
        flag
        for flag, given in (
            ("--hostname", args.hostname),
            ("-p/--publish", args.publish),
            ("-P/--publish-all", args.publish_all),
            ("--dns", args.dns),
            ("--dns-search", args.dns_search),
            ("--dns-option", args.dns_option),
            ("--add-host", args.add_host),
            ("--network-alias", args.network_alias),
            ("--subnet", args.subnet),
        )
        if given
    ]
    if conflicts:
        raise UsageError(
            f"--network {mode}: conflicts with {conflicts[0]} (the network is the other container's)",
            125,
        )
    try:
        target = root.find(ref)
    except UsageError:
        raise UsageError(f"--network {mode}: no such container: {ref}", 125) from None
    return f"container:{target.id}", target.config.hostname


def _create_request(
    args: argparse.Namespace,
    root: StateRoot,
    resolver: Resolver | None,
    *,
    rootless: bool | None = None,
    id_map: IdMap | None = None,
    resolved: tuple[ImageSpec, list[str]] | None = None,
) -> CreateRequest:
    from . import network, runflags
    from .create import CreateRequest
    from .health import merge, parse_flags, validate
    from .logrotate import attribute_opts, parse_log_opts
    from .ports import parse_publish_all
    from .process import check_user, parse_env_assignments, read_env_file
    from .publish import check_mode
    from .security import parse_options
    from .volumes import parse_device_flag, parse_mount_flag, parse_tmpfs_flag, parse_volume_flag

    image, rest = resolved if resolved is not None else _image_and_argv(args, root, resolver)
    env: list[str] = []
    for path in args.env_file:
        env += read_env_file(path)
    env += parse_env_assignments(args.env, source="-e")
    if args.user is not None:
        check_user(args.user)
    if args.workdir and not args.workdir.startswith("/"):
        raise UsageError(f"-w {args.workdir}: the working directory must be absolute", 125)
    is_rootless = rootless if rootless is not None else os.geteuid() != 0
    keep_id = runflags.parse_userns(args.userns, rootless=is_rootless)
    label_items = [item for path in args.label_file for item in runflags.read_label_file(path)]
    labels = runflags.parse_labels([*label_items, *args.label])
    if args.stop_signal:
        runflags.parse_signal(args.stop_signal, "--stop-signal")
    if args.stop_timeout is not None and args.stop_timeout < -1:
        raise UsageError(f"--stop-timeout {args.stop_timeout}: -1 or more", 125)
    ulimits = tuple(runflags.parse_ulimit(u) for u in args.ulimit)
    shm_size = runflags.parse_size(args.shm_size, "--shm-size") if args.shm_size else 0
    log_opts = parse_log_opts(args.log_opt)
    log_attr_opts = attribute_opts(args.log_opt)
    health_flags = parse_flags(
        cmd=args.health_cmd,
        interval=args.health_interval,
        timeout=args.health_timeout,
        retries=args.health_retries,
        start_period=args.health_start_period,
        start_interval=args.health_start_interval,
        no_healthcheck=args.no_healthcheck,
    )
    healthcheck = merge(health_flags, image.config.healthcheck)
    validate(healthcheck)
    mount_specs = (
        *(parse_volume_flag(v) for v in args.volume),
        *(parse_mount_flag(m) for m in args.mount),
        *(parse_tmpfs_flag(t) for t in args.tmpfs),
        *(parse_device_flag(d) for d in args.device),
    )
    mode = args.network or default_network(is_rootless)
    hostname = args.hostname
    network_id = ""
    if mode.startswith("container:"):
        mode, hostname = _container_network(args, root, mode)
    elif mode not in _NETWORKS:  # hook: user networks (runtime.networks)
        mode, network_id = _user_network(root, mode, is_rootless, args)
    elif args.network_alias:
        raise UsageError(
            "--network-alias: network-scoped aliases are only for user-defined networks", 125
        )
    subnet = args.subnet or network.DEFAULT_SUBNET
    if mode == "bridge":
        network.parse_subnet(subnet)
        if is_rootless:
            raise UsageError(
                "--network bridge needs root (rootless: use pasta, slirp4netns, none or host)", 125
            )
    elif args.subnet:
        raise UsageError("--subnet is only for --network bridge", 125)
    dns = network.parse_dns(args.dns)
    dns_search = network.parse_dns_search(args.dns_search)
    dns_options = network.parse_dns_options(args.dns_option)
    add_hosts = network.parse_add_hosts(args.add_host, mode)
    mappings = parse_publish_all(args.publish)
    check_mode(mappings, args.publish_all, mode)  # -p with host, none (runtime.publish)
    ports = tuple(m.text() for m in mappings)
    memory = 0
    if args.memory:
        from .cgroups import parse_memory

        memory = parse_memory(args.memory)
    cpu_quota = 0
    if args.cpus:
        from .cgroups import parse_cpus

        cpu_quota = parse_cpus(args.cpus)
    if not 0 <= args.pids_limit < 2**63:
        raise UsageError(f"--pids-limit {args.pids_limit}: expected 0 to 2^63-1", 125)
    from .restart import parse_policy

    restart_policy, restart_retries = parse_policy(args.restart)
    if restart_policy != "no" and args.rm:
        raise UsageError("conflicting options: --restart and --rm", 125)
    entrypoint = None
    if args.entrypoint is not None:
        entrypoint = (args.entrypoint,) if args.entrypoint else ()
    sec = parse_options(
        privileged=args.privileged,
        cap_add=args.cap_add,
        cap_drop=args.cap_drop,
        security_opt=args.security_opt,
    )
    return CreateRequest(
        image=image,
        argv=tuple(rest),
        entrypoint=entrypoint,
        env=tuple(env),
        workdir=args.workdir,
        user=args.user,
        hostname=hostname,
        name=args.name,
        mounts=mount_specs,
        image_volumes=True,
        read_only_tmpfs=args.read_only_tmpfs == "true",
        labels=labels,
        stop_signal=args.stop_signal,
        stop_timeout=args.stop_timeout,
        ulimits=ulimits,
        shm_size=shm_size,
        group_add=runflags.check_groups(args.group_add),
        log_opts=log_opts,
        log_attr_opts=log_attr_opts,
        healthcheck=healthcheck,
        network=mode,
        subnet=subnet,
        dns=dns,
        dns_search=dns_search,
        dns_options=dns_options,
        add_hosts=add_hosts,
        ports=ports,
        publish_all=args.publish_all,
        network_aliases=tuple(args.network_alias),
        network_id=network_id,
        read_only=args.read_only,
        tty=args.tty,
        interactive=args.interactive,
        init=args.init,
        auto_remove=args.rm,
        memory=memory,
        pids_limit=args.pids_limit,
        restart_policy=restart_policy,
        restart_retries=restart_retries,
        cpu_quota=cpu_quota,
        rootless=rootless,
        id_map=id_map,
        keep_id=keep_id,
        userns=args.userns,
        security=sec,
    )


def _user_network(
    root: StateRoot, ref: str, rootless: bool, args: argparse.Namespace
) -> tuple[str, str]:
    """`--network NAME|ID` of a user network: its name and id (one line, 125, if unknown)."""
    from . import networks

    defn = networks.find(root, ref)
    if defn is None:
        raise UsageError(f"--network {ref}: network {ref} not found", 125)
    if rootless:
        raise UsageError(f"--network {ref}: user networks need root", 125)
    for alias in args.network_alias:
        if not networks.valid_alias(alias):
            raise UsageError(f"--network-alias {alias!r}: not a DNS name", 125)
    return defn.name, defn.id


def _check_hostname(name: str) -> None:
    if name and (len(name) > 64 or not all(c.isalnum() or c in "-." for c in name)):
        raise UsageError(f"--hostname {name!r}: letters, digits, '-' and '.', at most 64", 125)


def check_input_terminal(interactive: bool, tty: bool) -> None:
    """docker's check before `run -it` and `exec -it` attach: the terminal the container gets
    passes our stdin on, so stdin must be a terminal too (`-t` alone, with no stdin to pass,
    needs none). docker's words, and its status 1."""
    if interactive and tty and not os.isatty(0):
        raise UsageError("the input device is not a TTY", 1)


def _run(args: argparse.Namespace, runner: Runner, resolver: Resolver | None) -> int:
    """`strata run`. In the foreground the union daemon is forked first thing (see
    `rootfs.UnionRootfs`); rootless, that needs the user namespace, so it is entered first
    (after the state root, which depends on who we are, has been picked)."""
    runner.debug = bool(args.debug)
    if not args.detach:
        check_input_terminal(args.interactive, args.tty)
    # `-it`: a detached monitor that we attach to, so that the detach keys can leave it running
    at_terminal = args.tty and args.interactive and not args.detach
    keys = _detach_keys(args) if at_terminal or args.detach_keys is not None else b""
    from .trace import mark

    mark("run parsed")
    # The state root depends on who we are: pick it before entering a user namespace.
    root = _state_root(args) if args.detach or at_terminal or os.geteuid() != 0 else None
    # So does the image: a rootless pull extracts its layers as the user, outside the user
    # namespace (where the kernel says uid 0 and the store's files would get mapped owners).
    resolved = None
    if root is not None and not args.detach and not at_terminal:
        resolved = _image_and_argv(args, root, resolver)
    if args.detach or at_terminal:
        from .prefork import discard

        discard()  # the detached monitor forks its own; it must not inherit this one
        daemon = None
        rootless, id_map = None, None
    else:
        rootless, id_map, daemon = _prefork_daemon()
    if root is None:
        root = _state_root(args)
    try:
        from .attach import run_in_terminal
        from .create import create
        from .lifecycle import run_attached, start_detached

        _check_hostname(args.hostname)
        _check_cidfile(args.cidfile)
        req = _create_request(
            args, root, resolver, rootless=rootless, id_map=id_map, resolved=resolved
        )
        cdir = create(root, req)
        _write_cidfile(args.cidfile, cdir.id)
        mark("created")
        if args.detach:
            start_detached(root, cdir, remove_on_failure=True)
            print(cdir.id, flush=True)
            return 0
        if at_terminal:
            return run_in_terminal(root, cdir, detach_keys=keys, stdin=True, remove_on_failure=True)
        return run_attached(root, cdir, remove_on_failure=True, daemon=daemon)
    finally:
        if daemon is not None:
            daemon.stop()
        # Nothing allocated from here on needs collecting: skip the interpreter's final
        # garbage collection, a good part of its ~13 ms shutdown.
        gc.freeze()


def _check_cidfile(path: str) -> None:
    """--cidfile must not exist yet (docker's rule: it may be another container's)."""
    if path and os.path.lexists(path):
        raise UsageError(
            f"--cidfile {path}: container ID file found, make sure the other container isn't"
            " running or delete it",
            125,
        )


def _write_cidfile(path: str, cid: str) -> None:
    """The new container's id into --cidfile (created, never through a symlink)."""
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(cid)


def _prefork_daemon() -> tuple[bool, IdMap | None, UnionRootfs]:
    """The union daemon for a foreground run: the one `strata.entry` forked at start-up (as
    root), else one forked now (rootless: inside the user namespace, which it needs)."""
    from .rootfs import UnionRootfs, take_preforked

    rootless = os.geteuid() != 0
    id_map = None
    if rootless:
        from .create import rootless_map
        from .namespaces import enter_user_namespace

        id_map = rootless_map()
        enter_user_namespace(id_map)
    daemon = take_preforked(privileged=not rootless)
    if daemon is None:
        daemon = UnionRootfs(privileged=not rootless)
        daemon.start()
    return rootless, id_map, daemon


def _create(args: argparse.Namespace, runner: Runner, resolver: Resolver | None) -> int:
    runner.debug = bool(args.debug)
    from .create import create

    _check_hostname(args.hostname)
    _check_cidfile(args.cidfile)
    root = _state_root(args)
    cdir = create(root, _create_request(args, root, resolver))
    _write_cidfile(args.cidfile, cdir.id)
    print(cdir.id, flush=True)
    return 0


def _add_start_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument(
        "-a", "--attach", action="store_true", help="stay attached (output, exit status)"
    )
    parser.add_argument(
        "-i", "--interactive", action="store_true", help="attach our input (a -t container's)"
    )
    _add_detach_keys(parser)
    parser.add_argument("containers", nargs="+", metavar="CONTAINER")


def _add_detach_keys(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--detach-keys", default=None, metavar="KEYS",
        help="the keys that detach (default ctrl-p,ctrl-q; '' for none)",
    )  # fmt: skip


def _detach_keys(args: argparse.Namespace) -> bytes:
    from .attach import DEFAULT_DETACH_KEYS, parse_detach_keys

    return parse_detach_keys(DEFAULT_DETACH_KEYS if args.detach_keys is None else args.detach_keys)


def _start(args: argparse.Namespace, runner: Runner) -> int:
    from .attach import run_in_terminal
    from .lifecycle import run_attached, start_detached

    root = _state_root(args)
    keys = _detach_keys(args)
    if args.attach or args.interactive:  # docker: -i attaches too
        if len(args.containers) != 1:
            raise UsageError("you cannot start and attach multiple containers at once", 125)
        cdir = root.find(args.containers[0])
        if cdir.config.tty:  # through a detached monitor, as `run -it`
            return run_in_terminal(
                root, cdir, detach_keys=keys, stdin=args.interactive, remove_on_failure=False
            )
        return run_attached(root, cdir, remove_on_failure=False)
    for ref in args.containers:
        start_detached(root, root.find(ref), remove_on_failure=False)
        print(ref, flush=True)
    return 0


def _add_exec_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("-i", "--interactive", action="store_true")
    parser.add_argument("-t", "--tty", action="store_true")
    parser.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    parser.add_argument("-w", "--workdir", default="", metavar="DIR")
    parser.add_argument("-u", "--user", metavar="USER[:GROUP]")
    parser.add_argument("container", metavar="CONTAINER")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD [ARG...]")


def _exec(args: argparse.Namespace, runner: Runner) -> int:
    from .exec import exec_in
    from .process import ProcessSpec, check_user, merge_env, parse_env_assignments

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("exec: no command given", 125)
    if args.user is not None:
        check_user(args.user)
    root = _state_root(args)
    cdir = root.find(args.container)  # (first: no such container comes before no terminal)
    check_input_terminal(args.interactive, args.tty)
    cfg = cdir.config
    spec = ProcessSpec(
        argv=tuple(command),
        env=merge_env(
            cfg.env,
            ["TERM=xterm"] if args.tty else [],
            parse_env_assignments(args.env, source="-e"),
        ),
        workdir=args.workdir or cfg.workdir,
        user=args.user if args.user is not None else cfg.user,
        tty=args.tty,
        interactive=args.interactive,
        groups=cfg.group_add,  # as docker's exec: the container's --group-add too
    )
    return exec_in(root, cdir, spec)


def _add_ps_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    parser.add_argument("-q", "--quiet", action="store_true", help="only ids")
    parser.add_argument("--no-trunc", action="store_true", help="full ids and commands")
    parser.add_argument("--format", default="table", help=FORMAT_HELP)
    parser.add_argument(
        "-f", "--filter", action="append", default=[], metavar="K=V",
        help="label=K[=V], name=TEXT, id=PREFIX, status=STATUS, exited=CODE, ancestor=IMAGE,"
        " before=CONTAINER, since=CONTAINER, volume=NAME|PATH, network=NAME|ID,"
        " health=starting|healthy|unhealthy|none",
    )  # fmt: skip


_PS_FILTERS: Final = (
    "label", "name", "id", "status", "exited", "ancestor", "before", "since", "volume", "network",
    "health",
)  # fmt: skip
_STATUSES: Final = ("created", "restarting", "running", "removing", "paused", "exited", "dead")


def _ps_filter(items: list[str]) -> list[tuple[str, str]]:
    filters = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or key not in _PS_FILTERS:
            raise UsageError(f"invalid filter {item!r} ({', '.join(_PS_FILTERS)})", 125)
        if key == "status" and value not in _STATUSES:
            raise UsageError(f"invalid filter 'status={value}' ({', '.join(_STATUSES)})", 125)
        if key == "exited" and not value.lstrip("-").isdigit():
            raise UsageError(f"invalid filter 'exited={value}': an exit code", 125)
        if key == "health" and value not in ("starting", "healthy", "unhealthy", "none"):
            raise UsageError(f"Unrecognised filter value for health: {value}", 125)
        filters.append((key, value))
    return filters


def _image_names(ref: str) -> set[str]:
    """The names an image reference stands for in the store (a bare name is `localhost/`'s,
    no tag is `latest`, as images.store.normalize_ref), for `ancestor=`."""
    last = ref.rpartition("/")[2]
    tagged = ref if ":" in last or "@" in last else f"{ref}:latest"
    return {ref, tagged, tagged if "/" in tagged else f"localhost/{tagged}"}


def _ps_matches(root: StateRoot, cdir: ContainerDir, status: str, key: str, value: str) -> bool:
    cfg = cdir.config
    if key == "label":
        label, eq, wanted = value.partition("=")
        return label in cfg.labels and (not eq or cfg.labels[label] == wanted)
    if key == "name":
        return value in cfg.name
    if key == "id":
        return cfg.id.startswith(value)
    if key == "exited":
        state = cdir.effective_state()
        return status == "exited" and state.exit_code == int(value)
    if key == "ancestor":
        return bool(_image_names(cfg.image) & _image_names(value))
    if key in ("before", "since"):
        from .logshow import parse_rfc3339

        mine, other = parse_rfc3339(cfg.created), parse_rfc3339(root.find(value).config.created)
        return mine < other if key == "before" else mine > other
    if key == "volume":
        return any(value in (v.name, v.source, v.target) for v in cfg.volumes if v.kind != "tmpfs")
    if key == "network":
        return value in (cfg.network, cfg.network_id) or (
            len(value) >= 3 and cfg.network_id.startswith(value)
        )
    if key == "health":  # runtime.health
        from .health import status as health_status

        return health_status(cdir) == value
    return status == value


def _ps(args: argparse.Namespace, runner: Runner) -> int:
    import json

    from .report import describe, table

    root = _state_root(args)
    filters = _ps_filter(args.filter)
    rows = []
    shown = []
    for cdir in root.containers():
        info = describe(cdir)
        status = str(info["State"])
        if not all(_ps_matches(root, cdir, status, key, value) for key, value in filters):
            continue
        if (
            args.all
            or status in ("running", "paused", "restarting")
            or any(k == "status" for k, _ in filters)
        ):
            rows.append(info)
            shown.append(cdir)
    if is_template(args.format):
        from .formats import PS_HEADERS, ps_fields, write

        fields = [ps_fields(c, r, full=args.no_trunc) for c, r in zip(shown, rows, strict=True)]
        write(args.format, fields, PS_HEADERS)
    elif args.format == "json":
        print(json.dumps(rows, indent=2))
    elif args.quiet:
        for row in rows:
            print(row["Id"] if args.no_trunc else str(row["Id"])[:12])
    else:
        sys.stdout.write(table(rows, full=args.no_trunc))
    return 0


def _add_stop_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument(
        "-t", "--time", type=float, default=None, metavar="SECONDS",
        help="wait this long after the stop signal before SIGKILL (default: the container's"
        " --stop-timeout, else 10)",
    )  # fmt: skip
    parser.add_argument("containers", nargs="+", metavar="CONTAINER")


def _stop(args: argparse.Namespace, runner: Runner) -> int:
    from .lifecycle import stop, stop_by_hand

    root = _state_root(args)
    for ref in args.containers:
        cdir = root.find(ref)
        stop_by_hand(root, cdir)
        stop(cdir, args.time)
        print(ref, flush=True)
    return 0


def _add_kill_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("-s", "--signal", default="KILL", help="name or number (default KILL)")
    parser.add_argument("containers", nargs="+", metavar="CONTAINER")


def parse_signal(text: str) -> int:
    """A signal by name or number (runtime.runflags.parse_signal)."""
    from .runflags import parse_signal as parse

    return parse(text)


def _kill(args: argparse.Namespace, runner: Runner) -> int:
    from .lifecycle import signal_container, stop_by_hand

    sig = parse_signal(args.signal)
    root = _state_root(args)
    for ref in args.containers:
        cdir = root.find(ref)
        stop_by_hand(root, cdir)
        signal_container(cdir, sig)
        print(ref, flush=True)
    return 0


def _add_rm_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("-f", "--force", action="store_true", help="kill it first if running")
    parser.add_argument(
        "-v", "--volumes", action="store_true", help="also remove its anonymous volumes"
    )
    parser.add_argument("containers", nargs="+", metavar="CONTAINER")


def _rm(args: argparse.Namespace, runner: Runner) -> int:
    from .lifecycle import remove

    root = _state_root(args)
    status = 0
    for ref in args.containers:
        try:
            remove(root, root.find(ref), force=args.force, volumes=args.volumes)
            print(ref, flush=True)
        except UsageError as exc:
            runner.say(str(exc))
            status = 1
    return status


def _add_logs_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("-f", "--follow", action="store_true", help="until the container stops")
    parser.add_argument(
        "-n", "--tail", default="all", metavar="N", help="only the last N lines (default: all)"
    )
    when = "RFC 3339 (2026-12-05T12:00:00Z), Unix time, or a duration before now (10m, 1h30m)"
    parser.add_argument("--since", metavar="TIME", help=f"only lines printed since TIME: {when}")
    parser.add_argument("--until", metavar="TIME", help="only lines printed before TIME")
    parser.add_argument(
        "-t", "--timestamps", action="store_true", help="the time of each line first"
    )
    parser.add_argument(
        "--details", action="store_true",
        help="the attributes --log-opt labels=/env= chose (k=v,...) before each line",
    )  # fmt: skip
    parser.add_argument("container", metavar="CONTAINER")


def _logs(args: argparse.Namespace, runner: Runner) -> int:
    import time

    from .logshow import Selection, parse_tail, parse_time, show_to_stdio

    now = time.time_ns()
    selection = Selection(
        tail=parse_tail(args.tail),
        since=None if args.since is None else parse_time(args.since, now, "--since"),
        until=None if args.until is None else parse_time(args.until, now, "--until"),
        timestamps=args.timestamps,
        details=args.details,
    )
    cdir = _state_root(args).find(args.container)
    show_to_stdio(cdir, selection, follow=args.follow)
    return 0


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    add_inspect_format(parser)
    parser.add_argument("containers", nargs="+", metavar="CONTAINER")


def add_inspect_format(parser: argparse.ArgumentParser) -> None:
    """`inspect`'s -f/--format (runtime.formats.print_inspected)."""
    parser.add_argument(
        "-f", "--format", default=None, metavar="TEMPLATE",
        help="a Go template for each object ({{.State.Status}}, {{json .Config.Env}}), or json",
    )  # fmt: skip


def _inspect(args: argparse.Namespace, runner: Runner) -> int:
    from .formats import print_inspected
    from .report import inspect

    root = _state_root(args)
    found: list[ContainerDir] = [root.find(ref) for ref in args.containers]
    check_format(args.format, listing=False)  # (a bad template before any work, as docker)
    print_inspected(args.format, [inspect(c) for c in found])
    return 0


def _add_port_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("container", metavar="CONTAINER")
    parser.add_argument(
        "private", nargs="?", metavar="PRIVATE_PORT[/PROTO]", help="only this container port"
    )


def _port(args: argparse.Namespace, runner: Runner) -> int:
    from .publish import port_lines

    for line in port_lines(_state_root(args).find(args.container), args.private):
        print(line)
    return 0


def _add_network_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)  # `strata network --root DIR ACTION`, and after ACTION too:

    def root_too(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS, help="state root")

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="create a user network")
    root_too(create)
    create.add_argument("--subnet", default="", metavar="CIDR", help="default: a free /24")
    create.add_argument("--gateway", default="", metavar="IP", help="default: the first address")
    create.add_argument("-d", "--driver", default="bridge", help="bridge (the only one)")
    create.add_argument("name", metavar="NAME")
    listing = actions.add_parser("ls", aliases=["list"], help="list networks")
    root_too(listing)
    listing.add_argument("-q", "--quiet", action="store_true", help="only the ids")
    listing.add_argument("--format", default="table", help=FORMAT_HELP)
    listing.add_argument("--no-trunc", action="store_true", help="full ids")
    inspect = actions.add_parser("inspect", help="show networks as JSON")
    root_too(inspect)
    add_inspect_format(inspect)
    inspect.add_argument("networks", nargs="+", metavar="NETWORK")
    remove = actions.add_parser("rm", aliases=["remove"], help="remove user networks")
    root_too(remove)
    remove.add_argument("networks", nargs="+", metavar="NETWORK")
    prune = actions.add_parser(
        "prune",
        help="remove the user networks no container uses, the bridges no container uses,"
        " their nft table, stray veths and DNS servers",
    )
    root_too(prune)
    prune.add_argument("-f", "--force", action="store_true", help="do not ask (strata never asks)")


def _add_healthcheck_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = actions.add_parser("run", help="run a container's health check now, and record it")
    run.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS, help="state root")
    run.add_argument("container", metavar="CONTAINER")


def _healthcheck(args: argparse.Namespace, runner: Runner) -> int:
    """`strata healthcheck run`: podman's command. Nothing printed and 0 when the check passed;
    "unhealthy" and 1 when it failed; 125 for no such container, none running or no check."""
    from .health import run_now

    root = _state_root(args)
    try:
        cdir = root.find(args.container)
    except UsageError as exc:
        raise UsageError(str(exc), 125) from None
    result = run_now(root, cdir)
    if result.exit_code == 0:
        return 0
    print("unhealthy", flush=True)
    return 1


def _network(args: argparse.Namespace, runner: Runner) -> int:

    from . import networks

    root = _state_root(args)
    action = {"list": "ls", "remove": "rm"}.get(args.action, args.action)
    if action == "ls":
        rows = networks.listing(root)
        if is_template(args.format):  # (before -q: a template wins, as docker's)
            from .formats import NETWORK_HEADERS, network_fields, write

            check_format(args.format)
            found = [network_fields(root, r[1], full=args.no_trunc) for r in rows]
            write(args.format, found, NETWORK_HEADERS)
            return 0
        if args.quiet:
            print("\n".join(r[0] for r in rows), flush=True)
            return 0
        header = ("NETWORK ID", "NAME", "DRIVER", "SCOPE")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
        for row in [header, *rows]:
            print(
                "   ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=False)) + f"   {row[3]}"
            )
        return 0
    if action == "inspect":
        from .formats import print_inspected

        check_format(args.format, listing=False)
        print_inspected(args.format, [networks.inspect(root, r) for r in args.networks], indent=4)
        return 0
    if os.geteuid() != 0 and action == "prune":  # hook: runtime.usernet, the user's own
        for what in prune_networks(root):
            print(what, flush=True)
        return 0
    if os.geteuid() != 0:
        raise UsageError(f"strata network {action} needs root (bridges are the host's)", 125)
    if action == "create":
        if args.driver != "bridge":
            raise UsageError(f"--driver {args.driver}: only bridge is supported", 125)
        print(networks.create(root, args.name, args.subnet, args.gateway).id, flush=True)
        return 0
    if action == "rm":
        failed: UsageError | None = None
        for ref in args.networks:
            try:
                networks.remove(root, ref)
                print(ref, flush=True)
            except UsageError as exc:
                if failed is not None:
                    runner.say(str(failed))
                failed = exc
        if failed is not None:
            raise failed
        return 0
    for what in prune_networks(root):
        print(what, flush=True)
    return 0


def prune_networks(root: StateRoot) -> list[str]:
    """`network prune` (and `system prune`): rootless, the user's stale pasta/slirp4netns
    helpers; as root also the user networks no container uses, stray rules, veths, bridges
    and DNS servers. What went."""
    from . import networks, publish, usernet

    with root.lock():
        removed = usernet.collect_all(root)
        if os.geteuid() != 0:
            return removed
        removed += publish.tidy(root) + publish.remove_empty_table()
    return removed + networks.prune(root)  # (takes the lock itself)


# -- diff, wait, rename, top (issue 17: docker's container commands) ---------------------------


def _add_one_container(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("container", metavar="CONTAINER")


def _diff(args: argparse.Namespace, runner: Runner) -> int:
    from .changes import changes

    for kind, path in changes(_state_root(args).find(args.container)):
        print(f"{kind} {path}")
    return 0


def _add_wait_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("containers", nargs="+", metavar="CONTAINER")


def _wait(args: argparse.Namespace, runner: Runner) -> int:
    from .lifecycle import wait_exit

    root = _state_root(args)
    status = 0
    for ref in args.containers:
        try:
            print(wait_exit(root.find(ref)), flush=True)
        except UsageError as exc:
            runner.say(str(exc))
            status = 1
    return status


def _add_rename_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("container", metavar="CONTAINER")
    parser.add_argument("new_name", metavar="NEW_NAME")


def _rename(args: argparse.Namespace, runner: Runner) -> int:
    from .lifecycle import rename

    rename(_state_root(args), args.container, args.new_name)
    return 0


def _add_top_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("container", metavar="CONTAINER")
    parser.add_argument(
        "ps_args", nargs=argparse.REMAINDER, metavar="PS_OPTIONS", help="ps options (default -ef)"
    )


def _top(args: argparse.Namespace, runner: Runner) -> int:
    from .report import top

    sys.stdout.write(top(_state_root(args).find(args.container), args.ps_args or ["-ef"]))
    return 0


def _add_containers(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("containers", nargs="+", metavar="CONTAINER")


def _each(
    args: argparse.Namespace, runner: Runner, action: Callable[[StateRoot, ContainerDir], None]
) -> int:
    """`action` on each container named, printing its name as docker does; 1 if any failed."""
    root = _state_root(args)
    status = 0
    for ref in args.containers:
        try:
            action(root, root.find(ref))
            print(ref, flush=True)
        except UsageError as exc:
            runner.say(str(exc))
            status = exc.exit_code
    return status


def _add_restart_arguments(parser: argparse.ArgumentParser) -> None:
    _add_stop_arguments(parser)


def _restart(args: argparse.Namespace, runner: Runner) -> int:
    from .lifecycle import start_detached, stop, stop_by_hand

    def restart(root: StateRoot, cdir: ContainerDir) -> None:
        stop_by_hand(root, cdir)
        stop(cdir, args.time)
        start_detached(root, cdir, remove_on_failure=False)

    return _each(args, runner, restart)


def _add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    parser.add_argument("--no-stream", action="store_true", help="print one table and stop")
    parser.add_argument("--no-trunc", action="store_true", help="full container ids")
    parser.add_argument("--format", default="table", help=FORMAT_HELP)
    parser.add_argument("containers", nargs="*", metavar="CONTAINER")


def _stats(args: argparse.Namespace, runner: Runner) -> int:
    from .stats import show

    template = args.format if is_template(args.format) else None
    check_format(template)  # (a bad one fails at once)
    root = _state_root(args)
    if args.containers:
        found = [root.find(ref) for ref in args.containers]
    else:
        found = [
            c for c in root.containers() if args.all or c.effective_state().status == "running"
        ]
    show(
        found,
        stream=not args.no_stream,
        full=args.no_trunc,
        template=template,
        given=list(args.containers) or None,
    )
    return 0


def _add_attach_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    _add_detach_keys(parser)
    parser.add_argument("--no-stdin", action="store_true", help="do not attach the input")
    parser.add_argument(
        "--sig-proxy", default="true", choices=("true", "false"),
        help="pass SIGINT and SIGTERM to a container without -t (default true)",
    )  # fmt: skip
    parser.add_argument("container", metavar="CONTAINER")


def _attach(args: argparse.Namespace, runner: Runner) -> int:
    from .attach import attach

    keys = _detach_keys(args)
    cdir = _state_root(args).find(args.container)
    return attach(
        cdir, detach_keys=keys, no_stdin=args.no_stdin, sig_proxy=args.sig_proxy == "true"
    )


def _pause(args: argparse.Namespace, runner: Runner) -> int:
    from .lifecycle import pause

    return _each(args, runner, pause)


def _unpause(args: argparse.Namespace, runner: Runner) -> int:
    from .lifecycle import unpause

    return _each(args, runner, unpause)


def subcommands(source: ImageSource | None = None) -> tuple[Subcommand, ...]:
    """The runtime's subcommands; `run` and `create` look IMAGE up with `source`'s resolver
    first (the image store's, handed over by `strata.cli`, which pulls what is missing), then as
    a rootfs directory."""

    def add(parser: argparse.ArgumentParser, *, run: bool) -> None:
        _add_create_arguments(parser, run=run)
        if source is not None:
            source.add_arguments(parser)

    def resolver(args: argparse.Namespace) -> Resolver | None:
        return None if source is None else source.resolver(args)

    return (
        Subcommand(
            "run",
            "run a command in a new container",
            lambda p: add(p, run=True),
            lambda args, runner: _run(args, runner, resolver(args)),
        ),
        Subcommand(
            "create",
            "create a container (start it with 'strata start')",
            lambda p: add(p, run=False),
            lambda args, runner: _create(args, runner, resolver(args)),
        ),
        Subcommand("start", "start created or stopped containers", _add_start_arguments, _start),
        Subcommand("exec", "run a command in a running container", _add_exec_arguments, _exec),
        Subcommand("ps", "list containers", _add_ps_arguments, _ps),
        Subcommand("stop", "stop containers (SIGTERM, then SIGKILL)", _add_stop_arguments, _stop),
        Subcommand("kill", "send a signal to containers", _add_kill_arguments, _kill),
        Subcommand("rm", "remove containers and their writable layers", _add_rm_arguments, _rm),
        Subcommand("logs", "show a container's output", _add_logs_arguments, _logs),
        Subcommand("inspect", "show containers as JSON", add_inspect_arguments, _inspect),
        Subcommand(
            "port",
            "list a container's published ports (or one port's host addresses)",
            _add_port_arguments,
            _port,
        ),
        Subcommand(
            "diff",
            "list what a container changed in its filesystem (A, C, D)",
            _add_one_container,
            _diff,
        ),
        Subcommand(
            "wait", "wait until containers stop, print their exit codes", _add_wait_arguments, _wait
        ),
        Subcommand("rename", "rename a container", _add_rename_arguments, _rename),
        Subcommand("top", "list a container's processes (ps)", _add_top_arguments, _top),
        Subcommand("pause", "freeze every process of containers", _add_containers, _pause),
        Subcommand("restart", "stop containers, then start them", _add_restart_arguments, _restart),
        Subcommand("unpause", "thaw paused containers", _add_containers, _unpause),
        Subcommand(
            "attach",
            "attach the terminal to a detached container's input and output",
            _add_attach_arguments,
            _attach,
        ),
        Subcommand(
            "stats", "show containers' CPU, memory, I/O and PIDs", _add_stats_arguments, _stats
        ),
        Subcommand(
            "healthcheck",
            "run a container's health check now (healthcheck run CONTAINER)",
            _add_healthcheck_arguments,
            _healthcheck,
        ),
        Subcommand(
            "network",
            "manage networks (create, ls, inspect, rm, prune)",
            _add_network_arguments,
            _network,
        ),
    )
