"""The comparison report of finished runs, read from their own records (not from a W&B server).

A run folder is what ``train.py`` leaves behind: ``results.json`` (the run record, see
:mod:`hrexp.training.train_run`) and ``csv/metrics.csv`` (Lightning's CSVLogger). The numbers in
the report are computed from ``metrics.csv``, so they equal the run's own log: the best value of
the headline metric (``val/mre`` for landmarks, ``val/AP`` for pose, ``val/mIoU`` for segmentation)
is the min (or max) of its validation column, the best epoch is the epoch of that row, and every
other metric but ``val/loss`` (which has its own best) is read from that same validation row, so a
row of the table describes one checkpoint, the one ``checkpoint_best_metric`` kept. The record's
``best`` values are cross-checked against them.

Entry point: ``python -m hrexp.compare`` (:mod:`hrexp.compare`); :func:`compare` is the whole job.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESULTS = "results.json"
METRICS_CSV = Path("csv") / "metrics.csv"
LOSS = "val/loss"
# Metric names (last part, lower case) where larger is better; everything else (errors, losses) is
# minimised. SDR, Dice and accuracy are fractions of hits, so they go up too.
MAX_PREFIXES = ("ap", "ar", "miou", "iou", "dice", "sdr", "pck", "acc", "pixel_acc", "f1")
# The headline of a run with no record, in this order of preference (one per task).
KNOWN_HEADLINES = ("val/mre", "val/AP", "val/mIoU")
LABELS = {LOSS: "val loss", "val/mre": "val MRE (px)", "val/mre_mm": "val MRE (mm)"}
FIXED_COLUMNS = ["run", "status", "model", "task", "params (M)", "G multiply-adds", "pretrained"]
TAIL_COLUMNS = ["best epoch", "train time (s)", "best checkpoint"]
NOTE = "note"
OVERRIDES = "overrides"
# Markdown formats of the non-metric numeric columns; metric columns use 4 significant digits.
MD_FORMATS = {"params (M)": "{:.2f}", "G multiply-adds": "{:.2f}", "train time (s)": "{:.0f}"}


class CompareError(Exception):
    """A problem with the command's input (missing folder, no run, unknown column): exit code 2."""


def natural_key(text: str) -> list[Any]:
    """Sort key that puts ``2`` before ``10`` (Hydra job numbers), case-insensitive otherwise."""
    # re.split with a group alternates text and digits, so item i has the same type in every key.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def metric_mode(metric: str) -> str:
    """``"max"`` for metrics where larger is better (AP, AR, mIoU, Dice, SDR, ...), else ``"min"``."""
    return "max" if metric.rsplit("/", 1)[-1].lower().startswith(MAX_PREFIXES) else "min"


def _better(value: float, than: float, mode: str) -> bool:
    return value > than if mode == "max" else value < than


