"""The comparison table: its columns, one row of raw values per run, and sorting.

The numbers come from each run's ``metrics.csv``, so they equal the run's own log: the best value
of the run's headline metric (its record's monitor: ``val/mre`` for landmarks, ``val/AP`` for
pose, ``val/mIoU`` for segmentation) is the min or max of its validation column, in the direction
the run's record gives (:mod:`hrexp.reports.direction`); the best epoch is the epoch of that row;
every other metric but ``val/loss`` (which has its own best) is read from that same row, so a row
of the table describes one checkpoint, the one ``checkpoint_best_metric`` kept.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from hrexp.reports.direction import best_row, metric_mode, unknown_headline, unknown_note
from hrexp.reports.runs import METRICS_CSV, CompareError, Run, distinguishing_overrides, natural_key
from hrexp.run_record import RESULTS_FILE, RunRecord

LOSS = "val/loss"
LABELS = {LOSS: "val loss", "val/mre": "val MRE (px)", "val/mre_mm": "val MRE (mm)"}
FIXED_COLUMNS = ["run", "status", "model", "task", "params (M)", "G multiply-adds", "pretrained"]
TAIL_COLUMNS = ["best epoch", "train time (s)", "best checkpoint"]
NOTE = "note"
OVERRIDES = "overrides"


def metric_header(metric: str, headlines: set[str]) -> str:
    """The column header: ``val/mre`` -> ``best val MRE (px)`` (a headline), ``val/sdr_4`` -> ``val SDR@4px``."""
    sdr = re.fullmatch(r"val/sdr_(.+)", metric)
    label = LABELS.get(metric) or (f"val SDR@{sdr.group(1)}px" if sdr else metric.replace("/", " ", 1))
    return f"best {label}" if metric == LOSS or metric in headlines else label


def headlines(runs: Sequence[Run]) -> list[str]:
    """The runs' headline metrics, the most common first."""
    return [m for m, _ in Counter(r.headline for r in runs if r.headline).most_common()]


def _record_best(run: Run) -> dict[str, Any]:
    return run.record.best if run.record is not None else {}


def default_metrics(runs: Sequence[Run]) -> list[str]:
    """Every validation metric with a value in some run: loss, headlines, then the rest in natural order."""
    found = {m for run in runs if run.status != "failed" for row in run.history for m in row if m.startswith("val/")}
    if not found:  # no CSV anywhere: what the records hold
        found = {m for run in runs if run.status != "failed" for m in _record_best(run)}
    first = [m for m in [LOSS, *headlines(runs)] if m in found]
    return first + sorted(found - set(first), key=natural_key)


def _known_metrics(runs: Sequence[Run]) -> set[str]:
    return {c for run in runs for c in run.csv_columns if c.startswith("val/")} | {
        m for run in runs for m in _record_best(run)}


def resolve_metrics(names: Sequence[str], runs: Sequence[Run]) -> list[str]:
    """The ``--metrics`` names, ``val/`` optional (``mre`` is ``val/mre``); unknown ones are an error."""
    known = _known_metrics(runs)
    out = []
    for name in names:
        metric = name if name in known or name.startswith("val/") else f"val/{name}"
        if metric not in known:
            raise CompareError(f"--metrics: no run logged {name!r}; known: {', '.join(sorted(known, key=natural_key))}")
        out.append(metric)
    return list(dict.fromkeys(out))


