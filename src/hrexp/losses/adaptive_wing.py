"""Adaptive Wing loss for heatmap regression (Wang et al., ICCV 2019), with the weighted loss map."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrexp.losses.heatmap_mse import check_heatmap_loss_inputs


class AdaptiveWingLoss(nn.Module):
    r"""Adaptive Wing loss with the paper's weighted loss map and per-landmark weights.

    Wang, Bo & Fuxin, "Adaptive Wing Loss for Robust Face Alignment via Heatmap Regression",
    ICCV 2019. Per heatmap element, with ``y`` the target, ``ŷ`` the prediction and
    ``d = |y - ŷ|``::

        AWing(y, ŷ) = omega * ln(1 + (d / epsilon)^(alpha - y))     if d < theta
                      A * d - C                                     otherwise
        A = omega * (1 / (1 + (theta/epsilon)^(alpha - y))) * (alpha - y)
                  * (theta/epsilon)^(alpha - y - 1) / epsilon
        C = theta * A - omega * ln(1 + (theta/epsilon)^(alpha - y))

    ``A`` and ``C`` make the two branches meet with the same slope at ``d = theta``. The exponent
    ``alpha - y`` adapts the shape to the target: close to ``alpha`` (~2, MSE-like, small gradient
    near zero error) on the background, close to ``alpha - 1`` (~1, Wing/L1-like, large gradient)
    at the peaks, which is what pushes the foreground pixels towards the target.

    Weighted loss map (``use_weighted_map``): each element's loss is multiplied by
    ``M = map_weight * (dilate(target) >= 0.2) + 1``, where ``dilate`` is a grey dilation (a max
    filter, here ``max_pool2d`` with stride 1, batched on the loss's device) with a
    ``dilation x dilation`` square kernel applied once. ``dilation`` is the kernel size, not an
    iteration count: the default 3 is the paper's single 3x3 grey dilation. Thresholding and
    grey dilation commute, so this is also the binarised target dilated by the same kernel. The
    map is computed from the target only and carries no gradient.

    Per-landmark weights and reduction (the contract of
    :class:`~hrexp.losses.heatmap_mse.WeightedHeatmapMSE`)::

        loss = sum_{b,k,i,j} weights[b,k] * M[b,k,i,j] * AWing(target, pred)[b,k,i,j] / (B * K * h * w)

    i.e. the mean over all ``B * K * h * w`` elements; the denominator does not depend on the
    weights or on ``M``. A landmark with weight 0 is masked out, not multiplied: its prediction is
    free (even inf / NaN), gives 0 to the loss and an exactly zero gradient. With all weights 1
    and ``use_weighted_map=False`` this is landmarker's ``AdaptiveWingLoss(reduction="mean")`` (a
    plain mean over elements, which has no weighted map and defaults ``omega=5, epsilon=0.5``).
    The paper multiplies the element-wise loss by the map but does not spell out the reduction;
    some re-implementations divide by ``sum(M)`` instead, which makes the loss ``~(W + 1)`` times
    smaller than here wherever the map is mostly background. With the defaults the loss is on a
    very different scale from the MSE (``omega = 14``, ``M`` up to 11), so the learning rate tuned
    for ``WeightedHeatmapMSE`` may need revisiting.

    Gradient at zero error: the derivative of ``ln(1 + d^(alpha - y))`` at ``d = 0`` is 0 for
    ``alpha - y > 1`` (true for heatmaps in ``[0, 1]`` with ``alpha > 2``); the loss uses that
    value at ``d = 0`` for any exponent, so the gradient is finite everywhere, including at
    ``pred == target``.

    Args:
        alpha: Exponent offset (paper: 2.1, "slightly above 2"); must be > 1.
        omega: Scale of the non-linear part (paper: 14); > 0.
        epsilon: Error unit inside the log (paper: 1); > 0.
        theta: Error at which the loss turns linear (paper: 0.5); > 0.
        use_weighted_map: Multiply by the weighted loss map ``M`` (paper: yes).
        map_weight: ``W`` in ``M`` (paper: 10); >= 0.
        dilation: Side of the square grey-dilation kernel (paper: 3, i.e. 3x3 once); odd, >= 1
            (1 = no dilation).

    Raises:
        ValueError: For an out-of-range parameter, naming it as ``task.loss.<name>``.

    Example:
        >>> loss = AdaptiveWingLoss()(pred, target, weights)  # doctest: +SKIP
    """

    #: Target level above which a (dilated) pixel counts as foreground in the weighted map.
    MAP_THRESHOLD = 0.2

    def __init__(
        self,
        alpha: float = 2.1,
        omega: float = 14.0,
        epsilon: float = 1.0,
        theta: float = 0.5,
        use_weighted_map: bool = True,
        map_weight: float = 10.0,
        dilation: int = 3,
    ):
        super().__init__()
        self.alpha = _number("alpha", alpha, lambda v: v > 1, "> 1 (the paper uses 2.1)")
        self.omega = _number("omega", omega, lambda v: v > 0, "> 0")
        self.epsilon = _number("epsilon", epsilon, lambda v: v > 0, "> 0")
        self.theta = _number("theta", theta, lambda v: v > 0, "> 0")
        self.map_weight = _number("map_weight", map_weight, lambda v: v >= 0, ">= 0")
        if not isinstance(use_weighted_map, bool):
            raise ValueError(f"task.loss.use_weighted_map must be true or false, got {use_weighted_map!r}")
        self.use_weighted_map = use_weighted_map
        if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1 or dilation % 2 == 0:
            raise ValueError(
                f"task.loss.dilation must be an odd integer >= 1 (the side of the square grey-dilation "
                f"kernel; 3 = the paper's 3x3), got {dilation!r}"
            )
        self.dilation = dilation

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, omega={self.omega}, epsilon={self.epsilon}, theta={self.theta}, "
            f"use_weighted_map={self.use_weighted_map}, map_weight={self.map_weight}, dilation={self.dilation}"
        )

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        """The unweighted Adaptive Wing loss of each element (same shape as the inputs)."""
        delta = (target - pred).abs()
        exponent = self.alpha - target
        ratio = self.theta / self.epsilon
        ratio_pow = torch.pow(ratio, exponent)
        a = self.omega * (1.0 / (1.0 + ratio_pow)) * exponent * torch.pow(ratio, exponent - 1.0) / self.epsilon
        c = self.theta * a - self.omega * torch.log1p(ratio_pow)
        # pow(0, p) has an infinite derivative for p < 1 and autograd would turn it into NaN (0 * inf);
        # take the element at zero error out of pow altogether, with the value 0 and gradient 0.
        nonzero = delta > 0
        safe = torch.where(nonzero, delta, torch.ones_like(delta))
        small = torch.where(
            nonzero, self.omega * torch.log1p(torch.pow(safe / self.epsilon, exponent)), torch.zeros_like(delta)
        )
        return torch.where(delta < self.theta, small, a * delta - c)

    @torch.no_grad()
    def weight_map(self, target: Tensor) -> Tensor:
        """``map_weight * (grey_dilate(target) >= 0.2) + 1`` per heatmap, ``[B, K, h, w]`` like ``target``."""
        b, k, h, w = target.shape
        pad = self.dilation // 2
        dilated = F.max_pool2d(target.reshape(b * k, 1, h, w), kernel_size=self.dilation, stride=1, padding=pad)
        foreground = (dilated >= self.MAP_THRESHOLD).reshape(b, k, h, w).to(target.dtype)
        return self.map_weight * foreground + 1.0

    def forward(self, pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            pred: ``[B, K, h, w]`` predicted heatmaps.
            target: ``[B, K, h, w]`` target heatmaps (typically Gaussians with peak 1).
            weights: ``[B, K]`` per-landmark weights (typically the codec's 0/1 weights).

        Returns:
            Scalar tensor, float32 (float64 for float64 inputs).

        Raises:
            ValueError: If ``pred`` and ``target`` differ in shape, are not 4-D, or ``weights`` is
                not ``[B, K]``.
        """
        check_heatmap_loss_inputs(pred, target, weights)
        # At least float32 (AMP): pow / log1p and a sum over B*K*h*w elements in half precision lose too much.
        dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
        w = weights[:, :, None, None].to(dtype).expand(pred.shape)
        keep = w != 0
        # Ignored landmarks: replace pred and target before any arithmetic, so that an inf / NaN there
        # neither reaches the value nor (as 0 * NaN) the gradient.
        zeros = torch.zeros(pred.shape, dtype=dtype, device=pred.device)
        target = torch.where(keep, target.to(dtype), zeros)
        pred = torch.where(keep, pred.to(dtype), target)
        loss = self.elementwise(pred, target) * w
        if self.use_weighted_map:
            loss = loss * self.weight_map(target)
        return torch.where(keep, loss, zeros).mean()


def _number(name: str, value: object, ok, requirement: str) -> float:
    """``value`` as a finite float satisfying ``ok``, else a ValueError naming ``task.loss.<name>``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"task.loss.{name} must be a finite number {requirement}, got {value!r}")
    return float(value)