def _number(text: Any) -> float | None:
    """A CSV cell as a float; ``None`` for empty cells and NaN (e.g. ``val/mre_mm`` without spacing)."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


# ----------------------------------------------------------------------------- finding runs


def is_run_folder(path: Path) -> bool:
    """A run folder holds a record or a CSV log (a killed run has the log but no record yet)."""
    return (path / RESULTS).is_file() or (path / METRICS_CSV).is_file()


def _search(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if is_run_folder(here):
            found.append(here)
            dirnames.clear()  # runs do not nest; their checkpoints/wandb folders need no walk
            continue
        # Hidden folders are Hydra's .hydra and the like; natural order lists job 2 before job 10.
        dirnames[:] = sorted((d for d in dirnames if not d.startswith(".")), key=natural_key)
    return found


def find_runs(folders: Sequence[str | Path]) -> list[Path]:
    """The run folders given, or found below the given folders, in order; each one once.

    Raises:
        CompareError: a folder does not exist or holds no run folder.
    """
    runs: list[Path] = []
    for folder in map(Path, folders):
        if not folder.exists():
            raise CompareError(f"{folder}: no such folder")
        if not folder.is_dir():
            raise CompareError(f"{folder}: not a folder")
        found = [folder] if is_run_folder(folder) else _search(folder)
        if not found:
            raise CompareError(f"{folder}: no run folder in it (a run folder holds {RESULTS} or {METRICS_CSV})")
        runs.extend(p.resolve() for p in found)
    return list(dict.fromkeys(runs))  # a run given twice, or also inside a given sweep, is listed once


def run_names(paths: Sequence[Path]) -> dict[Path, str]:
    """Each run's folder relative to the runs' common parent (``0``, ``1``, ... for one sweep)."""
    if len(paths) == 1:
        return {paths[0]: paths[0].name}
    common = Path(os.path.commonpath(paths))
    if common in paths:  # one given run holds another: name them from the outer run's parent
        common = common.parent
    return {p: p.relative_to(common).as_posix() for p in paths}


# ----------------------------------------------------------------------------- reading a run


def read_metrics_csv(path: Path) -> tuple[list[str], list[dict[str, float]]]:
    """The columns of a CSVLogger file and its validation rows, in logged order.

    A validation row is one with a ``val/*`` value; each becomes ``{"epoch", "step", "val/...": value}``
    with empty and NaN cells left out. Rows of the same (epoch, step) are merged, the later value
    winning, since a resumed run can log a step again.
    """
    merged: dict[tuple[int, int], dict[str, float]] = {}
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        for raw in reader:
            values = {k: _number(v) for k, v in raw.items() if k and k.startswith("val/")}
            values = {k: v for k, v in values.items() if v is not None}
            epoch, step = _number(raw.get("epoch")), _number(raw.get("step"))
            if not values or epoch is None:
                continue
            key = (int(epoch), -1 if step is None else int(step))
            merged.setdefault(key, {"epoch": key[0], "step": key[1]}).update(values)
        columns = list(reader.fieldnames or [])
    return columns, list(merged.values())


def best_row(history: Sequence[Mapping[str, float]], metric: str,
             mode: str | None = None) -> Mapping[str, float] | None:
    """The validation row where ``metric`` was best; the first one on ties, as BestMetrics keeps it."""
    mode = mode or metric_mode(metric)
    best = None
    for row in history:
        value = row.get(metric)
        if value is not None and (best is None or _better(value, best[metric], mode)):
            best = row
    return best


@dataclass
class Run:
    """One run folder: its record (``{}`` when there is none), validation rows and notes."""

    path: Path
    name: str
    record: dict[str, Any]
    csv_columns: list[str]
    history: list[dict[str, float]]
    has_csv: bool
    notes: list[str] = field(default_factory=list)
    # The job's command-line overrides (Hydra's .hydra/overrides.yaml), when the run has them.
    overrides: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.record.get("status") or "unknown")

    @property
    def headline(self) -> str | None:
        """The metric this run was selected on: the record's best key that is not ``val/loss``."""
        keys = [k for k in (self.record.get("best") or {}) if k != LOSS]
        if keys:
            monitor = ((self.record.get("checkpoints") or {}).get("checkpoint_best_metric") or {}).get("monitor")
            return monitor if monitor in keys else keys[0]
        # No record: BestMetrics' best/* columns in the CSV say what the run followed.
        metrics = [c for c in self.csv_columns if c.startswith("val/") and c != LOSS]
        for metric in metrics:
            if "best/" + metric.replace("/", "_") in self.csv_columns:
                return metric
        for metric in KNOWN_HEADLINES:
            if metric in metrics:
                return metric
        return LOSS if LOSS in self.csv_columns else None


def load_run(path: Path, name: str) -> Run:
    """Read a run folder; what is missing or unreadable becomes a note, never an exception."""
    record: dict[str, Any] = {}
    notes: list[str] = []
    if (path / RESULTS).is_file():
        try:
            record = json.loads((path / RESULTS).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            notes.append(f"unreadable {RESULTS}: {exc}")
    else:
        notes.append(f"no {RESULTS} (still running, or stopped before the end)")
    if record.get("status") == "failed":
        notes.insert(0, str(record.get("error") or "failed (no error recorded)"))
    columns: list[str] = []
    history: list[dict[str, float]] = []
    has_csv = (path / METRICS_CSV).is_file()
    if has_csv:
        try:
            columns, history = read_metrics_csv(path / METRICS_CSV)
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            notes.append(f"unreadable {METRICS_CSV}: {exc}")
    run = Run(path=path, name=name, record=record, csv_columns=columns, history=history, has_csv=has_csv, notes=notes,
              overrides=read_overrides(path))
    if run.status == "finished":  # a running run's log is ahead of its record by design
        run.notes.extend(cross_check(run))
    return run


def read_overrides(path: Path) -> list[str]:
    """The run's Hydra overrides (``.hydra/overrides.yaml``), or ``[]`` when absent or unreadable."""
    file = path / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return []
    import yaml

    try:
        return [str(o) for o in (yaml.safe_load(file.read_text()) or [])]
    except (OSError, yaml.YAMLError):
        return []


def distinguishing_overrides(overrides: Sequence[Sequence[str]]) -> list[list[str]]:
    """Each run's overrides without those every run that has overrides shares (e.g. each trial's lr)."""
    present = [set(o) for o in overrides if o]
    shared = set.intersection(*present) if present else set()
    return [[o for o in run if o not in shared] for run in overrides]


def cross_check(run: Run) -> list[str]:
    """Disagreements between the record's ``best`` and the best of ``metrics.csv``, also logged."""
    problems = []
    for metric, rec in (run.record.get("best") or {}).items():
        row = best_row(run.history, metric)
        if row is None or not isinstance(rec, Mapping) or rec.get("value") is None:
            continue  # nothing to compare with
        same_value = math.isclose(row[metric], float(rec["value"]), rel_tol=1e-6, abs_tol=1e-12)
        if not same_value or row["epoch"] != rec.get("epoch"):
            msg = (f"{metric}: metrics.csv best {row[metric]:.6g} at epoch {row['epoch']}, "
                   f"{RESULTS} {float(rec['value']):.6g} at epoch {rec.get('epoch')}")
            log.warning("%s: %s", run.name, msg)
            problems.append(msg)
    return problems


# ----------------------------------------------------------------------------- the table


def metric_header(metric: str, headlines: set[str]) -> str:
    """The column header: ``val/mre`` -> ``best val MRE (px)`` (a headline), ``val/sdr_4`` -> ``val SDR@4px``."""
    sdr = re.fullmatch(r"val/sdr_(.+)", metric)
    label = LABELS.get(metric) or (f"val SDR@{sdr.group(1)}px" if sdr else metric.replace("/", " ", 1))
    return f"best {label}" if metric == LOSS or metric in headlines else label


def default_metrics(runs: Sequence[Run]) -> list[str]:
    """Every validation metric with a value in some run: loss, headlines, then the rest in natural order."""
    found = {m for run in runs if run.status != "failed" for row in run.history for m in row if m.startswith("val/")}
    if not found:  # no CSV anywhere: what the records hold
        found = {m for run in runs if run.status != "failed" for m in (run.record.get("best") or {})}
    headlines = [m for m, _ in Counter(r.headline for r in runs if r.headline).most_common()]
    first = [m for m in [LOSS, *headlines] if m in found]
    return first + sorted(found - set(first), key=natural_key)


def _known_metrics(runs: Sequence[Run]) -> set[str]:
    return {c for run in runs for c in run.csv_columns if c.startswith("val/")} | {
        m for run in runs for m in (run.record.get("best") or {})}


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

    The headline and ``val/loss`` cells are each their column's best; the other metrics are the
    values of the row where the headline was best. A failed run has no metric cells.
    """
    headline = run.headline
    if run.status == "failed" or headline is None:
        return {}, None, None
    if not run.history:
        missing = f"no {METRICS_CSV}" if not run.has_csv else f"no validation rows in {METRICS_CSV}"
        best = run.record.get("best") or {}
        if not best:
            return {}, None, missing
        values = {m: (best.get(m) or {}).get("value") for m in metrics}
        return values, (best.get(headline) or {}).get("epoch"), f"{missing}: values from {RESULTS}"
    at_best = best_row(run.history, headline) or {}
    values: dict[str, float | None] = {}
    for metric in metrics:
        if metric in (headline, LOSS):
            own = best_row(run.history, metric)
            values[metric] = own[metric] if own else None
        else:
            values[metric] = at_best.get(metric)
    epoch = at_best.get("epoch")
    return values, None if epoch is None else int(epoch), None


def _pretrained(record: Mapping[str, Any]) -> str | None:
    if "pretrained" not in record:
        return None  # older records: unknown, not "no"
    value = record["pretrained"]
    if value in (None, False, "", "none", "null"):
        return "no"
    return "yes" if value is True else str(value)


def build_table(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and one row per run (raw values: numbers, strings or ``None`` for an empty cell)."""
    metrics = list(metrics) if metrics else default_metrics(runs)
    headlines = {r.headline for r in runs if r.headline}
    headers = {m: metric_header(m, headlines) for m in metrics}
    # What tells the runs apart (e.g. the lr of each Optuna trial): overrides not shared by all runs.
    own_overrides = distinguishing_overrides([r.overrides for r in runs])
    rows = []
    for run, overrides in zip(runs, own_overrides):
        record = run.record
        choices = record.get("choices") or {}
        total = (record.get("params") or {}).get("total")
        values, epoch, note = run_values(run, metrics)
        ckpt = ((record.get("checkpoints") or {}).get("checkpoint_best_metric") or {}).get("path")
        row: dict[str, Any] = {
            "run": run.name,
            OVERRIDES: " ".join(overrides) or None,
            "status": run.status,
            "model": choices.get("model"),
            "task": choices.get("task"),
            "params (M)": None if total is None else total / 1e6,
            "G multiply-adds": record.get("macs_g"),
            "pretrained": _pretrained(record),
        }
        row.update({headers[m]: values.get(m) for m in metrics})
        row.update({"best epoch": epoch, "train time (s)": record.get("train_time_s"),
                    "best checkpoint": ckpt, NOTE: "; ".join(run.notes + [note] * bool(note)) or None})
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


# ----------------------------------------------------------------------------- output


def _md_cell(column: str, value: Any, base: Path | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        text = MD_FORMATS.get(column, "{:.4g}").format(value)
    elif column == "best checkpoint" and base is not None:
        try:
            text = Path(value).relative_to(base).as_posix()
        except ValueError:  # moved runs keep their training machine's paths
            text = str(value)
    elif column == "pretrained" and "/" in str(value):
        text = Path(str(value)).name  # a local weights file: its name is what tells runs apart
    elif column == NOTE:
        first = str(value).splitlines()[0]
        text = first if len(first) <= 120 else first[:119] + "…"  # the CSV keeps the whole note
    else:
        text = str(value)
    return text.replace("|", "\\|")


def _numeric(column: str, rows: Sequence[Mapping[str, Any]]) -> bool:
    values = [r.get(column) for r in rows if r.get(column) is not None]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def markdown(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], base: Path | None = None,
             footnote: str = "") -> str:
    """A GitHub/pandoc markdown table, numbers right-aligned, checkpoint paths relative to ``base``."""
    align = ["---:" if _numeric(c, rows) else "---" for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(c, row.get(c), base) for c in columns) + " |")
    if footnote:
        lines += ["", footnote]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """The table at full precision (floats as Python writes them back exactly), empty cells empty."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return path


def plot(runs: Sequence[Run], metric: str | None, path: Path, best_values: Mapping[str, Any] | None = None) -> Path:
    """Left: the validation curve of ``metric`` per run against epoch; right: each run's best value.

    Args:
        runs: in the order of the bars.
        metric: the metric to plot (the headline).
        path: the PNG to write.
        best_values: run name -> the table's best value (so a run whose value comes from its record,
            with no curve, still gets its bar); default the best of each run's curve.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure with the Agg canvas directly: no pyplot state, no display backend to pick.
    fig = Figure(figsize=(13, 5), layout="constrained")
    FigureCanvasAgg(fig)
    curve, bars = fig.subplots(1, 2)
    mode = metric_mode(metric) if metric else "min"
    names, bests, colors = [], [], []
    for i, run in enumerate(runs):
        if run.status == "failed" or metric is None:
            continue
        color = f"C{i % 10}"
        points = [(r["epoch"], r[metric]) for r in run.history if r.get(metric) is not None]
        best = best_row(run.history, metric, mode)
        if points:
            curve.plot(*zip(*points), marker="o", markersize=3, color=color, label=run.name)
            curve.plot(best["epoch"], best[metric], marker="*", markersize=12, color=color)
        value = best_values.get(run.name) if best_values is not None else (best or {}).get(metric)
        if isinstance(value, (int, float)):
            names.append(run.name)
            bests.append(value)
            colors.append(color)
    if not names:
        curve.text(0.5, 0.5, "no validation values to plot", ha="center", va="center", transform=curve.transAxes)
    else:
        curve.set(xlabel="epoch", ylabel=metric, title=f"validation {metric} (star: best)")
        if curve.lines and len(names) <= 12:
            curve.legend(fontsize="small")
        drawn = bars.bar(range(len(names)), bests, color=colors)
        bars.bar_label(drawn, fmt="%.4g", fontsize="small")
        bars.set_xticks(range(len(names)), names, rotation=45, ha="right")
        bars.set(ylabel=metric, title=f"best {metric} per run ({'higher' if mode == 'max' else 'lower'} is better)")
    curve.grid(alpha=0.3)
    fig.savefig(path, dpi=120)
    return path


def print_console(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], base: Path | None) -> None:
    """The table's best values in a terminal; the per-metric columns at the best epoch are in the files."""
    from rich.console import Console
    from rich.table import Table

    keep = [c for c in columns if c in FIXED_COLUMNS or c in (OVERRIDES, "best epoch", "train time (s)", NOTE)
            or (c.startswith("best ") and c != "best checkpoint")]
    table = Table(title="Run comparison (all columns: comparison.md / comparison.csv)")
    for column in keep:
        table.add_column(column, justify="right" if _numeric(column, rows) else "left", no_wrap=True,
                         max_width=60 if column in (NOTE, OVERRIDES) else None)
    for row in rows:
        table.add_row(*(_md_cell(c, row.get(c), base).replace("\\|", "|") for c in keep))
    console = Console()
    if not console.is_terminal:  # piped to a log file: no terminal width to squeeze the table into
        console = Console(width=220)
    console.print(table)


# ----------------------------------------------------------------------------- W&B


def wandb_offline() -> bool:
    """Offline when ``WANDB_MODE`` says so, or when it says nothing and no API key is configured."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if mode == "online":
        return False
    from hrexp.training.loggers import wandb_api_key_configured  # imports Lightning: only when asked

    return not wandb_api_key_configured()


def log_wandb_table(rows: Sequence[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str], run: Any = None, *,
                    project: str = "hrexp", group: str | None = None, dir: str | Path | None = None) -> Any:
    """Log the comparison as a W&B Table under the key ``comparison``; return the table.

    Args:
        rows: dicts keyed by column (as :func:`build_table` gives) or sequences in column order.
        columns: the table's columns.
        run: a W&B run to log to; ``None`` starts one (job type ``comparison``, offline when
            :func:`wandb_offline`), and finishes it after logging.
        project, group, dir: for the run started when ``run`` is ``None``.
    """
    import wandb

    data = [[row.get(c) for c in columns] if isinstance(row, Mapping) else list(row) for row in rows]
    # One type per column: a W&B Table rejects a column mixing text with numbers or booleans.
    data = [[v if v is None or isinstance(v, (int, float, str)) and not isinstance(v, bool) else str(v)
             for v in row] for row in data]
    table = wandb.Table(columns=list(columns), data=data)
    own = run is None
    if own:
        run = wandb.init(project=project, group=group, job_type="comparison", dir=None if dir is None else str(dir),
                         mode="offline" if wandb_offline() else "online")
    try:
        run.log({"comparison": table})
    finally:
        if own:
            run.finish()
    return table


# ----------------------------------------------------------------------------- the job


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
    "minimum (maximum for AP, AR, mIoU, Dice) over the run's validations; the other metric columns are "
    "read at the validation where the headline metric ({headline}) was best, the best epoch (the "
    "checkpoint_best_metric checkpoint). SDR@r: fraction (0-1) of landmarks within r px. "
    "G multiply-adds at each run's input size."
)


def compare(folders: Sequence[str | Path], out: str | Path | None = None, sort: str | None = None,
            descending: bool | None = None, metrics: Sequence[str] | None = None, console: bool = True,
            wandb: bool = False, wandb_project: str = "hrexp", wandb_group: str | None = None) -> Comparison:
    """Find the runs, build the table and write ``comparison.md``, ``.csv`` and ``.png`` to ``out``.

    Args:
        folders: run folders, or folders (sweeps) searched recursively for run folders.
        out: output folder; default the first of ``folders``.
        sort: column to sort on (header or metric name); default the headline metric.
        descending: sort direction; default descending for max-metrics (AP, mIoU), else ascending.
        metrics: metric columns (``val/mre``, ...); default every validation metric logged.
        console: print the table with rich.
        wandb: also log the table as a W&B Table (see :func:`log_wandb_table`).

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
    metric_headers = {m: metric_header(m, {r.headline for r in runs if r.headline}) for m in metrics}
    if sort is None:
        sort_column = metric_headers.get(headline) if headline in metric_headers else "run"
        default_desc = headline is not None and sort_column != "run" and metric_mode(headline) == "max"
    else:
        sort_column = resolve_column(sort, columns, metric_headers)
        metric = next((m for m, h in metric_headers.items() if h == sort_column), None)
        default_desc = metric is not None and metric_mode(metric) == "max"
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
    plot(runs, headline, files["png"], {row["run"]: row.get(best_header) for row in rows} if best_header else None)
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
