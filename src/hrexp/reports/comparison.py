"""The comparison report of runs, read from their own folders (not from a W&B server).

:func:`compare` is the whole job behind ``python -m hrexp.compare`` (:mod:`hrexp.compare`): find
the run folders (:mod:`hrexp.reports.runs`), build the table (:mod:`hrexp.reports.table`), sort it
in the direction the runs' records give (:mod:`hrexp.reports.direction`), and write
``comparison.md``/``.csv`` (:mod:`hrexp.reports.formats`) and ``comparison.png``
(:mod:`hrexp.reports.plot`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrexp.reports.direction import shared_mode
from hrexp.reports.formats import log_wandb_table, markdown, print_console, write_csv
from hrexp.reports.plot import plot
from hrexp.reports.runs import CompareError, Run, find_runs, load_run, run_names
from hrexp.reports.table import build_table, default_metrics, headlines, metric_header, resolve_column, \
    resolve_metrics, sort_rows

__all__ = ["CompareError", "Comparison", "FOOTNOTE", "compare", "write_report"]


@dataclass
class Comparison:
    """What :func:`compare` computed and wrote."""

    columns: list[str]
    rows: list[dict[str, Any]]
    runs: list[Run]
    headline: str | None
    sort_column: str
    descending: bool
    files: dict[str, Path]


FOOTNOTE = (
    "Computed by `python -m hrexp.compare` from each run's csv/metrics.csv. \"best\" columns are the "
    "minimum or maximum over the run's validations, in the direction its run record gives for that "
    "metric (results.json's monitor and metric_modes; config.yaml for a run without a record), never "
    "guessed from the metric's name; the other metric columns are read at the validation where the "
    "headline metric ({headline}) was best, the best epoch (the checkpoint_best_metric checkpoint). "
    "SDR@r: fraction (0-1) of landmarks within r px. G multiply-adds at each run's input size."
)


def compare(folders: Sequence[str | Path], out: str | Path | None = None, sort: str | None = None,
            descending: bool | None = None, metrics: Sequence[str] | None = None, console: bool = True,
            wandb: bool = False, wandb_project: str = "hrexp", wandb_group: str | None = None) -> Comparison:
    """Find the runs, build the table and write ``comparison.md``, ``.csv`` and ``.png`` to ``out``.

    Args:
        folders: run folders, or folders (sweeps) searched recursively for run folders.
        out: output folder; default the first of ``folders``.
        sort: column to sort on (header or metric name); default the headline metric.
        descending: sort direction; default descending when the sorted metric is higher-is-better
            in the runs' records (ascending for other columns, or when no run knows the direction).
        metrics: metric columns (``val/mre``, ...); default every validation metric logged.
        console: print the table with rich.
        wandb: also log the table as a W&B Table (see :func:`hrexp.reports.formats.log_wandb_table`).

    Raises:
        CompareError: missing folder, no run, unknown metric or sort column.
    """
    if not folders:
        raise CompareError("no folder given")
    paths = find_runs(folders)
    names = run_names(paths)
    runs = [load_run(p, names[p]) for p in paths]
    metrics = resolve_metrics(metrics, runs) if metrics else default_metrics(runs)
    columns, rows = build_table(runs, metrics)

    counts = Counter(r.headline for r in runs if r.headline and r.status != "failed")
    headline = counts.most_common(1)[0][0] if counts else None
    metric_headers = {m: metric_header(m, set(headlines(runs))) for m in metrics}
    if sort is None:
        sort_column = metric_headers.get(headline) if headline in metric_headers else "run"
        sort_metric = headline if sort_column != "run" else None
    else:
        sort_column = resolve_column(sort, columns, metric_headers)
        sort_metric = next((m for m, h in metric_headers.items() if h == sort_column), None)
    default_desc = shared_mode(runs, sort_metric) == "max"
    descending = default_desc if descending is None else descending
    rows = sort_rows(rows, sort_column, descending)
    by_name = {r.name: r for r in runs}
    runs = [by_name[row["run"]] for row in rows]

    out = Path(out) if out is not None else Path(folders[0])
    out.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent
    if base in paths:
        base = base.parent
    footnote = FOOTNOTE.format(headline=headline or "none")
    files = {
        "md": out / "comparison.md",
        "csv": out / "comparison.csv",
        "png": out / "comparison.png",
    }
    files["md"].write_text(markdown(columns, rows, base, footnote))
    write_csv(files["csv"], columns, rows)
    best_header = metric_headers.get(headline) if headline else None
    plot(runs, headline, files["png"], {row["run"]: row.get(best_header) for row in rows} if best_header else None,
         mode=shared_mode(runs, headline))
    if console:
        print_console(columns, rows, base)
    if wandb:
        log_wandb_table(rows, columns, project=wandb_project, group=wandb_group, dir=out)
    return Comparison(columns=columns, rows=rows, runs=runs, headline=headline, sort_column=sort_column,
                      descending=descending, files=files)


def write_report(folders: Sequence[str | Path], out_dir: str | Path | None = None, **kwargs: Any) -> list[Path]:
    """:func:`compare` without the console table, for callers that print their own (the sweep callback).

    Returns:
        The written ``comparison.md``, ``.csv`` and ``.png``.
    """
    kwargs.setdefault("console", False)
    return list(compare(folders, out=out_dir, **kwargs).files.values())
