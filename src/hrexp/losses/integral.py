"""Loss for :class:`hrexp.codecs.integral.IntegralRegressionCodec`: coordinate L1 + optional JS regulariser."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from hrexp.codecs.integral import IntegralRegressionCodec

KIND_OPTIONS = ("l1", "mse")


class IntegralRegressionLoss(nn.Module):
    """Distance between the soft-argmax of the maps and the target coordinates, plus a regulariser.

    With ``(u, v)`` the codec's soft-argmax (heatmap cells) and ``(u*, v*)`` the target
    ``targets["keypoints"]``::

        d[b, k] = |u - u*| + |v - v*|                    (kind="l1")
                  (u - u*)^2 + (v - v*)^2                (kind="mse")
        loss = sum_{b,k} w[b, k] * d[b, k] / (B * K)
               + regulariser_weight * sum_{b,k} w[b, k] * JS(p[b, k] || q[b, k]) / (B * K)

    The regulariser is DSNT's (Nibali et al. 2018): the Jensen-Shannon divergence between the
    normalised map ``p`` and ``q``, a Gaussian of standard deviation ``sigma`` cells centred at the
    target and normalised over the map; ``JS(p || q) = (KL(p || m) + KL(q || m)) / 2`` with
    ``m = (p + q) / 2``. JS rather than MSE because it compares distributions on a fixed scale
    (between 0 and ``log 2``), is symmetric and stays finite where either has no mass; it pins down
    the *shape* of the map, which the coordinate term alone leaves free (any distribution with the
    right mean has zero coordinate loss). It is computed only when ``regulariser_weight > 0``.

    The denominator does not depend on the weights; keypoints of weight 0 contribute nothing.

    Args:
        regulariser_weight: Multiplier of the JS term (0: off).
        sigma: Standard deviation of the regulariser's target Gaussian, heatmap cells.
        kind: ``"l1"`` or ``"mse"``.
        codec: The codec whose soft-argmax (``beta``, ``normalize``) the loss uses; default
            ``IntegralRegressionCodec()``. Use the same one as for decoding.
    """

    def __init__(
        self,
        regulariser_weight: float = 0.0,
        sigma: float = 2.0,
        kind: str = "l1",
        codec: IntegralRegressionCodec | None = None,
    ):
        super().__init__()
        if kind not in KIND_OPTIONS:
            raise ValueError(f"kind={kind!r} is not supported; choose one of {KIND_OPTIONS}")
        if not regulariser_weight >= 0:
            raise ValueError(f"regulariser_weight must be >= 0, got {regulariser_weight!r}")
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma!r}")
        self.regulariser_weight = float(regulariser_weight)
        self.sigma = float(sigma)
        self.kind = kind
        self.codec = codec if codec is not None else IntegralRegressionCodec()

    def target_distribution(self, coords: Tensor, size: tuple[int, int]) -> Tensor:
        """``[B, K, 2]`` heatmap coordinates -> Gaussians normalised over the ``(h, w)`` map."""
        h, w = size
        xs = torch.arange(w, device=coords.device, dtype=coords.dtype)
        ys = torch.arange(h, device=coords.device, dtype=coords.dtype)
        inv = 1.0 / (2.0 * self.sigma**2)
        gx = torch.exp(-((xs - coords[..., 0:1]) ** 2) * inv)
        gy = torch.exp(-((ys - coords[..., 1:2]) ** 2) * inv)
        q = gy[..., :, None] * gx[..., None, :]
        total = q.sum(dim=(-2, -1), keepdim=True)
        return q / torch.where(total > 0, total, torch.ones_like(total))

    @staticmethod
    def js_divergence(p: Tensor, q: Tensor) -> Tensor:
        """Jensen-Shannon divergence over the last two dims (natural log)."""
        m = 0.5 * (p + q)
        kl_pm = (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(dim=(-2, -1))
        kl_qm = (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(dim=(-2, -1))
        return 0.5 * (kl_pm + kl_qm)

    def forward(self, outputs: Tensor | Mapping[str, Tensor], targets: Mapping[str, Tensor], weights: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            outputs: ``[B, K, h, w]`` maps (or ``{"heatmaps": ...}``).
            targets: The codec's targets; only ``"keypoints"`` ``[B, K, 2]`` is read.
            weights: ``[B, K]``.

        Returns:
            Scalar, float32 (float64 for float64 maps).
        """
        maps = outputs["heatmaps"] if isinstance(outputs, Mapping) else outputs
        if maps.dim() != 4 or weights.shape != maps.shape[:2]:
            raise ValueError(f"maps must be [B, K, h, w] with weights [B, K], got {tuple(maps.shape)}, {tuple(weights.shape)}")
        coords, p = self.codec.expectation(maps)
        target = targets["keypoints"].to(coords.dtype)
        if target.shape != coords.shape:
            raise ValueError(f"targets['keypoints'] must be {tuple(coords.shape)}, got {tuple(target.shape)}")
        diff = coords - target
        d = diff.abs().sum(dim=-1) if self.kind == "l1" else (diff**2).sum(dim=-1)
        w = weights.to(coords.dtype)
        keep = w != 0
        loss = torch.where(keep, d * w, torch.zeros_like(d)).mean()
        if self.regulariser_weight > 0:
            safe_target = torch.where(keep[..., None], target, torch.zeros_like(target))
            q = self.target_distribution(safe_target, tuple(maps.shape[-2:]))
            js = self.js_divergence(p, q)
            loss = loss + self.regulariser_weight * torch.where(keep, js * w, torch.zeros_like(js)).mean()
        return loss
