"""Track the best value of monitored metrics, and the epoch it was reached, during training."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl


class BestMetrics(pl.Callback):
    """Log ``best/<metric>`` and ``best/<metric>_epoch`` to every logger after each validation.

    The names follow the logged metric with ``/`` turned into ``_``: ``val/mre`` gives
    ``best/val_mre`` and ``best/val_mre_epoch``. The values are also kept in :attr:`best` for the
    run record and survive a resume (the callback has checkpoint state).

    The direction of each metric is the one its metric declares (``higher_is_better``, asked of the
    module's task in :meth:`setup`); a ``mode`` given in the config must agree with it.

    Args:
        monitors: ``[{"metric": "val/mre"}, {"metric": "val/sdr_8", "mode": "max"}, ...]``; ``mode``
            (``min``/``max``) is needed only for a metric whose direction the task does not know.
    """

    def __init__(self, monitors: list[dict[str, str]]):
        self.requested: list[tuple[str, str | None]] = []
        for m in monitors:
            mode = m.get("mode")
            if mode not in (None, "min", "max"):
                raise ValueError(f"callbacks.best_metrics: mode of {m.get('metric')!r} must be 'min' or 'max', got {mode!r}")
            self.requested.append((str(m["metric"]), mode))
        self.monitors: list[tuple[str, str]] = [(m, mode) for m, mode in self.requested if mode is not None]
        self.best: dict[str, dict[str, Any]] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Each metric's direction from the task (the metric's ``higher_is_better``), checked against the config."""
        self.monitors = []
        for metric, mode in self.requested:
            declared = pl_module.task.metric_mode(metric)
            if mode is not None and declared is not None and mode != declared:
                raise ValueError(f"callbacks.best_metrics: mode={mode!r} for {metric}, but the metric is better when "
                                 f"{'higher' if declared == 'max' else 'lower'}; drop the mode or set {declared!r}")
            if mode is None and declared is None:
                raise ValueError(f"callbacks.best_metrics: the task declares no direction for {metric}; give its mode "
                                 "(min or max)")
            self.monitors.append((metric, mode or declared))

    @staticmethod
    def key(metric: str) -> str:
        return "best/" + metric.replace("/", "_")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not on_validation_epoch_end: callbacks run that hook before the LightningModule's, which is
        # where this epoch's metrics are logged, so they would still hold the previous epoch's values.
        if trainer.sanity_checking:
            return
        updates: dict[str, float] = {}
        for metric, mode in self.monitors:
            value = trainer.callback_metrics.get(metric)
            if value is None or math.isnan(float(value)):
                continue
            value = float(value)
            old = self.best.get(metric)
            if old is None or (value < old["value"] if mode == "min" else value > old["value"]):
                self.best[metric] = {"value": value, "epoch": trainer.current_epoch, "step": trainer.global_step}
            updates[self.key(metric)] = self.best[metric]["value"]
            updates[self.key(metric) + "_epoch"] = float(self.best[metric]["epoch"])
        if updates and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(updates, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))
