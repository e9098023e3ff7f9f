"""Adaptive Gaussian heatmaps: each landmark's spread is learned with the network.

Payer et al. 2019 ("Integrating spatial configuration into heatmap regression based CNNs for landmark
localization") learn one sigma per landmark; Thaler et al. 2021 ("Modeling annotation uncertainty with
Gaussian heatmaps in landmark localization") a full covariance. A landmark whose annotations scatter
(a gonion on a rounded jaw) gets a wider target than a sharp one (a sella centre), and the learned
spread says which landmarks are uncertain.

Landmark ``k``'s target is the Gaussian of covariance ``S_k = L_k L_k^T`` (``L_k`` lower triangular, in
heatmap px) scaled so that its peak is ``sigma^2 / sqrt(det S_k)``:

    g_k(p) = sigma^2 / sqrt(det S_k) * exp(-1/2 (p - c)^T S_k^-1 (p - c))

i.e. ``gamma`` times the normalised density with ``gamma = 2 pi sigma^2``: at the initial ``S_k = sigma^2 I``
the target is the plain Gaussian codec's (peak 1), and a wider target has a lower peak, as in the papers.
A wider target is easier to fit, so the loss gets Payer's penalty on the spread, on the scale of the
per-pixel mean heatmap loss:

    regularizer = alpha * mean_k sqrt(det S_k) / (h * w)

For a network that has learned nothing, the heatmap loss (``pi sigma^4 / s^2`` summed over a map, for
an isotropic ``s``) and this penalty balance at ``s = sigma (pi / alpha)^(1/4)``: the default
``alpha = 0.2`` stops an uninformative spread at about twice the initial one.

Decoding is the Gaussian codec's (arg-max plus DARK); the spread learned is :meth:`covariance`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hrexp.codecs.base import check_points
from hrexp.codecs.heatmap import GaussianHeatmapCodec

COVARIANCES = ("isotropic", "full")


class AdaptiveGaussianCodec(GaussianHeatmapCodec, nn.Module):
    """Gaussian heatmaps with a learned spread per landmark (the task trains it with the network).

    Args:
        sigma: The initial standard deviation, in heatmap px (every landmark starts at ``sigma^2 I``);
            also DARK's blur at decoding, as in the Gaussian codec.
        covariance: ``isotropic`` (one sigma per landmark, Payer et al.) or ``full`` (a 2x2 covariance
            per landmark, Thaler et al.).
        alpha: Weight of the spread penalty (module docstring); 0 turns it off.
        refine, blur_kernel: Decoding, as :class:`GaussianHeatmapCodec`.

    The parameters are created for ``K`` landmarks when the task asks for :meth:`output_channels`; they
    live in the task (``task.codec.*`` in a checkpoint) and train in the head's param groups.
    """

    def __init__(self, sigma: float = 2.0, covariance: str = "isotropic", alpha: float = 0.2, refine: str = "dark",
                 blur_kernel: int | None = None):
        nn.Module.__init__(self)
        GaussianHeatmapCodec.__init__(self, sigma, refine, blur_kernel)
        if covariance not in COVARIANCES:
            raise ValueError(f"task.codec.covariance={covariance!r}: expected one of {COVARIANCES}")
        if not float(alpha) >= 0:
            raise ValueError(f"task.codec.alpha={alpha!r}: expected >= 0")
        self.covariance_kind = covariance
        self.alpha = float(alpha)
        self.num_keypoints: int | None = None
        # Cholesky factor relative to sigma: L = sigma * [[exp(a), 0], [b, exp(c)]]; isotropic keeps only a.
        self.log_scale: nn.Parameter | None = None  # [K, 1] (a) or [K, 2] (a, c)
        self.shear: nn.Parameter | None = None  # [K] (b), full covariance only

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(sigma={self.sigma}, covariance={self.covariance_kind!r}, alpha={self.alpha}, "
                f"refine={self.refine!r})")

    def output_channels(self, num_keypoints: int) -> int:
        """One heatmap per landmark; creates the ``K`` landmarks' spread parameters (once)."""
        if self.num_keypoints is None:
            self.num_keypoints = int(num_keypoints)
            columns = 1 if self.covariance_kind == "isotropic" else 2
            self.log_scale = nn.Parameter(torch.zeros(self.num_keypoints, columns))
            if self.covariance_kind == "full":
                self.shear = nn.Parameter(torch.zeros(self.num_keypoints))
        elif self.num_keypoints != num_keypoints:
            raise ValueError(f"{type(self).__name__} was built for {self.num_keypoints} landmarks, asked for {num_keypoints}")
        return self.num_keypoints

    def cholesky(self) -> Tensor:
        """``L`` ``[K, 2, 2]`` (lower triangular, heatmap px): ``S = L L^T``."""
        if self.log_scale is None:
            raise RuntimeError(f"{type(self).__name__}: output_channels(K) creates the parameters; call it first")
        scale = self.log_scale.exp() * self.sigma  # [K, 1 or 2]
        l11, l22 = scale[:, 0], scale[:, -1]
        l21 = self.shear * self.sigma if self.shear is not None else torch.zeros_like(l11)
        zero = torch.zeros_like(l11)
        return torch.stack([torch.stack([l11, zero], -1), torch.stack([l21, l22], -1)], -2)

    def covariance(self, stride: float = 1.0) -> Tensor:
        """The learned covariance ``S`` ``[K, 2, 2]`` of each landmark's target, in input px^2 at ``stride``
        (heatmap px^2 at the default 1): ``(x, y)`` order."""
        chol = self.cholesky().detach()
        return chol @ chol.transpose(-1, -2) * float(stride) ** 2

    def encode(self, keypoints: Tensor, visible: Tensor, heatmap_size: tuple[int, int],
               stride: float) -> tuple[Tensor, Tensor]:
        """Each landmark's Gaussian of its learned covariance (module docstring), differentiable in the
        spread; weights as the Gaussian codec's (1 for a visible landmark whose centre lies on the map)."""
        check_points(keypoints, visible)
        h, w = (int(s) for s in heatmap_size)
        if self.num_keypoints != keypoints.shape[1]:
            raise ValueError(f"{type(self).__name__} was built for {self.num_keypoints} landmarks, got "
                             f"keypoints for {keypoints.shape[1]}")
        dtype = keypoints.dtype if keypoints.dtype == torch.float64 else torch.float32
        centre = (keypoints.to(dtype) + 0.5) / stride - 0.5  # [B, K, 2] heatmap (u, v)
        u, v = centre[..., 0], centre[..., 1]
        inside = (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
        weights = (visible.bool() & inside).to(dtype)
        chol = self.cholesky().to(device=keypoints.device, dtype=dtype)  # [K, 2, 2]
        l11, l21, l22 = chol[:, 0, 0], chol[:, 1, 0], chol[:, 1, 1]
        cols = torch.arange(w, device=keypoints.device, dtype=dtype)
        rows = torch.arange(h, device=keypoints.device, dtype=dtype)
        dx = cols.view(1, 1, 1, w) - u[..., None, None]  # [B, K, 1, w]
        dy = rows.view(1, 1, h, 1) - v[..., None, None]  # [B, K, h, 1]
        # the Mahalanobis distance through L: z = L^-1 d, |z|^2 = d^T S^-1 d
        z1 = dx / l11.view(1, -1, 1, 1)
        z2 = (dy - l21.view(1, -1, 1, 1) * z1) / l22.view(1, -1, 1, 1)
        peak = self.sigma ** 2 / (l11 * l22)  # sigma^2 / sqrt(det S)
        heatmaps = peak.view(1, -1, 1, 1) * torch.exp(-0.5 * (z1 ** 2 + z2 ** 2))
        return heatmaps * weights[..., None, None], weights

    def regularizer(self, heatmap_size: tuple[int, int]) -> Tensor | None:
        """``alpha * mean_k sqrt(det S_k) / (h * w)``: Payer's spread penalty on the per-pixel mean loss."""
        if self.alpha == 0:
            return None
        chol = self.cholesky()
        area = (chol[:, 0, 0] * chol[:, 1, 1]).mean()
        return self.alpha * area / (int(heatmap_size[0]) * int(heatmap_size[1]))
