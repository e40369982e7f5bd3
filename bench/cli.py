"""`strata bench`: the subcommand record that `strata.cli` lists.

This module is imported whenever `strata`'s parser is built (also for `strata mount`), so it
imports only the standard library at the top; the harness, the data builder and matplotlib are
imported in `run_bench`, once the arguments are known to be good.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from unionfs.command import Runner, Subcommand
from unionfs.errors import UsageError

if TYPE_CHECKING:
    from .backends import Backend
    from .workloads import Workload

DEFAULT_REPEAT: Final = 5
QUICK_REPEAT: Final = 1


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "suite",
        nargs="?",
        choices=("registry", "network", "memory", "podman"),
        help="registry: pull and push of a Debian image on a local registry, against podman"
        " and skopeo (--backends strata podman skopeo, --repeat, --json, --data-dir apply);"
        " network: container start-up with no network, the default one and the host's,"
        " strata against podman (--repeat, default 20, --json, --data-dir apply);"
        " memory: the FUSE daemon's RSS over 200k lower files walked 5 times with the caches"
        " dropped between (--backends strata fuse-overlayfs, --repeat = walks, --quick = 20k"
        " files, --json, --data-dir apply);"
        " podman: podman build --no-cache and run --rm over fuse-strata against fuse-overlayfs"
        " as the overlay mount_program (--backends fuse-overlayfs fuse-strata NAME=PATH,"
        " --repeat, default 3, --json, --data-dir apply)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small synthetic data (busybox, a 32 MiB file), {QUICK_REPEAT} repeat: under a minute",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        metavar="WORKLOAD",
        help="run only these workloads (ids or prefixes such as 'seq-read'; commas allowed)",
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        action="extend",
        metavar="BACKEND",
        help="plain, overlay, fuse-overlayfs, unionfs-fuse, strata, strata-noopen, podman "
        "(default: all); NAME=PATH adds the strata command PATH of another checkout as NAME",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help=f"runs per figure (default {DEFAULT_REPEAT}, {QUICK_REPEAT} with --quick)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every sample as JSON")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="draw the speed factors")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("/var/tmp/strata-bench"),
        metavar="DIR",
        help="where the data is built once and cached (default /var/tmp/strata-bench)",
    )


def _split(values: list[str] | None) -> list[str]:
    return [item for value in values or [] for item in value.split(",") if item]


def select_workloads(requested: list[str] | None) -> list[Workload]:
    """The workloads named (exactly, or by a prefix ending at a '-'), in the standard order."""
    from .workloads import WORKLOADS

    names = _split(requested)
    if not names:
        return list(WORKLOADS)
    chosen: set[str] = set()
    for name in names:
        matches = {w.id for w in WORKLOADS if w.id == name or w.id.startswith(name + "-")}
        if not matches:
            known = ", ".join(w.id for w in WORKLOADS)
            raise UsageError(f"unknown workload {name!r} (known: {known})")
        chosen |= matches
    return [w for w in WORKLOADS if w.id in chosen]


def select_backends(requested: list[str] | None) -> list[Backend]:
    """The backends named, in the standard order; overlay asked for by a non-root user is an
    error (it cannot work), other missing programs are reported later as skipped."""
    from .backends import BACKEND_NAMES, BACKENDS, Backend

    names = _split(requested)
    if not names:
        return list(BACKENDS)
    others: list[Backend] = []
    for name in names:
        label, is_other, program = name.partition("=")
        if is_other:  # NAME=PATH: the strata command of another checkout
            if not label or label in BACKEND_NAMES or not program:
                raise UsageError(f"backend {name!r}: expected NAME=PATH with a new NAME")
            path = os.path.abspath(program)
            others.append(Backend(label, "union", f"strata mount of {path}", program=path))
        elif name not in BACKEND_NAMES:
            raise UsageError(
                f"unknown backend {name!r} (known: {', '.join(BACKEND_NAMES)}, or NAME=PATH"
                " for another checkout's strata)"
            )
    if "overlay" in names and os.geteuid() != 0:
        raise UsageError("backend 'overlay' (kernel overlayfs) needs root")
    return [b for b in BACKENDS if b.name in names] + others


def _check_output_path(option: str, path: Path | None, suffix: str) -> None:
    if path is None:
        return
    if path.suffix.lower() != suffix:
        raise UsageError(f"{option} {path}: expected a {suffix} file name")
    if not path.resolve().parent.is_dir():
        raise UsageError(f"{option} {path}: directory {path.parent} does not exist")


def run_bench(args: argparse.Namespace, runner: Runner) -> int:
    """Check the arguments, build or reuse the data, measure, then print and write the report."""
    if args.suite == "registry":
        return _run_registry(args)
    if args.suite == "network":
        return _run_network(args)
    if args.suite == "memory":
        return _run_memory(args)
    if args.suite == "podman":
        return _run_podman(args)
    workloads = select_workloads(args.only)
    backends = select_backends(args.backends)
    repeat = (
        args.repeat if args.repeat is not None else (QUICK_REPEAT if args.quick else DEFAULT_REPEAT)
    )
    if repeat < 1:
        raise UsageError(f"--repeat {repeat}: expected at least 1")
    _check_output_path("--json", args.json, ".json")
    _check_output_path("--plot", args.plot, ".png")
    if args.plot is not None and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib: pip install 'strata[bench]'")

    from .data import FULL, QUICK, DataError, prepare
    from .harness import Plan, cleanup_scratch, report, run_plan, table, write_json

    data_dir: Path = args.data_dir.resolve()
    try:
        data = prepare(data_dir, QUICK if args.quick else FULL)
    except DataError as exc:
        raise UsageError(str(exc), exit_code=1) from None
    scratch = data_dir / "scratch" / str(os.getpid())  # ours alone: concurrent runs are safe
    plan = Plan(workloads, backends, data, repeat, scratch, data_dir / "state")
    started = time.monotonic()
    try:
        results, interrupted = run_plan(plan)
    finally:
        cleanup_scratch(plan)
    elapsed = time.monotonic() - started
    names = [b.name for b in backends]
    document = report(results, plan, argv=sys.argv, elapsed=elapsed, interrupted=interrupted)
    meta = document["meta"]
    assert isinstance(meta, dict)
    print(
        f"\nstrata bench: {data.scale.name} data in {data.root}, median of {repeat}; "
        f"{meta['kernel'].split()[1]}, {meta['cpu_count']} cores, git {str(meta['git_sha'])[:10]}"
        f"{' (unionfs/ changed since)' if meta['git_dirty'] else ''}, {meta['date']}\n"
    )
    print(table(results, workloads, names))
    print(f"\n{len(workloads)} workloads x {len(backends)} backends x {repeat} in {elapsed:.0f}s")
    if interrupted:
        print("interrupted (Ctrl-C): the figures above are what was measured until then")
    if args.json is not None:
        write_json(document, args.json)
        print(f"JSON: {args.json}")
    if args.plot is not None:
        from .harness import absolute_notes, ratio_ranges, ratios
        from .plot import plot_ratios

        title = (
            f"strata bench{' --quick' if args.quick else ''}: speed vs kernel overlayfs "
            f"(median of {repeat}; {meta['date']}, git {str(meta['git_sha'])[:10]})"
        )
        plot_ratios(
            ratios(results, workloads),
            [w.id for w in workloads],
            names,
            args.plot,
            title=title,
            baselines={w.id: w.baseline for w in workloads},
            ranges=ratio_ranges(results, workloads),
            row_notes=absolute_notes(results, workloads),
        )
        print(f"plot: {args.plot}")
    if interrupted:
        return 130
    return 1 if any(r.status == "failed" for r in results) else 0


def _suite_options(
    args: argparse.Namespace, suite: str, refused: Sequence[str], default_repeat: int
) -> int:
    """Check the options of `strata bench SUITE`: those in `refused` do not apply to it, the
    repeat count (its default for this suite) must be at least 1, `--json` must name a .json
    file. Returns the repeat count."""
    for option in refused:
        if getattr(args, option.lstrip("-")):
            raise UsageError(f"{option} does not apply to 'strata bench {suite}'")
    repeat = args.repeat if args.repeat is not None else default_repeat
    if repeat < 1:
        raise UsageError(f"--repeat {repeat}: expected at least 1")
    _check_output_path("--json", args.json, ".json")
    return repeat


def _run_registry(args: argparse.Namespace) -> int:
    from .registry import DEFAULT_ROUNDS, available_tools, run_registry_bench

    rounds = _suite_options(args, "registry", ("--quick", "--only", "--plot"), DEFAULT_ROUNDS)
    known = available_tools()
    tools = _split(args.backends) or known
    for tool in tools:
        if tool not in known:
            raise UsageError(f"bench registry: unknown tool {tool!r} (known: {', '.join(known)})")
    chosen = [t for t in known if t in tools]
    return run_registry_bench(chosen, rounds, args.data_dir.resolve(), args.json, sys.argv)


def _run_network(args: argparse.Namespace) -> int:
    from .network import DEFAULT_REPEAT, run_network_bench

    refused = ("--quick", "--only", "--plot", "--backends")
    repeat = _suite_options(args, "network", refused, DEFAULT_REPEAT)
    return run_network_bench(repeat, args.data_dir.resolve(), args.json, sys.argv)


def _run_memory(args: argparse.Namespace) -> int:
    from .memory import BACKENDS, DEFAULT_PASSES, run_memory_bench

    passes = _suite_options(args, "memory", ("--only", "--plot"), DEFAULT_PASSES)
    return run_memory_bench(
        _split(args.backends) or list(BACKENDS),
        quick=args.quick,
        passes=passes,
        data_dir=args.data_dir.resolve(),
        json_path=args.json,
        argv=sys.argv,
    )


def _run_podman(args: argparse.Namespace) -> int:
    from .podman import DEFAULT_REPEAT, default_programs, parse_programs, run_podman_bench

    repeat = _suite_options(args, "podman", ("--quick", "--only", "--plot"), DEFAULT_REPEAT)
    programs = parse_programs(_split(args.backends) or list(default_programs()))
    return run_podman_bench(programs, repeat, args.data_dir.resolve(), args.json, sys.argv)


SUBCOMMANDS: Final[tuple[Subcommand, ...]] = (
    Subcommand(
        "bench",
        "measure strata against plain, kernel overlayfs and the FUSE peers",
        add_bench_arguments,
        run_bench,
    ),
)
