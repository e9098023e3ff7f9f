"""What every task shares: a head fitted to the backbone, per-stage metrics, and the task's hooks.

A task is the whole of what is specific to one kind of problem; everything else (the
LightningModule, the run record, eval, the comparison, the W&B images) calls only this contract:

* training and evaluation: ``forward(features)``, ``stride``, ``monitor``, ``flip_test``, ``trains_on_outputs``,
  ``has_targets(batch)``, ``loss(outputs, batch)``, ``eval_outputs(model, batch)``,
  ``predict(outputs, batch, flipped_outputs=None)``, ``update_metrics(stage, preds, batch)``,
  ``compute_metrics(stage)``, ``on_eval_epoch_start(stage, dataset)``;
* directions: ``metric_mode(name)``, from each metric's own ``higher_is_better``;
* reporting (defaults do nothing): ``baselines(datamodule)`` (reference scores that need no
  training, stored in the run record), ``summary_rows(record)`` (task lines of the run summary),
  ``per_item_tables(stage)`` (eval's tables, e.g. ``per_landmark.csv``),
  ``draw_predictions(images, batch, preds)`` (ground truth and prediction drawn on the inputs: the
  W&B image panel and eval's galleries);
* evaluation report (``eval.py``): ``sample_results(preds, batch)`` (each sample's predictions and
  truth, small and on the CPU, collected during the test epoch), ``report(samples, context)`` (the
  report's sections: tables, plots, galleries), ``combine_members(members)`` and
  ``score_samples(samples)`` (seed ensembles: the members' mean prediction and its metrics);
* prediction (``predict.py``): ``prediction_writer(out_dir, per_instance)`` (the files the predictions go
  to; how an image is prepared is its data family's ``prediction_preparer``);
* export (``export.py``): ``export_output_names(decode)``, ``export_outputs(outputs, decode)`` (the exported
  graph's outputs; by default the network's one tensor, ``maps``) and ``tied_points(outputs, tolerance)``
  (decoded points the export check does not compare).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from hrexp.errors import ConfigError
from hrexp.metrics.direction import output_mode

if TYPE_CHECKING:
    from hrexp.evaluation.context import ReportContext
    from hrexp.prediction.writers import PredictionWriter
    from hrexp.reports.html_report import Section
    from hrexp.run_record import RunRecord

STAGES = ("val", "test")


def finite_or_none(value: float) -> float | None:
    """A table cell: the value, or None (an empty cell) when it is NaN or infinite (undefined)."""
    return value if math.isfinite(value) else None


class Task(nn.Module):
    """A head on the backbone's features, plus one metric object per evaluation stage.

    Subclasses create their metrics with :meth:`init_metrics` (one object per stage: validation and
    test states must never mix) and implement the loss, prediction and metric updates.

    Args:
        head: Partial head constructor, called as ``head(feature_info=..., num_outputs=...)``.
        feature_info: The backbone's feature description.
        num_outputs: Output channels of the head (keypoints or classes).
        monitor: The metric that selects the best checkpoint (``{"metric": ..., "mode": ...}``); its
            mode must agree with the metric's own ``higher_is_better`` (checked in :meth:`init_metrics`).
    """

    task_name = "task"
    flip_test = False
    # False: a training step's loss needs no network outputs (``loss(None, batch)``), so the module skips the
    # backbone and head forward (a refiner trained on a frozen first stage).
    trains_on_outputs = True

    def __init__(
        self,
        head: Callable[..., nn.Module],
        feature_info: Sequence[Mapping[str, int]],
        num_outputs: int,
        monitor: Mapping[str, str],
    ):
        super().__init__()
        self.head = head(feature_info=feature_info, num_outputs=num_outputs)
        self.monitor = {"metric": str(monitor["metric"]), "mode": str(monitor.get("mode", ""))}

    def init_metrics(self, factory: Callable[[], nn.Module]) -> None:
        """One metric object per stage from ``factory``; then check the monitor against the metric.

        Raises:
            ValueError: ``task.monitor.mode`` is not ``min``/``max``, or contradicts the direction
                the monitored metric declares (a ``max`` metric monitored with ``min`` would keep its
                worst checkpoint).
        """
        self.metrics = nn.ModuleDict({stage: factory() for stage in STAGES})
        metric, mode = self.monitor["metric"], self.monitor["mode"]
        if mode not in ("min", "max"):
            raise ValueError(f"task.monitor.mode={mode!r}: expected 'min' or 'max'")
        if not metric.startswith("val/"):
            raise ValueError(f"task.monitor.metric={metric!r}: expected a validation metric ('val/...')")
        declared = self.metric_mode(metric)
        if declared is not None and declared != mode:
            raise ValueError(
                f"task.monitor.mode={mode!r} but {metric} is better when {'higher' if declared == 'max' else 'lower'} "
                f"(the metric's higher_is_better); set task.monitor.mode={declared}"
            )

    @property
    def stride(self) -> float:
        """Output stride of the head relative to the network input."""
        return float(self.head.stride)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features)

    # ------------------------------------------------------------------ training and evaluation
    def has_targets(self, batch: Mapping[str, torch.Tensor]) -> bool:
        """Whether the batch has anything to compute a loss against."""
        return True

    def eval_outputs(self, model: Callable[[torch.Tensor], torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The network's outputs at evaluation (a task may run its own inference, e.g. sliding windows)."""
        return model(batch["image"])

    def on_eval_epoch_start(self, stage: str, dataset: Any) -> None:
        """Called with the dataset about to be evaluated (pose hands its COCO ground truth to the metric)."""

    def is_defined(self, value: torch.Tensor) -> bool:
        """Whether a computed metric value is logged (NaN: undefined, e.g. no sample with a spacing)."""
        return not bool(torch.isnan(value))

    def compute_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        """Compute and reset the stage's metrics: ``{"<stage>/<name>": value}``, defined values only."""
        metric = self.metrics[stage]
        values = metric.compute()
        metric.reset()
        return {f"{stage}/{name}": value for name, value in values.items() if self.is_defined(value)}

    def metric_mode(self, name: str) -> str | None:
        """``"min"``/``"max"`` for a logged name (``val/mre``, ``test/AP``, ``val/loss``); None if undeclared."""
        stage, _, key = name.partition("/")
        if key == "loss":
            return "min"
        if stage not in STAGES or not hasattr(self, "metrics"):
            return None
        return output_mode(self.metrics[stage], key)

    # ------------------------------------------------------------------ reporting hooks
    def baselines(self, datamodule: Any) -> dict[str, dict[str, float]]:
        """Reference scores that need no training, by name (stored in the run record's ``baselines``)."""
        return {}

    def summary_rows(self, record: "RunRecord") -> list[tuple[str, str]]:
        """Task-specific ``(quantity, value)`` lines of the run summary printed at the end of training."""
        return []

    def per_item_tables(self, stage: str) -> dict[str, list[dict[str, Any]]]:
        """Tables of the stage's results per item (landmark, class, ...), by file stem (``per_landmark``).

        Read by the module at the end of a test epoch, before :meth:`compute_metrics` resets the
        metrics; ``eval.py`` writes each as ``<name>.csv``.
        """
        return {}

    def draw_predictions(self, images: Sequence[np.ndarray], batch: Mapping[str, Any],
                         preds: Mapping[str, Any], scale: int = 1) -> list[tuple[np.ndarray, str]]:
        """Ground truth and prediction drawn on each network input; ``(picture, caption)`` per sample.

        Args:
            images: The batch's inputs as ``[H, W, 3]`` uint8 RGB (de-normalised).
            batch: The batch (on any device).
            preds: :meth:`predict`'s output for it.
            scale: Integer enlargement of the pictures (small inputs become readable).
        """
        raise NotImplementedError(f"task {self.task_name!r} does not draw its predictions")

    def on_module_built(self, module: nn.Module) -> None:
        """Called once the module holds backbone and task (e.g. to load a first stage's weights)."""

    # ------------------------------------------------------------------ evaluation report hooks
    def sample_results(self, preds: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Each sample's results of one evaluation batch for eval's report: ``{"index": i, ...}`` of NumPy
        values. Collected by the module during ``trainer.test`` (gathered across DDP ranks); keep them small."""
        return []

    def report(self, samples: Sequence[Mapping[str, Any]], context: "ReportContext") -> list["Section"]:
        """The task's sections of eval's ``report.html``, writing their tables and PNGs into the run folder."""
        return []

    def combine_members(self, members: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
        """Seed ensembles: one list of :meth:`sample_results` per member (same split, same order) -> the
        ensemble's samples (mean prediction, spread across members)."""
        raise NotImplementedError(f"task {self.task_name!r} has no seed ensembles")

    def score_samples(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The stage metrics of given samples (an ensemble's mean prediction), as eval logs them (no prefix)."""
        raise NotImplementedError(f"task {self.task_name!r} cannot score combined predictions")

    # ------------------------------------------------------------------ prediction and export hooks
    def prediction_writer(self, out_dir: Path, per_instance: bool) -> "PredictionWriter":
        """What ``predict.py`` writes into ``out_dir``: a :class:`~hrexp.prediction.writers.PredictionWriter` that
        takes each image's predictions (``per_instance``: the data family's preparer gives several samples per
        image, e.g. one per person box).

        Raises:
            ConfigError: The task has no prediction output.
        """
        raise ConfigError(f"ckpt_path: task {self.task_name!r} ({type(self).__name__}) has no prediction output; "
                          f"it implements Task.prediction_writer")

    def export_output_names(self, decode: bool) -> list[str]:
        """The exported graph's output names, in order: by default the network's one output tensor, ``maps``.

        Raises:
            ValueError: ``decode`` for a task that decodes nothing in the graph.
        """
        if decode:
            raise ValueError(f"decode=true needs a keypoint task (its codec decodes the maps in the graph); task "
                             f"{self.task_name!r} ({type(self).__name__}) has none: export without decode")
        return ["maps"]

    def export_outputs(self, outputs: Any, decode: bool) -> tuple[torch.Tensor, ...]:
        """The exported graph's output tensors from the network's outputs, in :meth:`export_output_names`' order."""
        return (outputs,)

    def export_covariance(self, outputs: Any) -> torch.Tensor | None:
        """Each decoded point's own covariance ``[B, K, 2, 2]`` in input px^2, from which an exported graph draws
        its calibrated ellipses (:mod:`hrexp.conformal`); None: the task measures none."""
        return None

    def tied_points(self, outputs: Any, tolerance: float) -> torch.Tensor | None:
        """``[B, K]`` True for a decoded point that outputs equal up to ``tolerance`` may put anywhere (an arg-max
        tie); the export check compares the others. None: no decoded points, or no ties."""
        return None
