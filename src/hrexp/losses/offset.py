"""Loss for :class:`hrexp.codecs.offset.OffsetHeatmapCodec`: heatmap MSE + masked L1 on the offsets."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from hrexp.codecs.offset import split_offset_outputs
from hrexp.losses.heatmap_mse import WeightedHeatmapMSE


class OffsetHeatmapLoss(nn.Module):
    """``WeightedHeatmapMSE(heatmaps) + offset_weight * masked L1(offsets)``.

    The offset term is the mean absolute error over the supervised entries only::

        m[b, a, k, i, j] = offset_mask[b, k, i, j] * (weights[b, k] != 0)     (a = x, y)
        L1 = sum m * |pred_offset - target_offset| / max(sum m, 1)

    Cells outside the mask (and keypoints of weight 0) contribute nothing, whatever the prediction
    there (even NaN). Offsets are in heatmap cells, as the codec encodes them.

    Args:
        offset_weight: Multiplier of the offset term.
    """

    def __init__(self, offset_weight: float = 1.0):
        super().__init__()
        if not offset_weight >= 0:
            raise ValueError(f"offset_weight must be >= 0, got {offset_weight!r}")
        self.offset_weight = float(offset_weight)
        self.heatmap_loss = WeightedHeatmapMSE()

    def forward(
        self, outputs: Tensor | Mapping[str, Tensor], targets: Mapping[str, Tensor], weights: Tensor
    ) -> Tensor:
        """Compute the loss.

        Args:
            outputs: ``[B, 3K, h, w]`` network output (K heatmaps, K x offsets, K y offsets) or
                ``{"heatmaps", "offsets"}``.
            targets: The codec's ``{"heatmaps", "offsets", "offset_mask"}``.
            weights: ``[B, K]``.

        Returns:
            Scalar, float32 (float64 for float64 inputs).
        """
        pred_hm, pred_off = split_offset_outputs(outputs)
        hm_loss = self.heatmap_loss(pred_hm, targets["heatmaps"], weights)
        target_off, mask = targets["offsets"], targets["offset_mask"]
        if pred_off.shape != target_off.shape or mask.shape != pred_hm.shape:
            raise ValueError(
                f"offsets {tuple(pred_off.shape)} vs target {tuple(target_off.shape)}, mask "
                f"{tuple(mask.shape)} vs heatmaps {tuple(pred_hm.shape)}: shapes do not match"
            )
        dtype = torch.promote_types(hm_loss.dtype, target_off.dtype)
        m = (mask != 0) & (weights != 0)[:, :, None, None]  # [B, K, h, w]
        m = torch.cat([m, m], dim=1)  # x then y, as the offsets
        err = (pred_off.to(dtype) - target_off.to(dtype)).abs()
        total = torch.where(m, err, torch.zeros_like(err)).sum()
        off_loss = total / m.sum().clamp(min=1).to(dtype)
        return hm_loss.to(dtype) + self.offset_weight * off_loss
