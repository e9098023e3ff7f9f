"""Centre points of blobs <-> one centre heatmap (the fourth task's codec: a CenterNet-style target).

Coordinates follow hrexp's convention: ``(x, y)`` in input pixels, pixel ``(0, 0)``'s centre at
``(0.0, 0.0)``, heatmap coordinate ``u = (x + 0.5) / stride - 0.5``. Unlike the landmark codec there
is one channel for any number of points: the target is the maximum of one Gaussian per point, and
decoding finds every local maximum above a threshold (3x3 max-pool NMS) refined by its 3x3 centroid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class CentreHeatmapCodec:
    """Encode a variable number of points per image; decode every peak.

    Args:
        sigma: Gaussian standard deviation in heatmap pixels.
        threshold: Peaks at or below this value are not points.
    """

    def __init__(self, sigma: float = 1.0, threshold: float = 0.5):
        self.sigma = float(sigma)
        self.threshold = float(threshold)

    def encode(self, points: Tensor, valid: Tensor, heatmap_size: tuple[int, int], stride: float) -> Tensor:
        """``points [B, M, 2]`` (input px), ``valid [B, M]`` -> ``[B, 1, h, w]`` in [0, 1]."""
        h, w = heatmap_size
        u = (points + 0.5) / stride - 0.5  # [B, M, 2]
        ys = torch.arange(h, dtype=points.dtype, device=points.device).view(1, 1, h, 1)
        xs = torch.arange(w, dtype=points.dtype, device=points.device).view(1, 1, 1, w)
        d2 = (xs - u[..., 0, None, None]) ** 2 + (ys - u[..., 1, None, None]) ** 2  # [B, M, h, w]
        maps = torch.exp(-d2 / (2 * self.sigma**2)) * valid[..., None, None].to(points.dtype)
        return maps.amax(dim=1, keepdim=True) if maps.shape[1] else maps.new_zeros(points.shape[0], 1, h, w)

    def decode(self, heatmaps: Tensor, stride: float) -> list[Tensor]:
        """``[B, 1, h, w]`` -> one ``[N_b, 2]`` tensor of points (input px) per image."""
        hm = heatmaps.detach().float()
        peaks = (hm == F.max_pool2d(hm, 3, stride=1, padding=1)) & (hm > self.threshold)
        padded = F.pad(hm, (1, 1, 1, 1))
        out = []
        for b in range(hm.shape[0]):
            found = []
            for y, x in torch.nonzero(peaks[b, 0]).tolist():
                window = padded[b, 0, y:y + 3, x:x + 3]
                offsets = torch.tensor([-1.0, 0.0, 1.0], device=hm.device)
                total = window.sum()
                du = float((window.sum(0) * offsets).sum() / total)
                dv = float((window.sum(1) * offsets).sum() / total)
                found.append([(x + du + 0.5) * stride - 0.5, (y + dv + 0.5) * stride - 0.5])
            out.append(torch.tensor(found, dtype=torch.float32).reshape(-1, 2))
        return out
