"""The command framework every strata command line is built from: `Subcommand` records, the
`Runner` error boundary, and `dispatch()`, which turns a list of subcommands into a program.

Why it lives at the bottom of the house: `fuse-strata` and `python -m unionfs` are commands of
the union alone, and the runtime, the image store and the bench declare their subcommands with
the same records. Each package exposes its records; only the top-level `strata.cli` gathers them
all, explicitly, so no package imports one above it and nothing registers itself on import.

Errors are one line and never a traceback (`UsageError`, `OSError`); Docker's 125 is the status
of strata's own failures, 130 of Ctrl-C. Only `-D` (before the command or a subcommand's own) or
`STRATA_DEBUG=1` shows the traceback of an unexpected exception.

Global options come before the command, as docker's and podman's do (`strata -D --root R
images`): `-D/--debug` and `--log-level` are the framework's own; a program names the options of
its subcommands that may come first too (`GlobalOption`, strata's `--root`), and each is handed
to the named subcommand as if it followed the command, when that subcommand takes it.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

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
    global_debug: bool = False  # `-D` before the command: whatever the subcommand sets `debug` to

    def run(self, main: Callable[[], int]) -> int:
        status = self._guarded(main)
        # What is still buffered (all of a short listing, --help's text) is written here, where
        # a broken pipe or a full disk is still ours to answer, not at the interpreter's exit.
        flushed = self._guarded(_flush_stdout)
        return status if flushed == 0 else flushed

    def _guarded(self, main: Callable[[], int]) -> int:
        try:
            return main()
        except UsageError as exc:
            self.say(str(exc))
            return exc.exit_code
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) and _stdout_closed():  # `... | head`
                return _quiet_broken_pipe()
            self.say(describe_os_error(exc))
            return 125
        except KeyboardInterrupt:
            return 130
        except SystemExit as exc:  # argparse --help/--version
            return exc.code if isinstance(exc.code, int) else 0
        except Exception as exc:  # a bug: one line, or the whole story with $STRATA_DEBUG
            if self.debug or self.global_debug or os.environ.get("STRATA_DEBUG"):
                raise
            self.say(
                f"unexpected error: {type(exc).__name__}: {exc}"
                " (STRATA_DEBUG=1 shows the traceback)"
            )
            return 125

    def say(self, message: str) -> None:
        one_line = " ".join(message.split())
        print(f"{self.prog}: {one_line}", file=sys.stderr, flush=True)


def _flush_stdout() -> int:
    sys.stdout.flush()
    return 0


def _stdout_closed() -> bool:
    """Whether nobody reads our stdout any more (`strata ... | head` after head exited): the
    write end of a pipe polls POLLERR once its reader is gone."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a file (tests capture it)
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _fd, events in poller.poll(0))


def _quiet_broken_pipe() -> int:
    """`... | head` ended it: no message, and the status of a process SIGPIPE ended, 141, as
    docker's CLI ends (the Go runtime lets SIGPIPE kill it). Stdout goes to /dev/null so that
    the interpreter's last flush at exit has nothing to complain about."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


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


@dataclass(frozen=True, slots=True)
class GlobalOption:
    """An option (taking a value) of some subcommands that may also come before the command:
    `strata --root R images` is `strata images --root R`. A subcommand that lacks it ignores it,
    as podman's commands ignore the global options they have no use for."""

    flag: str
    metavar: str
    help: str


# docker's levels (logrus'), as `--log-level` takes them.
LOG_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
}


def split_global_options(
    argv: Sequence[str], options: Sequence[GlobalOption]
) -> tuple[list[str], list[str]]:
    """(the options before the command, the command and what follows it).

    A cheap scan rather than a parser, so that only the named subcommand's parser gets built;
    the options themselves are checked by the full parser."""
    valued = {"--log-level", *(option.flag for option in options)}
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        i += 2 if argv[i] in valued else 1
    return list(argv[:i]), list(argv[i:])


def _forwarded(head: Sequence[str], option: GlobalOption) -> list[str]:
    """`option` as given among the options before the command (each time), for the subcommand."""
    out: list[str] = []
    for i, arg in enumerate(head):
        if arg == option.flag and i + 1 < len(head):
            out += [arg, head[i + 1]]
        elif arg.startswith(f"{option.flag}="):
            out.append(arg)
    return out


def dispatch(
    prog: str,
    description: str,
    version: str,
    subcommands: Sequence[Subcommand],
    argv: Sequence[str],
    global_options: Sequence[GlobalOption] = (),
) -> int:
    """Run `prog [GLOBAL OPTIONS] SUBCOMMAND ...` inside a Runner; the exit status.

    Only the named subcommand's parser is built when the first argument after the global
    options names one: building all ~25 subparsers costs `strata run` ~10 ms of start-up, on
    the path to the container's first instruction. Anything else (`--help`, a typo) gets them
    all.
    """
    runner = Runner(prog)

    def main() -> int:
        head, rest = split_global_options(argv, global_options)
        only = rest[0] if rest else None
        chosen = [sub for sub in subcommands if sub.name == only] or list(subcommands)
        parser = ArgumentParser(prog=prog, description=description)
        parser.add_argument("--version", action="version", version=f"{prog} {version}")
        parser.add_argument(
            "-D", "--debug", dest="global_debug", action="store_true",
            help="tracebacks of unexpected errors (as STRATA_DEBUG=1) and debug logging",
        )  # fmt: skip
        parser.add_argument(
            "--log-level", choices=tuple(LOG_LEVELS), metavar="LEVEL",
            help=f"logging level: {', '.join(LOG_LEVELS)} (default: warn; debug with -D)",
        )  # fmt: skip
        for option in global_options:
            parser.add_argument(  # checked and listed in --help here, used by the subcommand
                option.flag, metavar=option.metavar, help=option.help, default=argparse.SUPPRESS
            )
        commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
        extra: list[str] = []
        for sub in chosen:
            sub_parser = commands.add_parser(sub.name, help=sub.help, description=sub.help)
            sub.add_arguments(sub_parser)
            sub_parser.set_defaults(subcommand=sub)
            if len(chosen) == 1:
                for option in global_options:
                    if option.flag in sub_parser._option_string_actions:  # (argparse's own map)
                        extra += _forwarded(head, option)
        namespace = parser.parse_args([*head, *rest[:1], *extra, *rest[1:]])
        runner.global_debug = bool(namespace.global_debug)
        if namespace.log_level or runner.global_debug:
            level = LOG_LEVELS[namespace.log_level] if namespace.log_level else logging.DEBUG
            logging.basicConfig(format="%(levelname)s:%(name)s:%(message)s")
            logging.getLogger().setLevel(level)  # (basicConfig leaves a configured one alone)
        picked: Subcommand = namespace.subcommand
        return picked.run(namespace, runner)

    return runner.run(main)
