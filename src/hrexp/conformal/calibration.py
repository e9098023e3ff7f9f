"""A model's conformal calibration: thresholds per region shape, level and landmark, fitted on held-out images
and kept in a JSON file beside the checkpoint (``<checkpoint>.conformal.json``), so that ``predict.py`` draws
calibrated regions without any data. :func:`fit` makes one from evaluated samples
(``hrexp.evaluation.regions`` measures regions on others)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hrexp.conformal.regions import SHAPES, calibrate, ellipses, scores
from hrexp.errors import ConfigError

SUFFIX = ".conformal.json"
FORMAT = 1
# which sample key holds each shape's covariance (original px^2); radius needs none
COVARIANCE_KEYS = {"radius": None, "heatmap": "covariance", "ensemble": "member_covariance"}


def calibration_path(checkpoint: str | Path) -> Path:
    """Where a checkpoint's calibration lives: beside it, ``<file name>.conformal.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + SUFFIX)


@dataclass
class Calibration:
    """Thresholds ``[L, K]`` per shape (``radius``: original px; ellipses: Mahalanobis units), for ``levels``
    and the landmarks ``keypoint_names``; ``source`` says what they were fitted on."""

    levels: list[float]
    keypoint_names: list[str]
    thresholds: dict[str, np.ndarray]
    per_landmark: bool = True
    source: dict[str, Any] = field(default_factory=dict)

    def threshold(self, shape: str, level: float) -> np.ndarray:
        """``[K]`` thresholds of ``shape`` at ``level`` (one of :attr:`levels`)."""
        if shape not in self.thresholds:
            raise ConfigError(f"conformal shape {shape!r}: this calibration has {sorted(self.thresholds)}")
        matches = [i for i, l in enumerate(self.levels) if math.isclose(l, level, abs_tol=1e-9)]
        if not matches:
            raise ConfigError(f"conformal level {level}: this calibration has {self.levels}")
        return self.thresholds[shape][matches[0]]

    def regions(self, shape: str, level: float, covariances: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``[..., K]`` region geometry (semi-axes ``major`` / ``minor`` in original px, ``angle`` in degrees,
        ``area`` in px^2) of points whose covariances are ``[..., K, 2, 2]`` (radius: None)."""
        return ellipses(self.threshold(shape, level), covariances if shape != "radius" else None)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "levels": list(self.levels), "keypoint_names": list(self.keypoint_names),
                "per_landmark": self.per_landmark, "source": self.source,
                "thresholds": {shape: {f"{level:g}": [None if not math.isfinite(v) else float(v) for v in row]
                                       for level, row in zip(self.levels, t)} for shape, t in self.thresholds.items()}}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """Read a calibration file; a missing file or a field that is not what it should be is a ConfigError
        naming the file and the field."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"conformal calibration {path}: no such file (eval.py ckpt_path=<checkpoint> "
                              "calibrate=val writes it beside the checkpoint)")
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise ConfigError(f"conformal calibration {path}: not JSON ({err})") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ConfigError(f"conformal calibration {path}: field 'format': expected {FORMAT}, got "
                              f"{data.get('format') if isinstance(data, dict) else type(data).__name__}")
        levels, names = data.get("levels"), data.get("keypoint_names")
        if not (isinstance(levels, list) and levels and all(isinstance(l, (int, float)) and 0 < l < 1 for l in levels)):
            raise ConfigError(f"conformal calibration {path}: field 'levels': expected coverage levels in (0, 1), "
                              f"got {levels!r}")
        if not (isinstance(names, list) and names):
            raise ConfigError(f"conformal calibration {path}: field 'keypoint_names': expected the landmarks' names")
        thresholds = {}
        for shape, by_level in (data.get("thresholds") or {}).items():
            if shape not in SHAPES:
                raise ConfigError(f"conformal calibration {path}: field 'thresholds.{shape}': expected a shape among "
                                  f"{list(SHAPES)}")
            rows = [by_level.get(f"{float(level):g}") for level in levels]
            if any(not isinstance(r, list) or len(r) != len(names) for r in rows):
                raise ConfigError(f"conformal calibration {path}: field 'thresholds.{shape}': expected one list of "
                                  f"{len(names)} thresholds per level {levels}")
            thresholds[shape] = np.array([[math.inf if v is None else float(v) for v in r] for r in rows])
        if not thresholds:
            raise ConfigError(f"conformal calibration {path}: field 'thresholds': no region shape")
        return cls([float(l) for l in levels], [str(n) for n in names], thresholds,
                   bool(data.get("per_landmark", True)), dict(data.get("source") or {}))


def stack(samples: Sequence[Mapping[str, Any]], key: str) -> np.ndarray | None:
    """``[N, ...]`` one sample key of every sample, or None where a sample lacks it."""
    if not samples or any(key not in s for s in samples):
        return None
    return np.stack([np.asarray(s[key], np.float64) for s in samples])


def errors_of(samples: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """``[N, K, 2]`` prediction - truth in original px, NaN where the landmark is not visible."""
    points, truth, visible = (stack(samples, k) for k in ("keypoints", "keypoints_orig", "visible_orig"))
    errors = points - truth
    return np.where(visible[..., None] > 0, errors, np.nan)


def available_shapes(samples: Sequence[Mapping[str, Any]], shapes: Sequence[str] = SHAPES) -> list[str]:
    """The shapes of ``shapes`` the samples carry what they need for (heatmap: covariances; ensemble: members)."""
    return [s for s in shapes if COVARIANCE_KEYS[s] is None or stack(samples, COVARIANCE_KEYS[s]) is not None]


def fit(samples: Sequence[Mapping[str, Any]], keypoint_names: Sequence[str], levels: Sequence[float],
        shapes: Sequence[str] = SHAPES, per_landmark: bool = True, source: Mapping[str, Any] | None = None) -> Calibration:
    """Calibrate every available shape of ``shapes`` on ``samples`` (each with keypoints, truth and, for the
    ellipses, covariances): the split-conformal thresholds per level and landmark."""
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise ConfigError(f"conformal.shapes={list(shapes)}: unknown {unknown}; expected some of {list(SHAPES)}")
    errors = errors_of(samples)
    thresholds = {}
    for shape in available_shapes(samples, shapes):
        key = COVARIANCE_KEYS[shape]
        thresholds[shape] = calibrate(scores(errors, None if key is None else stack(samples, key)), levels, per_landmark)
    record = {"images": len(samples), **dict(source or {})}
    peaks = stack(samples, "scores")
    if peaks is not None:  # what a usual image's mean peak is: predict.py flags images below all of them
        means = np.nanmean(peaks, axis=1)
        record["image_mean_score"] = {"min": float(np.nanmin(means)), "median": float(np.nanmedian(means))}
    return Calibration([float(l) for l in levels], list(keypoint_names), thresholds, per_landmark, record)
