"""Heatmap + offset codec: a Gaussian heatmap locates the cell, two offset maps the sub-cell position.

As CenterNet's keypoint offsets (Zhou et al., "Objects as Points", 2019), here dense around each
keypoint: every heatmap cell within ``radius`` cells of a keypoint holds the offset from that cell's
centre to the keypoint, in heatmap cells, so an arg-max that is off by a cell still reads a valid
offset. The heatmap coordinate is hrexp's ``u = (x + 0.5) / stride - 0.5`` (cell ``i``'s centre is
``u = i``), so at cell ``(i, j)`` the offsets are ``(u - i, v - j)``.

Network output layout (``output_channels(K) = 3K``): ``[B, 3K, h, w]`` with channels ``0..K-1``
the heatmaps, ``K..2K-1`` the x offsets and ``2K..3K-1`` the y offsets (keypoint ``k`` at channels
``k``, ``K + k``, ``2K + k``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from hrexp.codecs.base import KeypointCodec, float_dtype, top_two_within
from hrexp.codecs.heatmap import GaussianHeatmapCodec


def split_offset_outputs(outputs: Tensor | Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``[B, 3K, h, w]`` (or ``{"heatmaps", "offsets"}``) -> heatmaps ``[B, K, h, w]``, offsets ``[B, 2K, h, w]``."""
    if isinstance(outputs, Mapping):
        heatmaps, offsets = outputs["heatmaps"], outputs["offsets"]
    else:
        if outputs.dim() != 4 or outputs.shape[1] % 3:
            raise ValueError(f"offset outputs must be [B, 3K, h, w], got {tuple(outputs.shape)}")
        k = outputs.shape[1] // 3
        heatmaps, offsets = outputs[:, :k], outputs[:, k:]
    if heatmaps.dim() != 4 or offsets.shape != (heatmaps.shape[0], 2 * heatmaps.shape[1], *heatmaps.shape[2:]):
        raise ValueError(
            f"heatmaps must be [B, K, h, w] and offsets [B, 2K, h, w], got {tuple(heatmaps.shape)} "
            f"and {tuple(offsets.shape)}"
        )
    return heatmaps, offsets


