"""Backbones (``forward(x) -> list[Tensor]``, highest resolution first, plus ``feature_info``)
and the heads that read them."""

from __future__ import annotations

from typing import Any

from hrexp.models.blocks import BasicBlock, Bottleneck
from hrexp.models.heads import HeatmapHead
from hrexp.models.hrnet import HighResolutionNet, LoadReport, load_timm_hrnet_state_dict

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "HeatmapHead",
    "HighResolutionNet",
    "LoadReport",
    "TimmBackbone",
    "load_timm_hrnet_state_dict",
]


def __getattr__(name: str) -> Any:
    # Importing timm takes seconds; only pay for it when the timm wrapper is used.
    if name == "TimmBackbone":
        from hrexp.models.timm_backbone import TimmBackbone

        return TimmBackbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
