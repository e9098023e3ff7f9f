"""Learning-rate schedules that step every optimizer step (not every epoch).

Each factory takes the optimizer plus the run's length in steps, which only the Trainer knows; the
LightningModule calls it from ``configure_optimizers`` with ``total_steps`` and ``steps_per_epoch``.
Hydra configs bind the remaining arguments with ``_partial_: true``.

Every schedule scales each param group's own ``lr``. A group may also carry ``start_step`` (its lr
is 0 before it: a backbone frozen for the first epochs) and ``ramp_steps`` (after ``start_step`` its
lr rises linearly to the schedule's value over that many steps); see :func:`delayed`.
"""

from __future__ import annotations

import logging
import math
from typing import Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)


def _warmup_steps(warmup_epochs: float, warmup_steps: int | None, steps_per_epoch: int) -> int:
    warm = int(warmup_steps) if warmup_steps is not None else int(round(warmup_epochs * steps_per_epoch))
    if warm < 0:
        raise ValueError(f"scheduler: warmup must be >= 0 steps, got {warm}")
    return warm


def delayed(factor: Callable[[int], float], start_step: int = 0, ramp_steps: int = 0) -> Callable[[int], float]:
    """A group's lr factor that is 0 before ``start_step``, then ramps up linearly over ``ramp_steps``.

    ``f(s) = 0`` for ``s < start``; ``f(s) = factor(s) * (s - start + 1) / ramp`` for
    ``start <= s < start + ramp``; ``f(s) = factor(s)`` after. The underlying schedule keeps
    counting from step 0 throughout, so a late-starting group joins the run's decay where it is.
    """
    if start_step <= 0 and ramp_steps <= 0:
        return factor

    def gated(step: int) -> float:
        if step < start_step:
            return 0.0
        if step < start_step + ramp_steps:
            return factor(step) * (step - start_step + 1) / ramp_steps
        return factor(step)

    return gated


def _per_group(optimizer: Optimizer, factor_for: Callable[[float], Callable[[int], float]]) -> LambdaLR:
    """LambdaLR with one factor per group: ``factor_for(group lr)``, gated by the group's start/ramp."""
    return LambdaLR(optimizer, [
        delayed(factor_for(g["lr"]), int(g.get("start_step", 0)), int(g.get("ramp_steps", 0)))
        for g in optimizer.param_groups
    ])


def _warmup_then_decay(
    optimizer: Optimizer, total_steps: int, warm: int, min_lr: float, shape: Callable[[float], float]
) -> LambdaLR:
    """Linear warmup over ``warm`` steps, then ``min_lr + (base - min_lr) * shape(progress)``.

    ``progress = (s - W) / max(1, T - W)`` runs from 0 to 1 over the decay; ``shape`` maps it to
    the decay curve (1 at 0, 0 at 1). Every param group decays from its own ``lr``.
    """
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

    return _per_group(optimizer, factor_for)


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
    return _per_group(optimizer, lambda base_lr: lambda step: 1.0)


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


def step_decay(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    milestones: list[float],
    gamma: float = 0.1,
    warmup_epochs: float = 0,
    warmup_steps: int | None = None,
) -> LambdaLR:
    """Optional linear warmup, then the lr multiplied by ``gamma`` at each milestone epoch.

    At step ``s``: ``lr = base * (s + 1) / W`` for ``s < W``, else ``lr = base * gamma ** k`` with
    ``k`` the number of milestones ``m`` (in epochs) with ``s >= round(m * steps_per_epoch)``.
    The HRNet pose recipe is ``milestones=[170, 200]``, ``gamma=0.1`` over 210 epochs.

    Args:
        optimizer: the optimizer whose groups' ``lr`` are the starting values.
        total_steps: optimizer steps of the whole run (milestones past it are logged, not an error).
        steps_per_epoch: optimizer steps per epoch (milestones and warmup are in epochs).
        milestones: increasing epochs (fractional allowed) at which the lr drops.
        gamma: the factor applied at each milestone, in (0, 1].
        warmup_epochs: warmup length in epochs.
        warmup_steps: warmup length in steps; overrides ``warmup_epochs`` when given.

    Raises:
        ValueError: milestones not strictly increasing and positive, or gamma outside (0, 1].
    """
    ms = [float(m) for m in milestones]
    if any(m <= 0 for m in ms) or any(b <= a for a, b in zip(ms, ms[1:])):
        raise ValueError(f"scheduler.milestones={list(milestones)}: expected strictly increasing epochs > 0")
    if not 0 < gamma <= 1:
        raise ValueError(f"scheduler.gamma={gamma}: expected a factor in (0, 1]")
    steps = [int(round(m * steps_per_epoch)) for m in ms]
    late = [m for m, s in zip(ms, steps) if s >= total_steps]
    if late:
        log.warning("scheduler: milestones %s (epochs) are at or past the run's end (%d steps); they never apply",
                    late, total_steps)
    warm = _warmup_steps(warmup_epochs, warmup_steps, steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return gamma ** sum(step >= s for s in steps)

    return _per_group(optimizer, lambda base_lr: factor)