def run_values(run: Run, metrics: Sequence[str]) -> tuple[dict[str, float | None], int | None, str | None]:
    """The run's metric cells, best epoch and a note, from its CSV (from the record when it has no rows).

    The headline and ``val/loss`` cells are each their column's best, in the direction the run
    gives; the other metrics are the values of the row where the headline was best. Where a
    direction is unknown those cells stay empty (all of them for the headline's) and the note
    says why. A failed run has no metric cells.
    """
    headline = run.headline
    if run.status == "failed":
        return {}, None, None
    if headline is None:
        return {}, None, f"metric to rank on unknown: {unknown_headline(run)}"
    if not run.history:
        missing = f"no {METRICS_CSV}" if not run.has_csv else f"no validation rows in {METRICS_CSV}"
        best = _record_best(run)
        if not best:
            return {}, None, missing
        # The record's own best values: computed at training time, no direction needed here.
        values = {m: best[m].value if m in best else None for m in metrics}
        return values, best[headline].epoch if headline in best else None, f"{missing}: values from {RESULTS_FILE}"
    own_best = [m for m in dict.fromkeys([headline, *metrics]) if m in (headline, LOSS)]
    modes = {m: metric_mode(run, m) for m in own_best}
    at_best = (best_row(run.history, headline, modes[headline]) or {}) if modes[headline] else {}
    values: dict[str, float | None] = {}
    for metric in metrics:
        if metric in own_best:
            own = best_row(run.history, metric, modes[metric]) if modes[metric] else None
            values[metric] = own[metric] if own else None
        else:
            values[metric] = at_best.get(metric)
    epoch = at_best.get("epoch")
    return values, None if epoch is None else int(epoch), unknown_note(run, own_best)


def _pretrained(record: RunRecord | None) -> str | None:
    if record is None or record.pretrained is None:
        return None  # older records: unknown, not "no"
    value = record.pretrained
    if value in (False, "", "none", "null"):
        return "no"
    return "yes" if value is True else str(value)


def build_table(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and one row per run (raw values: numbers, strings or ``None`` for an empty cell)."""
    metrics = list(metrics) if metrics else default_metrics(runs)
    headers = {m: metric_header(m, set(headlines(runs))) for m in metrics}
    # What tells the runs apart (e.g. the lr of each Optuna trial): overrides not shared by all runs.
    own_overrides = distinguishing_overrides([r.overrides for r in runs])
    rows = []
    for run, overrides in zip(runs, own_overrides):
        record = run.record
        choices = record.choices if record is not None else {}
        total = (record.params or {}).get("total") if record is not None else None
        values, epoch, note = run_values(run, metrics)
        checkpoint = record.checkpoints.get("checkpoint_best_metric") if record is not None else None
        row: dict[str, Any] = {
            "run": run.name,
            OVERRIDES: " ".join(overrides) or None,
            "status": run.status,
            "model": choices.get("model"),
            "task": choices.get("task"),
            "params (M)": None if total is None else total / 1e6,
            "G multiply-adds": record.macs_g if record is not None else None,
            "pretrained": _pretrained(record),
        }
        row.update({headers[m]: values.get(m) for m in metrics})
        row.update({"best epoch": epoch, "train time (s)": record.train_time_s if record is not None else None,
                    "best checkpoint": checkpoint.path if checkpoint is not None else None,
                    NOTE: "; ".join(run.notes + [note] * bool(note)) or None})
        rows.append(row)
    columns = FIXED_COLUMNS + [headers[m] for m in metrics] + TAIL_COLUMNS
    if any(r[OVERRIDES] for r in rows):
        columns.insert(1, OVERRIDES)
    if any(r[NOTE] for r in rows):  # a clean comparison has no empty note column to paste
        columns.append(NOTE)
    return columns, rows


def resolve_column(name: str, columns: Sequence[str], metric_headers: Mapping[str, str]) -> str:
    """A column by header (``best val MRE (px)``), metric name (``val/mre``, ``mre``) or unique header prefix."""
    if name in columns:
        return name
    for candidate in (name, f"val/{name}"):
        if metric_headers.get(candidate) in columns:
            return metric_headers[candidate]
    lowered = {c.lower(): c for c in columns}
    if name.lower() in lowered:
        return lowered[name.lower()]
    prefixed = [c for c in columns if c.lower().startswith(name.lower())]
    if len(prefixed) == 1:  # "params" for "params (M)"
        return prefixed[0]
    raise CompareError(f"--sort: no column {name!r}; columns: {', '.join(columns)}")


def sort_rows(rows: Sequence[dict[str, Any]], column: str, descending: bool = False) -> list[dict[str, Any]]:
    """Rows sorted on one column; empty cells (failed runs) last in either direction."""
    def key(row: dict[str, Any]) -> tuple:
        value = row[column]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (0, value) if numeric else (1, natural_key(str(value)))

    present = [r for r in rows if r.get(column) not in (None, "")]
    missing = [r for r in rows if r.get(column) in (None, "")]
    return sorted(present, key=key, reverse=descending) + missing
