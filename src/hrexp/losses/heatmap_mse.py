"""Weighted mean-squared error between predicted and target heatmaps."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class WeightedHeatmapMSE(nn.Module):
    """Per-landmark weighted heatmap MSE.

    ``loss = sum_{b,k,i,j} weights[b,k] * (pred[b,k,i,j] - target[b,k,i,j])^2 / (B * K * h * w)``

    i.e. the mean over all ``B * K * h * w`` elements of the weighted squared error. The
    denominator does not depend on the weights, so a landmark with weight 0 contributes nothing
    (its prediction is free, even inf / NaN) while the others keep the same per-element scale
    whatever the number of visible landmarks in the batch. For 0/1 weights this equals mmpose's
    ``KeypointMSELoss`` with ``use_target_weight=True`` (which squares the weight); for fractional
    weights it does not.

    Example:
        >>> loss = WeightedHeatmapMSE()(pred, target, weights)  # doctest: +SKIP
    """

    def forward(self, pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            pred: ``[B, K, h, w]`` predicted heatmaps.
            target: ``[B, K, h, w]`` target heatmaps.
            weights: ``[B, K]`` per-landmark weights (typically the codec's 0/1 weights).

        Returns:
            Scalar tensor, float32 (float64 for float64 inputs).

        Raises:
            ValueError: If ``pred`` and ``target`` differ in shape, are not 4-D, or ``weights`` is
                not ``[B, K]``.
        """
        check_heatmap_loss_inputs(pred, target, weights)
        # At least float32: a half-precision (AMP) sum over B*K*h*w elements loses the small
        # per-pixel errors that dominate a heatmap loss.
        dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
        sq = (pred.to(dtype) - target.to(dtype)) ** 2
        w = weights[:, :, None, None].to(sq.dtype)
        # where() rather than a bare product: 0 * inf / NaN from an ignored landmark would be NaN.
        return torch.where(w != 0, sq * w, torch.zeros_like(sq)).mean()


def check_heatmap_loss_inputs(pred: Tensor, target: Tensor, weights: Tensor) -> None:
    """The contract of every heatmap loss: ``pred`` and ``target`` ``[B, K, h, w]`` alike, ``weights [B, K]``.

    Raises:
        ValueError: naming the shapes that do not fit.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} "
            f"and target {tuple(target.shape)}"
        )
    if pred.dim() != 4:
        raise ValueError(f"pred and target must be [B, K, h, w], got {tuple(pred.shape)}")
    if weights.shape != pred.shape[:2]:
        raise ValueError(
            f"weights must be [B, K] = {tuple(pred.shape[:2])} to match pred "
            f"{tuple(pred.shape)}, got {tuple(weights.shape)}"
        )
