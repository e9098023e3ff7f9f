"""Gaussian heatmap codec: keypoints <-> per-keypoint Gaussian heatmaps.

Conventions (see ``docs/design.md``): keypoints are ``(x, y)`` in input pixels with the centre of
pixel ``(0, 0)`` at ``(0.0, 0.0)``. A heatmap of output stride ``s`` maps input coordinate ``x`` to
heatmap coordinate ``u = (x + 0.5) / s - 0.5`` (pixel *areas* line up, so a point anywhere inside
the input image lands inside the heatmap) and back with ``x = (u + 0.5) * s - 0.5``.

Encoding is unbiased: the Gaussian is centred at the exact sub-pixel ``u`` rather than at a rounded
pixel. Decoding takes the integer argmax and refines it to sub-pixel precision with one of

* ``"dark"``: DARK (Zhang et al., CVPR 2020, "Distribution-Aware Coordinate Representation for
  Human Pose Estimation"). The heatmap is smoothed with a Gaussian (so that a noisy prediction is
  close to a Gaussian again), its log taken (the log of a Gaussian is a quadratic whose maximum is
  the centre), and the maximum located with one Newton step ``offset = -H^-1 g`` from the argmax,
  with the gradient ``g`` and Hessian ``H`` from central finite differences. A peak on the
  map's outermost row / column gets no offset across that border (1-D step along it).
* ``"quarter"``: the classical rule, 0.25 px from the argmax towards the higher neighbour, per axis.
* ``"none"``: the integer argmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hrexp.codecs.base import KeypointCodec, top_two_within

REFINE_OPTIONS = ("dark", "quarter", "none")

# Floor before the log in DARK: zero / negative network outputs must not become -inf / NaN.
_LOG_EPS = 1e-10
# A Hessian with |det| below this is treated as singular (flat or degenerate peak).
_DET_EPS = 1e-12
# Newton offsets are clamped to this many heatmap pixels: the true maximum of a peak whose integer
# argmax is at m lies within half a pixel of m, so anything much larger is a bad local fit.
_MAX_OFFSET = 1.0


class GaussianHeatmapCodec(KeypointCodec):
    """Encode keypoints as Gaussian heatmaps and decode heatmaps back to keypoints.

    The codec holds no tensors; it works batched on whatever device its inputs are on.

    Args:
        sigma: Standard deviation of the encoded Gaussian, in heatmap pixels. Also the standard
            deviation of DARK's modulation blur unless ``blur_kernel`` is given.
        refine: Sub-pixel refinement used by :meth:`decode`: ``"dark"``, ``"quarter"`` or
            ``"none"``.
        blur_kernel: Odd size (>= 3) of DARK's modulation blur kernel. ``None`` (default) derives
            it from ``sigma`` (blur std ``sigma``, kernel ``2 * ceil(3 * sigma) + 1``). When given,
            the blur std follows OpenCV's rule for a kernel size,
            ``0.3 * ((blur_kernel - 1) / 2 - 1) + 0.8`` (11 -> 2.0), so mmpose-style settings
            carry over.

    Raises:
        ValueError: If ``sigma`` is not positive, ``refine`` is unknown or ``blur_kernel`` is not
            an odd integer >= 3.

    Example:
        >>> codec = GaussianHeatmapCodec(sigma=2.0, refine="dark")
        >>> kpts = torch.tensor([[[30.3, 17.8]]])
        >>> hm, w = codec.encode(kpts, torch.ones(1, 1), heatmap_size=(16, 16), stride=4.0)
        >>> out, score = codec.decode(hm, stride=4.0)
    """

    def __init__(self, sigma: float = 2.0, refine: str = "dark", blur_kernel: int | None = None):
        if not sigma > 0:
            raise ValueError(f"codec sigma={sigma!r} (task.codec.sigma): expected > 0, in heatmap pixels (e.g. 2.0)")
        if refine not in REFINE_OPTIONS:
            raise ValueError(f"refine={refine!r} is not supported; choose one of {REFINE_OPTIONS}")
        if blur_kernel is not None:
            if int(blur_kernel) != blur_kernel or blur_kernel < 3 or blur_kernel % 2 == 0:
                raise ValueError(f"blur_kernel must be an odd integer >= 3, got {blur_kernel!r}")
            blur_kernel = int(blur_kernel)
            blur_sigma = 0.3 * ((blur_kernel - 1) * 0.5 - 1) + 0.8
        else:
            blur_sigma = float(sigma)
            blur_kernel = 2 * math.ceil(3 * blur_sigma) + 1
        self.sigma = float(sigma)
        self.refine = refine
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma

    # The outputs are K maps in the image's frame: a flipped image's maps flip back (the task's flip test).
    flippable = True
    heatmap_targets = True  # the task's heatmap loss (task/loss=heatmap_mse | adaptive_wing)
    confidence = "heatmap peak"

    def output_channels(self, num_keypoints: int) -> int:
        """Channels the head outputs: one heatmap per keypoint."""
        return num_keypoints

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sigma={self.sigma}, refine={self.refine!r}, "
            f"blur_kernel={self.blur_kernel})"
        )

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        keypoints: Tensor,
        visible: Tensor,
        heatmap_size: tuple[int, int],
        stride: float,
    ) -> tuple[Tensor, Tensor]:
        """Render one Gaussian heatmap per keypoint.

        Args:
            keypoints: ``[B, K, 2]`` (or unbatched ``[K, 2]``) ``(x, y)`` in input pixels.
            visible: ``[B, K]`` (or ``[K]``); nonzero / True where the keypoint is annotated.
            heatmap_size: ``(h, w)`` of the heatmaps.
            stride: Input pixels per heatmap pixel.

        Returns:
            ``(heatmaps, weights)``: heatmaps ``[B, K, h, w]`` in ``[0, 1]`` with
            ``exp(-((i - u)^2 + (j - v)^2) / (2 sigma^2))`` at column ``i``, row ``j`` (value 1 at
            the centre ``(u, v)``; not truncated), and weights ``[B, K]`` that are 1 for a
            visible keypoint whose centre lies inside the heatmap, i.e.
            ``-0.5 <= u < w - 0.5`` and ``-0.5 <= v < h - 0.5``, and 0 otherwise (its heatmap
            is then all zero). float32 (float64 for float64 keypoints), on the device of
            ``keypoints``; unbatched shapes for unbatched input.

        Raises:
            ValueError: On malformed shapes, heatmap size or stride.
        """
        unbatched = keypoints.dim() == 2
        if unbatched:
            keypoints, visible = keypoints.unsqueeze(0), visible.unsqueeze(0)
        if keypoints.dim() != 3 or keypoints.shape[-1] != 2:
            raise ValueError(f"keypoints must be [B, K, 2] or [K, 2], got {tuple(keypoints.shape)}")
        if visible.shape != keypoints.shape[:2]:
            raise ValueError(
                f"visible must be [B, K] = {tuple(keypoints.shape[:2])}, got {tuple(visible.shape)}"
            )
        h, w = (int(s) for s in heatmap_size)
        if h < 1 or w < 1:
            raise ValueError(f"heatmap_size must be positive (h, w), got {heatmap_size!r}")
        if not stride > 0:
            raise ValueError(f"stride must be > 0, got {stride!r}")

        # float64 stays float64; anything coarser than float32 (integer, half) renders in float32.
        dtype = keypoints.dtype if keypoints.dtype == torch.float64 else torch.float32
        device = keypoints.device
        kpts = keypoints.to(dtype)
        centre = (kpts + 0.5) / stride - 0.5  # [B, K, 2] heatmap coordinates (u, v)
        u, v = centre[..., 0], centre[..., 1]

        # The NaN check is implicit: every comparison with NaN is False.
        inside = (u >= -0.5) & (u < w - 0.5) & (v >= -0.5) & (v < h - 0.5)
        weights = ((visible.to(device) != 0) & inside).to(dtype)

        # Separable Gaussian: outer product of a row and a column profile, O(B*K*(h+w)) exps.
        # Masked centres are zeroed first so that NaN / inf coordinates cannot leak into the map.
        u = torch.where(weights > 0, u, torch.zeros_like(u))
        v = torch.where(weights > 0, v, torch.zeros_like(v))
        xs = torch.arange(w, device=device, dtype=dtype)
        ys = torch.arange(h, device=device, dtype=dtype)
        inv = 1.0 / (2.0 * self.sigma**2)
        gx = torch.exp(-((xs - u[..., None]) ** 2) * inv)  # [B, K, w]
        gy = torch.exp(-((ys - v[..., None]) ** 2) * inv) * weights[..., None]  # [B, K, h]
        heatmaps = gy[..., :, None] * gx[..., None, :]  # [B, K, h, w]

        if unbatched:
            return heatmaps[0], weights[0]
        return heatmaps, weights

    # ------------------------------------------------------------------ decode
    def decode(self, outputs: Tensor, stride: float) -> tuple[Tensor, Tensor]:
        """Locate each heatmap's maximum with sub-pixel refinement.

        Args:
            outputs: ``[B, K, h, w]`` (or unbatched ``[K, h, w]``) heatmaps, e.g. network output.
            stride: Input pixels per heatmap pixel.

        Returns:
            ``(keypoints, scores)``: keypoints ``[B, K, 2]`` ``(x, y)`` in input pixels and scores
            ``[B, K]``, the heatmap maxima. float32 (float64 for float64 input); unbatched shapes
            for unbatched input.

        Raises:
            ValueError: On malformed shapes or stride.
        """
        heatmaps = outputs
        unbatched = heatmaps.dim() == 3
        if unbatched:
            heatmaps = heatmaps.unsqueeze(0)
        if heatmaps.dim() != 4:
            raise ValueError(
                f"heatmaps must be [B, K, h, w] or [K, h, w], got {tuple(heatmaps.shape)}"
            )
        if not stride > 0:
            raise ValueError(f"stride must be > 0, got {stride!r}")
        # Half-precision (AMP) outputs are too coarse for finite differences of a log.
        if heatmaps.dtype != torch.float64:
            heatmaps = heatmaps.float()

        b, k, h, w = heatmaps.shape
        flat = heatmaps.reshape(b * k, h * w)
        scores, idx = flat.max(dim=1)
        px, py = idx % w, torch.div(idx, w, rounding_mode="floor")

        if self.refine == "dark":
            du, dv = self._dark_offsets(heatmaps.reshape(b * k, h, w), px, py)
        elif self.refine == "quarter":
            du, dv = self._quarter_offsets(heatmaps.reshape(b * k, h, w), px, py)
        else:
            du = dv = torch.zeros_like(scores)

        u = px.to(heatmaps.dtype) + du
        v = py.to(heatmaps.dtype) + dv
        keypoints = (torch.stack([u, v], dim=-1) + 0.5) * stride - 0.5
        keypoints, scores = keypoints.reshape(b, k, 2), scores.reshape(b, k)
        if unbatched:
            return keypoints[0], scores[0]
        return keypoints, scores

    def tied_points(self, outputs: Tensor, tolerance: float) -> Tensor:
        """``[B, K]``: the map's two highest values within ``tolerance`` (the arg-max is a tie)."""
        return top_two_within(outputs.flatten(-2), tolerance)

    def spread(self, outputs: Tensor, stride: float) -> Tensor:
        """How wide each heatmap's peak is: a confidence that :meth:`decode`'s peak value does not give.

        The radial standard deviation ``sqrt(var_x + var_y)`` of the map's positive part within
        ``ceil(3 * sigma)`` heatmap pixels of its maximum (the trace of :meth:`point_covariance`), in input
        pixels. A sharp, isolated peak has about the encoded width (``sigma * sqrt(2) * stride``); a flat or
        two-peaked map a wider one.

        Args:
            outputs: ``[B, K, h, w]`` heatmaps.
            stride: Input pixels per heatmap pixel.

        Returns:
            ``[B, K]`` spreads in input pixels (0 for a map with no positive value near its maximum).
        """
        covariance = self.point_covariance(outputs, stride)
        return torch.sqrt(covariance[..., 0, 0] + covariance[..., 1, 1])

    def point_covariance(self, outputs: Tensor, stride: float) -> Tensor:
        """``[B, K, 2, 2]`` the covariance of each map's positive part within ``ceil(3 * sigma)`` heatmap pixels
        of its maximum, ``(x, y)`` order, in input px^2: the peak's own shape (an elongated or tilted peak
        gives an elongated or tilted ellipse; zeros for a map with no positive value near its maximum)."""
        heatmaps = outputs.double() if outputs.dtype == torch.float64 else outputs.float()
        b, k, h, w = heatmaps.shape
        idx = heatmaps.reshape(b, k, h * w).argmax(dim=-1)
        px, py = (idx % w).to(heatmaps.dtype), torch.div(idx, w, rounding_mode="floor").to(heatmaps.dtype)
        xs = torch.arange(w, dtype=heatmaps.dtype, device=heatmaps.device)
        ys = torch.arange(h, dtype=heatmaps.dtype, device=heatmaps.device)
        radius = math.ceil(3 * self.sigma)
        near_x = (xs[None, None, :] - px[..., None]).abs() <= radius  # [B, K, w]
        near_y = (ys[None, None, :] - py[..., None]).abs() <= radius  # [B, K, h]
        weight = heatmaps.clamp(min=0) * (near_y[..., :, None] & near_x[..., None, :])
        total = weight.sum(dim=(-2, -1)).clamp(min=torch.finfo(heatmaps.dtype).tiny)
        mean_x = (weight.sum(dim=-2) * xs).sum(dim=-1) / total
        mean_y = (weight.sum(dim=-1) * ys).sum(dim=-1) / total
        dx = xs - mean_x[..., None]  # [B, K, w]
        dy = ys - mean_y[..., None]  # [B, K, h]
        var_x = (weight.sum(dim=-2) * dx ** 2).sum(dim=-1) / total
        var_y = (weight.sum(dim=-1) * dy ** 2).sum(dim=-1) / total
        cov_xy = (weight * dy[..., :, None] * dx[..., None, :]).sum(dim=(-2, -1)) / total
        covariance = torch.stack([torch.stack([var_x, cov_xy], -1), torch.stack([cov_xy, var_y], -1)], -2)
        return covariance * float(stride) ** 2

    @staticmethod
    def _quarter_offsets(hm: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, Tensor]:
        """Quarter-pixel shift towards the higher neighbour per axis (0 on borders and ties)."""
        n, h, w = hm.shape
        rows = torch.arange(n, device=hm.device)
        # Clamped gathers keep indices valid; border peaks are masked out afterwards.
        right = hm[rows, py, (px + 1).clamp(max=w - 1)]
        left = hm[rows, py, (px - 1).clamp(min=0)]
        down = hm[rows, (py + 1).clamp(max=h - 1), px]
        up = hm[rows, (py - 1).clamp(min=0), px]
        du = 0.25 * torch.sign(right - left) * ((px > 0) & (px < w - 1))
        dv = 0.25 * torch.sign(down - up) * ((py > 0) & (py < h - 1))
        return du.to(hm.dtype), dv.to(hm.dtype)

    def _blur_kernel_1d(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        r = self.blur_kernel // 2
        t = torch.arange(-r, r + 1, dtype=dtype, device=device)
        g = torch.exp(-(t**2) / (2.0 * self.blur_sigma**2))
        return g / g.sum()

    def _dark_offsets(self, hm: Tensor, px: Tensor, py: Tensor) -> tuple[Tensor, Tensor]:
        """DARK Newton step on the log of the blurred heatmap around each argmax.

        Only the 3x3 neighbourhood of the argmax is needed, so instead of blurring whole maps the
        ``(kernel + 2)``-square patch around each peak is gathered (zero outside the map, as when
        blurring a zero-padded map) and blurred with a valid convolution.
        """
        n, h, w = hm.shape
        r = self.blur_kernel // 2
        p = r + 1
        offs = torch.arange(-p, p + 1, device=hm.device)
        rows = py[:, None] + offs  # [n, 2p+1]
        cols = px[:, None] + offs
        # Zero outside the map (the map is unknown there), without padding a copy of every map.
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        patch = hm[
            torch.arange(n, device=hm.device)[:, None, None],
            rows.clamp(0, h - 1)[:, :, None],
            cols.clamp(0, w - 1)[:, None, :],
        ]
        patch = torch.where(inside, patch, torch.zeros_like(patch))

        g = self._blur_kernel_1d(hm.dtype, hm.device)
        patch = patch[:, None]  # [n, 1, 2p+1, 2p+1]
        patch = F.conv2d(patch, g.view(1, 1, 1, -1))
        patch = F.conv2d(patch, g.view(1, 1, -1, 1))[:, 0]  # [n, 3, 3], centre = argmax
        # No rescaling to the original maximum (as the paper does): a global scale only adds a
        # constant after the log and leaves the derivatives unchanged.
        L = torch.log(patch.clamp(min=_LOG_EPS))

        c = L[:, 1, 1]
        dx = 0.5 * (L[:, 1, 2] - L[:, 1, 0])
        dy = 0.5 * (L[:, 2, 1] - L[:, 0, 1])
        dxx = L[:, 1, 2] - 2 * c + L[:, 1, 0]
        dyy = L[:, 2, 1] - 2 * c + L[:, 0, 1]
        dxy = 0.25 * (L[:, 2, 2] - L[:, 2, 0] - L[:, 0, 2] + L[:, 0, 0])
        det = dxx * dyy - dxy * dxy

        # Only a negative-definite Hessian describes a maximum; a flat, saddle-shaped or singular
        # fit would send the step anywhere, so those keep the integer argmax.
        in_x = (px > 0) & (px < w - 1)
        in_y = (py > 0) & (py < h - 1)
        ok2d = in_x & in_y & (det > _DET_EPS) & (dxx < 0)
        safe_det = torch.where(ok2d, det, torch.ones_like(det))
        du = -(dyy * dx - dxy * dy) / safe_det
        dv = -(dxx * dy - dxy * dx) / safe_det
        # A peak on the map's border lacks the neighbours across it: no offset across the border,
        # but the other axis still gets a 1-D Newton step (it only uses the argmax's own row or
        # column), instead of dropping both.
        ok_x1 = in_x & ~in_y & (dxx < -_DET_EPS)
        ok_y1 = in_y & ~in_x & (dyy < -_DET_EPS)
        du1 = -dx / torch.where(ok_x1, dxx, -torch.ones_like(dxx))
        dv1 = -dy / torch.where(ok_y1, dyy, -torch.ones_like(dyy))
        zero = torch.zeros_like(du)
        du = torch.where(ok2d, du, torch.where(ok_x1, du1, zero))
        dv = torch.where(ok2d, dv, torch.where(ok_y1, dv1, zero))
        du = du.clamp(-_MAX_OFFSET, _MAX_OFFSET)
        dv = dv.clamp(-_MAX_OFFSET, _MAX_OFFSET)
        return du, dv
