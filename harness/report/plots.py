"""The leaderboard's plots: perplexity and mean accuracy against achieved sparsity per row, with their intervals,
and the 2SSP balancing heat map."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.metrics.registry import METRICS
from harness.results import CellResult

# A point of a plotted series: achieved sparsity (%), value, and the distances down and up to its interval.
Point = tuple[float, float, float, float]
DODGE = 0.25  # percentage points between neighbouring methods' markers at one sparsity


def _series(results: list[CellResult], value: Any) -> dict[str, list[Point]]:
    """One series per leaderboard row: ``value(result)`` -> (value, low, high) or None, at the achieved sparsity.
    One seed shows its own interval; several show the spread over seeds around their mean."""
    by_point: dict[tuple[str, float], list[tuple[CellResult, tuple[float, float, float]]]] = defaultdict(list)
    for r in results:
        measured = value(r) if r.parameters else None
        if measured is not None:
            by_point[(r.cell.variant, r.cell.sparsity)].append((r, measured))
    series: dict[str, list[Point]] = defaultdict(list)
    for (row, _), points in by_point.items():
        x = statistics.fmean(r.parameters.achieved_sparsity * 100 for r, _ in points)
        values = [v for _, (v, _, _) in points]
        lo, hi = (points[0][1][1], points[0][1][2]) if len(points) == 1 else (min(values), max(values))
        y = statistics.fmean(values)
        series[row].append((x, y, max(0.0, y - lo), max(0.0, hi - y)))
    return {row: sorted(points) for row, points in sorted(series.items())}


def _reference(results: list[CellResult]) -> str | None:
    """The row of the dense model, which is drawn as a line across (None: the results have none)."""
    return next((r.cell.variant for r in results if r.cell.reference), None)


def _draw(ax: Any, series: dict[str, list[Point]], reference: str | None) -> None:
    """Each method's line with error bars; the dense model as a dashed line with its interval as a band. Methods
    that remove whole blocks land on the same sparsities, so each method's points are shifted sideways by a
    fraction of a percentage point (``DODGE``), in a fixed order, to keep the error bars apart."""
    methods = [m for m in series if m != reference]
    for method, points in series.items():
        if method == reference:
            _, y, lo, hi = points[0]
            ax.axhline(y, color="black", linestyle="--", linewidth=1, label=method)
            ax.axhspan(y - lo, y + hi, color="black", alpha=0.08)
            continue
        shift = DODGE * (methods.index(method) - (len(methods) - 1) / 2)
        ax.errorbar([p[0] + shift for p in points], [p[1] for p in points],
                    yerr=[[p[2] for p in points], [p[3] for p in points]], marker="o", capsize=3, label=method)
    ax.set_xlabel("achieved sparsity of the transformer blocks (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def plot(results: list[CellResult], path: Path) -> Path | None:
    """Each plotted metric's panel (``Metric.panel``: perplexity on the first dataset, mean downstream accuracy)
    against achieved sparsity: one line per method, with 95 % intervals (the leaderboard's own)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        return None
    panels = []
    for metric in sorted(METRICS.values(), key=lambda m: m.column_order):
        sample = results[0].metric(metric.name)
        panel = metric.panel(sample) if sample else None
        if panel is None:
            continue
        series = _series(results, lambda r, m=metric, p=panel: p.value(r.metric(m.name)) if r.metric(m.name) else None)
        if series:
            panels.append((panel, series))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7 + 6 * (len(panels) - 1), 4.5), squeeze=False)
    model = results[0].cell.model
    for ax, (panel, series) in zip(axes[0], panels, strict=True):
        _draw(ax, series, _reference(results))
        if panel.log:
            ax.set_yscale("log")
        ax.set_ylabel(panel.ylabel)
        ax.set_title(f"{model}: {panel.title}", **({"fontsize": panel.title_size} if panel.title_size else {}))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def heat_map(results: list[CellResult], path: Path) -> Path | None:
    """2SSP perplexity over (sparsity, attention modules removed): the paper's balancing sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import math

    import matplotlib.pyplot as plt

    cells = [r for r in results if r.cell.method == "2ssp"
             and r.config.get("method_options", {}).get("n_attn") is not None and r.perplexity]
    counts = sorted({r.config["method_options"]["n_attn"] for r in cells})
    rates = sorted({r.cell.sparsity for r in cells})
    if len(counts) < 2 or len(rates) < 2:
        return None
    dataset = next(iter(cells[0].perplexity))
    grid = [[math.nan] * len(counts) for _ in rates]
    for r in cells:
        grid[rates.index(r.cell.sparsity)][counts.index(r.config["method_options"]["n_attn"])] = math.log10(
            r.perplexity[dataset].value)
    fig, ax = plt.subplots(figsize=(max(6, len(counts) * 0.35), max(4, len(rates) * 0.3)))
    image = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis_r")
    ax.set_xticks(range(len(counts)), [str(c) for c in counts], fontsize=7)
    ax.set_yticks(range(len(rates)), [f"{s:.3f}" for s in rates], fontsize=7)
    ax.set_xlabel("attention modules removed (N_attn)")
    ax.set_ylabel("target sparsity")
    ax.set_title(f"2SSP balance between the stages: log10 perplexity ({dataset}); blank = infeasible")
    fig.colorbar(image, ax=ax, label="log10 perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _by_cell(results: list[CellResult], value: Any) -> dict[tuple[str, float], tuple[float, float, float]]:
    """(row, target sparsity) -> (value, low, high): one seed's interval, several seeds' range around their mean."""
    by: dict[tuple[str, float], list[tuple[float, float, float]]] = defaultdict(list)
    for r in results:
        measured = value(r)
        if measured is not None:
            by[(r.cell.variant, r.cell.sparsity)].append(measured)
    out = {}
    for key, points in by.items():
        values = [v for v, _, _ in points]
        y = statistics.fmean(values)
        out[key] = (y, *points[0][1:]) if len(points) == 1 else (y, min(values), max(values))
    return out


def recovery_plot(before: list[CellResult], after: list[CellResult], path: Path) -> Path | None:
    """Each plotted metric after recovery against before, one point per method and sparsity (marker size grows
    with sparsity), with both intervals; the diagonal is "no change", the dotted lines the dense model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels, reference = [], _reference(before)
    for metric in sorted(METRICS.values(), key=lambda m: m.column_order):
        sample = next((r.metric(metric.name) for r in after if r.metric(metric.name)), None)
        panel = metric.panel(sample) if sample else None
        if panel is None:
            continue

        def value(r: CellResult, m: Any = metric, p: Any = panel) -> tuple[float, float, float] | None:
            return p.value(r.metric(m.name)) if r.metric(m.name) else None

        was, now = _by_cell(before, value), _by_cell(after, value)
        points = {key: (was[key], now[key]) for key in now if key in was}
        if points:
            panels.append((panel, points, was.get((reference, 0.0))))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    methods = sorted({method for _, points, _ in panels for method, _ in points})
    sparsities = sorted({s for _, points, _ in panels for _, s in points})
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, (panel, points, dense) in zip(axes[0], panels, strict=True):
        if dense is not None:  # the dense model's value on both axes: where a full recovery would land
            ax.axvline(dense[0], color="grey", linestyle=":", linewidth=1)
            ax.axhline(dense[0], color="grey", linestyle=":", linewidth=1, label=reference)
        for (method, sparsity), ((x, xlo, xhi), (y, ylo, yhi)) in sorted(points.items()):
            size = 4 + 3 * sparsities.index(sparsity)
            ax.errorbar([x], [y], xerr=[[max(0.0, x - xlo)], [max(0.0, xhi - x)]],
                        yerr=[[max(0.0, y - ylo)], [max(0.0, yhi - y)]], marker="o", markersize=size, capsize=2,
                        color=colours[method], label=method if sparsity == sparsities[0] else None)
        lows = [v for (a, b) in points.values() for v in (a[1], b[1])] + ([dense[0]] if dense else [])
        highs = [v for (a, b) in points.values() for v in (a[2], b[2])] + ([dense[0]] if dense else [])
        ax.plot([min(lows), max(highs)], [min(lows), max(highs)], color="black", linestyle="--", linewidth=1,
                label="no change")
        if panel.log:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"before recovery: {panel.ylabel}")
        ax.set_ylabel(f"after recovery: {panel.ylabel}")
        ax.set_title(f"{after[0].cell.model}: recovery, per method and sparsity\n(marker size: "
                     f"{', '.join(f'{100 * s:g} %' for s in sparsities)})", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