class OffsetHeatmapCodec(KeypointCodec):
    """Gaussian heatmaps plus per-cell sub-cell offsets (see the module docstring).

    Args:
        sigma: Gaussian standard deviation in heatmap cells.
        radius: Cells whose centre is within this Euclidean distance (heatmap cells) of the
            keypoint carry an offset target. At least ``sqrt(0.5)``, so the cell nearest to the
            keypoint (a perfect heatmap's arg-max) is always inside. Decoded offsets are clamped
            to ``[-radius, radius]``.

    Targets: ``{"heatmaps": [B, K, h, w], "offsets": [B, 2K, h, w] (x for keypoints 0..K-1, then
    y), "offset_mask": [B, K, h, w] (1 where supervised)}``; offsets are 0 outside the mask.
    Weights ``[B, K]`` as :class:`~hrexp.codecs.heatmap.GaussianHeatmapCodec` (visible and centre
    inside the heatmap area); a keypoint of weight 0 has an all-zero heatmap and mask.

    Decode: the heatmap's integer arg-max ``(i, j)`` plus the offsets read there, ``u = i + dx``,
    ``v = j + dy``, to input px; score = the heatmap maximum.
    """

    name = "offset"
    confidence = "heatmap peak"
    # Not flippable: a mirrored x offset changes sign, which the task's flip test (mirror + swap) does not do.

    def __init__(self, sigma: float = 2.0, radius: float = 2.0):
        if not radius >= math.sqrt(0.5):
            raise ValueError(
                f"radius={radius!r}: must be >= sqrt(0.5) ~ 0.707 heatmap cells, so the cell nearest "
                "to a keypoint is always supervised"
            )
        self._gauss = GaussianHeatmapCodec(sigma=sigma, refine="none")
        self.sigma = self._gauss.sigma
        self.radius = float(radius)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma}, radius={self.radius})"

    def output_channels(self, num_keypoints: int) -> int:
        """K heatmaps + K x offsets + K y offsets."""
        return 3 * int(num_keypoints)

    def encode(
        self,
        keypoints: Tensor,
        visible: Tensor,
        heatmap_size: tuple[int, int],
        stride: float,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Heatmaps, offsets and the offset mask.

        Args:
            keypoints: ``[B, K, 2]`` ``(x, y)`` input px.
            visible: ``[B, K]``.
            heatmap_size: ``(h, w)``.
            stride: Input px per heatmap cell.

        Returns:
            ``({"heatmaps", "offsets", "offset_mask"}, weights [B, K])``, float32 (float64 for
            float64 input).
        """
        if keypoints.dim() != 3 or keypoints.shape[-1] != 2:
            raise ValueError(f"keypoints must be [B, K, 2], got {tuple(keypoints.shape)}")
        heatmaps, weights = self._gauss.encode(keypoints, visible, heatmap_size, stride)
        dtype, device = heatmaps.dtype, heatmaps.device
        h, w = (int(s) for s in heatmap_size)
        centre = (keypoints.to(dtype) + 0.5) / stride - 0.5
        keep = weights > 0
        u = torch.where(keep, centre[..., 0], torch.zeros_like(weights))
        v = torch.where(keep, centre[..., 1], torch.zeros_like(weights))
        xs = torch.arange(w, device=device, dtype=dtype)
        ys = torch.arange(h, device=device, dtype=dtype)
        dx = u[..., None] - xs  # [B, K, w]: offset from column centre to the keypoint
        dy = v[..., None] - ys  # [B, K, h]
        mask = (dy[..., :, None] ** 2 + dx[..., None, :] ** 2 <= self.radius**2) & keep[..., None, None]
        mask = mask.to(dtype)
        off_x = dx[..., None, :].expand(-1, -1, h, -1) * mask
        off_y = dy[..., :, None].expand(-1, -1, -1, w) * mask
        offsets = torch.cat([off_x, off_y], dim=1)
        return {"heatmaps": heatmaps, "offsets": offsets, "offset_mask": mask}, weights

    def decode(self, outputs: Tensor | Mapping[str, Tensor], stride: float) -> tuple[Tensor, Tensor]:
        """Arg-max cell + the offset predicted there, to input px.

        Args:
            outputs: ``[B, 3K, h, w]`` (layout in the module docstring) or the targets' dict
                (``"heatmaps"``, ``"offsets"``).
            stride: Input px per heatmap cell.

        Returns:
            ``(keypoints [B, K, 2] input px, scores [B, K] = heatmap maxima)``.
        """
        if not stride > 0:
            raise ValueError(f"stride must be > 0, got {stride!r}")
        heatmaps, offsets = split_offset_outputs(outputs)
        dtype = float_dtype(heatmaps)
        heatmaps, offsets = heatmaps.to(dtype), offsets.to(dtype)
        b, k, h, w = heatmaps.shape
        scores, idx = heatmaps.reshape(b, k, h * w).max(dim=-1)
        flat_off = offsets.reshape(b, 2, k, h * w)
        off = flat_off.gather(-1, idx[:, None, :, None].expand(-1, 2, -1, -1))[..., 0]  # [B, 2, K]
        off = off.clamp(-self.radius, self.radius).transpose(1, 2)  # [B, K, 2]
        cells = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], dim=-1).to(dtype)
        keypoints = (cells + off + 0.5) * stride - 0.5
        return keypoints, scores

    def tied_points(self, outputs: Tensor | Mapping[str, Tensor], tolerance: float) -> Tensor:
        """``[B, K]``: the heatmap's two highest values within ``tolerance`` (the arg-max cell is a tie)."""
        heatmaps, _ = split_offset_outputs(outputs)
        return top_two_within(heatmaps.flatten(-2), tolerance)
