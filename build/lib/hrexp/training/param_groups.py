"""Optimizer parameter groups from config: backbone and head learning rates, no decay on norms and biases.

The model is split into its two parts, ``backbone`` (the feature extractor) and ``head`` (everything
else: the task's head). Each part is split again into parameters that get weight decay and those
that do not (normalisation weights and all biases, when ``no_decay_norm_bias`` is on), giving up to
four groups named ``backbone``, ``backbone/no_decay``, ``head``, ``head/no_decay``. The names reach
the loggers through Lightning's ``LearningRateMonitor`` (``lr-AdamW/backbone``, ...).

Parameters with ``requires_grad=False`` at build time (``model.freeze_stages``) are never optimised
and are left out of every group. A backbone frozen only for the first epochs
(:class:`hrexp.callbacks.freeze_backbone.BackboneFreeze`) keeps its groups from the start, so the optimizer and
the schedule never change shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

OPTION = "param_groups"
PARTS = ("backbone", "head")


def is_norm_module(module: nn.Module) -> bool:
    """Whether ``module`` is a normalisation layer (BatchNorm, GroupNorm, LayerNorm, timm's norms...).

    torch's own norms are matched by type; other libraries' (timm's ``RmsNorm``, ``LayerNorm2d``,
    ``BatchNormAct2d``) by the word ``Norm`` in the class name, their shared convention.
    """
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    return isinstance(module, norm_types) or "Norm" in type(module).__name__


def no_decay_names(root: nn.Module) -> set[str]:
    """Names (as in ``root.named_parameters()``) of normalisation weights and of every bias."""
    out = set()
    for module_name, module in root.named_modules():
        norm = is_norm_module(module)
        for param_name, _ in module.named_parameters(recurse=False):
            if norm or param_name == "bias":
                out.add(f"{module_name}.{param_name}" if module_name else param_name)
    return out


@dataclass
class ParamGroupRules:
    """How a model's trainable parameters are grouped for the optimizer.

    The head trains at the optimizer's ``lr``; the backbone at ``backbone_lr`` if given, else at
    ``optimizer.lr * backbone_lr_mult``. Groups keep the optimizer's ``weight_decay`` except the
    no-decay groups, which get 0.

    Args:
        backbone_lr: Absolute learning rate of the backbone, or None.
        backbone_lr_mult: Backbone learning rate as a multiple of the optimizer's (used when
            ``backbone_lr`` is None).
        no_decay_norm_bias: Whether normalisation weights and biases get ``weight_decay=0``.

    Raises:
        ValueError: A negative rate or multiplier, or both ``backbone_lr`` and a multiplier other
            than 1 (which one would win is not obvious).
    """

    backbone_lr: float | None = None
    backbone_lr_mult: float = 1.0
    no_decay_norm_bias: bool = True

    def __post_init__(self) -> None:
        if self.backbone_lr is not None and not float(self.backbone_lr) >= 0:
            raise ValueError(f"{OPTION}.backbone_lr={self.backbone_lr!r}: expected a learning rate >= 0 or null")
        if not float(self.backbone_lr_mult) >= 0:
            raise ValueError(f"{OPTION}.backbone_lr_mult={self.backbone_lr_mult!r}: expected a multiplier >= 0")
        if self.backbone_lr is not None and float(self.backbone_lr_mult) != 1.0:
            raise ValueError(
                f"{OPTION}.backbone_lr={self.backbone_lr} and {OPTION}.backbone_lr_mult={self.backbone_lr_mult}: "
                "set one of them (an absolute backbone lr, or a multiple of optimizer.lr), not both"
            )

    def groups(self, backbone: nn.Module, head: nn.Module) -> list[dict[str, Any]]:
        """The parameter groups, before the optimizer fills in its defaults.

        Each group is a dict with ``params``, ``name``, ``part`` (backbone or head) and, where it
        differs from the optimizer's default, ``weight_decay`` (0 for no-decay groups), ``lr``
        (an absolute backbone lr) or ``lr_mult`` (applied by :meth:`create_optimizer`). Empty groups
        are left out.
        """
        out = []
        for part, module in zip(PARTS, (backbone, head)):
            skip = no_decay_names(module) if self.no_decay_norm_bias else set()
            decay, no_decay = [], []
            for name, param in module.named_parameters():
                if param.requires_grad:
                    (no_decay if name in skip else decay).append(param)
            for suffix, params in (("", decay), ("/no_decay", no_decay)):
                if not params:
                    continue
                group: dict[str, Any] = {"params": params, "name": part + suffix, "part": part}
                if suffix:
                    group["weight_decay"] = 0.0
                if part == "backbone":
                    if self.backbone_lr is not None:
                        group["lr"] = float(self.backbone_lr)
                    else:
                        group["lr_mult"] = float(self.backbone_lr_mult)
                out.append(group)
        return out

    def create_optimizer(
        self, optimizer_factory: Callable[..., torch.optim.Optimizer], backbone: nn.Module, head: nn.Module
    ) -> torch.optim.Optimizer:
        """Builds the optimizer over :meth:`groups`; a group's ``lr_mult`` scales the optimizer's lr.

        Args:
            optimizer_factory: The partial optimizer from ``optimizer=...`` (called with the groups).
            backbone: The feature extractor.
            head: Everything else that trains.

        Raises:
            ValueError: Nothing to train (every parameter is frozen).
        """
        groups = self.groups(backbone, head)
        if not groups:
            raise ValueError("model.freeze_stages: every parameter is frozen; there is nothing to optimise")
        optimizer = optimizer_factory(groups)
        for group in optimizer.param_groups:
            group["lr"] = group["lr"] * group.pop("lr_mult", 1.0)
        return optimizer


def describe_groups(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[dict[str, Any]]:
    """One row per optimizer group (name, tensors, parameters, lr, weight decay), plus the frozen rest.

    Args:
        optimizer: The optimizer built by :meth:`ParamGroupRules.create_optimizer`.
        model: The whole model, to count the parameters no group holds (frozen).
    """
    rows = []
    held = set()
    for i, group in enumerate(optimizer.param_groups):
        held.update(id(p) for p in group["params"])
        rows.append({
            "name": group.get("name", f"group{i}"),
            "tensors": len(group["params"]),
            "params": sum(p.numel() for p in group["params"]),
            "lr": float(group["lr"]),
            "weight_decay": float(group.get("weight_decay", 0.0)),
        })
    frozen = [p for p in model.parameters() if id(p) not in held]
    if frozen:
        rows.append({"name": "frozen (not optimised)", "tensors": len(frozen), "params": sum(p.numel() for p in frozen),
                     "lr": None, "weight_decay": None})
    return rows
