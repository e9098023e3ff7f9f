"""The landmark task: Gaussian heatmaps scored by MRE / SDR in original (and physical) units."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from hrexp.metrics.landmark_error import LandmarkError
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
        # One metric object per stage: validation and test states must never mix.
        self.metrics = nn.ModuleDict({stage: LandmarkError(self.num_keypoints, self.sdr_radii) for stage in ("val", "test")})

    def update_metrics(self, stage: str, preds: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        self.metrics[stage].update(preds["keypoints"], batch["keypoints_orig"], batch["visible_orig"], batch["spacing"])

    def compute_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        """Compute and reset the stage's metrics; names are ``<stage>/mre``, ``<stage>/sdr_4``, ..."""
        metric = self.metrics[stage]
        values = metric.compute()
        metric.reset()
        out = {}
        for name, value in values.items():
            if torch.is_tensor(value) and value.numel() == 1 and torch.isnan(value):
                continue  # e.g. mre_mm when no sample has a pixel spacing
            out[f"{stage}/{name}"] = value
        return out

    def per_landmark_errors(self, stage: str) -> dict[str, torch.Tensor]:
        """Per-landmark mean errors of the stage (call before :meth:`compute_metrics` resets)."""
        return self.metrics[stage].per_landmark()
