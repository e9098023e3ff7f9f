"""Which way is better for each value a metric returns, as the metric itself declares it.

torchmetrics puts one ``higher_is_better`` on a metric. hrexp's metrics return several values at
once (``mre`` and ``sdr_4`` from one :class:`~hrexp.metrics.landmark_error.LandmarkError`), which may
go different ways: such a metric also declares ``higher_is_better_by_key`` (output key -> bool), and
its ``higher_is_better`` covers every key not listed. Nothing is ever guessed from a metric's name.
"""

from __future__ import annotations

from typing import Any


def output_mode(metric: Any, key: str) -> str | None:
    """``"max"`` / ``"min"`` for output ``key`` of ``metric``; None when the metric declares no direction."""
    by_key = getattr(metric, "higher_is_better_by_key", None) or {}
    higher = by_key.get(key, getattr(metric, "higher_is_better", None))
    return None if higher is None else ("max" if higher else "min")
