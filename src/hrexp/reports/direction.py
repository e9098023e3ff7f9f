"""Which way is better for a metric of a run, and the validation row where it was best.

The direction of a metric comes only from the run itself, never from the metric's name:

* a run with a record: :meth:`hrexp.run_record.RunRecord.mode` (``metric_modes`` and ``monitor``,
  filled at training time from each metric's own ``higher_is_better``; for a record of schema 1,
  from the run's ``config.yaml`` when it has one);
* a run without a (readable) record, e.g. a killed one: its ``config.yaml`` (``task.monitor`` and
  ``callbacks.best_metrics.monitors``, see :func:`hrexp.run_record.monitor_and_modes_from_config`).

Where neither says, the direction is unknown (:func:`unknown_direction` says why) and the
comparison leaves that run's best cells empty rather than guess.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from hrexp.run_record import CONFIG_FILE, RESULTS_FILE, RunRecord

log = logging.getLogger(__name__)


class Run(Protocol):
    """What the direction of a run's metrics is read from (:class:`hrexp.reports.runs.Run` has it). A protocol,
    so that ``runs``, which uses these functions, is not imported back here."""

    record: RunRecord | None
    config_modes: dict[str, Any]
    has_config: bool


def is_better(value: float, than: float, mode: str) -> bool:
    """Whether ``value`` beats ``than`` in direction ``mode`` (``"min"``/``"max"``); ties do not."""
    return value > than if mode == "max" else value < than


def best_row(history: Sequence[Mapping[str, float]], metric: str, mode: str) -> Mapping[str, float] | None:
    """The validation row where ``metric`` was best in direction ``mode``; the first one on ties.

    The first on ties is the row BestMetrics and the best-metric checkpoint keep.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"best_row: mode must be 'min' or 'max', got {mode!r}")
    best = None
    for row in history:
        value = row.get(metric)
        if value is not None and (best is None or is_better(value, best[metric], mode)):
            best = row
    return best


def metric_mode(run: Run, metric: str) -> str | None:
    """``"min"``/``"max"`` for ``metric`` of ``run``, from its record (its config without one); else None."""
    if run.record is not None:
        return run.record.mode(metric)
    return run.config_modes.get(metric)


def unknown_direction(run: Run, metric: str) -> str:
    """Why :func:`metric_mode` knows no direction for ``metric`` of ``run`` (for the run's note)."""
    record = run.record
    if record is not None:
        if record.monitor is None and not record.metric_modes:  # schema 1, read without a usable config
            beside = f"its {CONFIG_FILE} names no monitor" if run.has_config else f"no {CONFIG_FILE}"
            return f"{RESULTS_FILE} of schema 1 and {beside}"
        return f"not in {RESULTS_FILE}'s monitor or metric_modes"
    if not run.has_config:
        return f"no {CONFIG_FILE} either"
    return f"not in {CONFIG_FILE}'s task.monitor or callbacks.best_metrics"


def unknown_headline(run: Run) -> str:
    """Why a run has no headline metric: nothing in the run says what it was selected on."""
    if run.record is not None:
        return f"{RESULTS_FILE} names no monitor"
    if not run.has_config:
        return f"no {CONFIG_FILE} either"
    return f"{CONFIG_FILE} has no task.monitor with a mode"


def unknown_note(run: Run, metrics: Iterable[str]) -> str | None:
    """``direction of val/mre unknown: <why>`` for the metrics of ``run`` without a direction, or None."""
    by_reason: dict[str, list[str]] = {}
    for metric in dict.fromkeys(metrics):
        if metric_mode(run, metric) is None:
            by_reason.setdefault(unknown_direction(run, metric), []).append(metric)
    return "; ".join(f"direction of {', '.join(ms)} unknown: {why}" for why, ms in by_reason.items()) or None


def shared_mode(runs: Iterable[Run], metric: str | None) -> str | None:
    """The direction of ``metric`` in the runs that know it (the most common, should they disagree).

    None when no run knows it (or ``metric`` is None). Runs that disagree are logged.
    """
    if metric is None:
        return None
    counts = Counter(m for m in (metric_mode(run, metric) for run in runs) if m is not None)
    if len(counts) > 1:
        log.warning("runs disagree on the direction of %s (%s); sorting as most do",
                    metric, ", ".join(f"{mode}: {n}" for mode, n in counts.items()))
    return counts.most_common(1)[0][0] if counts else None
