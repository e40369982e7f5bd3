"""`strata volume create|ls|inspect|rm|prune`: the named volumes of a state root
(runtime.volumes), as docker's `volume` commands show and take them."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Final

from unionfs.command import Runner, Subcommand
from unionfs.errors import UsageError

from .cli import add_inspect_format, add_root, root_path
from .formats import FORMAT_HELP, is_template
from .formats import check as check_format

if TYPE_CHECKING:
    from .volumes import VolumeInfo

_FILTERS: Final = ("dangling", "name", "label", "driver")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    add_root(parser)  # `strata volume --root DIR ACTION`, and after ACTION too:

    def action(name: str, help_text: str, aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, aliases=list(aliases))
        sub.add_argument("--root", metavar="DIR", default=argparse.SUPPRESS, help="state root")
        return sub

    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = action("create", "create a volume (a random name without NAME)")
    create.add_argument("-d", "--driver", default="local", help="local (the only one)")
    create.add_argument("--label", action="append", default=[], metavar="K=V")
    create.add_argument("-o", "--opt", action="append", default=[], metavar="K=V")
    create.add_argument("name", nargs="?", metavar="NAME")
    listing = action("ls", "list volumes", ("list",))
    listing.add_argument("-q", "--quiet", action="store_true", help="only the names")
    listing.add_argument(
        "-f", "--filter", action="append", default=[], metavar="K=V",
        help="dangling=true|false, name=TEXT, label=K[=V], driver=local",
    )  # fmt: skip
    listing.add_argument("--format", default="table", help=FORMAT_HELP)
    inspect = action("inspect", "show volumes as JSON")
    add_inspect_format(inspect)
    inspect.add_argument("volumes", nargs="+", metavar="VOLUME")
    remove = action("rm", "remove volumes no container uses", ("remove",))
    remove.add_argument("-f", "--force", action="store_true", help="no error for a missing one")
    remove.add_argument("volumes", nargs="+", metavar="VOLUME")
    prune = action("prune", "remove the anonymous volumes no container uses")
    prune.add_argument("-a", "--all", action="store_true", help="every unused volume")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask (strata never asks)")


def _filters(items: list[str]) -> list[tuple[str, str]]:
    result = []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or key not in _FILTERS:
            raise UsageError(f"invalid filter {item!r} ({', '.join(_FILTERS)})", 125)
        if key == "dangling" and value.lower() not in ("true", "false", "1", "0"):
            raise UsageError(f"invalid filter 'dangling={value}': true or false", 125)
        result.append((key, value))
    return result


def _run(args: argparse.Namespace, runner: Runner) -> int:
    from . import volumes
    from .state import StateRoot

    root = StateRoot(root_path(args))
    action = {"list": "ls", "remove": "rm"}.get(args.action, args.action)
    if action == "create":
        if args.driver != "local":
            raise UsageError(f"--driver {args.driver}: only local is supported", 125)
        if args.opt:
            raise UsageError(f"--opt {args.opt[0]}: the local driver takes no options here", 125)
        from .runflags import parse_labels

        labels = dict(parse_labels(args.label))
        name = volumes.check_name(args.name) if args.name else os.urandom(32).hex()
        with root.lock():
            volumes.ensure(root, name, labels=labels)
        print(name, flush=True)
        return 0
    if action == "ls":
        filters = _filters(args.filter)
        check_format(args.format)
        users = [v.name for c in root.containers() for v in c.config.volumes if v.name]
        in_use = set(users)
        rows = [
            info
            for info in volumes.all_volumes(root)
            if all(_matches(info, key, value, in_use) for key, value in filters)
        ]
        if args.quiet and not is_template(args.format):
            for info in rows:
                print(info.name)
            return 0
        if is_template(args.format):
            from .formats import VOLUME_HEADERS, volume_fields, write

            fields = [volume_fields(info, users.count(info.name)) for info in rows]
            write(args.format, fields, VOLUME_HEADERS)
            return 0
        print(f"{'DRIVER':<10}VOLUME NAME")
        for info in rows:
            print(f"{'local':<10}{info.name}")
        return 0
    if action == "inspect":
        from .formats import print_inspected

        check_format(args.format, listing=False)
        found, status = [], 0
        for name in args.volumes:
            try:
                found.append(volumes.find(root, name).inspect())
            except UsageError as exc:
                runner.say(str(exc))
                status = 1
        print_inspected(args.format, found, indent=4)
        return status
    if action == "rm":
        status = 0
        with root.lock():
            for name in args.volumes:
                try:
                    volumes.remove(root, name, force=args.force)
                    print(name, flush=True)
                except UsageError as exc:
                    runner.say(str(exc))
                    status = 1
        return status
    removed = volumes.prune(root, all_unused=args.all)
    if removed:
        print("Deleted Volumes:")
        for name, _ in removed:
            print(name)
        print()
    print(f"Total reclaimed space: {human_size(sum(size for _, size in removed))}")
    return 0


def _matches(info: VolumeInfo, key: str, value: str, in_use: set[str]) -> bool:
    if key == "dangling":
        return (info.name not in in_use) == (value.lower() in ("true", "1"))
    if key == "name":
        return value in info.name
    if key == "driver":
        return value == "local"
    label, eq, wanted = value.partition("=")
    return label in info.labels and (not eq or info.labels[label] == wanted)


def human_size(n: float) -> str:
    """Bytes as docker prints them (go-units' HumanSize: decimal units, 3 significant digits)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.4g}{unit}"
        n /= 1000
    return f"{n:.4g}PB"


SUBCOMMAND: Final = Subcommand(
    "volume", "manage volumes (create, ls, inspect, rm, prune)", _add_arguments, _run
)
