"""The fourth task: centre points of blobs, from one centre heatmap (see ``codec.py``, ``metric.py``).

Written only here, against hrexp's Task contract, to show that a new task needs no edit outside its
own files: head from the ``head`` group, its own codec, loss, metric (higher is better) and configs;
``predict.py`` writes its centres through its own writer (:class:`CentreWriter`), and ``export.py`` exports
its one map with the base Task's export hooks.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from hrexp.prediction.writers import PredictedImage, PredictionWriter
from hrexp.reports.drawing import draw_keypoints
from hrexp.tasks.base import Task
from tests.blobs.metric import CentreDetection


class PeakWeightedMSE(nn.Module):
    """MSE with the pixels near a centre weighted ``peak_weight`` times more (they are few)."""

    def __init__(self, peak_weight: float = 10.0):
        super().__init__()
        self.peak_weight = float(peak_weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = 1.0 + (self.peak_weight - 1.0) * target
        return (weight * (pred - target) ** 2).mean()


class CentreWriter(PredictionWriter):
    """``predictions.csv``: one row per found centre, ``file, centre, x, y`` (the image's pixels)."""

    coordinates = "image pixels, centre of pixel (0, 0) at (0.0, 0.0)"

    def __init__(self, out_dir: Path):
        self.fh = open(out_dir / "predictions.csv", "w", newline="")
        self.csv = csv.writer(self.fh)
        self.csv.writerow(["file", "centre", "x", "y"])
        self.found = 0

    def add(self, image: PredictedImage, inputs: Mapping[str, Any] | None,
            preds: Mapping[str, Any] | None) -> np.ndarray | None:
        (row,) = image.rows  # one sample per image
        centres = preds["centres"][row].double().numpy()
        for n, (x, y) in enumerate(centres):
            self.csv.writerow([image.file, n, repr(float(x)), repr(float(y))])
        self.found += len(centres)
        return None if image.picture is None else draw_keypoints(image.picture, None, centres, links=False)

    def close(self) -> None:
        self.fh.close()

    @property
    def files(self) -> dict[str, str]:
        return {"predictions_csv": "predictions.csv"}

    def counts(self) -> dict[str, int]:
        return {"centres": self.found}

    def readme_lines(self) -> list[str]:
        return ["predictions.csv   one row per blob centre found: file, centre, x, y (image pixels)"]


class BlobCentreTask(Task):
    """Every blob's centre, in input pixels (the images are not resized, so input = original)."""

    task_name = "blob_centres"

    def __init__(self, head: Any, codec: Any, loss: nn.Module, feature_info: Sequence[Mapping[str, int]],
                 dataset_meta: Mapping[str, Any], radius: float = 3.0, monitor: Mapping[str, str] | None = None):
        if dataset_meta.get("kind") != "blob_centres":
            raise ValueError(f"task=blob_centres needs blob data (dataset_meta.kind=blob_centres), got {dict(dataset_meta)}")
        super().__init__(head, feature_info, 1, monitor or {"metric": "val/recall", "mode": "max"})
        self.codec = codec
        self.loss_fn = loss
        self.init_metrics(lambda: CentreDetection(radius))

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        target = self.codec.encode(batch["centres"], batch["valid"], tuple(outputs.shape[-2:]), self.stride)
        return self.loss_fn(outputs, target.to(outputs.dtype))

    @torch.no_grad()
    def predict(self, outputs: torch.Tensor, batch: Mapping[str, Any], flipped_outputs: Any = None) -> dict[str, Any]:
        return {"centres": self.codec.decode(outputs, self.stride)}

    def prediction_writer(self, out_dir: Path, per_instance: bool) -> PredictionWriter:
        return CentreWriter(out_dir)

    def update_metrics(self, stage: str, preds: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        targets = [c[v > 0] for c, v in zip(batch["centres"], batch["valid"])]
        self.metrics[stage].update(preds["centres"], targets)

    def draw_predictions(self, images: Sequence[np.ndarray], batch: Mapping[str, Any], preds: Mapping[str, Any],
                         scale: int = 1) -> list[tuple[np.ndarray, str]]:
        out = []
        for image, centres, valid, found in zip(images, batch["centres"], batch["valid"], preds["centres"]):
            truth = centres[valid > 0].cpu().numpy()
            picture = draw_keypoints(image, truth, found.numpy(), scale=scale, links=False)
            out.append((picture, f"{len(truth)} blobs, {len(found)} found"))
        return out
