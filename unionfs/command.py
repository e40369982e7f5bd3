"""The command framework every strata command line is built from: `Subcommand` records, the
`Runner` error boundary, and `dispatch()`, which turns a list of subcommands into a program.

Why it lives at the bottom of the house: `fuse-strata` and `python -m unionfs` are commands of
the union alone, and the runtime, the image store and the bench declare their subcommands with
the same records. Each package exposes its records; only the top-level `strata.cli` gathers them
all, explicitly, so no package imports one above it and nothing registers itself on import.

Errors are one line and never a traceback (`UsageError`, `OSError`); Docker's 125 is the status
of strata's own failures, 130 of Ctrl-C. Only `-d`/`STRATA_DEBUG=1` shows the traceback of an
unexpected exception.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from .errors import UsageError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (a UsageError) instead of usage text plus exit(2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


@dataclass(slots=True)
class Runner:
    """The top-level error boundary of a command: one line per error, tracebacks only with -d."""

    prog: str
    debug: bool = False

    def run(self, main: Callable[[], int]) -> int:
        try:
            return main()
        except UsageError as exc:
            self.say(str(exc))
            return exc.exit_code
        except OSError as exc:
            self.say(describe_os_error(exc))
            return 125
        except KeyboardInterrupt:
            return 130
        except SystemExit as exc:  # argparse --help/--version
            return exc.code if isinstance(exc.code, int) else 0
        except Exception as exc:  # a bug: one line, or the whole story with $STRATA_DEBUG
            if self.debug or os.environ.get("STRATA_DEBUG"):
                raise
            self.say(
                f"unexpected error: {type(exc).__name__}: {exc}"
                " (STRATA_DEBUG=1 shows the traceback)"
            )
            return 125

    def say(self, message: str) -> None:
        one_line = " ".join(message.split())
        print(f"{self.prog}: {one_line}", file=sys.stderr, flush=True)


def describe_os_error(exc: OSError) -> str:
    """`path: reason` (or just the reason) for an OSError, as commands print it."""
    what = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{os.fsdecode(exc.filename)}: {what}"
    return what


@dataclass(frozen=True, slots=True)
class Subcommand:
    """One subcommand: `add_arguments` fills its parser, `run` handles it.

    `run` gets the runner so it can switch tracebacks on (`runner.debug`) once it knows.
    Keep imports of heavy modules inside `run`: `--help` and bad input should not pay for them.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Runner], int]


@dataclass(frozen=True, slots=True)
class Group:
    """A docker-style command group (`strata container ls`, `strata image rm`): each member is
    an existing subcommand under a name of the group's, so a command is declared once and the
    group only names it. `as_subcommand()` makes the group a subcommand whose parser holds one
    sub-parser per member, filled by the member's own `add_arguments`.

    `--root DIR` may also come between the group and its member (`strata image --root R ls`),
    as it may after every subcommand; the member's own `--root` wins.
    """

    name: str
    help: str
    members: tuple[tuple[str, Subcommand], ...]

    def as_subcommand(self) -> Subcommand:
        def add_arguments(parser: argparse.ArgumentParser) -> None:
            parser.add_argument("--root", dest="group_root", metavar="DIR", help=argparse.SUPPRESS)
            chosen = parser.add_subparsers(dest="group_member", metavar="COMMAND", required=True)
            for name, member in self.members:
                sub = chosen.add_parser(name, help=member.help, description=member.help)
                member.add_arguments(sub)
                sub.set_defaults(member=member)

        def run(args: argparse.Namespace, runner: Runner) -> int:
            if getattr(args, "group_root", None) and not getattr(args, "root", None):
                args.root = args.group_root
            member: Subcommand = args.member
            return member.run(args, runner)

        names = " ".join(name for name, _ in self.members)
        return Subcommand(self.name, f"{self.help} ({names})", add_arguments, run)


def dispatch(
    prog: str,
    description: str,
    version: str,
    subcommands: Sequence[Subcommand],
    argv: Sequence[str],
) -> int:
    """Run `prog SUBCOMMAND ...` inside a Runner; the exit status.

    Only the named subcommand's parser is built when the first argument names one: building
    all ~25 subparsers costs `strata run` ~10 ms of start-up, on the path to the container's
    first instruction. Anything else (`--help`, a typo) gets them all.
    """
    runner = Runner(prog)

    def main() -> int:
        only = argv[0] if argv and not argv[0].startswith("-") else None
        chosen = [sub for sub in subcommands if sub.name == only] or list(subcommands)
        parser = ArgumentParser(prog=prog, description=description)
        parser.add_argument("--version", action="version", version=f"{prog} {version}")
        commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
        for sub in chosen:
            sub_parser = commands.add_parser(sub.name, help=sub.help, description=sub.help)
            sub.add_arguments(sub_parser)
            sub_parser.set_defaults(subcommand=sub)
        namespace = parser.parse_args(argv)
        picked: Subcommand = namespace.subcommand
        return picked.run(namespace, runner)

    return runner.run(main)
