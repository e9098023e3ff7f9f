"""The mean-shape baseline: predict the training set's mean landmark positions for every image.

A model that has learned nothing image-specific does about this well, so a trained model's MRE is
reported against it. Positions are averaged in normalised image coordinates (``(x + 0.5) / width``)
so images of different sizes share one mean shape, then scaled to each evaluated image.
"""

from __future__ import annotations

import numpy as np
import torch

from hrexp.data.landmarks.records import LandmarkSet
from hrexp.metrics.landmark_error import LandmarkError


def _size(record) -> tuple[int, int]:
    if record.size is None:
        raise ValueError(f"{record.source}: image size unknown; run data validation first")
    return record.size


def mean_shape(train: LandmarkSet) -> np.ndarray:
    """Mean normalised position ``[K, 2]`` of each landmark over the records where it is visible."""
    total = np.zeros((len(train.names), 2))
    count = np.zeros((len(train.names), 1))
    for rec in train.records:
        h, w = _size(rec)
        norm = (rec.keypoints + 0.5) / np.array([w, h])
        vis = rec.visible[:, None] & np.isfinite(norm).all(axis=1, keepdims=True)
        total += np.where(vis, norm, 0.0)
        count += vis
    if (count == 0).any():
        missing = [train.names[i] for i in np.flatnonzero(count[:, 0] == 0)]
        raise ValueError(f"{train.source}: landmarks never visible in the training split: {missing[:10]}")
    return total / count


def mean_shape_baseline(train: LandmarkSet, evaluate: LandmarkSet, radii=(4, 8, 12, 16, 20, 24)) -> dict[str, float]:
    """MRE/SDR of the mean-shape prediction on ``evaluate``, computed by the same metric as the model's."""
    shape = mean_shape(train)
    metric = LandmarkError(len(train.names), radii)
    for rec in evaluate.records:
        h, w = _size(rec)
        pred = shape * np.array([w, h]) - 0.5
        target = np.nan_to_num(rec.keypoints)
        spacing = float("nan") if rec.spacing is None else float(rec.spacing)
        metric.update(
            torch.as_tensor(pred, dtype=torch.float64)[None],
            torch.as_tensor(target, dtype=torch.float64)[None],
            torch.as_tensor(rec.visible, dtype=torch.float64)[None],
            torch.tensor([spacing], dtype=torch.float64),
        )
    return {k: float(v) for k, v in metric.compute().items()}
