"""The landmark task: Gaussian heatmaps scored by MRE / SDR in original (and physical) units."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from hrexp.data.landmarks.records import LandmarkSet
from hrexp.metrics.landmark_error import LandmarkError
from hrexp.metrics.mean_shape import mean_shape_baseline
from hrexp.tasks.base import finite_or_none
from hrexp.tasks.heatmap_keypoints import HeatmapKeypointTask

if TYPE_CHECKING:
    from hrexp.run_record import RunRecord

MEAN_SHAPE = "mean_shape_val"


class LandmarkTask(HeatmapKeypointTask):
    """Landmark localisation by heatmap regression (see :class:`HeatmapKeypointTask`).

    Args:
        sdr_radii: Success detection radii in original pixels.
        monitor: Default ``{"metric": "val/mre", "mode": "min"}``.
        head, codec, loss, feature_info, dataset_meta: as :class:`HeatmapKeypointTask`.
        **kwargs: further :class:`HeatmapKeypointTask` options (flip_test, flip_shift, num_keypoints).
    """

    task_name = "landmarks"
    sample_batch_keys = ("keypoints_orig", "visible_orig", "matrix", "spacing")

    def __init__(self, head: Any, codec: Any, loss: nn.Module, feature_info: Sequence[Mapping[str, int]],
                 dataset_meta: Mapping[str, Any], sdr_radii: Sequence[float] = (4, 8, 12, 16, 20, 24),
                 monitor: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(head, codec, loss, feature_info, dataset_meta,
                         monitor=monitor or {"metric": "val/mre", "mode": "min"}, **kwargs)
        self.sdr_radii = list(sdr_radii)
        self.init_metrics(lambda: LandmarkError(self.num_keypoints, self.sdr_radii))

    def update_metrics(self, stage: str, preds: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        self.metrics[stage].update(preds["keypoints"], batch["keypoints_orig"], batch["visible_orig"], batch["spacing"])

    # ------------------------------------------------------------------ reports
    def baselines(self, datamodule: Any) -> dict[str, dict[str, float]]:
        """``mean_shape_val``: the training set's mean landmark positions scored on the validation split.

        A model that learned nothing image-specific does about this well. Needs landmark records
        (a landmark datamodule); with other data there is no baseline.
        """
        train, val = datamodule.splits["train"], datamodule.splits["val"]
        if not (isinstance(train, LandmarkSet) and isinstance(val, LandmarkSet)):
            return {}
        return {MEAN_SHAPE: mean_shape_baseline(train, val, radii=self.sdr_radii)}

    def summary_rows(self, record: "RunRecord") -> list[tuple[str, str]]:
        """The mean-shape baseline's val/mre and the best val/mre over it (< 1: the model beat it)."""
        baseline = (record.baselines.get(MEAN_SHAPE) or {}).get("mre")
        if baseline is None or not math.isfinite(baseline):
            return []
        rows = [("mean-shape baseline val/mre", f"{baseline:.4g}")]
        best = record.best.get("val/mre")
        if best is not None and best.value is not None:
            # A baseline error of 0 (landmarks at the same place in every image; under 1e-6 px is rounding): no ratio.
            ratio = (f"{best.value / baseline:.4g}" if baseline > 1e-6 else
                     "undefined (the mean-shape baseline error is 0: the landmarks never move)")
            rows.append(("best val/mre / baseline", ratio))
        return rows

    def per_item_tables(self, stage: str) -> dict[str, list[dict[str, Any]]]:
        """``per_landmark``: each landmark's mean radial error in px and mm (empty cells: never seen)."""
        errors = {k: v.detach().cpu() for k, v in self.metrics[stage].per_landmark().items()}
        rows = []
        for i, name in enumerate(self.keypoint_names):
            rows.append({"landmark": name, **{k: finite_or_none(float(v[i])) for k, v in errors.items()}})
        return {"per_landmark": rows}

    def report(self, samples: Sequence[Mapping[str, Any]], context: Any) -> list[Any]:
        """Error tables, SDR curve, box plot, galleries, confidences, Cobb angles (AASCE layout), heatmaps and
        feature maps on request (:mod:`hrexp.evaluation.landmark_report`)."""
        from hrexp.evaluation.landmark_report import landmark_report

        return landmark_report(self, samples, context)

    def score_samples(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """MRE / SDR of the samples' ``keypoints`` with a fresh :class:`LandmarkError` (an ensemble's mean)."""
        metric = LandmarkError(self.num_keypoints, self.sdr_radii)

        def stack(key: str) -> torch.Tensor:
            return torch.as_tensor(np.stack([np.asarray(s[key], np.float64) for s in samples]))

        metric.update(stack("keypoints"), stack("keypoints_orig"), stack("visible_orig"), stack("spacing"))
        return {name: float(value) for name, value in metric.compute().items() if not math.isnan(float(value))}
