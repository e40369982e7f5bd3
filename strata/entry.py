"""The `strata` command's entry point: `strata run` as root forks its union daemon first thing.

The daemon spends ~100 ms importing trio, pyfuse3 and the union core, and the container cannot
start before it has mounted the rootfs. Forked from `runtime.cli` it starts only after the
command line (strata.cli, the runtime's and the store's modules, argparse) has been imported
and parsed, ~40 ms in; forked here it starts right after the interpreter. Only this module and
`runtime.prefork` (os and signal) are imported first. A daemon nobody takes (`strata run --help`, a bad option,
`run -d`) is stopped before the command returns; rootless runs fork later, inside their user
namespace.
"""

from __future__ import annotations

import os
import sys


def strata_main() -> int:
    """`strata COMMAND ...` (see strata.cli.main), with the early fork for `run`.

    Ctrl-C before the command's own error boundary is in place (while modules are imported)
    ends it quietly with 130, as Ctrl-C does later, instead of a Python traceback."""
    try:
        if _command(sys.argv[1:]) == "run" and os.geteuid() == 0:
            from runtime import prefork

            prefork.prefork()
            try:
                from .cli import main

                return main()
            finally:
                prefork.discard()
        from .cli import main

        return main()
    except KeyboardInterrupt:
        return 130


# The global options that take a value (strata.cli.GLOBAL_OPTIONS and unionfs.command's own),
# spelled out here: importing them would cost the fork the time it is there to save.
_VALUED_GLOBALS = ("--root", "--log-level")


def _command(argv: list[str]) -> str | None:
    """The command after the global options (`strata -D --root R run ...`: run)."""
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        i += 2 if argv[i] in _VALUED_GLOBALS else 1
    return argv[i] if i < len(argv) else None
