"""Patches of every landmark of a batch, cut from the (reduced) original images with ONE ``grid_sample``.

Patch pixel ``(i, j)`` of a patch centred at ``(cx, cy)`` samples image point
``(cx + j - (P - 1) / 2, cy + i - (P - 1) / 2)`` (hrexp's convention: the centre of pixel ``(0, 0)`` is
``(0, 0)``), bilinearly, with zeros outside the image. With centres on ``aligned_centres`` the sample
points are pixel centres, so a patch is an exact copy of the image's pixels (no interpolation blur).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def aligned_centres(centres: Tensor, size: int) -> Tensor:
    """The nearest centres whose patch samples fall on pixel centres: ``round(c - (P - 1) / 2) + (P - 1) / 2``."""
    half = (size - 1) / 2
    return torch.round(centres - half) + half


def crop_patches(images: Tensor, centres: Tensor, size: int) -> Tensor:
    """``[B, K, C, P, P]`` patches of ``images [B, C, H, W]`` around ``centres [B, K, 2]`` (image px).

    All ``B * K`` patches come from one ``grid_sample`` call: each image's ``K`` sampling grids are
    stacked along the height (``[B, K * P, P, 2]``), so no image is copied per landmark.
    """
    b, k, _ = centres.shape
    _, c, h, w = images.shape
    offsets = torch.arange(size, dtype=centres.dtype, device=centres.device) - (size - 1) / 2
    xs = centres[..., 0, None] + offsets  # [B, K, P]
    ys = centres[..., 1, None] + offsets
    # align_corners=False: pixel x spans [x - 0.5, x + 0.5]; normalised -1..1 covers the whole width
    gx = ((xs + 0.5) / w * 2 - 1)[:, :, None, :].expand(b, k, size, size)
    gy = ((ys + 0.5) / h * 2 - 1)[:, :, :, None].expand(b, k, size, size)
    grid = torch.stack([gx, gy], dim=-1).reshape(b, k * size, size, 2).to(images.dtype)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(b, c, k, size, size).permute(0, 2, 1, 3, 4)
