"""The segmentation task: per-pixel class logits, cross-entropy / OHEM / Dice, mIoU and Dice metrics."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hrexp.data.segmentation.transforms import round_up
from hrexp.metrics.segmentation import SegmentationMetrics
from hrexp.prediction.writers import MaskPredictionWriter, PredictionWriter
from hrexp.reports.drawing import overlay_mask
from hrexp.tasks.base import Task, finite_or_none


def _window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets covering ``[0, length)``: every ``stride``, the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return starts + [length - window]


class SegmentationTask(Task):
    """Semantic segmentation: the head predicts ``num_classes`` logits at its stride (1/4 for HRNetV2).

    Training upsamples the logits bilinearly to the crop and applies the loss there. Evaluation
    scores every image at its ORIGINAL resolution: the network sees the whole (optionally
    down-sized) image, or overlapping windows of ``sliding_window.size`` whose logits are averaged;
    the logits are then resized back to the mask's original size before the argmax, so metrics never
    see a resized mask. Batches are padded (images with 0, masks with the ignore index), so padding
    never counts.

    Args:
        head: Partial head constructor, called as ``head(feature_info=..., num_outputs=C)``.
        loss: ``loss(logits [B, C, H, W], target [B, H, W]) -> scalar``.
        feature_info: The backbone's feature description.
        dataset_meta: ``num_classes``, ``class_names``, ``ignore_index``.
        sliding_window: ``{"size": [h, w], "stride": [h, w]}`` for large images, or None (whole image).
        monitor: Default ``{"metric": "val/mIoU", "mode": "max"}``.
    """

    task_name = "segmentation"

    def __init__(
        self,
        head: Callable[..., nn.Module],
        loss: nn.Module,
        feature_info: Sequence[Mapping[str, int]],
        dataset_meta: Mapping[str, Any],
        sliding_window: Mapping[str, Sequence[int]] | None = None,
        monitor: Mapping[str, str] | None = None,
    ):
        if int(dataset_meta.get("num_classes") or 0) < 1:
            raise ValueError(f"task=segmentation needs dataset_meta.num_classes >= 1, got {dict(dataset_meta)}")
        num_classes = int(dataset_meta["num_classes"])
        ignore_index = int(dataset_meta.get("ignore_index", 255))
        loss_ignore = getattr(loss, "ignore_index", ignore_index)
        if int(loss_ignore) != ignore_index:
            raise ValueError(f"task.loss.ignore_index={loss_ignore} differs from the data's ignore_index={ignore_index}")
        super().__init__(head, feature_info, num_classes, monitor or {"metric": "val/mIoU", "mode": "max"})
        self.num_classes = num_classes
        self.class_names = list(dataset_meta.get("class_names") or [f"class{i}" for i in range(num_classes)])
        self.ignore_index = ignore_index
        self.loss_fn = loss
        # Inputs are padded to a multiple of the coarsest feature stride, so every branch aligns.
        self.size_divisor = max(int(f["reduction"]) for f in feature_info)
        self.window = None
        if sliding_window is not None:
            size = [int(v) for v in sliding_window["size"]]
            stride = [int(v) for v in sliding_window.get("stride") or [s * 2 // 3 for s in size]]
            if any(s % self.size_divisor for s in size) or not all(0 < t <= s for t, s in zip(stride, size)):
                raise ValueError(
                    f"task.sliding_window: size {size} must be multiples of {self.size_divisor} and 0 < stride "
                    f"{stride} <= size"
                )
            self.window = (size, stride)
        self.init_metrics(lambda: SegmentationMetrics(self.num_classes, ignore_index=self.ignore_index,
                                                      class_names=self.class_names))

    # ------------------------------------------------------------------ loss
    def has_targets(self, batch: Mapping[str, torch.Tensor]) -> bool:
        return bool((batch["mask"] != self.ignore_index).any())

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss on logits upsampled (bilinear) to the mask's size."""
        mask = batch["mask"]
        if outputs.shape[-2:] != mask.shape[-2:]:
            outputs = F.interpolate(outputs, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        return self.loss_fn(outputs, mask)

    # ------------------------------------------------------------------ evaluation
    def _logits(self, model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """Logits ``[1, C, h, w]`` of one image ``[1, 3, h, w]`` at its own size (padding added and removed)."""
        h, w = image.shape[-2:]
        if self.window is None or (h <= self.window[0][0] and w <= self.window[0][1]):
            ph, pw = round_up(h, self.size_divisor), round_up(w, self.size_divisor)
            padded = F.pad(image, (0, pw - w, 0, ph - h))
            out = F.interpolate(model(padded), size=(ph, pw), mode="bilinear", align_corners=False)
            return out[..., :h, :w]
        (wh, ww), (sh, sw) = self.window
        ph, pw = max(h, wh), max(w, ww)
        padded = F.pad(image, (0, pw - w, 0, ph - h))
        total = image.new_zeros((1, self.num_classes, ph, pw))
        count = image.new_zeros((1, 1, ph, pw))
        for y in _window_starts(ph, wh, sh):
            for x in _window_starts(pw, ww, sw):
                crop = padded[..., y:y + wh, x:x + ww]
                logits = F.interpolate(model(crop), size=(wh, ww), mode="bilinear", align_corners=False)
                total[..., y:y + wh, x:x + ww] += logits
                count[..., y:y + wh, x:x + ww] += 1
        return (total / count)[..., :h, :w]

    def eval_outputs(self, model: Callable[[torch.Tensor], torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits at the masks' original resolution, ``[B, C, Hm, Wm]`` (the padded mask size)."""
        images, mask = batch["image"], batch["mask"]
        image_hw, mask_hw = batch["image_hw"].tolist(), batch["mask_hw"].tolist()
        out = images.new_zeros((images.shape[0], self.num_classes, *mask.shape[-2:]))
        for i, ((h, w), (mh, mw)) in enumerate(zip(image_hw, mask_hw)):
            logits = self._logits(model, images[i:i + 1, :, :h, :w])
            if (h, w) != (mh, mw):  # the image was down-sized for the network: back to the mask's size
                logits = F.interpolate(logits, size=(mh, mw), mode="bilinear", align_corners=False)
            out[i, :, :mh, :mw] = logits[0]
        return out

    @torch.no_grad()
    def predict(self, outputs: torch.Tensor, batch: Mapping[str, torch.Tensor],
                flipped_outputs: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Class ids per pixel at the mask's resolution."""
        if outputs.shape[-2:] != batch["mask"].shape[-2:]:
            outputs = F.interpolate(outputs, size=batch["mask"].shape[-2:], mode="bilinear", align_corners=False)
        return {"labels": outputs.argmax(dim=1)}

    def update_metrics(self, stage: str, preds: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        self.metrics[stage].update(preds["labels"], batch["mask"], batch["index"])

    # ------------------------------------------------------------------ prediction (export: the base's ``maps``)
    def prediction_writer(self, out_dir: Path, per_instance: bool) -> PredictionWriter:
        """``masks/<name>.png`` (class ids at the original size) and ``predictions.csv`` (pixels per class)."""
        return MaskPredictionWriter(out_dir, self.class_names)

    # ------------------------------------------------------------------ reports
    def per_item_tables(self, stage: str) -> dict[str, list[dict[str, Any]]]:
        """``per_class``: IoU and Dice of every class, background included (empty cells: undefined)."""
        stats = {k: v.detach().cpu() for k, v in self.metrics[stage].per_class().items()}
        rows = []
        for i, name in enumerate(self.class_names):
            rows.append({"class": name, **{k: finite_or_none(float(v[i])) for k, v in stats.items()}})
        return {"per_class": rows}

    def draw_predictions(self, images: Sequence[np.ndarray], batch: Mapping[str, Any],
                         preds: Mapping[str, Any], scale: int = 1) -> list[tuple[np.ndarray, str]]:
        """Ground-truth mask (left) and predicted mask (right) over each input, with its pixel accuracy."""
        labels = preds["labels"].cpu().numpy()
        masks = batch["mask"].cpu().numpy()
        image_hw, mask_hw = batch["image_hw"].tolist(), batch["mask_hw"].tolist()
        out = []
        for i, image in enumerate(images):
            (h, w), (mh, mw) = image_hw[i], mask_hw[i]
            picture, truth, predicted = image[:h, :w], masks[i, :mh, :mw], labels[i, :mh, :mw]
            scored = truth != self.ignore_index
            accuracy = float((predicted[scored] == truth[scored]).mean()) if scored.any() else math.nan
            pair = np.concatenate([
                overlay_mask(picture, truth, ignore_index=self.ignore_index, scale=scale),
                overlay_mask(picture, predicted, scale=scale),
            ], axis=1)
            out.append((pair, "ground truth | prediction" + ("" if math.isnan(accuracy) else
                                                           f", pixel accuracy {accuracy:.3f}")))
        return out

    def sample_results(self, preds: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Per sample: its ``[C, C]`` confusion matrix (rows = truth, ignored pixels left out), as the metric counts."""
        labels, masks = preds["labels"], batch["mask"]
        c = self.num_classes
        out = []
        for i, index in enumerate(batch["index"].cpu().tolist()):
            valid = masks[i] != self.ignore_index
            key = masks[i][valid].long() * c + labels[i][valid].long()
            confusion = torch.bincount(key, minlength=c * c).reshape(c, c)
            out.append({"index": int(index), "confusion": confusion.cpu().numpy()})
        return out

    def report(self, samples: Sequence[Mapping[str, Any]], context: Any) -> list[Any]:
        """IoU / Dice per class and image, the confusion matrix, overlay galleries
        (:mod:`hrexp.evaluation.segmentation_report`)."""
        from hrexp.evaluation.segmentation_report import segmentation_report

        return segmentation_report(self, samples, context)
