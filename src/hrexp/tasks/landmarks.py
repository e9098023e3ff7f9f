"""The landmark task: Gaussian heatmaps scored by MRE / SDR in original (and physical) units."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from hrexp.metrics.landmark_error import LandmarkError
from hrexp.tasks.base import STAGES
from hrexp.tasks.heatmap_keypoints import HeatmapKeypointTask


class LandmarkTask(HeatmapKeypointTask):
    """Landmark localisation by heatmap regression (see :class:`HeatmapKeypointTask`).

    Args:
        sdr_radii: Success detection radii in original pixels.
        monitor: Default ``{"metric": "val/mre", "mode": "min"}``.
        head, codec, loss, feature_info, dataset_meta: as :class:`HeatmapKeypointTask`.
        **kwargs: further :class:`HeatmapKeypointTask` options (flip_test, flip_shift, num_keypoints).
    """

    task_name = "landmarks"

    def __init__(self, head: Any, codec: Any, loss: nn.Module, feature_info: Sequence[Mapping[str, int]],
                 dataset_meta: Mapping[str, Any], sdr_radii: Sequence[float] = (4, 8, 12, 16, 20, 24),
                 monitor: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(head, codec, loss, feature_info, dataset_meta,
                         monitor=monitor or {"metric": "val/mre", "mode": "min"}, **kwargs)
        self.sdr_radii = list(sdr_radii)
        self.metrics = nn.ModuleDict({stage: LandmarkError(self.num_keypoints, self.sdr_radii) for stage in STAGES})

    def update_metrics(self, stage: str, preds: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        self.metrics[stage].update(preds["keypoints"], batch["keypoints_orig"], batch["visible_orig"], batch["spacing"])

    def per_landmark_errors(self, stage: str) -> dict[str, torch.Tensor]:
        """Per-landmark mean errors of the stage (call before :meth:`compute_metrics` resets)."""
        return self.metrics[stage].per_landmark()
