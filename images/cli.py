"""The image store's `strata` subcommands: load, save, import, commit, images, rmi, tag, history.

`strata.cli` lists `SUBCOMMANDS`, hands `resolve` to the runtime's subcommands, which makes
`strata run/create IMAGE` find images in the store of the state root they use (the runtime picks
it before entering a user namespace, where the default root would differ, and passes it on), and
uses `INSPECT` for `strata inspect`. Handlers import what they need.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from runtime.cli import add_inspect_arguments, add_root, root_path
from runtime.formats import FORMAT_HELP, is_template
from runtime.formats import check as check_format
from runtime.images import ImageSource
from unionfs.command import Runner, Subcommand
from unionfs.errors import UsageError

if TYPE_CHECKING:
    from runtime.gotemplate import Fields
    from runtime.images import ImageSpec, Resolver

    from .registries import Options
    from .store import ImageRecord, ImageStore


def _store(args: argparse.Namespace) -> ImageStore:
    from .store import ImageStore

    return ImageStore(root_path(args))


def _store_as_owner(args: argparse.Namespace) -> ImageStore:
    """The store, for a command that writes, reads or removes layer files: rootless, from
    inside the user's user namespace, where layers keep their owners through its subordinate
    ids and their files are its own (`runtime.namespaces.enter_rootless`)."""
    from runtime.namespaces import enter_rootless

    enter_rootless()
    return _store(args)


def _add_image_source_arguments(parser: argparse.ArgumentParser) -> None:
    """What `run` and `create` take for getting their image from a registry (podman's names)."""
    parser.add_argument(
        "--pull",
        default="missing",
        choices=("missing", "always", "never"),
        help="pull the image: when missing (default), always, or never",
    )
    parser.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="the platform to pull from an index"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no pull progress on stderr")
    add_registry_options(parser)


def _resolver_for(args: argparse.Namespace) -> Resolver:
    """The store's resolver for `run`/`create` with these options: it pulls per `--pull`."""

    def resolver(ref: str, root: Path) -> ImageSpec | None:
        from .policy import obtain
        from .store import ImageStore

        store = ImageStore(root)
        options = registry_options(args)
        rec = obtain(store, ref, args.pull, options, platform=args.platform, quiet=args.quiet)
        return None if rec is None else store.spec(rec, ref)

    return resolver


IMAGE_SOURCE: Final = ImageSource(_add_image_source_arguments, _resolver_for)


def _inspect_any(args: argparse.Namespace, runner: Runner) -> int:
    """`strata inspect NAME...`: each a container (id, prefix, name) or else an image."""
    from runtime.formats import print_inspected
    from runtime.report import inspect

    check_format(args.format, listing=False)
    store = _store(args)
    found: list[dict[str, object]] = []
    templated = args.format is not None and is_template(args.format)
    for ref in args.containers:
        try:
            found.append(inspect(store.state.find(ref)))
            continue
        except UsageError as e:
            rec = store.find(ref) if "no such container" in str(e) else None
            if rec is None:
                raise  # the runtime's own message ("no such container: REF")
        info = _image_info(store, rec)
        found.append(_typed_config(info) if templated else info)
    print_inspected(args.format, found)
    return 0


# -- load / import ---------------------------------------------------------------------------


def _add_load(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument(
        "-i", "--input", metavar="FILE", help="archive or OCI layout (default: stdin)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress")


def _run_load(args: argparse.Namespace, runner: Runner) -> int:
    from .load import load, load_stream

    store = _store_as_owner(args)
    if args.input and args.input != "-":
        path = Path(args.input)
        if not path.exists():
            raise UsageError(f"{args.input}: no such file or directory", 125)
        load(store, path, progress=not args.quiet)
    else:
        if sys.stdin.isatty():
            raise UsageError("load: give -i FILE or an archive on stdin", 125)
        load_stream(store, sys.stdin.buffer, progress=not args.quiet)
    return 0


def _add_save(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="one or more, in one archive")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE (default or '-': stdout, not a terminal)",
    )
    parser.add_argument(
        "--format", default="oci-archive", choices=("oci-archive", "docker-archive")
    )


def _run_save(args: argparse.Namespace, runner: Runner) -> int:
    from .save import save

    if args.output in (None, "-"):  # docker's habit: `strata save IMAGE | ...`, or `-o -`
        if sys.stdout.isatty():
            raise UsageError(
                "cowardly refusing to save to a terminal. Use the -o flag or redirect", 1
            )
        sys.stdout.flush()
        save(_store_as_owner(args), args.images, sys.stdout.buffer, args.format)
        return 0
    save(_store_as_owner(args), args.images, Path(args.output), args.format)
    return 0


def _add_import(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("file", metavar="ROOTFS.tar", help="a rootfs tarball ('-': stdin)")
    parser.add_argument("reference", nargs="?", metavar="NAME[:TAG]")
    parser.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        metavar="'CMD ...'|'ENV K=V'...",
        help="CMD, ENTRYPOINT, ENV, WORKDIR, USER or LABEL (JSON or shell form)",
    )


def _run_import(args: argparse.Namespace, runner: Runner) -> int:
    from .load import import_rootfs

    store = _store_as_owner(args)
    rec = import_rootfs(store, args.file, args.reference, args.change)
    print(f"sha256:{rec.id}")
    return 0


def _add_commit(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("container", metavar="CONTAINER")
    parser.add_argument("reference", nargs="?", metavar="NAME[:TAG]")
    parser.add_argument("-m", "--message", default="", help="a comment for the history entry")


def _run_commit(args: argparse.Namespace, runner: Runner) -> int:
    from .commit import commit

    rec = commit(_store(args), args.container, args.reference, args.message)
    print(f"sha256:{rec.id}")
    return 0


def _add_build(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument(
        "context",
        metavar="CONTEXT",
        help="the build context directory, or '-': a tar of it (may be compressed) or a"
        " Dockerfile alone on stdin",
    )
    parser.add_argument(
        "-f",
        "--file",
        metavar="DOCKERFILE",
        help="the Dockerfile (default: CONTEXT/Dockerfile; '-': stdin)",
    )
    parser.add_argument(
        "--label", action="append", default=[], metavar="K=V", help="a label of the built image"
    )
    parser.add_argument("--iidfile", metavar="FILE", help="write the image id to FILE")
    parser.add_argument(
        "--network",
        choices=("default", "host", "none"),
        default="default",
        help="the network of RUN steps without --network (default: the host's)",
    )
    parser.add_argument(
        "--add-host", action="append", default=[], metavar="NAME:IP", help="in RUN's /etc/hosts"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="type=local,dest=DIR|type=tar,dest=FILE|DIR|-",
        help="export the result's files instead of storing an image",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "plain", "tty", "quiet", "rawjson"),
        default="auto",
        help="accepted as docker's; 'quiet' is -q (the steps are always printed plainly)",
    )
    for flag in ("--rm", "--force-rm"):  # the classic builder's: RUN containers always go
        parser.add_argument(flag, nargs="?", const="true", default="true", help=argparse.SUPPRESS)
    parser.add_argument(
        "-t", "--tag", action="append", default=[], metavar="NAME[:TAG]", help="name the image"
    )
    parser.add_argument(
        "--build-arg", action="append", default=[], metavar="K=V", help="set a build arg (ARG)"
    )
    parser.add_argument("--no-cache", action="store_true", help="do not use the build cache")
    parser.add_argument(
        "--target", metavar="STAGE", help="build this stage (FROM ... AS STAGE), not the last"
    )
    parser.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="id=ID[,src=FILE|,env=VAR]",
        help="a secret for RUN --mount=type=secret (never stored in the image or the cache)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    parser.add_argument(
        "--pull",
        nargs="?",
        const="always",
        default="missing",
        choices=("missing", "always", "never"),
        help="pull FROM images: when missing (default), always (bare --pull), or never",
    )
    parser.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="the platform to pull FROM images for"
    )
    add_registry_options(parser)


