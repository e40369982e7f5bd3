"""`strata bench registry`: pull and push of a Debian image on a local registry, next to podman
and skopeo.

The issue's question (#14) is whether `strata pull` keeps up with `podman pull` (target: no
slower than 1.2x) and what a push costs, so every tool gets the same image, the same registry
binary on 127.0.0.1, the same disk and a fresh destination each time, and the runs are
interleaved (the order rotates every round), because on this shared machine the noise moves
between minutes much more than between neighbouring runs.

- **The image**: the Debian bookworm rootfs the slow tests build with mmdebstrap (their cache,
  `/var/cache/strata-tests/bookworm-minbase-python3`; built here with mmdebstrap when it is
  missing), as one gzip layer: `podman import` of its tar into a private podman store, then
  `podman push` into the source registry. The tar is cached under the data dir.
- **The registry**: Debian's docker-registry 2.8 (unpacked by scripts/setup.sh, never
  installed: the package would start a service on every interface), plain HTTP on 127.0.0.1 and
  a free port, its storage in the run's temp dir. It is stopped, and the temp dir removed, on
  every exit path.
- **pull**: `strata pull` into a fresh `--root`; `podman pull` into a fresh private store (the
  overlay driver over fuse-overlayfs, as `strata bench` runs podman); `skopeo copy docker://
  oci:DIR`, which only downloads (no extraction): the floor a pull can reach.
- **push**: each tool pushes what it pulled in the same round into a registry of its own,
  started empty for that push, so every blob is uploaded: `strata push` from its store,
  `podman push` from its store (both rebuild and gzip the layer), `skopeo copy oci:DIR
  docker://` (uploads the blobs as they are: the floor).

The bench imports none of strata's packages (import-linter): it runs `strata`, `podman`,
`skopeo` and the registry as processes and times each from fork to exit.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

from .backends import strata_command
from .data import CACHED_ROOTFS
from .harness import machine_description, private_podman
from .stats import format_seconds, summarize

# where scripts/setup.sh unpacks Debian's docker-registry (the registry tests' binary too)
REGISTRY_BIN: Final = Path("/var/cache/strata-tests/docker-registry/usr/bin/docker-registry")
TOOLS: Final = ("strata", "podman", "skopeo")
# A second strata to measure beside the first, for a before/after in one run: a command, split
# as the shell would, e.g. an older checkout:
# `env PYTHONPATH=/tmp/old /path/to/.venv/bin/python -P -m strata` (-P: not the current directory
# first on sys.path, which `-m` would otherwise put before PYTHONPATH).
BEFORE_VARIABLE: Final = "STRATA_BENCH_BEFORE"
BEFORE_TOOL: Final = "strata-before"
OPERATIONS: Final = ("pull", "push")
DEFAULT_ROUNDS: Final = 3
READY_TIMEOUT: Final = 20.0  # seconds for a registry to answer /v2/
STOP_TIMEOUT: Final = 10.0
RUN_TIMEOUT: Final = 600.0  # one pull or push
REPOSITORY: Final = "bench/debian"
TARGET_RATIO: Final = 1.2  # the target: strata pull <= 1.2 x podman pull
FUSE_OVERLAYFS: Final = "/usr/bin/fuse-overlayfs"


class BenchError(Exception):
    """A step of the bench that failed (one line: the command and its last line of output)."""


@dataclass
class Row:
    """The samples of one operation by one tool (seconds), or why it failed."""

    operation: str
    tool: str
    samples: list[float] = field(default_factory=list)
    error: str | None = None


def find_registry() -> Path:
    if REGISTRY_BIN.is_file() and os.access(REGISTRY_BIN, os.X_OK):
        return REGISTRY_BIN
    raise UsageError(f"no docker-registry binary ({REGISTRY_BIN}): run scripts/setup.sh as root", 1)


def check_tools(tools: Sequence[str]) -> None:
    """One line naming what is missing, before anything is started."""
    needed: dict[str, list[str]] = {
        "strata": [],
        BEFORE_TOOL: [],
        "podman": ["podman", "fuse-overlayfs"],
        "skopeo": ["skopeo"],
    }
    missing = sorted({p for t in tools for p in needed[t] if shutil.which(p) is None})
    if "podman" not in tools and shutil.which("podman") is None:
        missing.append("podman (seeds the registry)")
    if missing:
        raise UsageError(f"bench registry needs {', '.join(missing)}: run scripts/setup.sh", 1)
    if os.geteuid() != 0:
        raise UsageError("bench registry needs root (podman's private stores, the rootfs tar)", 1)


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the registry binary cannot be handed a
    listening socket, so it gets a number); the registry tests use it too."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _answers(host: str) -> bool:
    conn = http.client.HTTPConnection(host, timeout=2)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def registry(binary: Path, directory: Path) -> Iterator[str]:
    """A docker-registry on 127.0.0.1 with its storage in `directory`; yields `HOST:PORT`.
    Ready once GET /v2/ answers; stopped (TERM, then KILL) when the block ends."""
    directory.mkdir(parents=True)
    log = directory / "registry.log"
    for attempt in range(3):
        host = f"127.0.0.1:{free_port()}"
        config = directory / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {directory / 'storage'}\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            f"http:\n  addr: {host}\n  secret: {secrets.token_hex(16)}\n"
            "health:\n  storagedriver:\n    enabled: false\n"
        )
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(binary), "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while proc.poll() is None and not _answers(host):
                if time.monotonic() > deadline:
                    raise BenchError(f"docker-registry did not answer on {host} in time")
                time.sleep(0.02)  # a poll interval, not an assumed start-up time
            if proc.poll() is None:
                yield host
                return
            tail = log.read_text(errors="replace").strip().splitlines()[-1:]
            if attempt == 2 or "address already in use" not in " ".join(tail):
                raise BenchError(f"docker-registry exited: {' '.join(tail) or proc.returncode}")
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def run(command: list[str], what: str) -> float:
    """Run `command` to its end; the seconds it took. BenchError (its last line) on failure."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
            timeout=RUN_TIMEOUT,
            cwd="/",  # not the checkout: `python -m strata` would import from there first
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what}: no end after {RUN_TIMEOUT:.0f}s") from None
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        lines = result.stderr.decode(errors="replace").strip().splitlines()
        raise BenchError(f"{what}: {lines[-1] if lines else f'exit status {result.returncode}'}")
    return elapsed


