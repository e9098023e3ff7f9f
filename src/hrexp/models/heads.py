"""Heads that read backbone features (see ``docs/design.md``, "Heads").

Every head is built as ``Head(feature_info, num_outputs, ...)`` from the backbone's
``feature_info`` (highest resolution first), has ``.stride`` (its output stride relative to the
input image), and checks at construction that it fits the backbone: a misfit raises a ValueError
naming the head and the backbone's feature strides and channels
(:func:`~hrexp.models.head_fit.check_head_fits`).

- :class:`HeatmapHead`: the highest-resolution feature, kxk conv-BN-ReLU, 1x1 conv.
- :class:`HRNetV2Head`: every feature up-sampled to the finest and concatenated (HRNetV2),
  1x1 conv-BN-ReLU, 1x1 conv.
- :class:`DeconvHead`: the coarsest feature, N x (transposed conv x2 - BN - ReLU), output conv
  (SimpleBaseline).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hrexp.models.head_fit import check_features, check_head_fits, describe_features


def _init_output_conv(conv: nn.Conv2d) -> None:
    # Small final weights start the heatmaps near zero, as in the HRNet pose head.
    nn.init.normal_(conv.weight, std=0.001)
    nn.init.zeros_(conv.bias)


def output_in_float32(conv: nn.Module, x: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """``conv(x)`` computed in float32 even under autocast (``enabled``; ``speed.float32_output``).

    Why: a bfloat16 heatmap keeps 8 bits of mantissa, and the sub-pixel decoders (DARK's log-derivatives,
    UDP's offsets) read the shape of its peak; quantised, they lose about 0.06 mm on the ISBI cephalograms
    (docs/results/precision_table.table.md). The output conv is a small part of a step, and everything
    after it (up-sampling, loss, decoding) then sees float32 too.
    """
    if enabled and torch.is_autocast_enabled(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return conv(x.float())
    return conv(x)


def _upsample_by(x: torch.Tensor, factor: int, size: Sequence[int] | None = None) -> torch.Tensor:
    """Bilinear up-sampling by an integer ``factor``, cropped to ``size`` when given.

    A scale factor (not a target size) with align_corners=False keeps the half-pixel mapping
    ``x = (u + 0.5) * stride - 0.5`` that the codecs use; cropping then drops the extra row or
    column that odd input sizes (features of size ``ceil(H / stride)``) produce.
    """
    if factor > 1:
        x = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    if size is None:
        return x
    h, w = int(size[0]), int(size[1])
    if x.shape[-2] < h or x.shape[-1] < w:
        # A backbone that rounds sizes down: stretch to fit rather than fail.
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x[..., :h, :w]


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
        ValueError: ``feature_info`` is empty or malformed (the message names the head and the
            backbone's features), or an argument is out of range.
    """

    # The output conv in float32 under mixed precision (speed.float32_output sets it; output_in_float32).
    float32_output = True

    def __init__(
        self,
        feature_info: Sequence[Mapping[str, int]],
        num_outputs: int,
        hidden_channels: int | None = None,
        kernel_size: int = 3,
        upsample_to_input: bool = False,
    ) -> None:
        super().__init__()
        info = check_head_fits("HeatmapHead", feature_info)[0]
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
        x = output_in_float32(self.final, self.relu(self.bn(self.conv(features[0]))), self.float32_output)
        if self.upsample_to_input and self.feature_stride > 1:
            # A scale factor (not a target size) with align_corners=False keeps the half-pixel
            # mapping x = (u + 0.5) * stride - 0.5 that the codecs use.
            x = F.interpolate(
                x, scale_factor=self.feature_stride, mode="bilinear", align_corners=False
            )
        return x


class HRNetV2Head(nn.Module):
    """HRNetV2 head: all features at the finest resolution, concatenated, 1x1 conv-BN-ReLU, 1x1 conv.

    Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition", TPAMI
    2020: the lower-resolution representations are bilinearly up-sampled to the highest
    resolution and concatenated (for HRNet-W32: 32 + 64 + 128 + 256 = 480 channels at 1/4), a
    1x1 convolution mixes them, and a 1x1 convolution predicts the outputs (their facial
    landmark and segmentation heads).

    Args:
        feature_info: The backbone's ``feature_info``: at least 2 features whose strides are
            strictly increasing powers of two (so each is an exact up-sampling factor away from
            the finest).
        num_outputs: Number of heatmaps (e.g. landmarks).
        hidden_channels: Channels of the mixing 1x1 conv; None uses the concatenated channels.
        upsample_to_input: Bilinearly upsample the heatmaps by the finest feature's reduction,
            so the output stride is 1.

    Attributes:
        stride: Output stride relative to the input image (the finest feature's reduction, or 1
            with ``upsample_to_input``).
        in_channels: Channels of the concatenation (``self.conv.in_channels``).

    Raises:
        ValueError: The backbone's features do not fit (the message names the head and the
            backbone's strides and channels), or an argument is out of range.
    """

    # The output conv in float32 under mixed precision (speed.float32_output sets it; output_in_float32).
    float32_output = True

    def __init__(
        self,
        feature_info: Sequence[Mapping[str, int]],
        num_outputs: int,
        hidden_channels: int | None = None,
        upsample_to_input: bool = False,
    ) -> None:
        super().__init__()
        infos = check_head_fits(
            "HRNetV2Head",
            feature_info,
            min_features=2,
            strictly_increasing=True,
            power_of_two_strides=True,
        )
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be positive, got {num_outputs}")
        in_channels = sum(info["num_chs"] for info in infos)
        hidden = in_channels if hidden_channels is None else int(hidden_channels)
        if hidden < 1:
            raise ValueError(f"hidden_channels must be positive, got {hidden_channels}")

        self.feature_info = infos
        self.in_channels = in_channels
        self.num_outputs = num_outputs
        self.feature_stride = infos[0]["reduction"]
        # Powers of two, strictly increasing: every ratio to the finest is an integer.
        self.scale_factors = [info["reduction"] // self.feature_stride for info in infos]
        self.upsample_to_input = upsample_to_input
        self.stride = 1 if upsample_to_input else self.feature_stride

        self.conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.final = nn.Conv2d(hidden, num_outputs, 1)

        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        _init_output_conv(self.final)

    def fuse(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Up-samples every feature to the finest one's size and concatenates them.

        Args:
            features: Backbone features, highest resolution first.

        Returns:
            ``[B, in_channels, h, w]`` with ``(h, w)`` the finest feature's size.
        """
        check_features("HRNetV2Head", features, self.feature_info)
        size = features[0].shape[-2:]
        upsampled = [
            _upsample_by(feature, factor, size)
            for feature, factor in zip(features, self.scale_factors)
        ]
        return torch.cat(upsampled, dim=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Predicts heatmaps.

        Args:
            features: Backbone features, highest resolution first.

        Returns:
            Heatmaps ``[B, num_outputs, H / stride, W / stride]``.
        """
        x = output_in_float32(self.final, self.relu(self.bn(self.conv(self.fuse(features)))), self.float32_output)
        if self.upsample_to_input:
            x = _upsample_by(x, self.feature_stride)
        return x


# Transposed-conv padding and output padding that make a stride-2 layer exactly double the size.
_DECONV_PADDING = {4: (1, 0), 3: (1, 1), 2: (0, 0)}


class DeconvHead(nn.Module):
    """SimpleBaseline head: transposed convolutions on the coarsest feature, then an output conv.

    Xiao, Wu, Wei, "Simple Baselines for Human Pose Estimation and Tracking", ECCV 2018: N x
    (stride-2 transposed conv - BN - ReLU) from the backbone's last (coarsest) feature, then a
    conv to the heatmaps (3 layers of 256 channels, 4x4 kernels and a 1x1 output conv in the
    paper, taking ResNet's stride 32 to stride 4).

    Args:
        feature_info: The backbone's ``feature_info``; only the last (coarsest) entry is used.
        num_outputs: Number of heatmaps (e.g. landmarks).
        num_deconv_layers: Number of x2 transposed-conv layers (0: the output conv only).
        deconv_channels: Channels of every transposed conv.
        kernel_size: Transposed-conv kernel: 4 (paper), 3 or 2; each layer exactly doubles the
            size.
        final_kernel: Kernel of the output conv (odd; 1 in the paper).

    Attributes:
        stride: Output stride: the coarsest reduction / 2**num_deconv_layers.

    Raises:
        ValueError: The coarsest stride is not divisible by ``2**num_deconv_layers`` (the output
            stride would be below 1 or fractional; the message names the head and the backbone's
            strides and channels), ``feature_info`` is malformed, or an argument is out of range.
    """

    # The output conv in float32 under mixed precision (speed.float32_output sets it; output_in_float32).
    float32_output = True

    def __init__(
        self,
        feature_info: Sequence[Mapping[str, int]],
        num_outputs: int,
        num_deconv_layers: int = 3,
        deconv_channels: int = 256,
        kernel_size: int = 4,
        final_kernel: int = 1,
    ) -> None:
        super().__init__()
        infos = check_head_fits("DeconvHead", feature_info)
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be positive, got {num_outputs}")
        num_deconv_layers = int(num_deconv_layers)
        if num_deconv_layers < 0:
            raise ValueError(f"num_deconv_layers must be >= 0, got {num_deconv_layers}")
        if deconv_channels < 1:
            raise ValueError(f"deconv_channels must be positive, got {deconv_channels}")
        if kernel_size not in _DECONV_PADDING:
            raise ValueError(
                f"kernel_size must be one of {sorted(_DECONV_PADDING)}, got {kernel_size}"
            )
        if final_kernel < 1 or final_kernel % 2 == 0:
            raise ValueError(f"final_kernel must be a positive odd number, got {final_kernel}")
        coarsest = infos[-1]["reduction"]
        if coarsest % 2**num_deconv_layers:
            most = (coarsest & -coarsest).bit_length() - 1  # factors of two in the stride
            raise ValueError(
                f"DeconvHead with num_deconv_layers={num_deconv_layers} does not fit the "
                f"backbone's features ({describe_features(feature_info)}): the coarsest stride "
                f"{coarsest} / 2**{num_deconv_layers} = {coarsest / 2**num_deconv_layers:g} is "
                f"not an integer output stride >= 1; use at most {most} deconv layers"
            )

        self.feature_info = infos
        self.in_channels = infos[-1]["num_chs"]
        self.num_outputs = num_outputs
        self.feature_stride = coarsest
        self.stride = coarsest // 2**num_deconv_layers

        padding, output_padding = _DECONV_PADDING[kernel_size]
        layers: list[nn.Module] = []
        channels = self.in_channels
        for _ in range(num_deconv_layers):
            layers += [
                nn.ConvTranspose2d(
                    channels,
                    deconv_channels,
                    kernel_size,
                    stride=2,
                    padding=padding,
                    output_padding=output_padding,
                    bias=False,  # BN follows
                ),
                nn.BatchNorm2d(deconv_channels),
                nn.ReLU(inplace=True),
            ]
            channels = deconv_channels
        self.deconv_layers = nn.Sequential(*layers)
        self.final = nn.Conv2d(channels, num_outputs, final_kernel, padding=final_kernel // 2)

        for m in self.deconv_layers.modules():
            if isinstance(m, nn.ConvTranspose2d):
                # SimpleBaseline's small init; BN right after it restores the scale.
                nn.init.normal_(m.weight, std=0.001)
        _init_output_conv(self.final)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Predicts heatmaps.

        Args:
            features: Backbone features, highest resolution first.

        Returns:
            Heatmaps ``[B, num_outputs, h * 2**N, w * 2**N]`` for a coarsest feature of size
            ``(h, w)``: ``H / stride`` for inputs divisible by the coarsest stride.
        """
        check_features("DeconvHead", features, self.feature_info)
        return output_in_float32(self.final, self.deconv_layers(features[-1]), self.float32_output)
