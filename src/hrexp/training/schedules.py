"""Learning-rate schedules that step every optimizer step (not every epoch).

Each factory takes the optimizer plus the run's length in steps, which only the Trainer knows; the
LightningModule calls it from ``configure_optimizers`` with ``total_steps`` and ``steps_per_epoch``.
Hydra configs bind the remaining arguments with ``_partial_: true``.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)


def _warmup_steps(warmup_epochs: float, warmup_steps: int | None, steps_per_epoch: int) -> int:
    if warmup_steps is not None:
        return int(warmup_steps)
    return int(round(warmup_epochs * steps_per_epoch))


def _warmup_then_decay(
    optimizer: Optimizer, total_steps: int, warm: int, min_lr: float, shape: Callable[[float], float]
) -> LambdaLR:
    """Linear warmup over ``warm`` steps, then ``min_lr + (base - min_lr) * shape(progress)``.

    ``progress = (s - W) / max(1, T - W)`` runs from 0 to 1 over the decay; ``shape`` maps it to
    the decay curve (1 at 0, 0 at 1). Every param group decays from its own ``lr``.
    """
    if warm < 0:
        raise ValueError(f"scheduler: warmup must be >= 0 steps, got {warm}")
    if total_steps > 0 and warm >= total_steps:
        # Warmup longer than the run would never reach the peak lr: clip it, keeping one decay step.
        log.warning("scheduler: warmup of %d steps >= the run's %d steps; clipped to %d", warm, total_steps, total_steps - 1)
        warm = max(0, total_steps - 1)
    decay = max(1, total_steps - warm)

    def factor_for(base_lr: float):
        floor = min_lr / base_lr if base_lr > 0 else 0.0

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            progress = min(1.0, (step - warm) / decay)
            return floor + (1.0 - floor) * shape(progress)

        return factor

    return LambdaLR(optimizer, [factor_for(g["lr"]) for g in optimizer.param_groups])


def warmup_cosine(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_epochs: float = 5,
    warmup_steps: int | None = None,
    min_lr: float = 1e-6,
) -> LambdaLR:
    """Linear warmup from ~0 to each group's lr, then cosine decay to ``min_lr``.

    At step ``s`` (0-based; the value used for the ``s``-th optimizer step):
    ``lr = base * (s + 1) / W`` for ``s < W``, else
    ``lr = min_lr + (base - min_lr) * 0.5 * (1 + cos(pi * (s - W) / max(1, T - W)))``.

    Args:
        optimizer: the optimizer whose groups' ``lr`` are the peak values.
        total_steps: optimizer steps of the whole run.
        steps_per_epoch: optimizer steps per epoch (to express warmup in epochs).
        warmup_epochs: warmup length in epochs (fractional allowed).
        warmup_steps: warmup length in steps; overrides ``warmup_epochs`` when given.
        min_lr: the final learning rate of every group.

    Raises:
        ValueError: on a negative warmup, or a warmup not shorter than the run.
    """
    return _warmup_then_decay(
        optimizer, total_steps, _warmup_steps(warmup_epochs, warmup_steps, steps_per_epoch), min_lr,
        lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)),
    )


def constant(optimizer: Optimizer, *, total_steps: int, steps_per_epoch: int) -> LambdaLR:
    """Keep every group's lr unchanged (a schedule object, so logging stays uniform)."""
    return LambdaLR(optimizer, lambda step: 1.0)


def poly(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    power: float = 0.9,
    warmup_epochs: float = 0,
    warmup_steps: int | None = None,
    min_lr: float = 0.0,
) -> LambdaLR:
    """Optional linear warmup, then polynomial decay: the usual schedule for segmentation.

    At step ``s``: ``lr = base * (s + 1) / W`` for ``s < W``, else
    ``lr = min_lr + (base - min_lr) * (1 - (s - W) / max(1, T - W)) ** power``.

    Args:
        optimizer: the optimizer whose groups' ``lr`` are the peak values.
        total_steps: optimizer steps of the whole run.
        steps_per_epoch: optimizer steps per epoch (to express warmup in epochs).
        power: the decay exponent (0.9 in DeepLab / HRNet-Semantic-Segmentation).
        warmup_epochs: warmup length in epochs.
        warmup_steps: warmup length in steps; overrides ``warmup_epochs`` when given.
        min_lr: the final learning rate of every group.

    Raises:
        ValueError: on a negative warmup or a non-positive power.
    """
    if not power > 0:
        raise ValueError(f"scheduler.power must be > 0, got {power}")
    return _warmup_then_decay(
        optimizer, total_steps, _warmup_steps(warmup_epochs, warmup_steps, steps_per_epoch), min_lr,
        lambda progress: (1.0 - progress) ** power,
    )
