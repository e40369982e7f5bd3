"""The first sketch of the benchmark (stat walk + sequential read), now a shortcut into
`strata bench`, which absorbed it (see bench/README.md):

    python -m bench.quick [ARGS...]
    = strata bench --only stat seq-read --backends plain overlay fuse-overlayfs strata [ARGS...]
"""

from __future__ import annotations

import sys

from unionfs import __version__
from unionfs.command import dispatch

from .cli import SUBCOMMANDS

SKETCH_ARGS = [
    "--only",
    "stat",
    "seq-read",
    "--backends",
    "plain",
    "overlay",
    "fuse-overlayfs",
    "strata",
]


def main(argv: list[str] | None = None) -> int:
    args = ["bench", *SKETCH_ARGS, *(sys.argv[1:] if argv is None else argv)]
    return dispatch("strata", "the benchmark sketch", __version__, SUBCOMMANDS, args)


if __name__ == "__main__":
    sys.exit(main())