def rootfs_tar(data_dir: Path) -> Path:
    """The Debian rootfs as a tar, built once under `data_dir/registry/` (renamed into place
    when complete, so an interrupted build is redone)."""
    tar = data_dir / "registry" / "debian-rootfs.tar"
    if tar.is_file():
        return tar
    tar.parent.mkdir(parents=True, exist_ok=True)
    source = CACHED_ROOTFS
    with tempfile.TemporaryDirectory(dir=tar.parent) as tmp:
        if not (source / "usr/bin/python3").exists():
            if shutil.which("mmdebstrap") is None:
                raise UsageError(f"no {CACHED_ROOTFS} and no mmdebstrap: run scripts/setup.sh", 1)
            source = Path(tmp) / "rootfs"
            print("bench registry: building the Debian rootfs with mmdebstrap", file=sys.stderr)
            run(
                ["mmdebstrap", "--variant=minbase", "--include=python3", "bookworm", str(source)],
                "mmdebstrap",
            )
        partial = Path(tmp) / "rootfs.tar"
        run(["tar", "--numeric-owner", "-C", str(source), "-cf", str(partial), "."], "tar")
        partial.rename(tar)
    return tar


def podman(store: Path) -> list[str]:
    """podman on a private store under `store` (the run root must stay short for podman)."""
    runroot = Path(tempfile.mkdtemp(prefix="sbr-", dir="/run" if os.path.isdir("/run") else None))
    return private_podman(store, runroot, FUSE_OVERLAYFS)


def available_tools() -> list[str]:
    """strata, podman, skopeo, and the second strata when $STRATA_BENCH_BEFORE names one."""
    return [*TOOLS, BEFORE_TOOL] if os.environ.get(BEFORE_VARIABLE) else list(TOOLS)


def strata_for(tool: str) -> list[str]:
    if tool == BEFORE_TOOL:
        return shlex.split(os.environ[BEFORE_VARIABLE])
    return strata_command()


