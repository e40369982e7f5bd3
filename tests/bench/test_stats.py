"""Unit tests of bench.stats and of the harness's table, ratios and argument checks (no mounts)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.cli import select_backends, select_workloads
from bench.harness import Result, ratios, table
from bench.stats import (
    Cell,
    Summary,
    format_ratio,
    format_seconds,
    format_table,
    relative_spread,
    speed_factor,
    summarize,
)
from bench.workloads import WORKLOAD_IDS, WORKLOADS
from unionfs.errors import UsageError


def test_summarize_of_three_samples_uses_min_max() -> None:
    s = summarize([3.0, 1.0, 2.0])
    assert s == Summary(n=3, median=2.0, low=1.0, high=3.0, spread_kind="min-max")


def test_summarize_of_one_sample_has_no_spread() -> None:
    assert summarize([0.5]) == Summary(1, 0.5, 0.5, 0.5, "min-max")


def test_summarize_of_five_samples_uses_the_interquartile_range() -> None:
    s = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s.median, s.low, s.high, s.spread_kind) == (3.0, 2.0, 4.0, "iqr")


def test_summarize_of_an_even_count_takes_the_middle_mean() -> None:
    assert summarize([1.0, 2.0, 3.0, 10.0]).median == 2.5


def test_summarize_refuses_no_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        summarize([])


def test_speed_factor_is_baseline_over_backend() -> None:
    assert speed_factor(1.0, 4.0) == 0.25
    assert speed_factor(2.0, 1.0) == 2.0
    assert speed_factor(0.0, 1.0) is None
    assert speed_factor(1.0, 0.0) is None


def test_relative_spread_is_half_the_spread_in_percent() -> None:
    assert relative_spread(Summary(3, 2.0, 1.8, 2.2, "min-max")) == pytest.approx(10.0)
    assert relative_spread(Summary(1, 0.0, 0.0, 0.0, "min-max")) == 0.0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0"), (0.000_85, "850µs"), (0.0123, "12.3ms"), (1.234, "1.23s"), (95.04, "95.0s")],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


@pytest.mark.parametrize(
    ("ratio", "text"),
    [(None, "-"), (0.034, "0.034x"), (0.82, "0.82x"), (1.3, "1.30x"), (140.0, "140x")],
)
def test_format_ratio(ratio: float | None, text: str) -> None:
    assert format_ratio(ratio) == text


def test_cell_shows_median_spread_and_factor_or_its_note() -> None:
    assert Cell(Summary(3, 2.0, 1.8, 2.2, "min-max"), 0.5).text() == "2.00s ±10% 0.50x"
    assert Cell(Summary(1, 0.01, 0.01, 0.01, "min-max")).text() == "10.0ms ±0%"
    assert Cell(note="skipped").text() == "skipped"


def test_format_table_aligns_columns_and_labels_other_baselines() -> None:
    cells = {
        ("w1", "overlay"): Cell(Summary(1, 1.0, 1.0, 1.0, "min-max"), 1.0),
        ("w1", "strata"): Cell(Summary(1, 2.0, 2.0, 2.0, "min-max"), 0.5),
        ("w2", "strata"): Cell(note="n/a"),
    }
    text = format_table(["w1", "w2"], ["overlay", "strata"], cells, baselines={"w2": "podman"})
    lines = text.splitlines()
    assert lines[0].split() == ["workload", "overlay", "strata"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["w1", "1.00s", "±0%", "1.00x", "2.00s", "±0%", "0.50x"]
    assert lines[3].startswith("w2 (vs podman)")
    assert lines[3].split()[-2:] == ["-", "n/a"]
    assert len({len(line) for line in lines[:2]}) == 1


def _result(
    workload: str, backend: str, *samples: float, status: str = "ok", reason: str = ""
) -> Result:
    return Result(workload, backend, status=status, reason=reason, samples=list(samples))


def test_ratios_compare_each_backend_with_its_workloads_baseline() -> None:
    results = [
        _result("seq-read-cold", "overlay", 1.0, 1.2, 0.8),
        _result("seq-read-cold", "strata", 2.0, 2.0, 2.0),
        _result("container-start", "podman", 0.1),
        _result("container-start", "strata", 0.2),
        _result("find-cold", "strata", 1.0),
        _result("find-cold", "overlay", status="skipped", reason="kernel overlayfs needs root"),
    ]
    factor = ratios(results, WORKLOADS)
    assert factor[("seq-read-cold", "overlay")] == 1.0
    assert factor[("seq-read-cold", "strata")] == 0.5
    assert factor[("container-start", "strata")] == 0.5
    assert factor[("find-cold", "strata")] is None  # no baseline in this run
    assert ("find-cold", "overlay") not in factor


def test_table_lists_the_reasons_for_empty_cells_and_the_daemon_cpu() -> None:
    results = [
        _result("seq-read-cold", "overlay", 1.0),
        Result("seq-read-cold", "strata", samples=[2.0], daemon_cpu=[0.3]),
        _result("seq-read-warm", "overlay", status="failed", reason="mount: boom"),
        _result("seq-read-warm", "strata", status="skipped", reason="no fuse"),
    ]
    workloads = [w for w in WORKLOADS if w.id.startswith("seq-read")]
    text = table(results, workloads, ["overlay", "strata"])
    assert "failed: mount: boom (e.g. overlay / seq-read-warm)" in text
    assert "skipped: no fuse (e.g. strata / seq-read-warm)" in text
    assert "FUSE daemon CPU" in text
    assert "300.0ms" in text


def test_workload_ids_are_unique_short_and_stable() -> None:
    assert len(set(WORKLOAD_IDS)) == len(WORKLOAD_IDS)
    assert all(len(i) <= 16 and i == i.lower() and " " not in i for i in WORKLOAD_IDS)


def test_only_accepts_ids_prefixes_and_commas_in_standard_order() -> None:
    chosen = [w.id for w in select_workloads(["untar,seq-read", "find-warm"])]
    assert chosen == ["seq-read-cold", "seq-read-warm", "find-warm", "untar"]
    assert [w.id for w in select_workloads(None)] == list(WORKLOAD_IDS)


def test_unknown_workload_or_backend_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown workload 'nope'"):
        select_workloads(["nope"])
    with pytest.raises(UsageError, match="unknown backend 'zfs'"):
        select_backends(["plain,zfs"])


def test_overlay_for_a_non_root_user_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(UsageError, match="needs root"):
        select_backends(["overlay"])
    assert [b.name for b in select_backends(["strata", "plain"])] == ["plain", "strata"]


def test_a_missing_peer_is_skipped_with_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import backends

    monkeypatch.setattr("shutil.which", lambda name: None)
    reason = backends.backend_named("fuse-overlayfs").unavailable()
    if reason != "/dev/fuse is not usable":
        assert reason == "fuse-overlayfs not installed (apt-get install fuse-overlayfs)"
    assert backends.backend_named("plain").unavailable() is None


def test_cold_and_chroot_workloads_are_skipped_for_a_normal_user(tmp_path: Path) -> None:
    from bench.data import QUICK, DataSet

    data = DataSet(tmp_path, QUICK, {})
    by_id = {w.id: w for w in WORKLOADS}
    assert by_id["seq-read-cold"].unavailable(data, root=False) == (
        "cold unavailable: dropping caches needs root"
    )
    assert by_id["true-chroot"].unavailable(data, root=False) == "chroot needs root"
    assert by_id["seq-read-warm"].unavailable(data, root=False) is None
    assert "no python3" in str(by_id["python-chroot"].unavailable(data, root=True))


def test_cpu_seconds_reads_a_live_process_and_not_a_dead_one() -> None:
    from bench.backends import cpu_seconds

    mine = cpu_seconds(os.getpid())
    assert mine is not None
    assert mine >= 0
    assert cpu_seconds(2**22 + 1) is None  # above pid_max's ceiling: never a process


def test_ratio_ranges_span_the_backends_spread() -> None:
    from bench.harness import ratio_ranges

    results = [
        _result("seq-read-cold", "overlay", 1.0, 1.0, 1.0),
        _result("seq-read-cold", "strata", 1.0, 2.0, 4.0),
    ]
    assert ratio_ranges(results, WORKLOADS)[("seq-read-cold", "strata")] == (0.25, 1.0)


def test_a_backend_that_cannot_mount_fails_cleanly_and_leaves_nothing(tmp_path: Path) -> None:
    from bench.backends import Backend, BackendError, mounted
    from bench.data import QUICK, DataSet

    scratch = tmp_path / "scratch"
    with (
        pytest.raises(BackendError, match="unknown backend bogus"),
        mounted(
            Backend("bogus", "union", "a backend nobody wrote"),
            DataSet(tmp_path, QUICK, {}),
            scratch,
        ),
    ):
        pass
    assert not scratch.exists()


def test_absolute_notes_name_the_times_of_rows_not_compared_with_overlay() -> None:
    from bench.harness import absolute_notes

    results = [
        _result("container-start", "strata", 0.2),
        _result("container-start", "podman", 0.13),
        _result("seq-read-cold", "strata", 1.0),
    ]
    assert absolute_notes(results, WORKLOADS) == {
        "container-start": "strata 200.0ms, podman 130.0ms"
    }


def test_failures_are_described_in_one_line() -> None:
    import subprocess

    from bench.harness import _one_line

    assert _one_line(subprocess.TimeoutExpired(["tar", "-C", "/m", "-xf", "t"], 900)) == (
        "tar -C /m... timed out after 900s"
    )
    assert _one_line(subprocess.CalledProcessError(2, ["rm", "-rf", "--", "x"])) == (
        "rm -rf --... exited with 2"
    )
    assert _one_line(OSError(5, "Input/output error")) == "[Errno 5] Input/output error"
