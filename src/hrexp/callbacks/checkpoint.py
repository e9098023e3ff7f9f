"""Lightning's ModelCheckpoint with a choice of what a file keeps: everything, or weights and config.

A best-metric checkpoint is for testing, eval and export, never for resuming (``last.ckpt`` is):
it needs the weights and the run config, not the optimizer state. With AdamW the optimizer state
is twice the weights, so ``keep: weights`` makes such a file a third of the size (HRNet-W32:
numbers in the README). Unlike Lightning's ``save_weights_only``, every callback's
``on_save_checkpoint`` still runs first, so an EMA run's best file holds the averaged weights it
was validated with.
"""

from __future__ import annotations

from weakref import proxy

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from hrexp.training.checkpoint_io import AtomicCheckpointIO

KEEP = ("all", "weights")


class Checkpoint(ModelCheckpoint):
    """``ModelCheckpoint`` plus ``keep``.

    Args:
        keep: ``all`` (resumable: optimizer, schedule, callbacks, loops) or ``weights`` (the weights,
            the run config and the loop counters; resuming from it is refused by Lightning).
        **kwargs: :class:`~lightning.pytorch.callbacks.ModelCheckpoint` arguments.
    """

    def __init__(self, keep: str = "all", **kwargs):
        if keep not in KEEP:
            raise ValueError(f"checkpoint keep={keep!r}: expected one of {KEEP}")
        super().__init__(**kwargs)
        self.keep = keep

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.keep == "weights" and not isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO):
            raise ValueError(
                f"a checkpoint callback with keep=weights ({self.dirpath}) needs the trainer plugin "
                "hrexp.training.checkpoint_io.AtomicCheckpointIO (conf/trainer/default.yaml sets it); "
                f"this trainer has {type(trainer.strategy.checkpoint_io).__name__}"
            )

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        if self.keep == "all":
            return super()._save_checkpoint(trainer, filepath)
        # As ModelCheckpoint._save_checkpoint, with the whole dump slimmed by the CheckpointIO.
        trainer.save_checkpoint(filepath, weights_only=False, storage_options={"keep": "weights"})
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
