"""Any timm model as a backbone with hrexp's interface (list of features + ``feature_info``)."""

from __future__ import annotations

import os

# Without this, timm/huggingface_hub try to reach the hub and hang for ~50 s on a machine without
# internet. Only effective if huggingface_hub is not imported yet; an explicit setting wins.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


class TimmBackbone(nn.Module):
    """Wraps ``timm.create_model(model_name, features_only=True, ...)``.

    ``forward(x)`` returns the selected feature maps as a list, highest resolution first, and
    ``feature_info`` is a list of ``{"num_chs": int, "reduction": int}``, one per output.

    Args:
        model_name: timm model name, e.g. ``"hrnet_w32"`` or ``"resnet50"``.
        pretrained: Load timm's pretrained weights. They must already be in the local
            Hugging Face cache: there is no hub access.
        out_indices: Which feature levels to return (timm's indices; for most models ``1..4``
            are strides 4..32).
        **timm_kwargs: Passed to ``timm.create_model`` (e.g. ``feature_location=""`` for the raw
            HRNet branches, ``in_chans``, ``pretrained_cfg_overlay``).

    Raises:
        RuntimeError: ``pretrained`` is True and the weights cannot be found locally.
        ValueError: timm reports features that are not ordered highest resolution first.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool = False,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        out_indices = tuple(int(i) for i in out_indices)  # Hydra passes a ListConfig
        try:
            self.model = timm.create_model(
                model_name,
                features_only=True,
                pretrained=pretrained,
                out_indices=out_indices,
                **timm_kwargs,
            )
        except OSError as err:
            # Download failures (huggingface_hub's LocalEntryNotFoundError, urllib errors) are
            # OSErrors; other errors (unknown model, bad kwargs) pass through unchanged.
            if not pretrained:
                raise
            raise RuntimeError(
                f"Could not load pretrained weights for timm model {model_name!r}: they are not "
                "in the local cache and no hub access is available (HF_HUB_OFFLINE). Use "
                "pretrained=false, or pass a local weights file instead (e.g. timm's "
                "pretrained_cfg_overlay={'file': '/path/to/weights.safetensors'})."
            ) from err
        self.model_name = model_name
        self.feature_info = [
            {"num_chs": int(info["num_chs"]), "reduction": int(info["reduction"])}
            for info in self.model.feature_info.get_dicts()
        ]
        reductions = [info["reduction"] for info in self.feature_info]
        if reductions != sorted(reductions):
            raise ValueError(
                f"timm model {model_name!r} returns features with reductions {reductions}; "
                "hrexp backbones must return the highest resolution first"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Computes the features.

        Args:
            x: Images ``[B, C, H, W]``.

        Returns:
            Feature maps, highest resolution first, as described by ``feature_info``.
        """
        return list(self.model(x))
