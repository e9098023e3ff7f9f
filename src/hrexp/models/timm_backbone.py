"""Any timm model as a backbone with hrexp's interface (list of features + ``feature_info``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch

from hrexp.models.freeze import (
    HRNET_STAGES,
    check_freeze_stages,
    freeze_modules,
    hrnet_frozen_modules,
    is_hrnet_layout,
    KeepsFrozenInEval,
    timm_frozen_modules,
    timm_stage_modules,
)
from hrexp.models.hf_cache import resolve_hf_cached_weights
from hrexp.models.pretrained import (
    LoadReport,
    check_pretrained_file,
    is_disabled,
    load_pretrained,
    looks_like_path,
)

log = logging.getLogger(__name__)


class TimmBackbone(KeepsFrozenInEval):
    """Wraps ``timm.create_model(model_name, features_only=True, ...)``.

    ``forward(x)`` returns the selected feature maps as a list, highest resolution first, and
    ``feature_info`` is a list of ``{"num_chs": int, "reduction": int}``, one per output.

    Args:
        model_name: timm model name, e.g. ``"hrnet_w32"`` or ``"resnet50"``.
        pretrained: ``None`` / ``False``: random init. A local weights file (``.pth``, ``.pt``,
            ``.bin``, ``.ckpt`` read with ``weights_only=True``, or ``.safetensors``) in timm's
            layout, raw or wrapped (``state_dict``, ``model``, Lightning checkpoints with a
            ``backbone.`` prefix). ``True`` (timm's default weights for ``model_name``), a timm
            name with a tag (``resnet50.a1_in1k``) or a Hugging Face repo id
            (``timm/resnet50.a1_in1k``): read from the local Hugging Face cache only, never
            downloaded. Keys of modules the feature model does not have (the classifier,
            unused stages) are dropped; missing and unexpected keys are logged (see
            :mod:`hrexp.models.pretrained`). Weights are loaded as they are: timm's pretrained
            filters (e.g. adapting the first conv to another ``in_chans``) are not applied.
        out_indices: Which feature levels to return (timm's indices; for most models ``1..4``
            are strides 4..32).
        freeze_stages: 0 trains everything. ``N`` freezes the stem and the first ``N`` feature
            stages (levels of stride >= 4 in timm's ``feature_info``): for ``hrnet_*`` the same
            modules as the scratch HRNet (see :class:`~hrexp.models.hrnet.HighResolutionNet`),
            for ResNets ``conv1``, ``bn1`` and ``layer1``..``layerN``; in general every module
            defined before the end of stage ``N`` (see
            :func:`hrexp.models.freeze.timm_frozen_modules`).
            Frozen parameters get ``requires_grad=False`` and frozen modules stay in eval mode
            through ``train()``.
        **timm_kwargs: Passed to ``timm.create_model`` (e.g. ``feature_location=""`` for the raw
            HRNet branches, ``in_chans``).

    Attributes:
        frozen_modules: Names (relative to this module) of the frozen submodules.
        load_report: The :class:`~hrexp.models.pretrained.LoadReport` of the pretrained weights,
            or None.

    Raises:
        FileNotFoundError: ``pretrained`` names a missing file, or weights that are not in the
            local Hugging Face cache (the message names the cache folder); raised before the
            network is built.
        ValueError: ``freeze_stages`` is out of range or unsupported for the model, ``pretrained``
            names an unknown or unsafe source, or timm reports features that are not ordered
            highest resolution first.
        RuntimeError: The weights do not fit the model (a shape differs, or no key matches).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool | str | os.PathLike | None = False,
        out_indices: Sequence[int] = (1, 2, 3, 4),
        freeze_stages: int = 0,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        out_indices = tuple(int(i) for i in out_indices)  # Hydra passes a ListConfig
        # Resolve the weights before building: a missing file or cache entry fails at once.
        weights: Path | None = None
        source = str(pretrained)
        if is_disabled(pretrained):
            pass
        elif isinstance(pretrained, (str, os.PathLike)) and looks_like_path(pretrained):
            weights = check_pretrained_file(pretrained)
        else:
            weights = resolve_hf_cached_weights(pretrained, model_name)
            source = f"{pretrained} from the Hugging Face cache ({weights})"
        # timm never loads weights itself: ours are read with weights_only and reported.
        self.model = timm.create_model(
            model_name, features_only=True, pretrained=False, out_indices=out_indices, **timm_kwargs
        )
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
        # Validated before the (slower) weight loading.
        frozen = self._modules_to_freeze(freeze_stages)

        self.load_report: LoadReport | None = None
        if weights is not None:
            self.load_report = load_pretrained(
                self.model, weights, source=source, drop_absent_modules=True
            )
        elif frozen:
            log.warning(
                "model.freeze_stages=%d without model.pretrained: the frozen stages keep their "
                "random init",
                freeze_stages,
            )
        self.frozen_modules: tuple[str, ...] = tuple(f"model.{name}" for name in frozen)
        freeze_modules(self, self.frozen_modules)

    def _modules_to_freeze(self, freeze_stages: Any) -> list[str]:
        """Validates ``freeze_stages`` for this model and returns the names (in ``self.model``)
        of the modules to freeze."""
        if is_hrnet_layout(self.model):
            # timm's HRNet uses the official module names, like the scratch one.
            check_freeze_stages(freeze_stages, len(HRNET_STAGES))
            return hrnet_frozen_modules(freeze_stages)
        # Only looked up when needed: models whose stages cannot be found still work unfrozen.
        stage_ends = timm_stage_modules(self.model) if freeze_stages != 0 else []
        check_freeze_stages(freeze_stages, len(stage_ends))
        return timm_frozen_modules(self.model, stage_ends, freeze_stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Computes the features.

        Args:
            x: Images ``[B, C, H, W]``.

        Returns:
            Feature maps, highest resolution first, as described by ``feature_info``.
        """
        return list(self.model(x))