@dataclass
class Round:
    """Where one round keeps what each tool pulled, for its push."""

    directory: Path
    podman_cmd: list[str]
    oci_dir: Path

    def strata_root(self, tool: str) -> Path:
        return self.directory / tool


def pull(tool: str, source: str, rnd: Round) -> float:
    ref = f"{source}/{REPOSITORY}:latest"
    if tool.startswith("strata"):
        command = [*strata_for(tool), "pull", "-q", "--root", str(rnd.strata_root(tool))]
        return run([*command, "--tls-verify=false", ref], f"{tool} pull")
    if tool == "podman":
        return run([*rnd.podman_cmd, "pull", "-q", "--tls-verify=false", ref], "podman pull")
    return run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{ref}", f"oci:{rnd.oci_dir}"],
        "skopeo copy",
    )


def push(tool: str, source: str, dest: str, rnd: Round) -> float:
    image, target = f"{source}/{REPOSITORY}:latest", f"{dest}/{REPOSITORY}-{tool}:latest"
    if tool.startswith("strata"):
        command = [*strata_for(tool), "push", "-q", "--root", str(rnd.strata_root(tool))]
        return run([*command, "--tls-verify=false", image, target], f"{tool} push")
    if tool == "podman":
        command = [*rnd.podman_cmd, "push", "-q", "--tls-verify=false"]
        return run(
            [*command, "--compression-format=gzip", image, f"docker://{target}"], "podman push"
        )
    return run(
        [
            "skopeo",
            "copy",
            "-q",
            "--dest-tls-verify=false",
            f"oci:{rnd.oci_dir}",
            f"docker://{target}",
        ],
        "skopeo copy",
    )


def _rotated(tools: Sequence[str], n: int) -> list[str]:
    return [tools[(i + n) % len(tools)] for i in range(len(tools))]


def measure(
    tools: Sequence[str], rounds: int, data_dir: Path, work: Path, *, log: bool = True
) -> tuple[list[Row], dict[str, object]]:
    """Seed a registry with the image, then `rounds` interleaved rounds of pulls and pushes."""
    binary = find_registry()
    tar = rootfs_tar(data_dir)
    rows = {(op, tool): Row(op, tool) for op in OPERATIONS for tool in tools}

    def say(text: str) -> None:
        if log:
            print(text, file=sys.stderr, flush=True)

    runroots: list[Path] = []
    try:
        with registry(binary, work / "source") as source:
            seed = podman(work / "seed")
            runroots.append(Path(seed[seed.index("--runroot") + 1]))
            local = f"localhost/{REPOSITORY}:latest"
            run([*seed, "import", "-q", str(tar), local], "podman import")
            run(
                [
                    *seed,
                    "push",
                    "-q",
                    "--tls-verify=false",
                    "--compression-format=gzip",
                    local,
                    f"docker://{source}/{REPOSITORY}:latest",
                ],
                "podman push (seeding)",
            )
            layer = _layer_size(source)
            say(
                f"bench registry: {tar.stat().st_size >> 20} MiB rootfs, {layer >> 20} MiB gzip layer"
            )
            for n in range(rounds):
                directory = work / f"round-{n}"
                cmd = podman(directory / "podman")
                runroots.append(Path(cmd[cmd.index("--runroot") + 1]))
                rnd = Round(directory, cmd, directory / "oci")
                directory.mkdir(parents=True, exist_ok=True)
                for tool in _rotated(tools, n):
                    _sample(rows[("pull", tool)], partial(pull, tool, source, rnd), say, n)
                for tool in _rotated(tools, n):
                    if rows[("pull", tool)].error is not None:
                        continue
                    with registry(binary, directory / f"dest-{tool}") as dest:
                        _sample(
                            rows[("push", tool)],
                            partial(push, tool, source, dest, rnd),
                            say,
                            n,
                        )
    finally:
        for runroot in runroots:
            shutil.rmtree(runroot, ignore_errors=True)
    info: dict[str, object] = {
        "image": f"{CACHED_ROOTFS.name} as one gzip layer ({tar.stat().st_size} bytes of tar)",
        "registry": str(binary),
    }
    return list(rows.values()), info


