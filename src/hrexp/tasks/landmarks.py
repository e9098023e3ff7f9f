"""The landmark task: Gaussian heatmap head, codec, weighted MSE loss and MRE/SDR metrics."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from hrexp.geometry import apply_affine, invert_affine
from hrexp.metrics.landmark_error import LandmarkError


class LandmarkTask(nn.Module):
    """Landmark localisation by heatmap regression.

    The task owns everything problem-specific, so the LightningModule stays generic: it builds the
    head for the given backbone, encodes targets from the batch's keypoints at the head's own output
    stride, computes the loss, decodes predictions and maps them back through the inverse of each
    sample's affine transform to ORIGINAL image pixels, where the metrics are computed.

    Args:
        head: a partial head constructor, called as ``head(feature_info=..., num_outputs=K)``.
        codec: the target codec (``encode``/``decode``).
        loss: ``loss(pred, target, weights) -> scalar``.
        feature_info: the backbone's feature description (``num_chs``, ``reduction`` per branch).
        dataset_meta: at least ``num_keypoints``; ``keypoint_names`` when known.
        sdr_radii: success detection radii in original pixels.
        monitor: the metric that selects the best checkpoint (``{"metric": ..., "mode": ...}``).
    """

    def __init__(
        self,
        head: Callable[..., nn.Module],
        codec: Any,
        loss: nn.Module,
        feature_info: Sequence[Mapping[str, int]],
        dataset_meta: Mapping[str, Any],
        sdr_radii: Sequence[float] = (4, 8, 12, 16, 20, 24),
        monitor: Mapping[str, str] | None = None,
    ):
        super().__init__()
        if "num_keypoints" not in dataset_meta or int(dataset_meta["num_keypoints"]) < 1:
            raise ValueError(f"task=landmarks needs dataset_meta.num_keypoints >= 1, got {dict(dataset_meta)}")
        self.num_keypoints = int(dataset_meta["num_keypoints"])
        self.keypoint_names = list(dataset_meta.get("keypoint_names") or [f"kp{i}" for i in range(self.num_keypoints)])
        self.head = head(feature_info=feature_info, num_outputs=self.num_keypoints)
        self.codec = codec
        self.loss_fn = loss
        self.sdr_radii = list(sdr_radii)
        self.monitor = dict(monitor or {"metric": "val/mre", "mode": "min"})
        # One metric object per stage: validation and test states must never mix.
        self.metrics = nn.ModuleDict({stage: LandmarkError(self.num_keypoints, self.sdr_radii) for stage in ("val", "test")})

    @property
    def stride(self) -> float:
        """Output stride of the heatmaps relative to the network input."""
        return float(self.head.stride)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.head(features)

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Weighted heatmap MSE against targets encoded from ``batch['keypoints']``."""
        targets, weights = self.codec.encode(
            batch["keypoints"], batch["visible"], heatmap_size=tuple(outputs.shape[-2:]), stride=self.stride
        )
        return self.loss_fn(outputs, targets.to(outputs.dtype), weights.to(outputs.dtype))

    @torch.no_grad()
    def predict(self, outputs: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Decode heatmaps to keypoints in input pixels, then in original image pixels."""
        keypoints, scores = self.codec.decode(outputs.detach().float(), stride=self.stride)
        original = apply_affine(keypoints, invert_affine(batch["matrix"].float()))
        return {"keypoints_input": keypoints, "keypoints": original, "scores": scores}

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
