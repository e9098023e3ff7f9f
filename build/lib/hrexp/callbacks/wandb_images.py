"""Validation images with ground truth and predictions drawn by the task, logged to Weights & Biases."""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import default_collate

from hrexp.data.loaders import eval_loader
from hrexp.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hrexp.reports.drawing import denormalise

log = logging.getLogger(__name__)

class WandbValImages(pl.Callback):
    """Log a few validation images with ground truth and predictions, drawn by the task, to W&B.

    Every ``every_n_epochs`` epochs (and the last) the first ``num_images`` samples of the validation
    set (always the same ones, so epochs compare) go through the model once, and the network inputs
    are logged as one W&B image panel under ``key``, drawn by the task's ``draw_predictions`` hook:
    keypoint tasks mark ground truth green and predictions red in input pixels, captioned with the
    mean error in original-image pixels (the unit of ``val/mre``); segmentation shows the ground-truth
    and predicted masks side by side.

    It runs at the first validation batch, while the validated weights are in (an EMA callback
    swaps its average in for the whole validation epoch), on the global-zero rank only, without
    gradients and in eval mode (the module's previous modes are restored). A no-op without a
    :class:`~lightning.pytorch.loggers.WandbLogger` among the trainer's loggers, during the sanity
    check, and for a task that does not draw (skipped with one log line).

    Args:
        num_images: How many validation samples to show.
        every_n_epochs: Log at epochs 0, n, 2n, ... (and the last epoch) when they validate.
        key: The W&B panel key.
        min_size: Inputs whose longer side is shorter are enlarged by an integer factor to reach it.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1, key: str = "val/examples",
                 min_size: int = 256):
        if int(num_images) < 1 or int(every_n_epochs) < 1:
            raise ValueError(f"callbacks.wandb_images: num_images and every_n_epochs must be >= 1, got "
                             f"{num_images!r} and {every_n_epochs!r}")
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.key = str(key)
        self.min_size = int(min_size)
        self._samples: tuple[int, Mapping[str, Any]] | None = None  # (id of the dataset, collated batch)
        self._skip_reason: str | None = None
        self._task_draws = True  # False once the task said it does not draw: no forward each epoch then

    @staticmethod
    def wandb_loggers(trainer: pl.Trainer) -> list[WandbLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    def _skip(self, reason: str) -> None:
        if self._skip_reason != reason:
            log.info("callbacks.wandb_images: %s; no validation images logged", reason)
            self._skip_reason = reason

    def _first_samples(self, trainer: pl.Trainer) -> Mapping[str, Any] | None:
        loader = eval_loader(trainer)
        dataset = getattr(loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__len__") or len(dataset) == 0:
            return None
        if self._samples is None or self._samples[0] != id(dataset):
            items = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
            collate = getattr(loader, "collate_fn", None) or default_collate
            self._samples = (id(dataset), collate(items))
        return self._samples[1]

    @staticmethod
    def _normalisation(trainer: pl.Trainer) -> tuple[Sequence[float], Sequence[float]]:
        transform = getattr(getattr(eval_loader(trainer), "dataset", None), "transform", None)
        mean, std = getattr(transform, "mean", None), getattr(transform, "std", None)
        return (IMAGENET_MEAN if mean is None else mean), (IMAGENET_STD if std is None else std)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs != 0 and not self._is_last_epoch(trainer):
            return
        loggers = self.wandb_loggers(trainer)
        if not loggers:
            return
        if not self._task_draws:
            return
        samples = self._first_samples(trainer)
        if samples is None:
            return self._skip("no validation samples")
        try:
            images, captions = self.render(trainer, pl_module, samples)
        except NotImplementedError as err:  # the task does not draw its predictions
            self._task_draws = False
            return self._skip(str(err))
        for lg in loggers:
            lg.log_image(key=self.key, images=images, caption=captions, step=trainer.global_step)

    @staticmethod
    def _is_last_epoch(trainer: pl.Trainer) -> bool:
        return trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1

    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
               samples: Mapping[str, Any]) -> tuple[list[np.ndarray], list[str]]:
        """One forward on ``samples``; their inputs with ground truth and predictions drawn by the task."""
        task = pl_module.task
        param = next(pl_module.parameters(), None)
        device = pl_module.device
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in samples.items()}
        batch["image"] = batch["image"].to(param.dtype if param is not None and param.is_floating_point()
                                           else torch.float32)
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        try:
            with torch.no_grad(), trainer.precision_plugin.forward_context():
                outputs = task.eval_outputs(pl_module, batch)
                preds = task.predict(outputs, batch)
        finally:
            for m, mode in modes.items():
                m.training = mode
        mean, std = self._normalisation(trainer)
        pictures = [denormalise(image, mean, std) for image in batch["image"]]
        h, w = batch["image"].shape[-2:]
        scale = max(1, math.ceil(self.min_size / max(h, w)))
        drawn = task.draw_predictions(pictures, batch, preds, scale=scale)
        indices = batch["index"].tolist() if "index" in batch else list(range(len(drawn)))
        captions = [f"val #{int(i)}" + (f": {caption}" if caption else "") for i, (_, caption) in zip(indices, drawn)]
        return [picture for picture, _ in drawn], captions