def _layer_size(host: str) -> int:
    conn = http.client.HTTPConnection(host, timeout=10)
    try:
        accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        conn.request("GET", f"/v2/{REPOSITORY}/manifests/latest", headers={"Accept": accept})
        manifest = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return sum(int(layer["size"]) for layer in manifest["layers"])


def _sample(row: Row, measure_one: Callable[[], float], say: Callable[[str], None], n: int) -> None:
    """One timed run into `row`; a failure ends the row (the error is reported, not raised)."""
    if row.error is not None:
        return
    os.sync()  # the previous run's dirty pages are written back before this one starts
    try:
        seconds = measure_one()
    except BenchError as e:
        row.error = str(e)
        say(f"  round {n + 1}: {row.operation} {row.tool}: failed: {e}")
        return
    row.samples.append(seconds)
    say(f"  round {n + 1}: {row.operation} {row.tool}: {format_seconds(seconds)}")


NOTES: Final = {
    ("pull", "skopeo"): "download only",
    ("push", "skopeo"): "upload only",
}


def table(rows: Sequence[Row]) -> str:
    lines = [f"{'operation':<10} {'tool':<13} {'median':>8}  {'vs podman':>9}  samples"]
    lines.append("-" * 77)
    medians = {(r.operation, r.tool): summarize(r.samples).median for r in rows if r.samples}
    for r in rows:
        if r.error is not None and not r.samples:
            lines.append(f"{r.operation:<10} {r.tool:<13} {'failed':>8}  {'':>9}  {r.error}")
            continue
        median = medians[(r.operation, r.tool)]
        podman_median = medians.get((r.operation, "podman"))
        factor = f"{median / podman_median:.2f}x" if podman_median else "n/a"
        samples = " ".join(format_seconds(s) for s in r.samples)
        note = NOTES.get((r.operation, r.tool))
        lines.append(
            f"{r.operation:<10} {r.tool:<13} {format_seconds(median):>8}  {factor:>9}  {samples}"
            + (f"  ({note})" if note else "")
            + (f"  failed later: {r.error}" if r.error else "")
        )
    for op in OPERATIONS:
        if (op, "strata") in medians and (op, BEFORE_TOOL) in medians:
            change = medians[(op, "strata")] / medians[(op, BEFORE_TOOL)]
            lines.append(
                f"{'' if op == 'push' else chr(10)}strata {op} / {BEFORE_TOOL}: {change:.2f}x"
            )
    if ("pull", "strata") in medians and ("pull", "podman") in medians:
        ratio = medians[("pull", "strata")] / medians[("pull", "podman")]
        verdict = "met" if ratio <= TARGET_RATIO else "missed"
        lines.append(
            f"\nstrata pull / podman pull: {ratio:.2f}x (target <= {TARGET_RATIO}x: {verdict})"
        )
    return "\n".join(lines)


def run_registry_bench(
    tools: Sequence[str], rounds: int, data_dir: Path, json_path: Path | None, argv: Sequence[str]
) -> int:
    """`strata bench registry`: measure, print the table, write the JSON; the exit status."""
    check_tools(tools)
    find_registry()
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="registry-", dir=_scratch(data_dir)))
    try:
        rows, info = measure(tools, rounds, data_dir, work)
    except BenchError as e:
        raise UsageError(f"bench registry: {e}", 1) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    meta = machine_description()
    print(
        f"\nstrata bench registry: {info['image']}, median of {rounds} interleaved rounds;"
        f" {meta['cpu_count']} cores, git {str(meta['git_sha'])[:10]}, {meta['date']}\n"
    )
    print(table(rows))
    print(f"\n{elapsed:.0f}s in all")
    if json_path is not None:
        document = {
            "meta": meta
            | {
                "argv": list(argv),
                "elapsed_seconds": round(elapsed, 1),
                "rounds": rounds,
                "skopeo": _version(["skopeo", "--version"]),
            }
            | info,
            "results": [
                {
                    "operation": r.operation,
                    "tool": r.tool,
                    "samples": r.samples,
                    "median": summarize(r.samples).median if r.samples else None,
                    "error": r.error,
                }
                for r in rows
            ],
        }
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"JSON: {json_path}")
    return 1 if any(r.error for r in rows) else 0


def _scratch(data_dir: Path) -> Path:
    path = data_dir / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _version(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""
