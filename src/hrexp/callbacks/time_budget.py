"""A time-limited run's schedule and stop: the lr decays over ``trainer.max_time``, the last validation included.

Lightning's ``max_time`` (its ``Timer`` callback) stops training once the time is up and then runs one
more validation, so a run overshoots its budget by that validation, and hrexp's schedules, sized in
steps from ``max_epochs``, never decay. This callback turns the budget into the schedules' progress:

* before every optimizer step it sets :class:`~hrexp.training.schedules.BudgetClock` ``fraction`` to
  ``(elapsed + two steps) / (max_time - reserve)`` (the lr set now is the next step's, which ends
  two steps from now), where ``elapsed`` is the ``Timer``'s training time (it survives a resume:
  Lightning stores it in the checkpoint) and ``reserve`` is the longest of the last three validations with
  their checkpoint writes (estimated from the sanity check until a real one has run);
* when the next step ends the epoch and the validation after it would leave no room for another step, the
  next step is the last: its lr is set at the clock's end (else an epoch ending in the last reserve's
  worth of time stopped training at an lr still above ``min_lr``);
* it stops training after the step that trained at the clock's end (fraction 1), which ends about one
  step before ``max_time - reserve``: the final validation ends by ``max_time`` and validates weights whose
  last step trained at ``min_lr``, however noisy the step times (a stop decided by the step's own time
  would sometimes come one step before the clock reached 1); only a step that would end more than one
  step past ``max_time - reserve`` stops training at once;
* rank 0 measures and broadcasts, so every DDP rank steps the same lr and stops at the same step.

Without ``trainer.max_time`` it does nothing: the schedules count steps as before.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Timer

from hrexp.training.schedules import BudgetClock

log = logging.getLogger(__name__)

# The step time's moving average weighs the newest step by this much.
STEP_TIME_WEIGHT = 0.1
# The reserve for the last validation is the longest of the latest few (their time varies by a few tens of %).
RECENT_VALIDATIONS = 3


class TimeBudget(pl.Callback):
    """Drive the schedules' :class:`BudgetClock` from ``trainer.max_time`` and stop in time for the last validation.

    Args:
        log_fraction: log ``train/time_fraction`` (the clock) every logged step.
    """

    def __init__(self, log_fraction: bool = True):
        self.log_fraction = log_fraction
        self.clock = BudgetClock()
        self.timer: Timer | None = None
        self.budget_s: float | None = None
        self.reserve_s: float | None = None  # the last validation, its checkpoints included
        self.step_s: float | None = None  # moving average of one training step
        self._last_step_at: float | None = None
        self._validation_started: float | None = None
        self._sanity_started: float | None = None
        self._stop = False  # agreed by the ranks at the last optimizer step
        self._validations: list[float] = []
        # After training: budget_s, used_s, reserve_s, steps, epochs, stopped_by_budget (for the run record).
        self.summary: dict[str, Any] | None = None

    # --- setup -------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
        remaining = None if self.timer is None else self.timer.time_remaining()
        if remaining is None:
            self.timer = None
            return
        self.budget_s = remaining + self.timer.time_elapsed()
        if self.clock.fraction is None:
            self.clock.fraction = 0.0
        # The module hands the clock to its scheduler factory (configure_optimizers runs after setup).
        pl_module.budget_clock = self.clock

    # --- the reserve: how long the last validation takes -------------------------------------
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sanity_started = time.monotonic()

    def on_sanity_check_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._sanity_started is None or self.reserve_s is not None:
            return
        done = sum(trainer.num_sanity_val_batches or [0])
        total = sum(b for b in (trainer.num_val_batches or []) if b != float("inf"))
        if done > 0:
            self.reserve_s = (time.monotonic() - self._sanity_started) / done * total

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validation_started = time.monotonic()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._validation_started is not None:
            # validation, its checkpoint writes and the epoch change: what the last validation will cost
            self._validations = [*self._validations[-(RECENT_VALIDATIONS - 1):], time.monotonic() - self._validation_started]
            self.reserve_s = max(self._validations)
            self._validation_started = None

    # --- the clock ----------------------------------------------------------------------------
    def measure(self, epoch_ends: bool, next_ends_epoch: bool = False) -> tuple[float, bool]:
        """This rank's reading at an optimizer step: the clock's fraction for the next step's lr, and whether to stop.

        With ``s`` one step, ``r`` the reserve and ``A = budget - r`` the time for training: the next step's lr
        uses ``(elapsed + 2 s) / A`` (one step of margin: a slow step does not jump past the end), and training
        stops after this step if it trained at fraction 1, or if the next one would end more than a step past
        ``A``. A validation that runs before the next step (this batch ends the epoch) counts as ``r`` more.
        If the next step ends the epoch and ``elapsed + s + r > A`` (its validation would stop training at the
        next reading), the next step is the last and trains at fraction 1.
        """
        assert self.timer is not None and self.budget_s is not None
        now = time.monotonic()
        if self._last_step_at is not None:
            interval = now - self._last_step_at
            self.step_s = interval if self.step_s is None else (1 - STEP_TIME_WEIGHT) * self.step_s + STEP_TIME_WEIGHT * interval
        self._last_step_at = None if epoch_ends else now  # the next interval would include the validation
        reserve = self.reserve_s or 0.0
        available = self.budget_s - reserve
        ahead = (self.step_s or 0.0) + (reserve if epoch_ends else 0.0)
        elapsed = self.timer.time_elapsed()
        if available <= 0:
            return 1.0, True
        trained_at_the_end = (self.clock.fraction or 0.0) >= 1.0
        overrun = elapsed + ahead > available + (self.step_s or 0.0)
        fraction = min(1.0, max(0.0, (elapsed + ahead + (self.step_s or 0.0)) / available))
        if next_ends_epoch and elapsed + ahead + reserve > available:
            fraction = 1.0
        return fraction, trained_at_the_end or overrun

    @staticmethod
    def next_step_ends_epoch(trainer: pl.Trainer) -> bool:
        """Whether the optimizer step after this one trains the epoch's last batch (a validation follows it)."""
        batches = trainer.num_training_batches
        if batches == float("inf") or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return False
        accumulate = max(1, int(trainer.accumulate_grad_batches))
        return trainer.fit_loop.epoch_loop.batch_idx + accumulate >= batches - 1

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # Lightning steps the scheduler right after this optimizer step: the lr it sets is the next step's.
        if self.timer is None:
            return
        epoch_ends = bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        fraction, stop = trainer.strategy.broadcast(self.measure(epoch_ends, self.next_step_ends_epoch(trainer)), src=0)
        self.clock.fraction = max(self.clock.fraction or 0.0, float(fraction))
        self._stop = bool(stop)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.timer is None or self.clock.fraction is None:
            return
        if self.log_fraction:
            pl_module.log("train/time_fraction", self.clock.fraction, on_step=True, on_epoch=False)
        if self._stop and not trainer.should_stop:
            log.info("time budget: training stops at step %d, %.2f s of %.0f s used, %.2f s kept for the last "
                     "validation", trainer.global_step, self.timer.time_elapsed(), self.budget_s, self.reserve_s or 0.0)
            trainer.should_stop = True

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # each validation's place in the budget: result scripts draw accuracy against training minutes
        if self.timer is not None and not trainer.sanity_checking:
            pl_module.log("time/train_min", self.timer.time_elapsed() / 60.0)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.timer is not None:
            self.summary = {"budget_s": self.budget_s, "used_s": self.timer.time_elapsed(),
                            "reserve_s": self.reserve_s, "steps": trainer.global_step,
                            "epochs": trainer.current_epoch, "stopped_by_budget": bool(self.clock.fraction >= 1.0)}
            log.info("time budget: %s", self.summary)

    # --- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"clock": self.clock.state_dict(), "reserve_s": self.reserve_s, "step_s": self.step_s,
                "validations": list(self._validations)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.clock.load_state_dict(state_dict.get("clock", {}))
        self.reserve_s = state_dict.get("reserve_s")
        self.step_s = state_dict.get("step_s")
        self._validations = list(state_dict.get("validations", []))
