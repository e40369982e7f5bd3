"""`strata COMMAND ...`: every package's subcommands, gathered explicitly, bottom up.

This is the top of the one-way house: it imports the union's, the runtime's, the image store's
and the bench's command modules, and none of them imports it. The runtime finds images through
the store's `ImageSource`, handed to it here (`runtime.cli.subcommands(...)`), and `inspect`
is the store's, which knows containers and images alike (as `docker inspect`). Each command
module imports only the standard library and small modules at the top, so building the parser
stays cheap; handlers import what they need.
"""

from __future__ import annotations

import sys
from typing import Final

import bench.cli
import images.cli
import images.system_cli
import runtime.cli
import runtime.volume_cli
import unionfs.cli
from unionfs import __version__
from unionfs.command import GlobalOption, Group, Subcommand, dispatch

DESCRIPTION: Final = "strata: a union filesystem and container runtime in Python."

# Options of many subcommands that may come before the command too, as podman's `--root`.
GLOBAL_OPTIONS: Final = (
    GlobalOption(
        "--root",
        "DIR",
        "state root of the commands that use one (default /var/lib/strata as root,"
        " $XDG_DATA_HOME/strata otherwise; or $STRATA_ROOT)",
    ),
)


# docker's command groups, as (name in the group, the subcommand's own name); a name no
# subcommand has is left out, so a group lists only what strata has
_CONTAINER: Final = (
    ("ls", "ps"), ("list", "ps"), ("ps", "ps"), ("run", "run"), ("create", "create"),
    ("start", "start"), ("stop", "stop"), ("restart", "restart"), ("kill", "kill"),
    ("rm", "rm"), ("remove", "rm"), ("exec", "exec"), ("logs", "logs"),
    ("inspect", "inspect"), ("port", "port"), ("commit", "commit"), ("cp", "cp"),
    ("diff", "diff"), ("wait", "wait"), ("rename", "rename"), ("top", "top"),
    ("pause", "pause"), ("unpause", "unpause"), ("attach", "attach"), ("stats", "stats"),
)  # fmt: skip
_IMAGE: Final = (
    ("ls", "images"), ("list", "images"), ("rm", "rmi"), ("remove", "rmi"),
    ("inspect", "inspect"), ("history", "history"), ("tag", "tag"), ("load", "load"),
    ("import", "import"), ("save", "save"), ("build", "build"), ("pull", "pull"),
    ("push", "push"),
)  # fmt: skip


def _group(
    name: str,
    help_text: str,
    table: tuple[tuple[str, str], ...],
    commands: tuple[Subcommand, ...],
    *extra: tuple[str, Subcommand],
) -> Subcommand:
    """A docker command group over `commands` (by their names in `table`) and `extra`."""
    by_name = {sub.name: sub for sub in commands}
    members = tuple((alias, by_name[target]) for alias, target in table if target in by_name)
    return Group(name, help_text, (*members, *extra)).as_subcommand()


def subcommands() -> tuple[Subcommand, ...]:
    """All of `strata`'s subcommands, in the order `strata --help` lists them."""
    containers = tuple(
        images.cli.INSPECT if sub.name == "inspect" else sub
        for sub in runtime.cli.subcommands(images.cli.IMAGE_SOURCE)
    )
    flat = (
        *unionfs.cli.SUBCOMMANDS,
        *containers,
        runtime.volume_cli.SUBCOMMAND,
        *images.cli.SUBCOMMANDS,
        *bench.cli.SUBCOMMANDS,
    )
    groups = (
        _group(
            "container", "manage containers", _CONTAINER, flat,
            ("prune", images.system_cli.CONTAINER_PRUNE),
        ),
        _group("image", "manage images", _IMAGE, flat, ("prune", images.cli.IMAGE_PRUNE)),
        _group(
            "system", "disk usage and clean-up", (), flat,
            ("df", images.system_cli.DF), ("prune", images.system_cli.PRUNE),
        ),
        _group(
            "builder", "manage the build cache", (), flat,
            ("prune", images.system_cli.BUILDER_PRUNE),
        ),
    )  # fmt: skip
    return (*flat, *groups)


def main(argv: list[str] | None = None) -> int:
    """`strata COMMAND ...`; the exit status."""
    args = sys.argv[1:] if argv is None else argv
    return dispatch("strata", DESCRIPTION, __version__, subcommands(), args, GLOBAL_OPTIONS)
