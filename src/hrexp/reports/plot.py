"""``comparison.png``: each run's validation curve of the headline metric and its best value."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hrexp.reports.direction import best_row, metric_mode
from hrexp.reports.runs import Run, distinguishing_overrides

DIRECTION_WORDS = {"max": "higher is better", "min": "lower is better", None: "direction unknown"}


def bars_title(metric: str, mode: str | None) -> str:
    """The title of the bar chart: ``best val/AP per run (higher is better)``."""
    return f"best {metric} per run ({DIRECTION_WORDS[mode]})"


def run_labels(runs: Sequence[Run]) -> dict[str, str]:
    """Run name -> its label in the plot: the overrides that tell it apart from the other runs
    (``optimizer.lr=0.001``), its name when it has none, and both when two runs would read the same."""
    own = [" ".join(o) for o in distinguishing_overrides([r.overrides for r in runs])]
    labels = [label or run.name for run, label in zip(runs, own)]
    return {run.name: label if labels.count(label) == 1 or label == run.name else f"{run.name}: {label}"
            for run, label in zip(runs, labels)}


def plot(runs: Sequence[Run], metric: str | None, path: Path, best_values: Mapping[str, Any] | None = None,
         mode: str | None = None) -> Path:
    """Write :func:`figure` to ``path``; its ``Title`` text chunk is the bar chart's title."""
    fig, title = figure(runs, metric, best_values, mode)
    fig.savefig(path, dpi=120, metadata={"Title": title})
    return path


def figure(runs: Sequence[Run], metric: str | None, best_values: Mapping[str, Any] | None = None,
           mode: str | None = None) -> tuple[Any, str]:
    """``(matplotlib Figure, the bar chart's title)``. Left: the validation curve of ``metric`` per run against epoch; right: each run's best value.
    Runs are labelled by :func:`run_labels`; the epoch axis has whole-number ticks.

    Args:
        runs: in the order of the bars.
        metric: the metric to plot (the headline).
        best_values: run name -> the table's best value (so a run whose value comes from its record,
            with no curve, still gets its bar); default the best of each run's curve.
        mode: the direction the title states (the runs' shared one); each run's star marks its best
            in its own direction, and a run without a direction has no star.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    # A Figure with the Agg canvas directly: no pyplot state, no display backend to pick.
    fig = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(fig)
    curve, bars = fig.subplots(1, 2)
    names, bests, colors = [], [], []
    title = bars_title(metric, mode) if metric else "no headline metric"
    labels = run_labels(runs)
    for i, run in enumerate(runs):
        if run.status == "failed" or metric is None:
            continue
        color = f"C{i % 10}"
        points = [(r["epoch"], r[metric]) for r in run.history if r.get(metric) is not None]
        own_mode = metric_mode(run, metric)
        best = best_row(run.history, metric, own_mode) if own_mode else None
        if points:
            curve.plot(*zip(*points), marker="o", markersize=3, color=color, label=labels[run.name])
        if best is not None:
            curve.plot(best["epoch"], best[metric], marker="*", markersize=12, color=color)
        value = best_values.get(run.name) if best_values is not None else (best or {}).get(metric)
        if isinstance(value, (int, float)):
            names.append(labels[run.name])
            bests.append(value)
            colors.append(color)
    if not curve.lines:
        curve.text(0.5, 0.5, "no validation values to plot", ha="center", va="center", transform=curve.transAxes)
    else:
        curve.set(xlabel="epoch", ylabel=metric, title=f"validation {metric} (star: best)")
        curve.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        if len(curve.get_legend_handles_labels()[1]) <= 12:
            curve.legend(fontsize="small")
    if names:
        drawn = bars.bar(range(len(names)), bests, color=colors)
        bars.bar_label(drawn, fmt="%.4g", fontsize="small")
        bars.set_xticks(range(len(names)), names, rotation=45, ha="right")
        bars.set(ylabel=metric, title=title)
    curve.grid(alpha=0.3)
    return fig, title
