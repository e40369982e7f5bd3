"""`strata bench --quick` end to end, on the plain and strata backends (and kernel overlayfs as
root), so the harness cannot rot. It checks the shape of the JSON and the PNG, never timings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.workloads import WORKLOAD_IDS
from tests.helpers.mounts import is_mounted, skip_unless_fuse

STRATA = [
    sys.executable,
    "-c",
    "import sys; from strata.cli import main as m; sys.exit(m())",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def strata(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STRATA, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data dir for the module: the quick data is built once; a bench running beside the
    tests (in the default dir) is left alone."""
    return tmp_path_factory.mktemp("bench-data")


def mounts_under(path: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [m for m in (line.split()[4] for line in lines) if m.startswith(f"{path}/")]


@pytest.mark.fuse
def test_quick_bench_writes_a_complete_json_report_and_a_png(
    tmp_path: Path, data_dir: Path
) -> None:
    skip_unless_fuse()
    root = os.geteuid() == 0
    backends = ["plain", "strata", *(["overlay"] if root else [])]
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    done = strata(
        "bench",
        "--quick",
        "--data-dir",
        str(data_dir),
        "--backends",
        *backends,
        "--json",
        str(out_json),
        "--plot",
        str(out_png),
    )
    assert "Traceback" not in done.stderr
    report = json.loads(out_json.read_text())
    failed = [r for r in report["results"] if r["status"] == "failed"]
    assert done.returncode == (1 if failed else 0), done.stderr
    assert out_png.read_bytes().startswith(PNG_SIGNATURE)

    meta = report["meta"]
    for key in ("kernel", "python", "git_sha", "date", "cpu_count", "memory_bytes"):
        assert meta[key], key
    assert report["data"]["scale"] == "quick"
    assert [w["id"] for w in report["workloads"]] == list(WORKLOAD_IDS)

    cells = {(r["workload"], r["backend"]): r for r in report["results"]}
    assert set(cells) == {(w, b) for w in WORKLOAD_IDS for b in backends}
    for (workload, backend), r in cells.items():
        assert r["status"] in ("ok", "skipped", "n/a", "failed"), (workload, backend)
        if r["status"] == "ok":
            assert len(r["samples"]) == 1
            assert r["median"] == r["samples"][0]
            assert r["spread"]["kind"] == "min-max"
            if root:  # overlay ran, so every measured cell of an overlay-based row has a factor
                assert r["baseline"] != "overlay" or r["ratio"] is not None, (workload, backend)
        else:
            assert r["reason"], (workload, backend)
    # the harness itself must work: plain (and overlay) measure everything they can
    for backend in ("plain", "overlay") if root else ("plain",):
        assert not [w for w in WORKLOAD_IDS if cells[(w, backend)]["status"] == "failed"]
    # strata is measured on the reads at least, with its daemon's CPU
    for workload in ("seq-read-warm", "find-warm", "stat-warm"):
        r = cells[(workload, "strata")]
        assert r["status"] == "ok", r["reason"]
        assert len(r["daemon_cpu_samples"]) == 1
    if root:
        assert cells[("seq-read-warm", "overlay")]["ratio"] == 1.0
        assert cells[("container-start", "plain")]["status"] == "n/a"
    assert cells[("python-chroot", "strata")]["status"] == "skipped"  # busybox has no python3
    # nothing is left mounted or behind in the scratch directory
    mount_points = [
        line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ]
    assert not [m for m in mount_points if m.startswith(str(data_dir))]
    assert not list((data_dir / "scratch").glob("*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "nope"], "unknown workload 'nope'"),
        (["--backends", "zfs"], "unknown backend 'zfs'"),
        (["--repeat", "0"], "--repeat 0: expected at least 1"),
        (["--plot", "chart.svg"], "expected a .png file name"),
        (["--json", "/nonexistent/dir/x.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(args: list[str], message: str) -> None:
    done = strata("bench", "--quick", *args, timeout=30)
    assert done.returncode != 0
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""


@pytest.mark.fuse
def test_ctrl_c_unmounts_cleans_up_and_still_reports(data_dir: Path, tmp_path: Path) -> None:
    skip_unless_fuse()
    out_json = tmp_path / "partial.json"
    command = [*STRATA, "bench", "--quick", "--data-dir", str(data_dir), "--json", str(out_json)]
    command += ["--only", "untar", "--backends", "strata", "--repeat", "50"]
    # a session of its own: Ctrl-C at a terminal hits the whole foreground process group
    bench = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while not mounts_under(data_dir / "scratch"):
            assert bench.poll() is None, "the bench ended before it mounted anything"
            assert time.monotonic() < deadline, "no mount within 60 s"
            time.sleep(0.01)
        os.killpg(bench.pid, signal.SIGINT)
        _, stderr = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    assert bench.returncode == 130
    assert b"Traceback" not in stderr
    assert not mounts_under(data_dir)
    assert not list((data_dir / "scratch").glob("*"))
    report = json.loads(out_json.read_text())
    assert report["meta"]["interrupted"] is True
    [result] = report["results"]
    assert result["status"] in ("ok", "skipped")
    assert result["status"] == "ok" or result["reason"] == "interrupted (Ctrl-C)"


@pytest.mark.fuse
def test_a_dead_daemons_mount_is_still_unmounted(data_dir: Path) -> None:
    skip_unless_fuse()
    from bench.backends import backend_named, mounted
    from bench.data import QUICK, prepare

    data = prepare(data_dir, QUICK, log=False)
    scratch = data_dir / "scratch" / "dead-daemon"
    with mounted(backend_named("strata"), data, scratch) as mount:
        assert mount.daemon_pid is not None
        os.kill(mount.daemon_pid, signal.SIGKILL)  # the daemon we started, by its PID
    assert not is_mounted(mount.root)
    assert not scratch.exists()
