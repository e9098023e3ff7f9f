"""SimCC codec: keypoints as two 1-D classification targets (x bins and y bins).

Li et al., "SimCC: a Simple Coordinate Classification Perspective for Human Pose Estimation",
ECCV 2022; used by RTMPose (Jiang et al. 2023) with ``split_ratio = 2`` and Gaussian labels of
``sigma = (4.9, 5.66)`` bins for 192 x 256 inputs.

Each axis of the input is cut into ``split_ratio`` bins per input pixel: an input of width ``W``
gives ``W * r`` x bins. With hrexp's pixel-centre convention (pixel ``0`` covers ``[-0.5, 0.5)``)
bin ``i`` covers ``[i / r - 0.5, (i + 1) / r - 0.5)`` and its centre is at input
``x = (i + 0.5) / r - 0.5``, so the (sub-bin) bin coordinate of ``x`` is::

    c = (x + 0.5) * r - 0.5,            x = (c + 0.5) / r - 0.5

(the heatmap convention with ``stride = 1 / r``). The label is a Gaussian in bins centred at the
exact ``c`` (no rounding).

Decoding: per axis, the arg-max bin refined by the vertex of the parabola through the arg-max and
its two neighbours, ``offset = 0.5 * (f[i+1] - f[i-1]) / (2 f[i] - f[i+1] - f[i-1])``.
Why this rule: it is invariant to adding a constant to and scaling the vector, so it works on raw
logits (whose offset the softmax leaves free) as well as on probabilities or labels; with
``SimCCLoss(label_softmax=False)`` an ideal network outputs ``log(label) / beta + const``, a
parabola, for which it is exact; with ``label_softmax=True`` the ideal output is the Gaussian label
itself (up to a constant), for which the bias is below 0.05 bins at sigma 1 and 0.002 bins at
sigma 4.9. Since the arg-max is at least its neighbours, the offset is within half a bin; an
arg-max in the first / last bin, or a flat top, keeps the integer bin. (RTMPose itself takes the
bare arg-max, which is off by up to ``0.5 / r`` px.)

Score: the smaller of the two axes' maxima of the values given to ``decode`` (as RTMPose's
``get_simcc_maximum``): a keypoint is as confident as its less certain coordinate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from hrexp.codecs.base import KeypointCodec, check_points, float_dtype, top_two_within


def _refine_1d(vectors: Tensor) -> tuple[Tensor, Tensor]:
    """Arg-max + parabola vertex per row of ``[..., L]``: (sub-bin positions, maxima)."""
    length = vectors.shape[-1]
    maxima, idx = vectors.max(dim=-1)
    left = vectors.gather(-1, (idx - 1).clamp(min=0)[..., None])[..., 0]
    right = vectors.gather(-1, (idx + 1).clamp(max=length - 1)[..., None])[..., 0]
    a = maxima - right  # >= 0
    b = maxima - left  # >= 0
    denom = a + b
    interior = (idx > 0) & (idx < length - 1) & (denom > 0) & torch.isfinite(denom)
    offset = 0.5 * (b - a) / torch.where(interior, denom, torch.ones_like(denom))
    offset = torch.where(interior, offset, torch.zeros_like(offset))
    return idx.to(vectors.dtype) + offset, maxima


class SimCCCodec(KeypointCodec):
    """Encode keypoints as SimCC x / y label vectors and decode predicted vectors back.

    Args:
        input_size: ``(H, W)`` of the network input, which the vectors span (``conf/task/codec/simcc.yaml``
            sets it to ``data.image_size``, as the SimCC head's).
        split_ratio: Bins per input pixel (``r``; RTMPose: 2.0).
        sigma: Gaussian standard deviation in bins, one float for both axes or ``(sigma_x,
            sigma_y)`` (RTMPose at 192 x 256: ``(4.9, 5.66)``).
        label_smoothing: ``eps`` in ``[0, 1)``: the label becomes ``(1 - eps) * gauss + eps / L``
            (a uniform floor over the ``L`` bins of the axis).
        normalize: Divide the Gaussian by ``sigma * sqrt(2 pi)`` (sums to about 1) instead of
            peak 1 (as mmpose's ``SimCCLabel(normalize=True)``).

    Targets: ``{"x": [B, K, W * r], "y": [B, K, H * r]}``; invisible / outside keypoints get all-zero
    vectors and weight 0. Weights ``[B, K]``: 1 for a visible keypoint inside the input
    (``-0.5 <= x < W - 0.5``, same for ``y``; equivalently its bin coordinate inside the vector).
    """

    name = "simcc"
    output_keys = ("x", "y")  # the SimCC head's dict of x / y logits
    graph_output_names = ("simcc_x", "simcc_y")
    confidence = "smaller of the x and y maxima"
    # Not flippable: the outputs are vectors, not maps in the image frame.

    def __init__(
        self,
        input_size: Sequence[int],
        split_ratio: float = 2.0,
        sigma: float | Sequence[float] = (4.9, 5.66),
        label_smoothing: float = 0.0,
        normalize: bool = False,
    ):
        if isinstance(input_size, (str, bytes)) or len(input_size) != 2 or min(int(v) for v in input_size) < 1:
            raise ValueError(f"task.codec.input_size={input_size!r}: expected the network input (H, W) > 0, "
                             "as data.image_size")
        if not split_ratio > 0:
            raise ValueError(f"split_ratio must be > 0, got {split_ratio!r}")
        if isinstance(sigma, (int, float)):
            sigma = (float(sigma), float(sigma))
        sigma = tuple(float(s) for s in sigma)
        if len(sigma) != 2 or not all(s > 0 for s in sigma):
            raise ValueError(f"sigma must be a positive float or (sigma_x, sigma_y), got {sigma!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.split_ratio = float(split_ratio)
        self.sigma = sigma
        self.label_smoothing = float(label_smoothing)
        self.normalize = bool(normalize)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(input_size={self.input_size}, split_ratio={self.split_ratio}, sigma={self.sigma}, "
            f"label_smoothing={self.label_smoothing}, normalize={self.normalize})"
        )

    def output_channels(self, num_keypoints: int) -> int:
        """The head's ``num_outputs`` (one x and one y vector per keypoint; no maps; their lengths: :attr:`lengths`)."""
        return int(num_keypoints)

    @property
    def lengths(self) -> tuple[int, int]:
        """``(W * r, H * r)`` bins for the input ``(H, W)``, rounded to whole bins (as the SimCC head's)."""
        h, w = self.input_size
        return int(round(w * self.split_ratio)), int(round(h * self.split_ratio))

    def _labels(self, centre: Tensor, length: int, sigma: float) -> Tensor:
        bins = torch.arange(length, device=centre.device, dtype=centre.dtype)
        label = torch.exp(-((bins - centre[..., None]) ** 2) / (2.0 * sigma**2))
        if self.normalize:
            label = label / (sigma * (2.0 * torch.pi) ** 0.5)
        if self.label_smoothing > 0:
            label = (1.0 - self.label_smoothing) * label + self.label_smoothing / length
        return label

    def encode(
        self,
        keypoints: Tensor,
        visible: Tensor,
        heatmap_size: tuple[int, int],
        stride: float,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Gaussian x / y labels.

        Args:
            keypoints: ``[B, K, 2]`` ``(x, y)`` in input px.
            visible: ``[B, K]``.
            heatmap_size, stride: Unused: SimCC renders no heatmap; its vectors span the constructor's
                ``input_size``.

        Returns:
            ``({"x": [B, K, W * r], "y": [B, K, H * r]}, weights [B, K])``.
        """
        check_points(keypoints, visible)
        lx, ly = self.lengths
        kpts = keypoints.to(float_dtype(keypoints))
        c = (kpts + 0.5) * self.split_ratio - 0.5  # [B, K, 2] bin coordinates
        cx, cy = c[..., 0], c[..., 1]
        inside = (cx >= -0.5) & (cx < lx - 0.5) & (cy >= -0.5) & (cy < ly - 0.5)
        weights = ((visible.to(kpts.device) != 0) & inside).to(kpts.dtype)
        keep = weights > 0
        cx = torch.where(keep, cx, torch.zeros_like(cx))  # no NaN / inf into the labels
        cy = torch.where(keep, cy, torch.zeros_like(cy))
        tx = self._labels(cx, lx, self.sigma[0]) * weights[..., None]
        ty = self._labels(cy, ly, self.sigma[1]) * weights[..., None]
        return {"x": tx, "y": ty}, weights

    def decode(self, outputs: Mapping[str, Tensor], stride: float) -> tuple[Tensor, Tensor]:
        """Arg-max + parabola refinement per axis (module docstring), to input px.

        Args:
            outputs: ``{"x": [B, K, Lx], "y": [B, K, Ly]}`` logits, probabilities or labels.
            stride: Unused (bins are tied to input px by ``split_ratio``); kept for the interface.

        Returns:
            ``(keypoints [B, K, 2] input px, scores [B, K] = min of the two axes' maxima)``.
        """
        if not isinstance(outputs, Mapping) or "x" not in outputs or "y" not in outputs:
            raise ValueError("SimCC outputs must be a dict with 'x' [B, K, Lx] and 'y' [B, K, Ly]")
        vx, vy = outputs["x"], outputs["y"]
        if vx.dim() != 3 or vy.dim() != 3 or vx.shape[:2] != vy.shape[:2]:
            raise ValueError(
                f"SimCC outputs must be [B, K, L] with one B, K, got x {tuple(vx.shape)}, y {tuple(vy.shape)}"
            )
        dtype = torch.promote_types(float_dtype(vx), float_dtype(vy))
        cx, mx = _refine_1d(vx.to(dtype))
        cy, my = _refine_1d(vy.to(dtype))
        keypoints = (torch.stack([cx, cy], dim=-1) + 0.5) / self.split_ratio - 0.5
        return keypoints, torch.minimum(mx, my)

    def tied_points(self, outputs: Mapping[str, Tensor], tolerance: float) -> Tensor:
        """``[B, K]``: either axis' two highest values within ``tolerance`` (its arg-max bin is a tie)."""
        return top_two_within(outputs["x"], tolerance) | top_two_within(outputs["y"], tolerance)
