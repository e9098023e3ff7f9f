"""An exponential moving average (EMA) of the weights, used for validation and saved in checkpoints.

Built on Lightning's ``EMAWeightAveraging`` (``torch.optim.swa_utils.AveragedModel`` underneath):
after every optimizer step ``ema = decay * ema + (1 - decay) * weights``, parameters and buffers
(BatchNorm statistics) alike. Lightning swaps the EMA weights in for each validation epoch and, in
every checkpoint, stores them as ``state_dict`` with the raw weights under ``current_model_state``,
so checkpoint selection, ``trainer.test(ckpt_path=...)`` and ``eval.py`` all see what was validated.

Two additions: the checkpoint says so (``checkpoint["hrexp"]["weights"]``), and a checkpoint loaded
for testing keeps its EMA ``state_dict`` (Lightning's callback would reload the raw weights into the
model outside ``fit`` too, testing other weights than those validated).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn

OPTION = "callbacks.ema"


class EMA(EMAWeightAveraging):
    """EMA of the weights (and BatchNorm statistics), updated after every optimizer step.

    Args:
        decay: Weight of the old average per update, in [0, 1): 0.999 averages over ~1000 steps.
        update_starting_at_step: First optimizer step (0-based) that updates the average; before
            it the average is a copy of the weights. None: from the first step.
        update_every_n_steps: Update after every n-th optimizer step.
        device: Where the averaged copy lives (None: with the model; ``"cpu"`` saves GPU memory).

    Raises:
        ValueError: ``decay`` outside [0, 1) or ``update_every_n_steps`` < 1.
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_starting_at_step: int | None = None,
        update_every_n_steps: int = 1,
        device: str | None = None,
    ):
        if not 0 <= float(decay) < 1:
            raise ValueError(f"{OPTION}.decay={decay!r}: expected a number in [0, 1), e.g. 0.999")
        if int(update_every_n_steps) < 1:
            raise ValueError(f"{OPTION}.update_every_n_steps={update_every_n_steps!r}: expected an integer >= 1")
        super().__init__(
            device=device, use_buffers=True, decay=float(decay), update_every_n_steps=int(update_every_n_steps),
            update_starting_at_step=update_starting_at_step,
        )
        self.decay = float(decay)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is not None:
            checkpoint.setdefault("hrexp", {})["weights"] = {
                "kind": "ema",
                "decay": self.decay,
                "updates": int(self._average_model.n_averaged.item()),
                "raw_weights_key": "current_model_state",
            }

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
        # Testing or validating a checkpoint: its state_dict (the EMA weights) is already loaded.
