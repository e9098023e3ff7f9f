"""Learning-rate schedules that step every optimizer step (not every epoch).

Each factory takes the optimizer plus the run's length in steps, which only the Trainer knows; the
LightningModule calls it from ``configure_optimizers`` with ``total_steps`` and ``steps_per_epoch``.
Hydra configs bind the remaining arguments with ``_partial_: true``.

Every schedule scales each param group's own ``lr``. A group may also carry ``start_step`` (its lr
is 0 before it: a backbone frozen for the first epochs) and ``ramp_steps`` (after ``start_step`` its
lr rises linearly to the schedule's value over that many steps); see :func:`delayed`.

A run limited by time (``trainer.max_time``) cannot know its number of steps in advance, so the
warmup-then-decay schedules also follow a :class:`BudgetClock`: the fraction of the training time
spent, which the ``time_budget`` callback (``hrexp.callbacks.time_budget``) sets before every
optimizer step. Their progress is the larger of the step count's and the clock's, so the lr reaches
``min_lr`` by whichever limit ends the run first.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)


# In a time-limited run, the warmup ends at the latest at this fraction of the training time (a warmup of
# 5 epochs would otherwise fill a one-minute run).
MAX_WARMUP_FRACTION = 0.25


@dataclass
class BudgetClock:
    """Where a time-limited run stands, for the schedules; the ``time_budget`` callback keeps it.

    Attributes:
        fraction: training time spent over the time available for training (the budget less the
            last validation), in [0, 1]; never decreases; the same on every rank; ``None`` when
            the run has no time limit (the schedules then count steps alone).
        warmup_end_step: the step at which the warmup ended (``None`` while it runs).
        warmup_end_fraction: ``fraction`` when it ended; the decay spreads over the rest.
    """

    fraction: float | None = None
    warmup_end_step: int | None = None
    warmup_end_fraction: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "warmup_end_step": self.warmup_end_step,
                "warmup_end_fraction": self.warmup_end_fraction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fraction = state.get("fraction")
        self.warmup_end_step = state.get("warmup_end_step")
        self.warmup_end_fraction = float(state.get("warmup_end_fraction", 0.0))

    def warmup(self, step: int, warm: int) -> float | None:
        """The warmup's factor in (0, 1) at ``step``, or ``None`` once it has ended.

        By steps, ``(step + 1) / warm`` until step ``warm``; with a time limit it also ends once
        ``fraction`` reaches ``MAX_WARMUP_FRACTION``, and rises at least as fast as that fraction.
        The clock records the step and fraction at which it ended.
        """
        if self.warmup_end_step is not None and step >= self.warmup_end_step:
            return None
        by_time = 0.0 if self.fraction is None else self.fraction / MAX_WARMUP_FRACTION
        if step < warm and by_time < 1.0:
            return max((step + 1) / warm, by_time)
        if self.warmup_end_step is None:
            self.warmup_end_step = min(step, warm)
            self.warmup_end_fraction = self.fraction or 0.0
        return None

    def decay(self, step: int, total_steps: int) -> float:
        """The decay's progress in [0, 1]: the larger of the steps' and the time's since the warmup ended."""
        start = self.warmup_end_step or 0
        by_steps = (step - start) / max(1, total_steps - start)
        if self.fraction is not None:
            by_time = (self.fraction - self.warmup_end_fraction) / max(1e-9, 1.0 - self.warmup_end_fraction)
            by_steps = max(by_steps, by_time)
        return min(1.0, max(0.0, by_steps))


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
    optimizer: Optimizer, total_steps: int, warm: int, min_lr: float, shape: Callable[[float], float],
    clock: BudgetClock | None = None,
) -> LambdaLR:
    """Linear warmup, then ``min_lr + (base - min_lr) * shape(progress)``, per param group.

    Without a time limit the warmup spans ``warm`` steps and ``progress = (s - W) / max(1, T - W)``
    runs from 0 to 1 over the decay. With one, ``clock`` stretches neither: the warmup also ends by
    ``MAX_WARMUP_FRACTION`` of the time, and the decay's progress is the larger of the steps' and
    the time's (:class:`BudgetClock`). ``shape`` maps progress to the decay curve (1 at 0, 0 at 1).
    """
    if total_steps > 0 and warm >= total_steps:
        # Warmup longer than the run would never reach the peak lr: clip it, keeping one decay step.
        log.warning("scheduler: warmup of %d steps >= the run's %d steps; clipped to %d", warm, total_steps, total_steps - 1)
        warm = max(0, total_steps - 1)
    clock = clock if clock is not None else BudgetClock()

    def factor_for(base_lr: float):
        floor = min_lr / base_lr if base_lr > 0 else 0.0

        def factor(step: int) -> float:
            rising = clock.warmup(step, warm)
            if rising is not None:
                return rising
            return floor + (1.0 - floor) * shape(clock.decay(step, total_steps))

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
    clock: BudgetClock | None = None,
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
        clock: a time-limited run's clock (the module passes it): the decay then also follows the
            time spent, reaching ``min_lr`` when the time is up.

    Raises:
        ValueError: on a negative warmup, or a warmup not shorter than the run.
    """
    return _warmup_then_decay(
        optimizer, total_steps, _warmup_steps(warmup_epochs, warmup_steps, steps_per_epoch), min_lr,
        lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)), clock,
    )


def constant(optimizer: Optimizer, *, total_steps: int, steps_per_epoch: int, clock: BudgetClock | None = None) -> LambdaLR:
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
    clock: BudgetClock | None = None,
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
        clock: a time-limited run's clock, as for :func:`warmup_cosine`.

    Raises:
        ValueError: on a negative warmup or a non-positive power.
    """
    if not power > 0:
        raise ValueError(f"scheduler.power must be > 0, got {power}")
    return _warmup_then_decay(
        optimizer, total_steps, _warmup_steps(warmup_epochs, warmup_steps, steps_per_epoch), min_lr,
        lambda progress: (1.0 - progress) ** power, clock,
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
    clock: BudgetClock | None = None,
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
        clock: a time-limited run's clock. Milestones stay in epochs, which a time limit may never
            reach: a warning says so (use ``warmup_cosine`` or ``poly`` to decay within the time).

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
    if clock is not None and clock.fraction is not None:
        log.warning("scheduler=step: a time-limited run (trainer.max_time) decays at milestone epochs %s only if it "
                    "reaches them; scheduler=warmup_cosine or poly decay within the time", ms)
    warm = _warmup_steps(warmup_epochs, warmup_steps, steps_per_epoch)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return gamma ** sum(step >= s for s in steps)

    return _per_group(optimizer, lambda base_lr: factor)
