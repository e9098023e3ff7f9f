"""Freezing the first stages of a backbone (``model.freeze_stages``).

Freezing a module here means two things, both needed to keep it fixed while the rest trains:
its parameters get ``requires_grad=False`` (no gradient, not in the optimizer: hrexp's
LightningModule only optimizes parameters that require grad), and it is kept in eval mode, so
its BatchNorm layers normalise with their (pretrained) running statistics and never update them.
Lightning calls ``.train()`` on the whole model every epoch, so the backbones override ``train()``
and call :func:`keep_frozen_in_eval` after it.

Modules are stored by name, not by reference: ``SyncBatchNorm.convert_sync_batchnorm`` (DDP)
replaces BatchNorm modules after the backbone is built, and a name still finds the new one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

OPTION = "model.freeze_stages"

HRNET_STEM = ("conv1", "bn1", "conv2", "bn2")
# HRNet stage k and the transition that turns its output into stage k+1's branches: freezing
# stages 1..N fixes everything up to the inputs of stage N+1, so the first trainable module is
# stage N+1 itself.
HRNET_STAGES = (
    ("layer1", "transition1"),
    ("stage2", "transition2"),
    ("stage3", "transition3"),
    ("stage4",),
)


def check_freeze_stages(value: Any, num_stages: int, option: str = OPTION) -> int:
    """Validates a ``freeze_stages`` value.

    Args:
        value: The configured value.
        num_stages: How many stages the backbone has.
        option: The config option to name in errors.

    Returns:
        The value as an int.

    Raises:
        ValueError: Not an integer from 0 to ``num_stages``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= num_stages:
        raise ValueError(
            f"{option}={value!r}: expected an integer from 0 (nothing frozen) to {num_stages} "
            f"(the stem and all {num_stages} stages frozen)"
        )
    return value


def is_hrnet_layout(module: nn.Module) -> bool:
    """Whether ``module`` has the HRNet module names (the scratch HRNet and timm's ``hrnet_*``)."""
    return all(hasattr(module, name) for group in HRNET_STAGES for name in group) and all(
        hasattr(module, name) for name in HRNET_STEM
    )


def hrnet_frozen_modules(num_stages: int) -> list[str]:
    """Names of the HRNet modules that ``freeze_stages=num_stages`` freezes.

    ``0``: none. ``N >= 1``: the stem (``conv1``, ``bn1``, ``conv2``, ``bn2``) and stages 1..N,
    where stage 1 = ``layer1`` + ``transition1``, stage 2 = ``stage2`` + ``transition2``,
    stage 3 = ``stage3`` + ``transition3``, stage 4 = ``stage4``.

    Args:
        num_stages: 0 to 4, already validated.
    """
    if num_stages == 0:
        return []
    return [*HRNET_STEM, *(name for group in HRNET_STAGES[:num_stages] for name in group)]


def _resolve(root: nn.Module, path: str) -> list[str] | None:
    """The child names leading from ``root`` to the submodule at ``path``, or None if absent."""
    parts: list[str] = []
    module = root
    for part in path.split("."):
        children = dict(module.named_children())
        if part not in children:
            return None
        parts.append(part)
        module = children[part]
    return parts


def timm_stage_modules(features: nn.Module) -> list[str]:
    """The submodules of a timm feature model that end each feature stage.

    A stage is a feature level of stride 4 or more in the model's full ``feature_info`` (the
    stride-2 tap, e.g. ResNet's ``act1`` or EfficientNet's ``blocks.0``, belongs to the stem).
    Its module name is looked up as is and as timm's ``FeatureListNet`` renames it (the first
    ``.`` flattened to ``_``: ``stages.1`` -> ``stages_1``).

    Args:
        features: ``timm.create_model(..., features_only=True)``.

    Returns:
        One dotted submodule path per stage, in order, up to the last stage the model kept (timm
        drops the modules after the deepest level in ``out_indices``).

    Raises:
        ValueError: The model has no ``feature_info``, or no stage module is found in it (e.g.
            timm's getter-based feature wrappers).
    """
    info = getattr(getattr(features, "feature_info", None), "info", None)
    if not info:
        raise ValueError(
            f"{OPTION}: {type(features).__name__} has no timm feature_info to find its stages in"
        )
    out = []
    for entry in info:
        if entry["reduction"] < 4:
            continue
        module = entry["module"]
        parts = _resolve(features, module) or _resolve(features, module.replace(".", "_", 1))
        if parts is None:
            break  # later stages were cut off by out_indices (or the model hides its modules)
        out.append(".".join(parts))
    if not out:
        raise ValueError(
            f"{OPTION}: cannot freeze stages of {type(features).__name__}: none of its stage "
            f"modules {[e['module'] for e in info]} was found in it"
        )
    return out


def timm_frozen_modules(features: nn.Module, stage_ends: list[str], num_stages: int) -> list[str]:
    """Names of the submodules of a timm feature model that ``freeze_stages=num_stages`` freezes.

    Everything defined before the end of stage ``num_stages``, and that stage's module: at each
    level of its path, the earlier siblings. For a ResNet: ``conv1``, ``bn1``, ``act1``,
    ``maxpool``, ``layer1``..``layerN``; for an EfficientNet ``conv_stem``, ``bn1``,
    ``blocks.0``..``blocks.k``. This assumes that modules are defined in the order they run, as
    in timm's feature models.

    Args:
        features: The timm feature model.
        stage_ends: :func:`timm_stage_modules` of ``features``.
        num_stages: 0 to ``len(stage_ends)``, already validated.
    """
    if num_stages == 0:
        return []
    names: list[str] = []
    module = features
    prefix = ""
    for part in stage_ends[num_stages - 1].split("."):
        children = [name for name, _ in module.named_children()]
        names += [prefix + name for name in children[: children.index(part)]]
        prefix += part + "."
        module = module.get_submodule(part)
    return [*names, prefix[:-1]]


def freeze_modules(root: nn.Module, names: Iterable[str]) -> None:
    """Sets ``requires_grad=False`` on the named submodules' parameters and puts them in eval mode.

    Args:
        root: The module the names are relative to.
        names: Submodule names (``get_submodule`` paths).
    """
    for name in names:
        module = root.get_submodule(name)
        for param in module.parameters():
            param.requires_grad_(False)
        module.eval()


def keep_frozen_in_eval(root: nn.Module, names: Iterable[str]) -> None:
    """Puts the named submodules back in eval mode (call after ``root.train()``).

    Args:
        root: The module the names are relative to.
        names: Submodule names, as given to :func:`freeze_modules`.
    """
    for name in names:
        root.get_submodule(name).eval()


class KeepsFrozenInEval(nn.Module):
    """Mixin for backbones with ``frozen_modules``: ``train()`` leaves those modules in eval mode.

    Lightning calls ``.train()`` on the whole LightningModule every epoch, which would otherwise put
    frozen BatchNorm layers back into training mode and let their running statistics move.
    """

    frozen_modules: tuple[str, ...] = ()

    def train(self, mode: bool = True):
        super().train(mode)
        keep_frozen_in_eval(self, self.frozen_modules)
        return self
