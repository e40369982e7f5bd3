"""`strata bench network`: container start-up per network mode, strata against podman.

The issue's question (#15) is what a network of one's own costs a container's start-up: strata's
default network (a veth on the NAT'd bridge) should be within 30 ms of `--network none`. Each tool
runs `run --rm IMAGE /bin/true` with `--network none`, its default network and `host`, in rounds
that rotate the order, so that the machine's drift falls on every mode alike; the medians and the
default-minus-none difference are reported side by side.

The image is the bench's busybox base layer (the quick data set): strata runs it with `--lower`,
podman imports it once into the bench's private store. podman's default network here is CNI's
bridge, which leaves `cni-podman0`, iptables-nft's tables and /var/lib/cni behind; whatever of
these did not exist before the bench is removed after it, as is strata's bridge (`strata network
prune`) if the bench made it. Root only: both default networks need it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from unionfs.errors import UsageError

from .backends import strata_command
from .data import QUICK, prepare
from .harness import PODMAN_RUN_FLAGS, machine_description, private_podman

MODES: Final = ("none", "default", "host")
DEFAULT_REPEAT: Final = 20
TARGET_MS: Final = 30.0  # the target: default within 30 ms of none
RUN_TIMEOUT: Final = 120.0
IMAGE: Final = "strata-bench-network"
PODMAN_TRACES: Final = ("cni-podman0",)


def _commands(scratch: Path, base: Path) -> dict[str, Callable[[str], list[str]]]:
    """tool -> (mode -> the command starting one container running /bin/true)."""
    state = scratch / "strata"
    podman = private_podman(scratch / "podman", scratch / "pr", "/usr/bin/fuse-overlayfs")
    podman_flags = [f for f in PODMAN_RUN_FLAGS if not f.startswith("--network")]

    def strata(mode: str) -> list[str]:
        net = [] if mode == "default" else ["--network", mode]
        return [
            *strata_command(),
            "run",
            "--root",
            str(state),
            "--rm",
            *net,
            "--lower",
            str(base),
            "/bin/true",
        ]

    def podman_run(mode: str) -> list[str]:
        net = [] if mode == "default" else [f"--network={mode}"]
        return [*podman, "run", "--rm", *podman_flags, *net, IMAGE, "/bin/true"]

    found: dict[str, Callable[[str], list[str]]] = {"strata": strata}
    if shutil.which("podman") is not None:
        with subprocess.Popen(
            ["tar", "-C", str(base), "-cf", "-", "."], stdout=subprocess.PIPE
        ) as tar:
            subprocess.run(
                [*podman, "import", "-", IMAGE], stdin=tar.stdout, capture_output=True, check=True
            )
        found["podman"] = podman_run
    return found


def _time(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, timeout=RUN_TIMEOUT, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        last = (done.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        raise UsageError(f"bench network: {' '.join(command[:3])} ...: {last}", 1)
    return elapsed


def _nft_tables() -> set[tuple[str, str]]:
    done = subprocess.run(
        ["nft", "-j", "list", "tables"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not done.stdout.strip():
        return set()
    return {
        (e["table"]["family"], e["table"]["name"])
        for e in json.loads(done.stdout).get("nftables", [])
        if "table" in e
    }


@contextmanager
def _host_restored(scratch: Path) -> Iterator[None]:
    """Remove, afterwards, the links, nft tables and CNI state the run added to the host."""
    links = set(os.listdir("/sys/class/net"))
    tables = _nft_tables()
    cni = Path("/var/lib/cni").exists()
    try:
        yield
    finally:
        if "strata0" not in links:  # the bench made strata's bridge: it goes
            subprocess.run(
                [*strata_command(), "network", "prune", "--root", str(scratch / "prune")],
                capture_output=True,
                check=False,
            )
        for link in PODMAN_TRACES:
            if link not in links and os.path.exists(f"/sys/class/net/{link}"):
                subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        for family, name in _nft_tables() - tables:
            if name in ("nat", "filter"):  # iptables-nft's, made for CNI during the run
                subprocess.run(["nft", "delete", "table", family, name], check=False)
        if not cni:
            shutil.rmtree("/var/lib/cni", ignore_errors=True)


def run_network_bench(
    repeat: int, data_dir: Path, json_path: Path | None, argv: Sequence[str]
) -> int:
    """Measure, print the table, optionally write every sample as JSON."""
    if os.geteuid() != 0:
        raise UsageError("strata bench network needs root (both default networks do)", 1)
    data = prepare(data_dir, QUICK)
    scratch = data_dir / "scratch" / f"network-{os.getpid()}"
    scratch.mkdir(parents=True)
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        with _host_restored(scratch):
            commands = _commands(scratch, data.root / "base")
            runs = [(tool, mode) for tool in commands for mode in MODES]
            for tool, mode in runs:  # a warm-up each: the bridge made, caches filled
                _time(commands[tool](mode))
            for n in range(repeat):
                shift = n % len(runs)
                for tool, mode in runs[shift:] + runs[:shift]:
                    elapsed = _time(commands[tool](mode))
                    samples.setdefault(tool, {}).setdefault(mode, []).append(elapsed)
                print(f"\rround {n + 1}/{repeat}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
    finally:
        subprocess.run(["rm", "-rf", str(scratch)], check=False)
    print(table(samples, repeat))
    if json_path is not None:
        document = {"meta": machine_description() | {"argv": list(argv)}, "samples": samples}
        json_path.write_text(json.dumps(document, indent=2) + "\n")
        print(f"JSON: {json_path}")
    return 0


def table(samples: dict[str, dict[str, list[float]]], repeat: int) -> str:
    """Medians in ms per tool and mode, and the default network's cost over none."""
    lines = [
        f"container start-up (run --rm IMAGE /bin/true), median of {repeat}, ms",
        f"{'':10}{'none':>10}{'default':>10}{'host':>10}{'default-none':>14}",
    ]
    for tool, modes in samples.items():
        medians = {m: statistics.median(v) * 1000 for m, v in modes.items()}
        cost = medians["default"] - medians["none"]
        mark = (
            ""
            if tool != "strata"
            else ("  (target <= 30)" if cost <= TARGET_MS else "  (target 30: missed)")
        )
        lines.append(
            f"{tool:10}{medians['none']:>10.1f}{medians['default']:>10.1f}{medians['host']:>10.1f}"
            f"{cost:>+14.1f}{mark}"
        )
    return "\n".join(lines)
