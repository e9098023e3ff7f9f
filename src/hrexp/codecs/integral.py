"""Integral regression codec (soft-argmax): keypoints as the expectation over a normalised map.

Sun et al., "Integral Human Pose Regression", ECCV 2018; Nibali et al., "Numerical Coordinate
Regression with Convolutional Neural Networks" (DSNT), 2018. The network's map ``z`` for keypoint
``k`` is normalised to a distribution ``p = softmax(beta * z)`` over the ``h * w`` cells (or
``relu(z) / sum(relu(z))``), and the keypoint is the expectation of the cell-centre coordinates::

    u = sum_ij p_ij * i,   v = sum_ij p_ij * j        (cell (i, j)'s centre is u = i, v = j)
    x = (u + 0.5) * stride - 0.5                      (hrexp's pixel-centre convention)

It is differentiable, so the loss (:class:`hrexp.losses.integral.IntegralRegressionLoss`) trains on
the coordinates directly. A map whose softmax is a normalised Gaussian centred at ``(u, v)`` (e.g.
``z = log(gaussian) / beta``, the optimum of the JS regulariser) decodes to ``(u, v)`` up to the
truncation of its tails at the map border.

Score: the largest probability of the normalised map, ``max_ij p_ij`` in ``(0, 1]``: how
concentrated the distribution is (1 for all mass in one cell, ``1 / (h w)`` for a flat map). It is
free of the logits' arbitrary offset; note that it scales like ``1 / (2 pi s^2)`` with the width
``s`` of the learnt peak, so compare scores only within one model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hrexp.codecs.base import KeypointCodec, float_dtype
from hrexp.codecs.heatmap import GaussianHeatmapCodec

NORMALIZE_OPTIONS = ("softmax", "relu")


class IntegralRegressionCodec(KeypointCodec):
    """Soft-argmax codec (see the module docstring).

    Args:
        beta: Softmax temperature multiplier (``normalize="softmax"``).
        normalize: ``"softmax"`` (``softmax(beta * z)``) or ``"relu"`` (``relu(z) / sum``; a map
            with no positive value has zero mass and decodes to ``(0, 0)`` heatmap coordinates).
        sigma: Width (heatmap cells) of the Gaussian heatmap target that :meth:`encode` also
            returns, for an optional heatmap regulariser or auxiliary loss.

    Targets: ``{"keypoints": [B, K, 2] (u, v) heatmap coordinates (0 where the weight is 0),
    "heatmaps": [B, K, h, w] Gaussian (peak 1, as GaussianHeatmapCodec)}``. Weights ``[B, K]`` as
    :class:`~hrexp.codecs.heatmap.GaussianHeatmapCodec` (visible and inside the heatmap area).
    """

    name = "integral"
    flippable = True  # K maps in the image frame: the task's flip test flips them back
    confidence = "largest probability of the normalised map"
    # tied_points: none (the base's None): the soft-argmax is a continuous function of the maps.

    def __init__(self, beta: float = 1.0, normalize: str = "softmax", sigma: float = 2.0):
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta!r}")
        if normalize not in NORMALIZE_OPTIONS:
            raise ValueError(f"normalize={normalize!r} is not supported; choose one of {NORMALIZE_OPTIONS}")
        self.beta = float(beta)
        self.normalize = normalize
        self._gauss = GaussianHeatmapCodec(sigma=sigma, refine="none")
        self.sigma = self._gauss.sigma

    def __repr__(self) -> str:
        return f"{type(self).__name__}(beta={self.beta}, normalize={self.normalize!r}, sigma={self.sigma})"

    def output_channels(self, num_keypoints: int) -> int:
        """One map per keypoint."""
        return int(num_keypoints)

    # ------------------------------------------------------------------ soft-argmax
    def probabilities(self, maps: Tensor) -> Tensor:
        """``[B, K, h, w]`` maps -> their normalised distributions (same shape, differentiable)."""
        if maps.dim() != 4:
            raise ValueError(f"maps must be [B, K, h, w], got {tuple(maps.shape)}")
        dtype = float_dtype(maps)
        b, k, h, w = maps.shape
        flat = maps.to(dtype).reshape(b, k, h * w)
        if self.normalize == "softmax":
            p = torch.softmax(self.beta * flat, dim=-1)
        else:
            pos = flat.clamp(min=0)
            total = pos.sum(dim=-1, keepdim=True)
            p = pos / torch.where(total > 0, total, torch.ones_like(total))
        return p.reshape(b, k, h, w)

    def expectation(self, maps: Tensor) -> tuple[Tensor, Tensor]:
        """Soft-argmax in heatmap coordinates: ``([B, K, 2] (u, v), probabilities [B, K, h, w])``."""
        p = self.probabilities(maps)
        h, w = p.shape[-2:]
        xs = torch.arange(w, device=p.device, dtype=p.dtype)
        ys = torch.arange(h, device=p.device, dtype=p.dtype)
        u = (p.sum(dim=-2) * xs).sum(dim=-1)  # marginal over rows, then E[column]
        v = (p.sum(dim=-1) * ys).sum(dim=-1)
        return torch.stack([u, v], dim=-1), p

    # ------------------------------------------------------------------ encode / decode
    def encode(
        self,
        keypoints: Tensor,
        visible: Tensor,
        heatmap_size: tuple[int, int],
        stride: float,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Heatmap-coordinate targets (and a Gaussian heatmap target).

        Returns:
            ``({"keypoints": [B, K, 2], "heatmaps": [B, K, h, w]}, weights [B, K])``.
        """
        if keypoints.dim() != 3 or keypoints.shape[-1] != 2:
            raise ValueError(f"keypoints must be [B, K, 2], got {tuple(keypoints.shape)}")
        heatmaps, weights = self._gauss.encode(keypoints, visible, heatmap_size, stride)
        coords = (keypoints.to(heatmaps.dtype) + 0.5) / stride - 0.5
        coords = torch.where(weights[..., None] > 0, coords, torch.zeros_like(coords))
        return {"keypoints": coords, "heatmaps": heatmaps}, weights

    def decode(self, outputs: Tensor, stride: float) -> tuple[Tensor, Tensor]:
        """Soft-argmax -> input px; score = the normalised map's maximum (module docstring).

        Args:
            outputs: ``[B, K, h, w]`` maps (logits for ``"softmax"``).
            stride: Input px per heatmap cell.

        Returns:
            ``(keypoints [B, K, 2] input px, scores [B, K])``; differentiable.
        """
        if not stride > 0:
            raise ValueError(f"stride must be > 0, got {stride!r}")
        coords, p = self.expectation(outputs)
        return (coords + 0.5) * stride - 0.5, p.flatten(2).amax(dim=-1)
