"""The PNG of `strata bench --plot`: speed factors against kernel overlayfs, as grouped bars.

One horizontal group per workload (the names stay readable), one bar per backend, growing from
the 1.0 line (= overlay) to the left when slower and to the right when faster, on a log scale so
that 0.1x and 10x are as far from the line as each other; each bar carries its factor. matplotlib is imported here only, with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from .stats import format_ratio

COLOURS: Final[dict[str, str]] = {
    "plain": "#9e9e9e",
    "fuse-overlayfs": "#1f77b4",
    "unionfs-fuse": "#ff7f0e",
    "strata": "#2ca02c",
    "strata-noopen": "#98df8a",
    "podman": "#9467bd",
}


def plot_ratios(
    ratios: Mapping[tuple[str, str], float | None],
    workloads: Sequence[str],
    backends: Sequence[str],
    path: Path,
    *,
    title: str,
    baselines: Mapping[str, str] | None = None,
    ranges: Mapping[tuple[str, str], tuple[float, float]] | None = None,
    row_notes: Mapping[str, str] | None = None,
) -> None:
    """Draw the grouped bars of `ratios[(workload, backend)]` into `path` (PNG).

    The baseline of each row (overlay, or podman for container start-up) is the 1.0 line and
    gets no bar of its own; workloads without any factor are left out. `ranges` (the factor
    over the backend's spread) become whiskers, so a noisy figure looks noisy. `row_notes` go
    under a row's name (the absolute times of container start-up, whose target is one).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    baselines = baselines or {}
    rows = [
        w
        for w in workloads
        if any(
            ratios.get((w, b)) is not None and b != baselines.get(w, "overlay") for b in backends
        )
    ]
    shown = [
        b
        for b in backends
        if any(ratios.get((w, b)) is not None and b != baselines.get(w, "overlay") for w in rows)
    ]
    height = 0.8 / max(1, len(shown))
    fig, ax = plt.subplots(figsize=(11, 1.5 + 0.16 * max(1, len(rows)) * max(2, len(shown))))
    values = [v for v in ratios.values() if v is not None and v > 0]
    extremes = [v for lo_hi in (ranges or {}).values() for v in lo_hi if v > 0]
    low = min([*values, *extremes, 0.5]) / 2.5
    high = max([*values, *extremes, 2.0]) * 3
    for index, backend in enumerate(shown):
        ys, xs, below, above = [], [], [], []
        for row, workload in enumerate(rows):
            ratio = ratios.get((workload, backend))
            if ratio is None or ratio <= 0 or backend == baselines.get(workload, "overlay"):
                continue
            ys.append(row + (index - (len(shown) - 1) / 2) * height)
            xs.append(ratio)
            low_ratio, high_ratio = (ranges or {}).get((workload, backend), (ratio, ratio))
            below.append(max(0.0, ratio - low_ratio))
            above.append(max(0.0, high_ratio - ratio))
        widths = [x - 1.0 for x in xs]  # bars grow from the 1.0 line: left slower, right faster
        ax.barh(
            ys, widths, height=height * 0.9, left=1.0, label=backend, color=COLOURS.get(backend)
        )
        ax.errorbar(xs, ys, xerr=[below, above], fmt="none", ecolor="#444444", elinewidth=0.8)
        for x, y, minus, plus in zip(xs, ys, below, above, strict=True):
            # the label sits past the bar's end or its whisker, whichever reaches further
            if x >= 1.0:
                ax.text((x + plus) * 1.04, y, format_ratio(x), va="center", ha="left", fontsize=7)
            else:
                ax.text((x - minus) / 1.04, y, format_ratio(x), va="center", ha="right", fontsize=7)
    for row in range(1, len(rows), 2):  # shade every other workload so groups stand apart
        ax.axhspan(row - 0.5, row + 0.5, color="#f2f2f2", zorder=0)
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ax.axvline(1.0, color="black", linewidth=1.2, label="kernel overlayfs (1.0)")
    steps = [m * 10.0**e for e in range(-4, 5) for m in (1, 2, 5)]  # 1-2-5 ticks
    ax.xaxis.set_major_locator(ticker.FixedLocator([t for t in steps if low <= t <= high]))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _pos: f"{x:g}"))
    labels = [
        w if baselines.get(w, "overlay") == "overlay" else f"{w} (vs {baselines[w]})" for w in rows
    ]
    labels = [
        f"{label}\n{(row_notes or {})[w]}" if w in (row_notes or {}) else label
        for w, label in zip(rows, labels, strict=True)
    ]
    ax.set_yticks(range(len(rows)), labels)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel(
        "speed factor = overlay time / backend time (log scale): right of the line is faster, "
        "left is slower"
    )
    ax.set_title(title, fontsize=11)
    ax.grid(axis="x", which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
