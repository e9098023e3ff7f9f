"""Training phases: the head alone for the first epochs, then the whole model.

:class:`BackboneFreeze` is written here rather than built on Lightning's ``BackboneFinetuning``,
which does not fit hrexp's runs in three ways:

* it adds the backbone's param group to the optimizer at the unfreeze epoch. hrexp's schedules
  step every optimizer step with one factor per group fixed at construction (``LambdaLR``), so a
  group added later would never be scheduled, and the optimizer and checkpoint would change shape
  mid-run;
* it freezes BatchNorm by turning off ``track_running_stats``, so the frozen backbone normalises
  with each batch's statistics instead of its (pretrained) running ones;
* it switches ``requires_grad``, which DistributedDataParallel only reads when it wraps the model:
  parameters unfrozen later are never all-reduced (Lightning issue #20340).

Here the optimizer holds the backbone's groups from the first step. While frozen, the backbone runs
in eval mode under ``torch.no_grad()`` (:meth:`HRExpModule.set_backbone_frozen`): its weights get no
gradient, so the optimizer skips them (no update, no weight decay, no optimizer state), its BatchNorm
statistics stay fixed, and no backward pass runs through it. The schedule gives the backbone's
groups lr 0 until the switch (``start_step``), so the logged ``lr-*`` curves show the phase, then
optionally ramps them up over ``warmup_epochs``. The phase is a function of the epoch alone, so a
run resumed from a checkpoint (even one taken mid-epoch) is in the right phase at its first step.

Modules frozen by ``model.freeze_stages`` stay frozen after the switch.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy

log = logging.getLogger(__name__)

OPTION = "callbacks.freeze_backbone"


class BackboneFreeze(Callback):
    """Freeze the backbone for the first ``epochs`` epochs (the head trains alone), then train it.

    Args:
        epochs: Epochs ``0 .. epochs-1`` train the head only; from epoch ``epochs`` on, everything.
        warmup_epochs: After the switch the backbone's lr rises linearly from 0 to the schedule's
            value over this many epochs (0: it starts at the schedule's value).

    Raises:
        ValueError: ``epochs`` not a positive integer, or a negative ``warmup_epochs``.
    """

    def __init__(self, epochs: int, warmup_epochs: float = 0):
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"{OPTION}.epochs={epochs!r}: expected a whole number of epochs >= 1")
        if not float(warmup_epochs) >= 0:
            raise ValueError(f"{OPTION}.warmup_epochs={warmup_epochs!r}: expected >= 0")
        self.epochs = epochs
        self.warmup_epochs = float(warmup_epochs)

    def schedule_gate(self, steps_per_epoch: int) -> dict[str, int]:
        """``start_step`` and ``ramp_steps`` for the backbone's param groups (see ``schedules.delayed``)."""
        return {"start_step": self.epochs * steps_per_epoch, "ramp_steps": int(round(self.warmup_epochs * steps_per_epoch))}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        max_epochs = trainer.max_epochs
        # fast_dev_run (one batch, to check the wiring) runs the frozen phase only, on purpose.
        if not trainer.fast_dev_run and max_epochs is not None and max_epochs >= 0 and self.epochs >= max_epochs:
            raise ValueError(
                f"{OPTION}.epochs={self.epochs} >= trainer.max_epochs={max_epochs}: the backbone would never train; "
                "freeze it for fewer epochs, or use model.freeze_stages to freeze it for the whole run"
            )
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and trainer.world_size > 1:
            # The frozen backbone produces no gradients; DDP must be told to expect that.
            if not getattr(strategy, "_ddp_kwargs", {}).get("find_unused_parameters", False):
                raise ValueError(
                    f"{OPTION}: under DDP the frozen backbone's parameters get no gradient in the first "
                    f"{self.epochs} epochs; set trainer.strategy=ddp_find_unused_parameters_true "
                    "(or ddp_spawn_find_unused_parameters_true)"
                )
        # Lightning runs this hook before configure_optimizers: the backbone's groups get lr 0 until the switch.
        pl_module.add_schedule_gate(OPTION, "backbone", self.schedule_gate)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        # Before every training step, not at epoch start: a run resumed mid-epoch skips
        # on_train_epoch_start. Only the switch itself does any work.
        frozen = trainer.current_epoch < self.epochs
        if pl_module.backbone_frozen != frozen:
            pl_module.set_backbone_frozen(frozen)
            log.info("epoch %d: backbone %s", trainer.current_epoch, "frozen (head only)" if frozen else "unfrozen")
