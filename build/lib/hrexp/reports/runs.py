"""Run folders for the comparison and the sweep report: finding them and reading one.

A run folder is what ``train.py`` leaves behind: ``results.json`` (the run record, read with
:func:`hrexp.run_record.read_record`), ``config.yaml`` (the resolved config), ``csv/metrics.csv``
(Lightning's CSVLogger) and Hydra's ``.hydra/overrides.yaml``. A killed run has the log and the
config but no record; whatever is missing or unreadable becomes a note on the run, never an
exception.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hrexp.reports.direction import best_row, metric_mode
from hrexp.run_record import (
    CONFIG_FILE,
    RESULTS_FILE,
    Monitor,
    RunRecord,
    monitor_and_modes_from_config,
    read_record,
    read_run_config,
)

log = logging.getLogger(__name__)

METRICS_CSV = Path("csv") / "metrics.csv"
BEST_METRIC_CHECKPOINT = "checkpoint_best_metric"


class CompareError(Exception):
    """A problem with the command's input (missing folder, no run, unknown column): exit code 2."""


def natural_key(text: str) -> list[Any]:
    """Sort key that puts ``2`` before ``10`` (Hydra job numbers), case-insensitive otherwise."""
    # re.split with a group alternates text and digits, so item i has the same type in every key.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


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
    return (path / RESULTS_FILE).is_file() or (path / METRICS_CSV).is_file()


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
            raise CompareError(f"{folder}: no run folder in it (a run folder holds {RESULTS_FILE} or {METRICS_CSV})")
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


@dataclass
class Run:
    """One run folder: its record (``None`` when absent or unreadable), validation rows and notes.

    Attributes:
        record: The run record, any schema version read as :class:`~hrexp.run_record.RunRecord`.
        config_monitor, config_modes: What ``config.yaml`` says of the monitor and the metrics'
            directions; read only for a run without a (readable) record, the record's word otherwise.
        has_config: Whether the folder has a ``config.yaml`` (to say why a direction is unknown).
        overrides: The job's command-line overrides (Hydra's ``.hydra/overrides.yaml``).
    """

    path: Path
    name: str
    record: RunRecord | None
    csv_columns: list[str]
    history: list[dict[str, float]]
    has_csv: bool
    notes: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    config_monitor: Monitor | None = None
    config_modes: dict[str, str] = field(default_factory=dict)
    has_config: bool = False

    @property
    def status(self) -> str:
        """The record's ``running``/``finished``/``failed``; ``unknown`` without a record."""
        return self.record.status if self.record is not None else "unknown"

    @property
    def headline(self) -> str | None:
        """The metric this run was selected on: its record's monitor (the config's without a record).

        A record of schema 1 read without a ``config.yaml`` has no monitor; its best-metric
        checkpoint still names the metric (whose direction, though, stays unknown).
        """
        if self.record is None:
            return None if self.config_monitor is None else self.config_monitor.metric
        if self.record.monitor is not None:
            return self.record.monitor.metric
        checkpoint = self.record.checkpoints.get(BEST_METRIC_CHECKPOINT)
        return checkpoint.monitor if checkpoint is not None and checkpoint.monitor else None


def load_run(path: Path, name: str) -> Run:
    """Read a run folder; what is missing or unreadable becomes a note, never an exception."""
    record: RunRecord | None = None
    notes: list[str] = []
    if (path / RESULTS_FILE).is_file():
        try:
            record = read_record(path)
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # RecordError is a ValueError
            notes.append(f"unreadable {RESULTS_FILE}: {exc}")
    else:
        notes.append(f"no {RESULTS_FILE} (still running, or stopped before the end)")
    if record is not None and record.status == "failed":
        notes.insert(0, str(record.error or "failed (no error recorded)"))
    config_monitor, config_modes = None, {}
    if record is None:  # a killed run: its config says what it followed, and in which direction
        config_monitor, config_modes = monitor_and_modes_from_config(read_run_config(path))
    columns: list[str] = []
    history: list[dict[str, float]] = []
    has_csv = (path / METRICS_CSV).is_file()
    if has_csv:
        try:
            columns, history = read_metrics_csv(path / METRICS_CSV)
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            notes.append(f"unreadable {METRICS_CSV}: {exc}")
    run = Run(path=path, name=name, record=record, csv_columns=columns, history=history, has_csv=has_csv, notes=notes,
              overrides=read_overrides(path), config_monitor=config_monitor, config_modes=config_modes,
              has_config=(path / CONFIG_FILE).is_file())
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
    """Disagreements between the record's ``best`` and the best of ``metrics.csv``, also logged.

    Each metric is checked in the direction the record gives it; one without is not checked.
    """
    problems = []
    for metric, rec in (run.record.best if run.record is not None else {}).items():
        mode = metric_mode(run, metric)
        row = best_row(run.history, metric, mode) if mode else None
        if row is None or rec.value is None:
            continue  # nothing to compare with
        same_value = math.isclose(row[metric], float(rec.value), rel_tol=1e-6, abs_tol=1e-12)
        if not same_value or row["epoch"] != rec.epoch:
            msg = (f"{metric}: metrics.csv best {row[metric]:.6g} at epoch {row['epoch']}, "
                   f"{RESULTS_FILE} {float(rec.value):.6g} at epoch {rec.epoch}")
            log.warning("%s: %s", run.name, msg)
            problems.append(msg)
    return problems