def _secrets(specs: list[str]) -> dict[str, bytes]:
    """`--secret` values: each id's contents, read now (a file, or an environment variable)."""
    from .runmounts import MountSpecError, parse_secret

    secrets: dict[str, bytes] = {}
    for spec in specs:
        try:
            ident, kind, where = parse_secret(spec)
        except MountSpecError as e:
            raise UsageError(str(e), 125) from None
        if kind == "env":
            if where not in os.environ:
                raise UsageError(f"--secret {spec}: no environment variable {where}", 125)
            secrets[ident] = os.fsencode(os.environ[where])
        else:
            try:
                secrets[ident] = Path(where).read_bytes()
            except OSError as e:
                raise UsageError(f"--secret {spec}: {where}: {e.strerror}", 125) from None
    return secrets


def _run_build(args: argparse.Namespace, runner: Runner) -> int:
    from runtime.network import parse_add_hosts

    from .build import BuildOptions, Output, build

    if args.context == "-" and args.file == "-":
        raise UsageError("the context and the Dockerfile cannot both come from stdin", 125)
    build_args: dict[str, str] = {}
    for item in args.build_arg:
        name, sep, value = item.partition("=")
        if not name:
            raise UsageError(f"--build-arg {item!r}: expected NAME=VALUE", 125)
        if not sep:  # as docker: `--build-arg NAME` takes our own environment's value
            if name not in os.environ:
                continue
            value = os.environ[name]
        build_args[name] = value
    labels: dict[str, str] = {}
    for item in args.label:
        name, _, value = item.partition("=")
        if not name:
            raise UsageError(f"--label {item!r}: expected KEY=VALUE", 125)
        labels[name] = value
    output = Output.parse(args.output) if args.output is not None else None
    quiet = args.quiet or args.progress == "quiet"
    # the steps go to stderr when the result goes to stdout
    stream = sys.stderr if output is not None and output.dest == "-" else sys.stdout
    say = (lambda _line: None) if quiet else (lambda line: print(line, file=stream, flush=True))
    secrets = _secrets(args.secret)
    add_hosts = parse_add_hosts(args.add_host, args.network)
    store = _store_as_owner(args)
    with contextlib.ExitStack() as stack:
        text = None
        if args.context == "-":
            context, text = _stdin_context(store, stack)
        else:
            context = Path(args.context)
        if args.file == "-":
            text = sys.stdin.read()
        dockerfile = context / "Dockerfile"
        if args.file not in (None, "-"):  # as docker: a file of the tar when the context is -
            dockerfile = context / args.file if args.context == "-" else Path(args.file)
        opts = BuildOptions(
            secrets=secrets,
            dockerfile=dockerfile,
            dockerfile_text=text,
            context=context,
            tags=tuple(args.tag),
            build_args=build_args,
            no_cache=args.no_cache,
            pull=args.pull,
            registry=registry_options(args),
            platform=args.platform,
            quiet=quiet,
            target=args.target,
            labels=labels,
            network=args.network,
            add_hosts=add_hosts,
            output=output,
        )
        rec = build(store, opts, say)
    if rec is not None and quiet:
        print(f"sha256:{rec.id}")
    if rec is not None and args.iidfile:
        try:
            Path(args.iidfile).write_text(f"sha256:{rec.id}")
        except OSError as e:
            raise UsageError(f"--iidfile {args.iidfile}: {e.strerror}", 125) from None
    return 0


