"""Backbones (``forward(x) -> list[Tensor]``, highest resolution first, plus ``feature_info``:
scratch HRNet, U-Net, timm models) and the heads that read them."""

from __future__ import annotations

from typing import Any

from hrexp.models.blocks import BasicBlock, Bottleneck
from hrexp.models.heads import DeconvHead, HeatmapHead, HRNetV2Head, check_head_fits
from hrexp.models.hrnet import HighResolutionNet, LoadReport, load_timm_hrnet_state_dict
from hrexp.models.unet import UNet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "DeconvHead",
    "HRNetV2Head",
    "HeatmapHead",
    "HighResolutionNet",
    "LoadReport",
    "TimmBackbone",
    "UNet",
    "check_head_fits",
    "load_timm_hrnet_state_dict",
]


def __getattr__(name: str) -> Any:
    # Importing timm takes seconds; only pay for it when the timm wrapper is used.
    if name == "TimmBackbone":
        from hrexp.models.timm_backbone import TimmBackbone

        return TimmBackbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
