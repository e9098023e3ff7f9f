"""A fifth keypoint codec written only in the tests (the acceptance of the codec contract): per-landmark regression.

The head outputs two maps per landmark (channels ``k`` and ``K + k``); the landmark is where the maps' cells
vote on average: ``x = mean(map_k) * W - 0.5`` and ``y = mean(map_{K+k}) * H - 0.5`` for an input of
``W = w * stride`` by ``H = h * stride`` pixels (the cells predict the coordinate normalised to ``[0, 1]``,
``(x + 0.5) / W``). The targets are those normalised coordinates, trained by this file's own loss (an L1 on
the maps' means), not by the task's heatmap loss; how much the cells disagree is the spread, in input px.
Not flippable: a mirrored x map would have to become ``1 - map``, which the task's flip test does not do.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hrexp.codecs.base import KeypointCodec, check_points, float_dtype


class MeanRegressionCodec(KeypointCodec):
    """Keypoints <-> two maps per keypoint whose spatial means are the normalised coordinates (module docstring).

    Targets: ``{"coords": [B, K, 2]}`` normalised ``((x + 0.5) / W, (y + 0.5) / H)`` (0 where the weight is 0).
    Weights ``[B, K]``: 1 for a visible keypoint inside the input.
    """

    confidence = "1 / (1 + spread of the cells' votes in px)"

    def output_channels(self, num_keypoints: int) -> int:
        return 2 * int(num_keypoints)

    def keypoint_maps(self, outputs: Tensor, num_keypoints: int) -> None:
        return None  # the maps are coordinate votes, not heatmaps: nothing to draw

    @staticmethod
    def _input_size(grid_hw: tuple[int, int], stride: float) -> tuple[float, float]:
        """The input ``(H, W)`` the ``(h, w)`` cells at ``stride`` cover."""
        return float(grid_hw[0]) * stride, float(grid_hw[1]) * stride

    def encode(self, keypoints: Tensor, visible: Tensor, heatmap_size: tuple[int, int],
               stride: float) -> tuple[dict[str, Tensor], Tensor]:
        check_points(keypoints, visible)
        hin, win = self._input_size(heatmap_size, stride)
        kpts = keypoints.to(float_dtype(keypoints))
        size = kpts.new_tensor([win, hin])
        coords = (kpts + 0.5) / size
        inside = ((coords >= 0) & (coords < 1)).all(dim=-1)  # NaN compares False: outside
        weights = ((visible.to(kpts.device) != 0) & inside).to(kpts.dtype)
        coords = torch.where(weights[..., None] > 0, coords, torch.zeros_like(coords))
        return {"coords": coords}, weights

    def votes(self, outputs: Tensor) -> tuple[Tensor, Tensor]:
        """The maps' means ``[B, K, 2]`` (normalised x, y) and their standard deviations over the cells."""
        maps = outputs.to(float_dtype(outputs))
        b, c, h, w = maps.shape
        k = c // 2
        flat = torch.stack([maps[:, :k], maps[:, k:]], dim=-1).reshape(b, k, h * w, 2)
        return flat.mean(dim=2), flat.std(dim=2, correction=0)

    def decode(self, outputs: Tensor, stride: float) -> tuple[Tensor, Tensor]:
        mean, _ = self.votes(outputs)
        hin, win = self._input_size(outputs.shape[-2:], stride)
        keypoints = mean * mean.new_tensor([win, hin]) - 0.5
        return keypoints, 1.0 / (1.0 + self.spread(outputs, stride))

    def spread(self, outputs: Tensor, stride: float) -> Tensor:
        """How far apart the cells' votes are: the radial standard deviation in input px."""
        _, std = self.votes(outputs)
        hin, win = self._input_size(outputs.shape[-2:], stride)
        return (std * std.new_tensor([win, hin])).norm(dim=-1)


class MeanRegressionLoss(nn.Module):
    """``sum_{b,k} w * |mean(maps) - target|_1 / (B * K)``: the codec's own loss (weight 0 leaves a keypoint out)."""

    def __init__(self, codec: MeanRegressionCodec | None = None):
        super().__init__()
        self.codec = codec or MeanRegressionCodec()

    def forward(self, outputs: Tensor, targets: dict[str, Tensor], weights: Tensor) -> Tensor:
        mean, _ = self.codec.votes(outputs)
        error = (mean - targets["coords"].to(mean.dtype)).abs().sum(dim=-1)
        w = weights.to(mean.dtype)
        return torch.where(w != 0, error * w, torch.zeros_like(error)).mean()
