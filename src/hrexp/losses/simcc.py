"""KL-divergence loss for SimCC x / y classification vectors (RTMPose's ``KLDiscretLoss``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SimCCLoss(nn.Module):
    """Per-keypoint KL divergence between the target label and ``softmax(beta * pred)``, per axis.

    For each axis ``a`` in ``(x, y)``, keypoint ``(b, k)`` with prediction ``z`` and label ``t``
    (vectors of ``L_a`` bins)::

        q = softmax(beta * z)
        p = softmax(beta * t)          if label_softmax
            t / sum(t)                 otherwise
        KL_a[b, k] = sum_i p_i * (log p_i - log q_i)        (0 * log 0 = 0)

        loss = sum_a sum_{b,k} w[b, k] * KL_a[b, k] / (B * K)

    with ``w`` the codec's weights (``use_target_weight``) or 1. As with
    :class:`~hrexp.losses.heatmap_mse.WeightedHeatmapMSE`, the denominator does not depend on the
    weights, and a keypoint of weight 0 contributes nothing (even a NaN prediction).

    This is mmpose's ``KLDiscretLoss`` up to scale: mmpose averages the KL summand over the bins
    (dividing by ``L_a``) and sums over the batch before dividing by ``K``, i.e.
    ``mmpose = sum_a B / L_a * (our term for axis a)``. Here the KL is the true KL (sum over bins),
    so its size does not change with the input size or ``split_ratio``.

    Args:
        beta: Temperature multiplier of the softmax (RTMPose: 10).
        label_softmax: Turn the label into a distribution with ``softmax(beta * t)`` (RTMPose) rather
            than by normalising its sum.
        use_target_weight: Weight each keypoint with ``weights``.
    """

    def __init__(self, beta: float = 10.0, label_softmax: bool = True, use_target_weight: bool = True):
        super().__init__()
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta!r}")
        self.beta = float(beta)
        self.label_softmax = bool(label_softmax)
        self.use_target_weight = bool(use_target_weight)

    def _axis(self, pred: Tensor, target: Tensor) -> Tensor:
        log_q = F.log_softmax(self.beta * pred, dim=-1)
        if self.label_softmax:
            log_p = F.log_softmax(self.beta * target, dim=-1)
            p = log_p.exp()
            return (p * (log_p - log_q)).sum(dim=-1)
        total = target.sum(dim=-1, keepdim=True)
        p = target / torch.where(total > 0, total, torch.ones_like(total))
        # xlogy: 0 * log 0 = 0; p * log q with p = 0 and q = 0 would be NaN, so mask it.
        cross = torch.where(p > 0, p * log_q, torch.zeros_like(p))
        return (torch.xlogy(p, p) - cross).sum(dim=-1)

    def forward(self, pred: Mapping[str, Tensor], target: Mapping[str, Tensor], weights: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            pred: ``{"x": [B, K, Lx], "y": [B, K, Ly]}`` logits (e.g. :class:`SimCCHead`'s output).
            target: The codec's labels, same shapes.
            weights: ``[B, K]``.

        Returns:
            Scalar, float32 (float64 for float64 inputs).
        """
        loss = None
        for axis in ("x", "y"):
            p, t = pred[axis], target[axis]
            if p.shape != t.shape or p.dim() != 3:
                raise ValueError(
                    f"pred[{axis!r}] and target[{axis!r}] must both be [B, K, L], "
                    f"got {tuple(p.shape)} and {tuple(t.shape)}"
                )
            if weights.shape != p.shape[:2]:
                raise ValueError(f"weights must be {tuple(p.shape[:2])}, got {tuple(weights.shape)}")
            dtype = torch.promote_types(torch.promote_types(p.dtype, t.dtype), torch.float32)
            kl = self._axis(p.to(dtype), t.to(dtype))  # [B, K]
            if self.use_target_weight:
                w = weights.to(dtype)
                kl = torch.where(w != 0, kl * w, torch.zeros_like(kl))
            term = kl.mean()
            loss = term if loss is None else loss + term
        return loss
