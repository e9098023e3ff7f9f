"""HRNet backbone written from the papers.

References:
    Sun, Xiao, Liu, Wang. "Deep High-Resolution Representation Learning for Human Pose
    Estimation", CVPR 2019 (HRNetV1).
    Wang et al. "Deep High-Resolution Representation Learning for Visual Recognition",
    TPAMI 2020 (HRNetV2: the last module keeps every branch, a multi-scale output).

Layout (W = ``width``):

    stem      conv1-bn1-relu-conv2-bn2-relu, two stride-2 3x3 convs, 64 ch, 1/4 resolution
    layer1    4 Bottlenecks (64 planes -> 256 ch)
    transition1 -> stage2 (1 module, 2 branches: W, 2W)
    transition2 -> stage3 (4 modules, 3 branches: W, 2W, 4W)
    transition3 -> stage4 (3 modules, 4 branches: W, 2W, 4W, 8W)

Each module runs 4 BasicBlocks per branch, then fuses every branch into every other one
(``fuse_layers[i][j]`` carries branch ``j`` to branch ``i``). The module and parameter names are
those of the official code, which timm's ``hrnet_*`` models also use; see
:func:`load_timm_hrnet_state_dict`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hrexp.models.blocks import BasicBlock, Bottleneck, conv1x1, conv3x3, init_relu_network, make_layer
from hrexp.models.freeze import (
    HRNET_STAGES,
    check_freeze_stages,
    freeze_modules,
    hrnet_frozen_modules,
    KeepsFrozenInEval,
)
from hrexp.models.pretrained import (
    OPTION as PRETRAINED_OPTION,
    LoadReport,
    check_pretrained_file,
    is_disabled,
    load_pretrained,
)

log = logging.getLogger(__name__)

# Top-level keys of timm's (and official ImageNet) HRNet checkpoints that belong to the
# classification head (HRNetV2-W "incre/downsamp/final" modules and the classifier), plus the
# official pose checkpoints' ``final_layer`` (their 1x1 heatmap head). None is part of the backbone.
TIMM_NON_BACKBONE_PREFIXES = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        conv3x3(in_channels, out_channels, stride),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class HighResolutionModule(nn.Module):
    """Parallel branches of BasicBlocks followed by multi-resolution fusion.

    Branch ``i`` runs at 1/2**i of the first branch's resolution. Fusion into branch ``i``:
    - from a lower-resolution branch ``j > i``: 1x1 conv + BN, then nearest upsampling;
    - from a higher-resolution branch ``j < i``: ``i - j`` stride-2 3x3 conv + BN, ReLU between
      them but not after the last;
    - from itself: identity.
    The inputs are summed, then ReLU.

    Args:
        in_channels: Channels of each incoming branch.
        channels: Channels of each branch (same length as ``in_channels``).
        num_blocks: BasicBlocks per branch.
        multi_scale_output: If False, only the highest-resolution branch is fused and returned
            (HRNetV1's last module for pose estimation).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: Sequence[int],
        num_blocks: int,
        multi_scale_output: bool = True,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(channels) or not channels:
            raise ValueError(
                f"in_channels {list(in_channels)} and channels {list(channels)} must be "
                "non-empty and of the same length"
            )
        self.num_branches = len(channels)
        self.branches = nn.ModuleList(
            make_layer(BasicBlock, c_in, c, num_blocks) for c_in, c in zip(in_channels, channels)
        )
        self.fuse_layers = (
            self._make_fuse_layers(list(channels), multi_scale_output)
            if self.num_branches > 1
            else None
        )

    @staticmethod
    def _make_fuse_layers(channels: list[int], multi_scale_output: bool) -> nn.ModuleList:
        num_outputs = len(channels) if multi_scale_output else 1
        fuse_layers = nn.ModuleList()
        for i in range(num_outputs):
            row = nn.ModuleList()
            for j, c_j in enumerate(channels):
                if j > i:
                    # Upsampling happens in forward (to the target's exact size); the module
                    # holds only the parameters, so its keys match the official layout.
                    row.append(nn.Sequential(conv1x1(c_j, channels[i]), nn.BatchNorm2d(channels[i])))
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = []
                    for k in range(i - j):
                        if k == i - j - 1:
                            steps.append(
                                nn.Sequential(
                                    conv3x3(c_j, channels[i], stride=2),
                                    nn.BatchNorm2d(channels[i]),
                                )
                            )
                        else:
                            steps.append(_conv_bn_relu(c_j, c_j, stride=2))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(row)
        return fuse_layers

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        """Runs the branches and the fusion.

        Args:
            x: One tensor per branch, highest resolution first.

        Returns:
            One tensor per output branch (all branches, or only the first when
            ``multi_scale_output`` is False).
        """
        if len(x) != self.num_branches:
            raise ValueError(f"expected {self.num_branches} branch inputs, got {len(x)}")
        x = [branch(t) for branch, t in zip(self.branches, x)]
        if self.fuse_layers is None:
            return x
        out = []
        for i, row in enumerate(self.fuse_layers):
            target_size = x[i].shape[-2:]
            y = None
            # Summed in branch order, like the official code, so float rounding matches it too.
            for j, layer in enumerate(row):
                z = layer(x[j])
                if j > i:
                    # Interpolating to the target size instead of a fixed x2**(j-i) factor keeps
                    # inputs that are not multiples of 32 working (stride-2 convs round up);
                    # for multiples of 32 the two are identical.
                    z = F.interpolate(z, size=target_size, mode="nearest")
                # In place into a sum this loop made (never into x[i] itself, which the other rows
                # read): no new tensor per addition. Neither the sum nor the BatchNorm / upsampling
                # outputs added into it are saved for backward, so autograd allows it.
                y = z if y is None else (y + z if y is x[i] else y.add_(z))
            out.append(F.relu(y, inplace=y is not x[i]))
        return out


class HighResolutionNet(KeepsFrozenInEval):
    """HRNet backbone (scratch implementation, official key layout).

    ``forward(x)`` returns the stage-4 branch features, highest resolution first: with the
    default ``multi_scale_output=True`` four tensors at strides 4, 8, 16, 32 with
    ``width * [1, 2, 4, 8]`` channels (HRNetV2 / timm ``features_only`` with
    ``feature_location=''``). ``feature_info`` describes them in timm's vocabulary.

    Args:
        width: Channels of the highest-resolution branch (18, 32, 48 in the papers).
        in_chans: Input image channels.
        stem_channels: Channels of the two stride-2 stem convolutions.
        stage1_blocks: Bottlenecks in stage 1 (64 planes, 256 output channels).
        num_modules: HighResolutionModules in stages 2, 3 and 4.
        num_blocks: BasicBlocks per branch in each module of stages 2, 3 and 4.
        multi_scale_output: Keep all branches in the last module of stage 4. False reproduces
            HRNetV1's pose network (only the stride-4 branch is fused and returned, and
            ``feature_info`` has one entry).
        pretrained: ``None`` / ``False``: random init. A path: a local weights file in the
            timm / official HRNet layout (``.pth``, ``.pt``, ``.bin``, ``.ckpt`` read with
            ``weights_only=True``, or ``.safetensors``), raw or wrapped (``state_dict``,
            ``model``, Lightning checkpoints with a ``backbone.`` prefix). Head keys are dropped
            as in :func:`load_timm_hrnet_state_dict`; missing and unexpected keys are logged, not
            fatal (see :mod:`hrexp.models.pretrained`). There is no download: ``True`` is an
            error (use ``TimmBackbone`` for weights from the Hugging Face cache).
        freeze_stages: 0 trains everything. ``N`` in 1..4 freezes the stem (``conv1``, ``bn1``,
            ``conv2``, ``bn2``) and stages 1..N, where stage 1 = ``layer1`` + ``transition1``,
            stage 2 = ``stage2`` + ``transition2``, stage 3 = ``stage3`` + ``transition3``,
            stage 4 = ``stage4`` (each transition goes with the stage whose output it adapts,
            so stage N+1 is the first trainable module). Frozen parameters get
            ``requires_grad=False`` and frozen modules stay in eval mode through ``train()``
            (BatchNorm keeps its running statistics).

    Attributes:
        frozen_modules: Names of the frozen submodules.
        load_report: The :class:`LoadReport` of the pretrained weights, or None.

    Raises:
        FileNotFoundError: ``pretrained`` names a file that does not exist (checked before the
            network is built).
        ValueError: An argument is out of range, ``pretrained`` is True or names an unreadable
            or unsafe file.
        RuntimeError: The weights do not fit (a shape differs, or no key matches).
    """

    def __init__(
        self,
        width: int = 32,
        in_chans: int = 3,
        stem_channels: int = 64,
        stage1_blocks: int = 4,
        num_modules: Sequence[int] = (1, 4, 3),
        num_blocks: Sequence[int] = (4, 4, 4),
        multi_scale_output: bool = True,
        pretrained: str | os.PathLike | bool | None = None,
        freeze_stages: int = 0,
    ) -> None:
        super().__init__()
        # Cheap checks first: a bad option fails before seconds are spent building the network.
        freeze_stages = check_freeze_stages(freeze_stages, len(HRNET_STAGES))
        weights = None
        if pretrained is True:
            raise ValueError(
                f"{PRETRAINED_OPTION}=true: the scratch HRNet has no download; pass a local weights "
                f"file ({PRETRAINED_OPTION}=/path/to/hrnet.pth), or use model=timm_hrnet_w32 whose "
                "pretrained=true reads the local Hugging Face cache"
            )
        if not is_disabled(pretrained):
            weights = check_pretrained_file(pretrained)
        num_modules = [int(n) for n in num_modules]
        num_blocks = [int(n) for n in num_blocks]
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        if len(num_modules) != 3 or len(num_blocks) != 3:
            raise ValueError(
                "num_modules and num_blocks need one entry per stage 2, 3, 4; got "
                f"{num_modules} and {num_blocks}"
            )
        if min(num_modules) < 1:
            raise ValueError(f"every stage needs at least one module, got {num_modules}")

        self.conv1 = conv3x3(in_chans, stem_channels, stride=2)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.conv2 = conv3x3(stem_channels, stem_channels, stride=2)
        self.bn2 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)

        stage1_planes = 64
        self.layer1 = make_layer(Bottleneck, stem_channels, stage1_planes, stage1_blocks)
        channels = [stage1_planes * Bottleneck.expansion]

        widths = [width * 2**i for i in range(4)]
        for stage_index in range(3):  # stages 2, 3, 4 have 2, 3, 4 branches
            next_channels = widths[: stage_index + 2]
            last_stage = stage_index == 2
            transition = self._make_transition(channels, next_channels)
            stage = nn.Sequential(
                *(
                    HighResolutionModule(
                        next_channels,
                        next_channels,
                        num_blocks[stage_index],
                        multi_scale_output=(
                            multi_scale_output or not last_stage or m < num_modules[stage_index] - 1
                        ),
                    )
                    for m in range(num_modules[stage_index])
                )
            )
            setattr(self, f"transition{stage_index + 1}", transition)
            setattr(self, f"stage{stage_index + 2}", stage)
            channels = next_channels

        out_channels = widths if multi_scale_output else widths[:1]
        self.feature_info = [
            {"num_chs": c, "reduction": 4 * 2**i} for i, c in enumerate(out_channels)
        ]
        init_relu_network(self)

        self.load_report: LoadReport | None = None
        if weights is not None:
            self.load_report = load_pretrained(
                self, weights, source=str(pretrained), drop_prefixes=TIMM_NON_BACKBONE_PREFIXES
            )
        elif freeze_stages:
            log.warning(
                "model.freeze_stages=%d without model.pretrained: the frozen stages keep their "
                "random init",
                freeze_stages,
            )
        self.frozen_modules: tuple[str, ...] = tuple(hrnet_frozen_modules(freeze_stages))
        freeze_modules(self, self.frozen_modules)

    @staticmethod
    def _make_transition(pre_channels: list[int], channels: list[int]) -> nn.ModuleList:
        """Adapts existing branches and adds the new, half-resolution one(s).

        An existing branch gets a 3x3 conv-BN-ReLU only when its channel count changes. A new
        branch is made from the lowest-resolution existing branch with stride-2 3x3 conv-BN-ReLU
        steps (one per halving, kept as a nested Sequential as in the official layout).
        """
        layers = nn.ModuleList()
        for i, c in enumerate(channels):
            if i < len(pre_channels):
                if pre_channels[i] != c:
                    layers.append(_conv_bn_relu(pre_channels[i], c))
                else:
                    layers.append(nn.Identity())
            else:
                steps = []
                c_in = pre_channels[-1]
                for k in range(i + 1 - len(pre_channels)):
                    c_out = c if k == i - len(pre_channels) else c_in
                    steps.append(_conv_bn_relu(c_in, c_out, stride=2))
                    c_in = c_out
                layers.append(nn.Sequential(*steps))
        return layers

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Computes the branch features.

        Args:
            x: Images ``[B, in_chans, H, W]``.

        Returns:
            Features ``[B, C_i, ceil(H / s_i), ceil(W / s_i)]``, highest resolution first, as
            described by ``feature_info``.
        """
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for transition, stage in (
            (self.transition1, self.stage2),
            (self.transition2, self.stage3),
            (self.transition3, self.stage4),
        ):
            # New branches grow from the lowest-resolution existing one.
            xs = [layer(xs[min(i, len(xs) - 1)]) for i, layer in enumerate(transition)]
            xs = stage(xs)
        return xs


def load_timm_hrnet_state_dict(
    model: HighResolutionNet,
    state_dict: Mapping[str, torch.Tensor],
    strict: bool = True,
) -> LoadReport:
    """Loads a timm (or official) HRNet state dict into a :class:`HighResolutionNet`.

    Key mapping: backbone keys are identical in both layouts (``conv1``, ``bn1``, ``conv2``,
    ``bn2``, ``layer1.*``, ``transition{1,2,3}.*``, ``stage{2,3,4}.<module>.branches.*`` and
    ``...fuse_layers.<i>.<j>.*``), so they are copied unchanged. Keys starting with
    ``incre_modules.``, ``downsamp_modules.``, ``final_layer.`` or ``classifier.`` (timm's
    classification head, and the official pose checkpoints' heatmap layer) are dropped.
    Parameter-free modules (timm's Identity / Upsample) have no keys, so their class does not
    matter.

    Note: official HRNetV1 pose checkpoints lack the last module's fusion into branches 1-3;
    load those into ``HighResolutionNet(multi_scale_output=False)`` or with ``strict=False``.

    Args:
        model: The scratch backbone to load into (its widths must match the checkpoint's).
        state_dict: E.g. ``timm.create_model("hrnet_w32").state_dict()``, with or without
            ``features_only=True``.
        strict: Raise if, after dropping head keys, any key is missing or unexpected.

    Returns:
        A :class:`LoadReport` listing missing, unexpected and dropped keys.

    Raises:
        RuntimeError: ``strict`` and the keys do not match, or a tensor's shape differs (always).
    """
    kept = {}
    dropped = []
    for key, value in state_dict.items():
        if key.startswith(TIMM_NON_BACKBONE_PREFIXES):
            dropped.append(key)
        else:
            kept[key] = value
    result = model.load_state_dict(kept, strict=False)
    report = LoadReport(list(result.missing_keys), list(result.unexpected_keys), dropped)
    if strict and (report.missing_keys or report.unexpected_keys):
        raise RuntimeError(
            "HRNet state dict does not match the backbone: "
            f"{len(report.missing_keys)} missing keys (first: {report.missing_keys[:5]}), "
            f"{len(report.unexpected_keys)} unexpected keys (first: {report.unexpected_keys[:5]})"
        )
    return report
