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
import runtime.cli
import unionfs.cli
from unionfs import __version__
from unionfs.command import GlobalOption, Subcommand, dispatch

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


def subcommands() -> tuple[Subcommand, ...]:
    """All of `strata`'s subcommands, in the order `strata --help` lists them."""
    containers = tuple(
        images.cli.INSPECT if sub.name == "inspect" else sub
        for sub in runtime.cli.subcommands(images.cli.IMAGE_SOURCE)
    )
    return (*unionfs.cli.SUBCOMMANDS, *containers, *images.cli.SUBCOMMANDS, *bench.cli.SUBCOMMANDS)


def main(argv: list[str] | None = None) -> int:
    """`strata COMMAND ...`; the exit status."""
    args = sys.argv[1:] if argv is None else argv
    return dispatch("strata", DESCRIPTION, __version__, subcommands(), args, GLOBAL_OPTIONS)
