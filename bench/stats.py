"""Statistics and the terminal table of `strata bench`: pure functions, no I/O.

Why medians and IQRs: on a shared 2-core machine single samples jump by 2-3x, so a mean is
dragged by the outliers while the median of a few repeats is stable; the interquartile range (or
min-max for fewer than four samples, where quartiles mean little) says how far to trust it.
Ratios are taken between medians of the same run, because the machine's noise moves all backends
of one run together much more than it moves one run against the next.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Summary:
    """The median of a set of samples and its spread (`low`..`high`).

    `spread_kind` is "iqr" (first to third quartile) for four or more samples, else "min-max".
    """

    n: int
    median: float
    low: float
    high: float
    spread_kind: str


def summarize(samples: Sequence[float]) -> Summary:
    """Median plus IQR (n >= 4) or min-max (n < 4) of non-empty `samples`."""
    if not samples:
        raise ValueError("no samples to summarize")
    values = sorted(samples)
    median = statistics.median(values)
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return Summary(len(values), median, q1, q3, "iqr")
    return Summary(len(values), median, values[0], values[-1], "min-max")


def relative_spread(summary: Summary) -> float:
    """Half the spread as a percentage of the median (0 when the median is 0)."""
    if summary.median <= 0:
        return 0.0
    return 100 * (summary.high - summary.low) / 2 / summary.median


def speed_factor(baseline_seconds: float, seconds: float) -> float | None:
    """baseline / backend: > 1 means the backend is faster than the baseline.

    None when either time is not positive (a timer that saw nothing cannot be compared).
    """
    if baseline_seconds <= 0 or seconds <= 0:
        return None
    return baseline_seconds / seconds


def format_seconds(seconds: float) -> str:
    """A short human duration: 0, 850µs, 12.3ms, 1.23s, 95.0s."""
    if seconds == 0:
        return "0"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f}ms"
    if seconds < 10.0:
        return f"{seconds:.2f}s"
    return f"{seconds:.1f}s"


def format_value(value: float, unit: str) -> str:
    """A sample in its unit: seconds as `format_seconds`, anything else as `123 MiB`."""
    return format_seconds(value) if unit == "s" else f"{value:.0f} {unit}"


def format_ratio(ratio: float | None) -> str:
    """A speed factor with two significant-ish digits: 0.034x, 0.82x, 1.3x, 140x."""
    if ratio is None or not math.isfinite(ratio):
        return "-"
    if ratio >= 10:
        return f"{ratio:.0f}x"
    if ratio >= 0.1:
        return f"{ratio:.2f}x"
    return f"{ratio:.3f}x"


@dataclass(frozen=True, slots=True)
class Cell:
    """One table cell: a measured figure, or the reason there is none."""

    summary: Summary | None = None
    ratio: float | None = None
    note: str = ""
    unit: str = "s"

    def text(self) -> str:
        """`1.23s ±4% 0.82x` (± half the spread, relative to the median), or the note
        (`skipped`, `n/a`, `failed`)."""
        if self.summary is None:
            return self.note or "-"
        median = format_value(self.summary.median, self.unit)
        text = f"{median} ±{relative_spread(self.summary):.0f}%"
        if self.ratio is not None:
            text += f" {format_ratio(self.ratio)}"
        return text


def format_table(
    workloads: Sequence[str],
    backends: Sequence[str],
    cells: Mapping[tuple[str, str], Cell],
    *,
    baselines: Mapping[str, str] | None = None,
) -> str:
    """A fixed-width table: one row per workload, one column per backend.

    Each cell shows `median ±half-spread factor`; `baselines` names the reference backend of a
    row when it is not kernel overlayfs (container start-up is compared with podman).
    """
    first_header = "workload"
    rows: list[list[str]] = [[first_header, *backends]]
    for workload in workloads:
        label = workload
        baseline = (baselines or {}).get(workload)
        if baseline is not None and baseline != "overlay":
            label += f" (vs {baseline})"
        rows.append([label, *(cells.get((workload, b), Cell(note="-")).text() for b in backends)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            ).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
