"""Heads that read backbone features (see ``docs/design.md``, "Heads")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _validate_feature_info(feature_info: Any) -> list[dict[str, int]]:
    """Checks ``feature_info`` and returns it as plain dicts.

    Raises:
        ValueError: It is empty, not a sequence of mappings, lacks positive integer ``num_chs``
            / ``reduction``, or is not ordered highest resolution first.
    """
    if isinstance(feature_info, (str, bytes)) or not isinstance(feature_info, Sequence):
        # OmegaConf's ListConfig is a Sequence, so configs pass this check.
        raise ValueError(
            f"feature_info must be a list of dicts, got {type(feature_info).__name__}"
        )
    if len(feature_info) == 0:
        raise ValueError("feature_info is empty: the backbone describes no features")
    infos = []
    for index, info in enumerate(feature_info):
        if not isinstance(info, Mapping):
            raise ValueError(
                f"feature_info[{index}] must be a dict with num_chs and reduction, "
                f"got {type(info).__name__}"
            )
        for key in ("num_chs", "reduction"):
            value = info.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"feature_info[{index}][{key!r}] must be a positive int, got {value!r}"
                )
        infos.append({"num_chs": info["num_chs"], "reduction": info["reduction"]})
    reductions = [info["reduction"] for info in infos]
    if reductions != sorted(reductions):
        raise ValueError(
            f"feature_info must be ordered highest resolution first, got reductions {reductions}"
        )
    return infos


class HeatmapHead(nn.Module):
    """Heatmap head on the highest-resolution feature: kxk conv-BN-ReLU, then 1x1 conv.

    Args:
        feature_info: The backbone's ``feature_info`` (highest resolution first); only entry 0
            is used.
        num_outputs: Number of heatmaps (e.g. landmarks).
        hidden_channels: Channels of the kxk conv; None uses the feature's channels.
        kernel_size: Size of the hidden conv's kernel (odd, so the size is kept).
        upsample_to_input: Bilinearly upsample the heatmaps by the feature's reduction, so the
            output stride is 1.

    Attributes:
        stride: Output stride relative to the input image (the feature's reduction, or 1 with
            ``upsample_to_input``).

    Raises:
        ValueError: ``feature_info`` is empty or malformed, or an argument is out of range.
    """

    def __init__(
        self,
        feature_info: Sequence[Mapping[str, int]],
        num_outputs: int,
        hidden_channels: int | None = None,
        kernel_size: int = 3,
        upsample_to_input: bool = False,
    ) -> None:
        super().__init__()
        info = _validate_feature_info(feature_info)[0]
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be positive, got {num_outputs}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        in_channels = info["num_chs"]
        hidden = in_channels if hidden_channels is None else int(hidden_channels)
        if hidden < 1:
            raise ValueError(f"hidden_channels must be positive, got {hidden_channels}")

        self.in_channels = in_channels
        self.num_outputs = num_outputs
        self.feature_stride = info["reduction"]
        self.upsample_to_input = upsample_to_input
        self.stride = 1 if upsample_to_input else self.feature_stride

        self.conv = nn.Conv2d(
            in_channels, hidden, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.final = nn.Conv2d(hidden, num_outputs, 1)

        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        # Small final weights start the heatmaps near zero, as in the HRNet pose head.
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Predicts heatmaps.

        Args:
            features: Backbone features, highest resolution first.

        Returns:
            Heatmaps ``[B, num_outputs, H / stride, W / stride]``.
        """
        if len(features) == 0:
            raise ValueError("HeatmapHead got no features")
        x = self.final(self.relu(self.bn(self.conv(features[0]))))
        if self.upsample_to_input and self.feature_stride > 1:
            # A scale factor (not a target size) with align_corners=False keeps the half-pixel
            # mapping x = (u + 0.5) * stride - 0.5 that the codecs use.
            x = F.interpolate(
                x, scale_factor=self.feature_stride, mode="bilinear", align_corners=False
            )
        return x
