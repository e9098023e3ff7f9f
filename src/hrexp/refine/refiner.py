"""The second stage: a network that sees one patch of the original image per landmark and predicts that
landmark's heatmap inside it."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from hrexp.data.transforms import IMAGENET_MEAN, IMAGENET_STD


class Refiner(nn.Module):
    """Backbone + heatmap head on patches; head channel ``k`` is landmark ``k`` (vertebra corners look alike:
    the channel tells the network which corner the patch is about).

    Args:
        backbone: returns a list of features (highest resolution first) with ``feature_info``.
        head: partial head constructor, called as ``head(feature_info=..., num_outputs=K)``.
        num_keypoints: K.
        codec: encodes / decodes one landmark per patch (a heatmap codec: ``encode``, ``decode``).
        loss: ``loss(pred [N, 1, h, w], target [N, 1, h, w], weights [N, 1])``.
    """

    def __init__(self, backbone: nn.Module, head: Callable[..., nn.Module], num_keypoints: int, codec: Any,
                 loss: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head(feature_info=backbone.feature_info, num_outputs=num_keypoints)
        self.codec = codec
        self.loss_fn = loss
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def stride(self) -> float:
        return float(self.head.stride)

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 RGB (0..255) -> the network's input scale (ImageNet mean / std), float."""
        return (images.float() - self.mean) / self.std

    def forward(self, patches: Tensor, landmark: Tensor) -> Tensor:
        """``patches [N, 3, P, P]`` (normalised), ``landmark [N]`` (which landmark each is) -> ``[N, 1, h, w]``."""
        maps = self.head(self.backbone(patches))
        return maps[torch.arange(len(landmark), device=maps.device), landmark][:, None]
