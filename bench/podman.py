"""`strata bench podman`: podman's builds and container start-up over fuse-strata, against
fuse-overlayfs, both as the overlay driver's `mount_program` (issue 16, part 2).

What is timed, per mount program, in rounds that rotate the programs' order (so the machine's
drift falls on each alike):
- `podman build --no-cache --network none` of a 16-instruction Containerfile (ENV, WORKDIR,
  COPY, RUN, LABEL, USER, CMD) on a Debian base: every instruction mounts the union of a
  growing stack of layers, runs (or not) a container in it, and commits the diff of its upper
  directory;
- `podman run --rm --network none IMAGE true` on the image that build made (17 layers), RUNS
  times per round.

Each mount program gets its own private store (`private_podman`) under the scratch directory,
with the bench's Debian base (the full data set's `base/`) imported into it once, untimed, and
one untimed warm-up run of the base. Built images are removed after each round (untimed), so every round
starts from the same store. The build never touches the network: RUN steps get `--network
none`, and the Containerfile uses only what the base and the build context hold.

Other mount programs can be compared as NAME=PATH (an older checkout's fuse-strata behind a
wrapper script, say): that is how the figures before and after a change come from one run.
Afterwards the stores are emptied (`rm`, `rmi`), removed, and the bench checks that no mount
is left under them. Root only (podman's rootful store and the FUSE mounts it makes).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

from .data import FULL, prepare
from .harness import (
    PODMAN_RUN_FLAGS,
    empty_private_podman,
    machine_description,
    private_podman,
)

DEFAULT_REPEAT: Final = 3
RUNS_PER_ROUND: Final = 3
BASE_IMAGE: Final = "localhost/strata-bench-podman-base:1"
BUILT_IMAGE: Final = "localhost/strata-bench-podman-built:1"
TIMEOUT: Final = 900.0
FUSE_OVERLAYFS: Final = "/usr/bin/fuse-overlayfs"

# 16 instructions: what a small application image's build does (a source tree copied and
# compiled, a user added, files copied, deleted, edited, archived); light on purpose, since
# every instruction's commit walks the whole tree twice anyway (podman's naive diff, below)
CONTAINERFILE: Final = f"""\
FROM {BASE_IMAGE}
ENV LANG=C.UTF-8 APP_HOME=/srv/app
WORKDIR /srv/app
COPY src/ ./src/
RUN python3 -m compileall -q src
RUN useradd --create-home --uid 1000 app
RUN mkdir -p /srv/data && cp -a /etc /srv/data/etc-copy
RUN rm -rf /usr/share/man
RUN echo 'export APP_HOME=/srv/app' >> /etc/bash.bashrc && sed -i 's/^#.*//' /etc/adduser.conf
RUN python3 -c 'import json, sys; print(json.dumps(sys.path))' > /srv/app/paths.json
COPY app.ini /etc/app/app.ini
RUN chown -R app:app /srv/app && chmod 640 /etc/app/app.ini
RUN tar -C /srv/data -czf /srv/etc.tar.gz etc-copy && rm -rf /srv/data/etc-copy
LABEL org.example.bench="strata bench podman"
USER app
CMD ["python3", "-c", "print('hello')"]
"""


@dataclass(frozen=True, slots=True)
class Program:
    """One mount program and the private podman store it runs under."""

    name: str
    path: str
    podman: tuple[str, ...]


def default_programs() -> dict[str, str]:
    """fuse-overlayfs and the fuse-strata beside this Python."""
    return {
        "fuse-overlayfs": FUSE_OVERLAYFS,
        "fuse-strata": str(Path(sys.executable).parent / "fuse-strata"),
    }


def parse_programs(requested: Sequence[str]) -> dict[str, str]:
    """NAME (fuse-overlayfs, fuse-strata) or NAME=PATH, in the order given."""
    known = default_programs()
    chosen: dict[str, str] = {}
    for item in requested:
        name, sep, path = item.partition("=")
        if not sep:
            if name not in known:
                raise UsageError(
                    f"bench podman: unknown mount program {name!r}"
                    f" (known: {', '.join(known)}, or NAME=PATH)"
                )
            path = known[name]
        if not os.access(path, os.X_OK):
            raise UsageError(f"bench podman: {name}: {path} is not an executable")
        chosen[name] = path
    return chosen


def _write_context(context: Path) -> None:
    """The build context: the Containerfile, a small Python source tree and a config file."""
    src = context / "src"
    for package in range(8):
        directory = src / f"pkg{package}"
        directory.mkdir(parents=True)
        (directory / "__init__.py").write_text(f'"""Package {package}."""\n')
        for module in range(25):
            body = "".join(
                f"def f{n}(x: int) -> int:\n    return x * {n} + {module}\n\n" for n in range(20)
            )
            (directory / f"mod{module}.py").write_text(body)
    (context / "app.ini").write_text("[app]\nname = bench\nworkers = 4\n")
    (context / "Containerfile").write_text(CONTAINERFILE)


def _checked(command: Sequence[str], *, stdin: int | None = None) -> str:
    done = subprocess.run(
        list(command),
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        raise UsageError(f"bench podman: {' '.join(command[-4:])}: {last}", 1)
    return done.stdout.decode(errors="replace")


def _timed(command: Sequence[str]) -> float:
    started = time.perf_counter()
    _checked(command)
    return time.perf_counter() - started


def _build_command(program: Program, context: Path) -> list[str]:
    return [
        *program.podman,
        "build",
        "--no-cache",
        "--network",
        "none",
        "--quiet",
        "--tag",
        BUILT_IMAGE,
        "--file",
        str(context / "Containerfile"),
        str(context),
    ]


def _run_command(program: Program, image: str = BUILT_IMAGE) -> list[str]:
    flags = [f for f in PODMAN_RUN_FLAGS if not f.startswith("--network")]
    return [*program.podman, "run", "--rm", "--network=none", *flags, image, "true"]


def _drop_built(program: Program) -> None:
    """Remove the built image and its intermediate images: the next round starts alike."""
    _checked([*program.podman, "rmi", "--force", BUILT_IMAGE])
    _checked([*program.podman, "image", "prune", "--force"])


@contextmanager
def _store(program: str, path: str, scratch: Path, base: Path) -> Iterator[Program]:
    """A private podman store over `path` holding the base image; emptied and removed after."""
    root = scratch / program
    runroot = Path(tempfile.mkdtemp(prefix="strata-bp-"))  # podman wants <= 50 characters
    podman = (*private_podman(root, runroot, path), "--events-backend", "none")
    try:
        with subprocess.Popen(
            ["tar", "-C", str(base), "-cf", "-", "."], stdout=subprocess.PIPE
        ) as tar:
            assert tar.stdout is not None
            _checked([*podman, "import", "-", BASE_IMAGE], stdin=tar.stdout.fileno())
        yield Program(program, path, podman)
    finally:
        left = empty_private_podman(podman, root, runroot)
        if left:
            raise UsageError(f"bench podman: {program} left mounts behind: {left}", 1)
        subprocess.run(["rm", "-rf", str(root), str(runroot)], check=False)


def run_podman_bench(
    programs: dict[str, str],
    repeat: int,
    data_dir: Path,
    json_path: Path | None,
    argv: Sequence[str],
) -> int:
    """Measure, print the table, optionally write every sample as JSON."""
    if os.geteuid() != 0:
        raise UsageError("strata bench podman needs root (podman's store, FUSE mounts)", 1)
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            raise UsageError(f"bench podman: {tool} is not installed (apt install podman runc)", 1)
    data = prepare(data_dir, FULL)
    scratch = data_dir / "scratch" / f"podman-{os.getpid()}"
    context = scratch / "context"
    context.mkdir(parents=True)
    builds: dict[str, list[float]] = {name: [] for name in programs}
    runs: dict[str, list[float]] = {name: [] for name in programs}
    try:
        _write_context(context)
        with ExitStack() as stack:
            stores = [
                stack.enter_context(_store(name, path, scratch, data.root / "base"))
                for name, path in programs.items()
            ]
            for program in stores:  # warm-up: page cache, podman's first-use work, the server
                _checked(_run_command(program, BASE_IMAGE))
            for n in range(repeat):
                shift = n % len(stores)
                for program in stores[shift:] + stores[:shift]:
                    builds[program.name].append(_timed(_build_command(program, context)))
                    for _ in range(RUNS_PER_ROUND):
                        runs[program.name].append(_timed(_run_command(program)))
                    _drop_built(program)
                print(f"\rround {n + 1}/{repeat}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
    finally:
        subprocess.run(["rm", "-rf", str(scratch)], check=False)
    print(table(builds, runs, programs))
    if json_path is not None:
        document = {
            "meta": machine_description() | {"argv": list(argv), "programs": programs},
            "containerfile": CONTAINERFILE,
            "build_seconds": builds,
            "run_seconds": runs,
        }
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"JSON: {json_path}")
    return 0


def table(
    builds: dict[str, list[float]], runs: dict[str, list[float]], programs: dict[str, str]
) -> str:
    """Medians (and ranges) per mount program, and each one's ratio to fuse-overlayfs."""
    reference = "fuse-overlayfs" if "fuse-overlayfs" in builds else next(iter(builds))
    ref_build = statistics.median(builds[reference])
    ref_run = statistics.median(runs[reference])
    lines = [
        "podman over each mount program: build --no-cache (16 instructions), run --rm IMAGE true",
        f"{'':16}{'build s':>9}{'(min-max)':>15}{'x ref':>7}{'run ms':>9}{'(min-max)':>13}{'x ref':>7}",
    ]
    for name in programs:
        b, r = builds[name], runs[name]
        mb, mr = statistics.median(b), statistics.median(r)
        lines.append(
            f"{name:16}{mb:>9.2f}{f'({min(b):.1f}-{max(b):.1f})':>15}{mb / ref_build:>7.2f}"
            f"{mr * 1000:>9.0f}{f'({min(r) * 1000:.0f}-{max(r) * 1000:.0f})':>13}"
            f"{mr / ref_run:>7.2f}"
        )
    lines.append(
        f"medians of {len(next(iter(builds.values())))} builds and"
        f" {len(next(iter(runs.values())))} runs; x ref: against {reference} (lower is faster)"
    )
    return "\n".join(lines)
