"""Validation images with ground-truth and predicted keypoints, logged to Weights & Biases."""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch.utils.data import default_collate

from hrexp.data.loaders import eval_loader
from hrexp.data.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

GT_COLOR = (0, 255, 0)  # RGB green
PRED_COLOR = (255, 0, 0)  # RGB red
LINK_COLOR = (255, 255, 0)  # RGB yellow: ground truth -> prediction


def denormalise(image: torch.Tensor | np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """A normalised ``[3, H, W]`` network input back to ``[H, W, 3]`` uint8 RGB."""
    arr = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    arr = arr.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.ascontiguousarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8))


def draw_keypoints(
    image: np.ndarray,
    gt: np.ndarray | None,
    pred: np.ndarray | None,
    gt_visible: np.ndarray | None = None,
    scale: int = 1,
    radius: int | None = None,
    links: bool = True,
) -> np.ndarray:
    """Draw ground truth (green dots) and predictions (red dots, on top) on an RGB uint8 image.

    Keypoints are ``[K, 2]`` ``(x, y)`` in the image's pixels, pixel ``(0, 0)``'s centre at
    ``(0.0, 0.0)`` (hrexp's convention). With ``links`` a thin yellow line joins each visible ground
    truth to its prediction. ``scale`` enlarges the image first (integer factor, nearest pixels
    kept sharp) and maps the keypoints with it: small network inputs become readable.

    Returns:
        A new ``[H * scale, W * scale, 3]`` uint8 image.
    """
    scale = max(1, int(scale))
    out = np.ascontiguousarray(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2), dtype=np.uint8)
    if scale > 1:
        out = cv2.resize(out, (out.shape[1] * scale, out.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    else:
        out = out.copy()
    if radius is None:
        radius = max(2, round(min(out.shape[:2]) / 100))
    shift = 4  # sub-pixel drawing: coordinates in 1/16 pixel
    k = len(gt) if gt is not None else len(pred) if pred is not None else 0
    visible = np.ones(k, bool) if gt_visible is None else np.asarray(gt_visible).astype(bool)

    def to_px(points: np.ndarray | None) -> np.ndarray | None:
        if points is None:
            return None
        pts = (np.asarray(points, np.float64) + 0.5) * scale - 0.5
        return np.round(pts * (1 << shift)).astype(np.int64)

    g, p = to_px(gt), to_px(pred)
    ok_g = visible & np.all(np.isfinite(gt), axis=1) if gt is not None else np.zeros(k, bool)
    ok_p = np.all(np.isfinite(pred), axis=1) if pred is not None else np.zeros(k, bool)
    if links and g is not None and p is not None:
        for i in np.flatnonzero(ok_g & ok_p):
            cv2.line(out, tuple(map(int, g[i])), tuple(map(int, p[i])), LINK_COLOR, 1, cv2.LINE_AA, shift)
    for pts, ok, color in ((g, ok_g, GT_COLOR), (p, ok_p, PRED_COLOR)):
        if pts is None:
            continue
        for i in np.flatnonzero(ok):
            cv2.circle(out, tuple(map(int, pts[i])), radius << shift, color, -1, cv2.LINE_AA, shift)
    return out


class WandbValImages(pl.Callback):
    """Log a few validation images with ground-truth (green) and predicted (red) keypoints to W&B.

    Every ``every_n_epochs`` epochs (and the last) the first ``num_images`` samples of the validation
    set (always the same ones, so epochs compare) go through the model once, and the network inputs
    are logged as one W&B image panel under ``key``, the keypoints drawn in input pixels, each
    captioned with its mean error in original-image pixels (the unit of ``val/mre``).

    It runs at the first validation batch, while the validated weights are in (an EMA callback
    swaps its average in for the whole validation epoch), on the global-zero rank only, without
    gradients and in eval mode (the module's previous modes are restored). A no-op without a
    :class:`~lightning.pytorch.loggers.WandbLogger` among the trainer's loggers, during the sanity
    check, and for tasks without keypoints (segmentation: skipped with one log line).

    Args:
        num_images: How many validation samples to show.
        every_n_epochs: Log at epochs 0, n, 2n, ... (and the last epoch) when they validate.
        key: The W&B panel key.
        min_size: Inputs whose longer side is shorter are enlarged by an integer factor to reach it.
        links: Draw a line from each ground truth to its prediction.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1, key: str = "val/examples",
                 min_size: int = 256, links: bool = True):
        if int(num_images) < 1 or int(every_n_epochs) < 1:
            raise ValueError(f"callbacks.wandb_images: num_images and every_n_epochs must be >= 1, got "
                             f"{num_images!r} and {every_n_epochs!r}")
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.key = str(key)
        self.min_size = int(min_size)
        self.links = bool(links)
        self._samples: tuple[int, Mapping[str, Any]] | None = None  # (id of the dataset, collated batch)
        self._skip_reason: str | None = None

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
        task = getattr(pl_module, "task", None)
        if task is None or not hasattr(task, "predict"):
            return self._skip("the module has no task with predictions")
        samples = self._first_samples(trainer)
        if samples is None:
            return self._skip("no validation samples")
        if "keypoints" not in samples:
            return self._skip(f"task {getattr(task, 'task_name', type(task).__name__)!r} has no keypoints")
        images, captions = self.render(trainer, pl_module, samples)
        if images is None:
            return self._skip(f"task {getattr(task, 'task_name', type(task).__name__)!r} predicts no keypoints")
        for lg in loggers:
            lg.log_image(key=self.key, images=images, caption=captions, step=trainer.global_step)

    @staticmethod
    def _is_last_epoch(trainer: pl.Trainer) -> bool:
        return trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1

    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
               samples: Mapping[str, Any]) -> tuple[list[np.ndarray] | None, list[str]]:
        """One forward on ``samples``; their inputs with ground truth and predictions drawn."""
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
        if not isinstance(preds, Mapping) or "keypoints_input" not in preds:
            return None, []
        mean, std = self._normalisation(trainer)
        pred_in = preds["keypoints_input"].float().cpu().numpy()
        gt_in = batch["keypoints"].float().cpu().numpy()
        vis_in = batch["visible"].cpu().numpy() > 0 if "visible" in batch else np.ones(gt_in.shape[:2], bool)
        errors = self._errors(preds, batch)
        h, w = batch["image"].shape[-2:]
        scale = max(1, math.ceil(self.min_size / max(h, w)))
        images, captions = [], []
        for i in range(len(pred_in)):
            picture = denormalise(batch["image"][i], mean, std)
            images.append(draw_keypoints(picture, gt_in[i], pred_in[i], vis_in[i], scale=scale, links=self.links))
            index = int(batch["index"][i]) if "index" in batch else i
            err = errors[i] if errors is not None else math.nan
            captions.append(f"val #{index}" + ("" if math.isnan(err) else f": mean error {err:.2f} px"))
        return images, captions

    @staticmethod
    def _errors(preds: Mapping[str, Any], batch: Mapping[str, Any]) -> list[float] | None:
        """Per-image mean keypoint error in original pixels (NaN without a visible ground truth)."""
        if "keypoints" not in preds or "keypoints_orig" not in batch or "visible_orig" not in batch:
            return None
        dist = (preds["keypoints"].float() - batch["keypoints_orig"].float()).norm(dim=-1).cpu()
        vis = batch["visible_orig"].cpu() > 0
        out = []
        for d, v in zip(dist, vis):
            out.append(float(d[v].mean()) if bool(v.any()) else math.nan)
        return out
