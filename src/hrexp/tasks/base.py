"""What every task shares: a head fitted to the backbone, per-stage metrics, and their read-out.

The LightningModule relies on this contract: ``forward(features)``, ``stride``, ``monitor``,
``flip_test``, ``has_targets(batch)``, ``loss(outputs, batch)``, ``eval_outputs(model, batch)``,
``predict(outputs, batch, flipped_outputs=None)``, ``update_metrics(stage, preds, batch)``,
``compute_metrics(stage)`` and ``on_eval_epoch_start(stage, dataset)``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

STAGES = ("val", "test")


class Task(nn.Module):
    """A head on the backbone's features, plus one metric object per evaluation stage.

    Subclasses set ``self.metrics`` (an ``nn.ModuleDict`` keyed by :data:`STAGES`: validation and
    test states must never mix) and implement the loss, prediction and metric updates.

    Args:
        head: Partial head constructor, called as ``head(feature_info=..., num_outputs=...)``.
        feature_info: The backbone's feature description.
        num_outputs: Output channels of the head (keypoints or classes).
        monitor: The metric that selects the best checkpoint (``{"metric": ..., "mode": ...}``).
    """

    task_name = "task"
    flip_test = False

    def __init__(
        self,
        head: Callable[..., nn.Module],
        feature_info: Sequence[Mapping[str, int]],
        num_outputs: int,
        monitor: Mapping[str, str],
    ):
        super().__init__()
        self.head = head(feature_info=feature_info, num_outputs=num_outputs)
        self.monitor = dict(monitor)

    @property
    def stride(self) -> float:
        """Output stride of the head relative to the network input."""
        return float(self.head.stride)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features)

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