def _stdin_context(store: ImageStore, stack: contextlib.ExitStack) -> tuple[Path, str | None]:
    """`strata build -`: stdin is a tar of the context (plain or compressed, told apart as ADD
    tells an archive), extracted with the checks of a layer into a directory of the store that
    is removed after the build; or else it is a Dockerfile alone, with an empty context."""
    import shutil

    from .copier import archive_reader
    from .extract import LayerError, extract_layer

    staging = stack.enter_context(store.staging())
    context = staging / "context"
    context.mkdir()
    spool = staging / "stdin"
    with open(spool, "wb") as f:
        shutil.copyfileobj(sys.stdin.buffer, f)
    reader = archive_reader(spool)
    if reader is None:
        return context, spool.read_text(errors="surrogateescape")
    try:
        with reader() as stream:
            extract_layer(stream, context, warn=lambda _line: None)
    except (LayerError, OSError, EOFError, ValueError) as e:
        raise UsageError(f"the build context on stdin: {e}", 125) from None
    finally:
        spool.unlink()
    return context, None


# -- images / inspect / history / tag / rmi / prune -------------------------------------------


def _add_images(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("--format", default="table", help=FORMAT_HELP)
    parser.add_argument("-q", "--quiet", action="store_true", help="only ids")
    parser.add_argument("--no-trunc", action="store_true", help="full image ids")
    parser.add_argument(
        "-a", "--all", action="store_true", help="also the intermediate images of builds"
    )
    parser.add_argument("--digests", action="store_true", help="a DIGEST column")
    parser.add_argument(
        "-f", "--filter", action="append", default=[], metavar="K=V",
        help="dangling=true|false, label=K[=V], reference=PATTERN, before=IMAGE, since=IMAGE",
    )  # fmt: skip
    parser.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")


def _summary(store: ImageStore, rec: ImageRecord) -> dict[str, object]:
    """`Size`: the sum of the layers' uncompressed sizes, as docker counts an image (podman
    adds its copies of the config and manifest, a few kB)."""
    size = sum(store.layer_tar_size(d) for d in rec.layers)
    return {
        "Id": f"sha256:{rec.id}",
        "RepoTags": list(rec.tags),
        "Created": rec.created,
        "Size": size,
        "Layers": len(rec.layers),
    }


def _created_since(created: str, now: float) -> str:
    """CREATED as docker and podman print it: "2 hours ago" ("N/A": no time, or before 2000)."""
    from runtime.logshow import parse_rfc3339
    from runtime.report import human_duration

    try:
        then = parse_rfc3339(created) / 1e9
    except (ValueError, OverflowError):
        return "N/A"
    if then <= _EPOCH_2000:
        return "N/A"
    return human_duration(now - then) + " ago"


_EPOCH_2000: Final = 946684800  # docker shows no age for times before 2000 (zero times)


_IMAGE_HEADERS: Final[dict[str, object]] = {
    "ID": "IMAGE ID",
    "Repository": "REPOSITORY",
    "Tag": "TAG",
    "Digest": "DIGEST",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "Size": "SIZE",
    "Containers": "CONTAINERS",
    "VirtualSize": "VIRTUAL SIZE",
    "SharedSize": "SHARED SIZE",
    "UniqueSize": "UNIQUE SIZE",
}


def _image_fields(rec: ImageRecord, tag: str, size: int, now: float, full: bool) -> Fields:
    from runtime.gotemplate import Fields

    """One line of `images` (an image under one of its names) as `images --format` sees it
    (docker's ImageContext)."""
    from runtime.formats import go_time
    from runtime.report import human_size

    repo, _, t = tag.rpartition(":")
    repo = repo or "<none>"  # (an untagged image: docker's <none> for both)
    t = t or "<none>"
    digest = next((d.partition("@")[2] for d in rec.digests if d.startswith(f"{repo}@")), "")
    return Fields(
        "ImageContext",
        {
            "ID": f"sha256:{rec.id}" if full else rec.id[:12],
            "Repository": repo,
            "Tag": t,
            "Digest": digest or "<none>",
            "CreatedSince": _created_since(rec.created, now),
            "CreatedAt": go_time(rec.created),
            "Size": human_size(size),
            "Containers": "N/A",
            "VirtualSize": human_size(size),
            "SharedSize": "N/A",
            "UniqueSize": "N/A",
        },
    )


def _run_images(args: argparse.Namespace, runner: Runner) -> int:
    from .listing import parse_filters, select

    check_format(args.format)
    filters = parse_filters(
        [*args.filter, *([f"reference={args.repository}"] if args.repository else [])]
    )
    store = _store(args)
    listed = select(store, store.images(), filters, show_all=args.all)
    if args.quiet and not is_template(args.format):  # (a template wins, as docker's)
        for rec, _ in listed:
            print(f"sha256:{rec.id}" if args.no_trunc else rec.id[:12])
        return 0
    import time

    from runtime.report import text_table

    rows = [_summary(store, rec) for rec, _ in listed]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    now = time.time()
    fields = [
        _image_fields(rec, tag, int(row["Size"]), now, args.no_trunc)  # type: ignore[call-overload]
        for (rec, tags), row in zip(listed, rows, strict=True)
        for tag in tags
    ]
    if is_template(args.format):
        from runtime.formats import write

        write(args.format, fields, _IMAGE_HEADERS)
        return 0
    columns = ["Repository", "Tag", *(["Digest"] if args.digests else []), "ID", "CreatedSince"]
    lines = [tuple(str(_IMAGE_HEADERS[c]) for c in [*columns, "Size"])]
    lines += [tuple(str(f[c]) for c in [*columns, "Size"]) for f in fields]
    sys.stdout.write(text_table(lines))
    return 0


def _add_ref(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("image", metavar="IMAGE")


def _image_info(store: ImageStore, rec: ImageRecord) -> dict[str, object]:
    return {
        **_summary(store, rec),
        "RepoDigests": list(rec.digests),
        "Config": rec.config.get("config") or {},
        "Architecture": rec.config.get("architecture"),
        "Os": rec.config.get("os"),
        "RootFS": {"Type": "layers", "Layers": [f"sha256:{d}" for d in rec.layers]},
        "LayerDirs": [str(store.layer_path(d)) for d in reversed(rec.layers)],
        "Author": rec.config.get("author") or "",
        "History": rec.config.get("history") or [],
    }


# The fields of docker's image Config a template finds even where the image's config has none
# (docker runs the template over its typed struct, where an absent list prints `[]`).
_CONFIG_FIELDS: Final[dict[str, object]] = {
    "User": "",
    "ExposedPorts": {},
    "Env": [],
    "Cmd": [],
    "Volumes": {},
    "WorkingDir": "",
    "Entrypoint": [],
    "OnBuild": [],
    "Labels": {},
    "StopSignal": "",
    "Shell": [],
}


def _typed_config(info: dict[str, object]) -> dict[str, object]:
    config = info["Config"]
    assert isinstance(config, dict)
    return info | {"Config": _CONFIG_FIELDS | {k: v for k, v in config.items() if v is not None}}


def _add_history(parser: argparse.ArgumentParser) -> None:
    _add_ref(parser)
    parser.add_argument(
        "-H",
        "--human",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="sizes and dates for people (default true; -H=false: bytes and RFC 3339)",
    )
    parser.add_argument("--no-trunc", action="store_true", help="full ids and commands")
    parser.add_argument("-q", "--quiet", action="store_true", help="only the ids")
    parser.add_argument("--format", default="table", help=FORMAT_HELP)


def _history_rows(store: ImageStore, rec: ImageRecord) -> list[dict[str, object]]:
    """The image's history, newest first, as docker's `history` lists it: each step with the
    size of the layer it made (0 for a config-only step) and, where the image up to that step
    is an image of the store of its own, that image's id (else `<missing>`)."""
    history = rec.config.get("history") or []
    assert isinstance(history, list)
    if not history:  # (an image without history: one nameless step per layer)
        history = [{} for _ in rec.layers]
    images = {
        (other.layers, json.dumps(other.config.get("history") or [])): other.id
        for other in store.images()
    }
    rows: list[dict[str, object]] = []
    used = 0
    for i, entry in enumerate(history):
        assert isinstance(entry, dict)
        empty = bool(entry.get("empty_layer")) or used >= len(rec.layers)
        size = 0 if empty else store.layer_tar_size(rec.layers[used])
        used += 0 if empty else 1
        key = (rec.layers[:used], json.dumps(history[: i + 1]))
        rows.append(
            {
                "Id": images.get(key, "<missing>"),
                "Created": str(entry.get("created") or ""),
                "CreatedBy": str(entry.get("created_by") or ""),
                "Size": size,
                "Comment": str(entry.get("comment") or ""),
            }
        )
    if rows:
        rows[-1]["Id"] = rec.id
    return rows[::-1]


def _ellipsis(text: str, width: int) -> str:
    """docker's truncation of a cell: `width` characters at most, the last an ellipsis."""
    return text if len(text) <= width else text[: width - 1] + "…"


def _run_history(args: argparse.Namespace, runner: Runner) -> int:
    import time

    from runtime.report import human_size, text_table

    check_format(args.format)
    store = _store(args)
    rows = _history_rows(store, store.get(args.image))

    def image_id(row: dict[str, object]) -> str:
        ident = str(row["Id"])
        if ident == "<missing>":
            return ident
        return f"sha256:{ident}" if args.no_trunc else ident[:12]

    if args.quiet and not is_template(args.format):
        for row in rows:
            print(image_id(row))
        return 0
    from runtime.gotemplate import Fields

    now = time.time()
    fields = []
    for row in rows:  # (docker's HistoryContext)
        created, size = str(row["Created"]), int(row["Size"])  # type: ignore[call-overload]
        by = str(row["CreatedBy"]).replace("\t", " ")
        fields.append(
            Fields(
                "HistoryContext",
                {
                    "ID": image_id(row),
                    "CreatedSince": _created_since(created, now)
                    if args.human
                    else _rfc3339_seconds(created),
                    "CreatedAt": _rfc3339_seconds(created),
                    "CreatedBy": by if args.no_trunc else _ellipsis(by, 45),
                    "Size": human_size(size) if args.human else str(size),
                    "Comment": str(row["Comment"]),
                },
            )
        )
    if is_template(args.format):
        from runtime.formats import write

        write(args.format, fields, _HISTORY_HEADERS)
        return 0
    order = ("ID", "CreatedSince", "CreatedBy", "Size", "Comment")
    lines = [tuple(str(_HISTORY_HEADERS[k]) for k in order)]
    lines += [tuple(str(f[k]) for k in order) for f in fields]
    sys.stdout.write(text_table(lines))
    return 0


_HISTORY_HEADERS: Final[dict[str, object]] = {
    "ID": "IMAGE",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "CreatedBy": "CREATED BY",
    "Size": "SIZE",
    "Comment": "COMMENT",
}


def _rfc3339_seconds(created: str) -> str:
    """`-H=false`'s CREATED: RFC 3339 to the second in local time, as docker prints it."""
    import datetime

    from runtime.logshow import parse_rfc3339

    try:
        when = datetime.datetime.fromtimestamp(parse_rfc3339(created) // 10**9).astimezone()
    except (ValueError, OverflowError):
        return created
    return when.isoformat().replace("+00:00", "Z")


def _add_tag(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("target", metavar="NAME[:TAG]")


def _run_tag(args: argparse.Namespace, runner: Runner) -> int:
    _store(args).tag(args.image, args.target)
    return 0


def _add_rmi(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument("-f", "--force", action="store_true", help="even if containers use it")
    parser.add_argument("images", nargs="+", metavar="IMAGE")


def _run_rmi(args: argparse.Namespace, runner: Runner) -> int:
    store = _store_as_owner(args)
    for ref in args.images:
        for line in store.remove(ref, force=args.force):
            print(line)
    return 0


def _add_prune(parser: argparse.ArgumentParser) -> None:
    add_root(parser)


def _run_prune(args: argparse.Namespace, runner: Runner) -> int:
    for line in _store_as_owner(args).prune():
        print(line)
    return 0


# -- registries: pull / login / logout ---------------------------------------------------------


def _bool(text: str) -> bool:
    value = text.lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def add_registry_options(parser: argparse.ArgumentParser, *, creds: bool = True) -> None:
    """The options of every command that talks to a registry (podman's names)."""
    parser.add_argument(
        "--tls-verify",
        type=_bool,
        nargs="?",
        const=True,
        default=None,
        metavar="BOOL",
        help="require HTTPS with a trusted certificate (default: yes, except for registries"
        " on loopback addresses or listed insecure in registries.conf)",
    )
    parser.add_argument(
        "--cert-dir", metavar="DIR", help="CA certificates (*.crt) and client keys for TLS"
    )
    parser.add_argument(
        "--authfile",
        metavar="PATH",
        help="the auth file (default: $REGISTRY_AUTH_FILE or containers' auth.json)",
    )
    if creds:
        parser.add_argument("--creds", metavar="USER[:PASSWORD]", help="credentials to use")
    parser.add_argument(
        "--retry", type=int, default=3, metavar="N", help="retries of a failed request (3)"
    )
    parser.add_argument(
        "--retry-delay",
        type=float,
        default=None,
        metavar="SECONDS",
        help="pause between retries (default: 1 s, doubling; a registry's Retry-After wins)",
    )


def registry_options(args: argparse.Namespace) -> Options:
    from .auth import Credentials
    from .registries import Options

    if args.retry < 0:
        raise UsageError("--retry: give a count >= 0", 125)
    if args.retry_delay is not None and args.retry_delay < 0:
        raise UsageError("--retry-delay: give seconds >= 0", 125)
    creds = getattr(args, "creds", None)
    return Options(
        tls_verify=args.tls_verify,
        cert_dir=Path(args.cert_dir) if args.cert_dir else None,
        creds=Credentials.parse(creds) if creds else None,
        authfile=Path(args.authfile) if args.authfile else None,
        retries=args.retry,
        retry_delay=args.retry_delay,
    )


def _add_pull(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    add_registry_options(parser)
    parser.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="the platform to pick from an index"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the image id")
    parser.add_argument("image", metavar="NAME[:TAG|@DIGEST]")


def _run_pull(args: argparse.Namespace, runner: Runner) -> int:
    from .pull import pull_reporting

    rec = pull_reporting(
        _store_as_owner(args),
        args.image,
        registry_options(args),
        platform=args.platform,
        quiet=args.quiet,
    )
    print(rec.id)
    return 0


def _add_login(parser: argparse.ArgumentParser) -> None:
    add_registry_options(parser, creds=False)
    parser.add_argument("-u", "--username", metavar="USER")
    parser.add_argument("-p", "--password", metavar="PASSWORD")
    parser.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    parser.add_argument("registry", metavar="REGISTRY", help="host[:port][/namespace]")


def _registry_key(text: str) -> str:
    """A login key: `host[:port][/namespace]`, normalised as the auth file's keys are."""
    from .auth import normal_key

    key = normal_key(text)
    if not key or " " in key:
        raise UsageError(f"invalid registry {text!r}", 125)
    return key


def _run_login(args: argparse.Namespace, runner: Runner) -> int:
    import dataclasses
    import getpass

    from .auth import Credentials, store_credentials
    from .distribution import Session, run_async
    from .registries import load_conf

    key = _registry_key(args.registry)
    user, password = args.username, args.password
    if args.password_stdin:
        if args.password is not None:
            raise UsageError("--password and --password-stdin are mutually exclusive", 125)
        password = sys.stdin.readline().rstrip("\r\n")
    if user is None:
        if not sys.stdin.isatty():
            raise UsageError("login: give --username (no terminal to ask on)", 125)
        user = input("Username: ")
    if password is None:
        if not sys.stdin.isatty():
            raise UsageError("login: give --password-stdin (no terminal to ask on)", 125)
        password = getpass.getpass("Password: ")
    if not user:
        raise UsageError("login: the username is empty", 125)
    creds = Credentials(user, password)
    options = dataclasses.replace(registry_options(args), creds=creds)
    conf = load_conf()
    host = key.partition("/")[0]
    api = "registry-1.docker.io" if host == "docker.io" else host

    async def check() -> None:
        async with Session(api, options, insecure=conf.insecure(host)) as session:
            await session.login()

    run_async(check)
    store_credentials(key, creds, options.authfile)
    print("Login Succeeded!")
    return 0


def _add_logout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--authfile", metavar="PATH", help="the auth file")
    parser.add_argument("-a", "--all", action="store_true", help="remove every login")
    parser.add_argument("registry", nargs="?", metavar="REGISTRY")


def _run_logout(args: argparse.Namespace, runner: Runner) -> int:
    from .auth import remove_credentials

    authfile = Path(args.authfile) if args.authfile else None
    if args.all:
        remove_credentials(None, authfile)
        print("Removed login credentials for all registries")
        return 0
    if not args.registry:
        raise UsageError("logout: give REGISTRY or --all", 125)
    key = _registry_key(args.registry)
    if not remove_credentials(key, authfile):
        raise UsageError(f"not logged into {key}", 125)
    print(f"Removed login credentials for {key}")
    return 0


def _add_push(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    add_registry_options(parser)
    parser.add_argument(
        "--digestfile", metavar="FILE", help="write the pushed manifest's digest to FILE"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.add_argument("source", metavar="IMAGE", help="a local image (name or id)")
    parser.add_argument(
        "destination",
        nargs="?",
        metavar="DESTINATION",
        help="host[:port]/path[:tag] (default: IMAGE, when its name includes a registry)",
    )


def _run_push(args: argparse.Namespace, runner: Runner) -> int:
    from .distribution import run_async
    from .pull import Reporter
    from .push import push, write_digestfile

    store = _store_as_owner(args)
    options = registry_options(args)
    with Reporter(quiet=args.quiet) as reporter:
        digest = run_async(
            lambda: push(store, args.source, args.destination, options=options, reporter=reporter)
        )
    if args.digestfile:
        write_digestfile(Path(args.digestfile), digest)
    return 0


# -- cp ------------------------------------------------------------------------------------------


def _add_cp(parser: argparse.ArgumentParser) -> None:
    add_root(parser)
    parser.add_argument(
        "-a", "--archive", action="store_true", help="keep the source's owners (uid/gid)"
    )
    parser.add_argument(
        "-L", "--follow-link", action="store_true", help="always follow a symlink in SRC"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress (there is none)")
    parser.add_argument("src", metavar="CONTAINER:SRC|SRC|-")
    parser.add_argument("dest", metavar="DEST|-|CONTAINER:DEST")


def _run_cp(args: argparse.Namespace, runner: Runner) -> int:
    from runtime.state import StateRoot

    from .cp import copy

    root = StateRoot(root_path(args))
    return copy(root, args.src, args.dest, follow=args.follow_link, archive=args.archive)


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("load", "load images from a docker/OCI archive or OCI layout", _add_load, _run_load),
    Subcommand("save", "write an image as an OCI or docker archive", _add_save, _run_save),
    Subcommand("import", "make a one-layer image from a rootfs tarball", _add_import, _run_import),
    Subcommand("commit", "make an image from a container's changes", _add_commit, _run_commit),
    Subcommand("cp", "copy files between a container and the host", _add_cp, _run_cp),
    Subcommand("build", "build an image from a Dockerfile", _add_build, _run_build),
    Subcommand("pull", "fetch an image from a registry", _add_pull, _run_pull),
    Subcommand("push", "send an image to a registry", _add_push, _run_push),
    Subcommand("login", "store credentials for a registry", _add_login, _run_login),
    Subcommand("logout", "remove stored registry credentials", _add_logout, _run_logout),
    Subcommand("images", "list images", _add_images, _run_images),
    Subcommand("rmi", "remove images (and the layers nothing else uses)", _add_rmi, _run_rmi),
    Subcommand("tag", "add a name to an image", _add_tag, _run_tag),
    Subcommand("history", "an image's history", _add_history, _run_history),
)

# `strata image prune` (strata.cli's `image` group names the others by their own names)
IMAGE_PRUNE: Final = Subcommand(
    "prune", "remove layers no image or container uses", _add_prune, _run_prune
)

INSPECT: Final = Subcommand(
    "inspect", "show containers or images as JSON", add_inspect_arguments, _inspect_any
)
