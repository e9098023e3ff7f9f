"""SimCC head: per-keypoint x / y classification vectors from the highest-resolution feature.

A simplified RTMPose head (Jiang et al. 2023, without the gated attention unit): a 1x1 conv
reduces the finest feature to one channel per keypoint, each channel's ``h * w`` map is flattened
and mapped by a Linear layer (shared by all keypoints) to ``hidden`` features, and two Linear layers
give the ``W * r`` x logits and ``H * r`` y logits (see :class:`hrexp.codecs.simcc.SimCCCodec`).
The token path is linear, as in the SimCC paper's head, with a hidden width in between.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from hrexp.models.head_fit import check_head_fits


class SimCCHead(nn.Module):
    """1x1 conv -> flatten -> Linear(h*w, hidden) -> Linear(hidden, W*r) and Linear(hidden, H*r).

    Args:
        feature_info: The backbone's ``feature_info`` (highest resolution first); only entry 0
            is used.
        num_outputs: Number of keypoints ``K``.
        input_size: ``(H, W)`` of the network input. The flattened feature has
            ``ceil(H / stride) * ceil(W / stride)`` elements, fixed at construction.
        split_ratio: Bins per input px (``r``).
        hidden: Width of the shared hidden layer.

    Attributes:
        stride: The finest feature's reduction (so ``heatmap_size * stride`` is the input size the
            codec encodes for, as for the heatmap heads).
        lengths: ``(W * r, H * r)``.

    Raises:
        ValueError: ``feature_info`` is malformed (message names the head and the backbone's
            features) or an argument is out of range.
    """

    def __init__(
        self,
        feature_info: Sequence[Mapping[str, int]],
        num_outputs: int,
        input_size: Sequence[int],
        split_ratio: float = 2.0,
        hidden: int = 256,
    ) -> None:
        super().__init__()
        info = check_head_fits("SimCCHead", feature_info)[0]
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be positive, got {num_outputs}")
        if hidden < 1:
            raise ValueError(f"hidden must be positive, got {hidden}")
        if not split_ratio > 0:
            raise ValueError(f"split_ratio must be > 0, got {split_ratio!r}")
        if len(input_size) != 2 or min(int(s) for s in input_size) < 1:
            raise ValueError(f"input_size must be (H, W) > 0, got {input_size!r}")
        in_h, in_w = (int(s) for s in input_size)
        self.in_channels = info["num_chs"]
        self.num_outputs = int(num_outputs)
        self.stride = info["reduction"]
        self.input_size = (in_h, in_w)
        self.feature_size = (math.ceil(in_h / self.stride), math.ceil(in_w / self.stride))
        self.lengths = (int(round(in_w * split_ratio)), int(round(in_h * split_ratio)))

        self.final = nn.Conv2d(self.in_channels, self.num_outputs, 1)
        self.mlp = nn.Linear(self.feature_size[0] * self.feature_size[1], int(hidden))
        self.cls_x = nn.Linear(int(hidden), self.lengths[0])
        self.cls_y = nn.Linear(int(hidden), self.lengths[1])

    def forward(self, features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Predicts the x / y logits.

        Args:
            features: Backbone features, highest resolution first.

        Returns:
            ``{"x": [B, K, W * r], "y": [B, K, H * r]}``.
        """
        if len(features) == 0:
            raise ValueError("SimCCHead got no features")
        feat = features[0]
        if tuple(feat.shape[-2:]) != self.feature_size or feat.shape[1] != self.in_channels:
            raise ValueError(
                f"SimCCHead was built for a {self.in_channels}-channel feature of size {self.feature_size} "
                f"(input {self.input_size}, stride {self.stride}), got {tuple(feat.shape[1:])}"
            )
        x = self.final(feat).flatten(2)  # [B, K, h * w]
        x = self.mlp(x)
        return {"x": self.cls_x(x), "y": self.cls_y(x)}
