"""U-Net backbone written from the paper.

Reference:
    Ronneberger, Fischer, Brox. "U-Net: Convolutional Networks for Biomedical Image
    Segmentation", MICCAI 2015.

Layout (``C = base_width``, level ``l`` runs at stride ``2**l`` with ``C * 2**l`` channels):

    encoder   level 0: double conv (in_chans -> C) at full resolution
              level l = 1..depth: 2x2 max pool, double conv (C*2**(l-1) -> C*2**l)
    decoder   level l = depth-1 .. log2(min_stride): up-sample level l+1 x2 while halving its
              channels (2x2 transposed conv, or bilinear + 1x1 conv), concatenate level l's
              encoder feature (the skip), double conv (2*C*2**l -> C*2**l)

A double conv is (3x3 conv - norm - ReLU) x 2. Departures from the paper, each for a reason:
- 3x3 convs are padded ("same"), so no cropping of skips is needed and feature sizes follow the
  other backbones (``ceil(H / stride)``); the paper's valid convs need overlap-tile inference.
- a normalisation layer (BatchNorm by default) follows each conv; the paper predates BatchNorm,
  and without it a scratch U-Net of this depth trains poorly at the framework's learning rates.
- max pooling rounds up (``ceil_mode``), so any input size works; the decoder crops the one extra
  row/column its x2 up-sampling then makes, which keeps the half-pixel alignment exact.

The backbone returns the DECODER features, highest resolution first: the decoder output of every
built level (strides ``min_stride .. 2**(depth-1)``) followed by the bottleneck (stride
``2**depth``, the decoder's coarsest input). Every returned feature lies on the path to the finest
one, so a head reading only ``features[0]`` still trains every parameter (no unused parameters
under DDP). The paper's 1x1 classifier is not part of the backbone: heads play that role.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from hrexp.models.blocks import init_relu_network

NormSpec = Union[str, Callable[[int], nn.Module], None]

_NORM_NAMES = ("batch", "group", "instance", "none")


def _make_norm(norm: NormSpec, channels: int) -> nn.Module | None:
    """The normalisation layer for ``channels`` channels, or None for no normalisation."""
    if norm is None or norm == "none":
        return None
    if callable(norm):
        return norm(channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        # 32 groups (Wu & He 2018) where the width allows; gcd keeps narrow levels valid.
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if norm == "instance":
        # affine, so that the conv before it can drop its bias like with BatchNorm.
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"UNet norm must be one of {_NORM_NAMES} or a callable, got {norm!r}")


class DoubleConv(nn.Sequential):
    """(3x3 conv - norm - ReLU) x 2, size-preserving.

    Args:
        in_channels: Input channels.
        out_channels: Channels of both convolutions.
        norm: See :class:`UNet`.
    """

    def __init__(self, in_channels: int, out_channels: int, norm: NormSpec = "batch") -> None:
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            norm_layer = _make_norm(norm, out_channels)
            # A norm with a learned shift makes a conv bias redundant.
            layers.append(nn.Conv2d(c_in, out_channels, 3, padding=1, bias=norm_layer is None))
            if norm_layer is not None:
                layers.append(norm_layer)
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Down(nn.Sequential):
    """2x2 max pool (rounding up), then a double conv: one encoder level."""

    def __init__(self, in_channels: int, out_channels: int, norm: NormSpec = "batch") -> None:
        super().__init__(
            nn.MaxPool2d(2, ceil_mode=True),
            DoubleConv(in_channels, out_channels, norm),
        )


class Up(nn.Module):
    """x2 up-sampling that halves the channels, concatenation with the skip, double conv.

    Args:
        in_channels: Channels of the coarser input (twice ``out_channels`` in a U-Net).
        skip_channels: Channels of the encoder feature at the target resolution.
        out_channels: Channels after up-sampling and of the double conv.
        bilinear: Bilinear up-sampling + 1x1 conv instead of the paper's 2x2 transposed conv.
        norm: See :class:`UNet`.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        bilinear: bool = True,
        norm: NormSpec = "batch",
    ) -> None:
        super().__init__()
        self.bilinear = bilinear
        if bilinear:
            # The 1x1 conv runs before the up-sampling: both are linear per pixel / per channel
            # (bilinear weights sum to 1, so even the bias commutes), so the result is the same
            # at a quarter of the multiply-adds.
            self.reduce = nn.Conv2d(in_channels, out_channels, 1)
        else:
            # The paper's "2x2 up-convolution that halves the number of feature channels".
            self.reduce = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(skip_channels + out_channels, out_channels, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        if self.bilinear:
            # A fixed factor (not the skip's size) keeps the half-pixel mapping of the 2x2 pool.
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        # Pooling rounded odd sizes up, so x may be one row/column larger than the skip.
        x = x[..., : skip.shape[-2], : skip.shape[-1]]
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net backbone returning its decoder features (see the module docstring for the layout).

    ``forward(x)`` returns ``depth - log2(min_stride) + 1`` tensors, highest resolution first:
    level ``l`` (``log2(min_stride) <= l <= depth``) at stride ``2**l`` with
    ``base_width * 2**l`` channels, ``[B, C_l, ceil(H / 2**l), ceil(W / 2**l)]``, as described by
    ``feature_info``. The defaults are the paper's network (64 base channels, 4 down-samplings,
    decoder up to full resolution, so features at strides 1, 2, 4, 8, 16) with bilinear
    up-sampling and BatchNorm.

    ``min_stride`` stops the decoder early: a head on ``features[0]`` then predicts at that stride
    instead of full resolution (at stride 4, 1/16 of the heatmap memory, and the same heatmap grid
    as HRNet, so a codec ``sigma`` in heatmap pixels means the same in input pixels). The decoder
    levels finer than ``min_stride`` are not built; the encoder still starts at full resolution.

    Args:
        in_chans: Input image channels.
        base_width: Channels of level 0; level ``l`` has ``base_width * 2**l``.
        depth: Number of 2x down-samplings (the paper: 4). The coarsest feature has stride
            ``2**depth``, so inputs should be multiples of it (``check_input_size`` enforces it).
        bilinear: Up-sample by bilinear interpolation + 1x1 conv (no checkerboard artefacts in
            smooth heatmaps, fewer parameters) instead of the paper's 2x2 transposed conv.
        norm: ``"batch"`` (default), ``"group"`` (32 groups; for small batches of large images),
            ``"instance"``, ``"none"``/None (convs get a bias), or a callable
            ``norm(num_channels) -> nn.Module`` (e.g. a Hydra ``_partial_``).
        min_stride: Stride of the finest returned feature, a power of two from 1 to
            ``2**depth``.

    Raises:
        ValueError: An argument is out of range.
    """

    def __init__(
        self,
        in_chans: int = 3,
        base_width: int = 64,
        depth: int = 4,
        bilinear: bool = True,
        norm: NormSpec = "batch",
        min_stride: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (("in_chans", in_chans), ("base_width", base_width), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UNet {name} must be a positive int, got {value!r}")
        if isinstance(norm, str) and norm not in _NORM_NAMES:
            raise ValueError(f"UNet norm must be one of {_NORM_NAMES} or a callable, got {norm!r}")
        min_stride = int(min_stride)
        if min_stride < 1 or min_stride & (min_stride - 1) or min_stride > 2**depth:
            raise ValueError(
                f"UNet min_stride must be a power of two from 1 to 2**depth = {2**depth}, "
                f"got {min_stride}"
            )

        widths = [base_width * 2**level for level in range(depth + 1)]
        self.depth = depth
        self.min_stride = min_stride
        self.first_level = min_stride.bit_length() - 1  # log2(min_stride)

        self.stem = DoubleConv(in_chans, widths[0], norm)
        self.down = nn.ModuleList(
            Down(widths[level - 1], widths[level], norm) for level in range(1, depth + 1)
        )
        # Coarse to fine, the order forward runs them in.
        self.up = nn.ModuleList(
            Up(widths[level + 1], widths[level], widths[level], bilinear, norm)
            for level in range(depth - 1, self.first_level - 1, -1)
        )
        self.feature_info = [
            {"num_chs": widths[level], "reduction": 2**level}
            for level in range(self.first_level, depth + 1)
        ]
        init_relu_network(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Computes the decoder features.

        Args:
            x: Images ``[B, in_chans, H, W]``.

        Returns:
            Features ``[B, C_l, ceil(H / 2**l), ceil(W / 2**l)]``, highest resolution first, as
            described by ``feature_info``.
        """
        x = self.stem(x)
        # Only the skips the built decoder levels read are kept (memory at high resolution).
        skips = [x] if self.first_level == 0 else []
        for level, down in enumerate(self.down, start=1):
            x = down(x)
            if self.first_level <= level < self.depth:
                skips.append(x)
        features = [x]
        for up, skip in zip(self.up, reversed(skips)):
            x = up(x, skip)
            features.append(x)
        return features[::-1]
