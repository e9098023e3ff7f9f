"""Prediction regions on new images (``predict.py``): each point's calibrated region (hrexp.conformal) from the
checkpoint's calibration file, a review flag where the region is larger than the user allows, and a flag on
images unlike any the regions were calibrated on (a mean heatmap peak below every calibration image's)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hrexp.conformal.calibration import Calibration, calibration_path
from hrexp.errors import ConfigError

COLUMNS = ("region_major", "region_minor", "region_angle", "region_area", "review")


@dataclass
class PointRegions:
    """The regions predict.py writes: ``shape`` at ``level`` from ``calibration``; ``review_px``: flag points whose
    region reaches farther than this (its major semi-axis, original px; None: no flag); ``spacing``: mm per px of
    the inputs (the CSV then also gives the semi-axes in mm)."""

    calibration: Calibration
    level: float
    shape: str
    file: Path
    review_px: float | None = None
    spacing: float | None = None

    def landmark_mismatch(self, names: Any) -> str | None:
        """Why this calibration does not fit a checkpoint whose landmarks are ``names``; None where it fits."""
        mine = list(self.calibration.keypoint_names)
        if mine == list(names):
            return None
        return f"calibrated for other landmarks ({len(mine)}) than this checkpoint's ({len(list(names))})"

    def of(self, covariances: np.ndarray | None, count: int) -> dict[str, np.ndarray]:
        """``[N, K]`` semi-axes (px), angle (degrees), area (px^2) and review flags of N samples' regions
        (``covariances [N, K, 2, 2]``, original px^2; the radius shape needs none)."""
        if self.shape != "radius" and covariances is None:
            raise ConfigError(f"conformal.shape={self.shape}: this checkpoint's codec gives no per-point covariance; "
                              "use conformal.shape=radius")
        k = len(self.calibration.keypoint_names)
        regions = self.calibration.regions(self.shape, self.level, covariances)
        out = {key: np.broadcast_to(np.asarray(v, np.float64), (count, k)) for key, v in regions.items()}
        # a point without a region (a flat heatmap: no covariance) is one to review, whatever the size allowed
        unknown = ~np.isfinite(out["major"]) & ~np.isinf(out["major"])
        too_large = (out["major"] > self.review_px) if self.review_px is not None else np.zeros((count, k), bool)
        out["review"] = too_large | unknown
        return out

    def unusual(self, scores: np.ndarray) -> bool:
        """Whether an image's mean peak ``scores [K]`` is below every calibration image's."""
        stats = self.calibration.source.get("image_mean_score")
        return bool(stats) and float(np.nanmean(scores)) < float(stats["min"])

    def describe(self) -> dict[str, Any]:
        return {"calibration": str(self.file), "shape": self.shape, "level": self.level, "review_px": self.review_px,
                "spacing_mm_per_px": self.spacing, "calibrated_on": self.calibration.source}


def point_regions(value: Any, ckpt_path: Path) -> PointRegions | None:
    """predict.yaml's ``conformal`` (see there) -> the regions to write, or None.

    Raises:
        ConfigError: an unknown key, a calibration file that is missing (where one was named) or bad, a level or
            shape it does not hold, a bad review size or spacing; naming the option.
    """
    given = dict(value or {})
    known = {"calibration", "level", "shape", "review_px", "spacing"}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"conformal.{unknown[0]}: unknown option; expected one of {', '.join(sorted(known))}")
    source = given.get("calibration", "auto")
    if source is None:
        return None
    if source == "auto":
        file = calibration_path(ckpt_path)
        if not file.is_file():
            return None
    else:
        file = Path(str(source)).expanduser()
    calibration = Calibration.load(file)
    level, shape = float(given.get("level", 0.95)), str(given.get("shape", "heatmap"))
    calibration.threshold(shape, level)  # a shape or level the file does not hold: refused now, naming them
    for option in ("review_px", "spacing"):
        number = given.get(option)
        if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float)) or number <= 0):
            raise ConfigError(f"conformal.{option}={number!r}: expected a positive number or null")
    review = given.get("review_px")
    spacing = given.get("spacing")
    return PointRegions(calibration, level, shape, file, None if review is None else float(review),
                        None if spacing is None else float(spacing))
