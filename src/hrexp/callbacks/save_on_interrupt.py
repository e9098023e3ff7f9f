"""A resumable checkpoint when the run is told to stop (SIGTERM: pre-emption, a scheduler's kill; Ctrl+C).

Lightning turns SIGTERM into an exception after the current batch (on every rank under DDP);
this callback writes ``last.ckpt`` with the whole training state at that point, so
``hydra.run.dir=<run> ckpt_path=last`` continues where it stopped. On SLURM, Lightning's own
requeue (``SLURMEnvironment``, signal ``SIGUSR1`` sent before the time limit) saves and requeues
the job instead.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class SaveOnInterrupt(pl.Callback):
    """On SIGTERM or KeyboardInterrupt during fit, write ``<dirpath>/<filename>.ckpt`` (whole state).

    Args:
        dirpath: The run's checkpoint folder.
        filename: File name without ``.ckpt`` (``last``: what ``ckpt_path=last`` picks up).
    """

    def __init__(self, dirpath: str, filename: str = "last"):
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.saved: Path | None = None

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)) or trainer.state.fn != "fit":
            return
        trainer.save_checkpoint(self.path)
        self.saved = self.path
        log.warning("%s at step %d: resumable checkpoint %s written; continue with hydra.run.dir=%s ckpt_path=last",
                    type(exception).__name__, trainer.global_step, self.path, self.path.parent.parent)
