"""Prediction regions measured on evaluated samples (issue 28): for each region shape and level, calibrated
(:mod:`hrexp.conformal`) or not (the Gaussian ellipse of the heatmap's or the ensemble's own covariance), how
often it holds the truth, how large it is and how its size ranks the error."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from hrexp.conformal.calibration import COVARIANCE_KEYS, Calibration, available_shapes, errors_of, stack
from hrexp.conformal.regions import coverage, ellipses, gaussian_threshold, scores
from hrexp.evaluation.uncertainty import rank_against_error
from hrexp.reports.eval_plots import reliability_plot
from hrexp.reports.html_report import Figure, Section, TableBlock

# the levels of the report's reliability plot (a calibration is fitted at these and at the configured ones)
RELIABILITY_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def spacing_of(samples: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
    """``[N]`` mm per px of each sample where every sample has a finite one, else None (areas in px^2)."""
    values = [s.get("spacing") for s in samples]
    if not values or any(v is None for v in values):
        return None
    spacing = np.asarray(values, np.float64).reshape(len(values))
    return spacing if np.isfinite(spacing).all() else None


def assess(samples: Sequence[Mapping[str, Any]], calibration: Calibration | None, levels: Sequence[float],
           spacing: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Regions measured on ``samples`` (not those they were calibrated on): per shape, level and kind
    (``conformal`` from ``calibration``; ``uncalibrated``: the Gaussian ellipse of the heatmap's or the
    ensemble's own covariance), the empirical coverage overall and per landmark, the mean area (mm^2 with a
    ``spacing`` [N] in mm per px, else px^2) and Spearman's rho between a region's area and its error."""
    errors = errors_of(samples)
    distance = np.linalg.norm(errors, axis=-1)
    rows = []
    kinds = []
    if calibration is not None:
        kinds += [("conformal", shape) for shape in calibration.thresholds]
    kinds += [("uncalibrated", shape) for shape in available_shapes(samples, ("heatmap", "ensemble"))]
    area_unit = 1.0 if spacing is None else np.asarray(spacing, np.float64)[:, None] ** 2
    for kind, shape in kinds:
        key = COVARIANCE_KEYS[shape]
        cov = None if key is None else stack(samples, key)
        s = scores(errors, cov)
        for level in levels:
            if kind == "conformal":
                t = calibration.threshold(shape, level)
            else:
                t = np.full(errors.shape[1], gaussian_threshold(level))
            per = coverage(s, t[None])[0]
            area = ellipses(t, cov)["area"] * area_unit
            area = np.broadcast_to(area, distance.shape)
            seen = np.isfinite(s)
            ranked = rank_against_error(area[seen], distance[seen])
            rows.append({"kind": kind, "shape": shape, "level": float(level),
                         "coverage": float((s[seen] <= np.broadcast_to(t, s.shape)[seen]).mean()) if seen.any() else math.nan,
                         "mean_area": float(area[seen].mean()) if seen.any() else math.nan,
                         "area_unit": "px^2" if spacing is None else "mm^2",
                         "spearman_area_error": ranked["spearman"], "points": int(seen.sum()),
                         "per_landmark_coverage": [float(v) for v in per]})
    return rows


def region_section(samples: Sequence[Mapping[str, Any]], calibration: Calibration, levels: Sequence[float],
                   keypoint_names: Sequence[str], out_dir: Any, spacing: np.ndarray | None,
                   facts: dict[str, Any], image_names: Sequence[str] | None = None) -> Section:
    """The report's "Prediction regions": coverage, size and ranking per shape and level (``regions.csv``), the
    least certain images first (``least_certain.csv``), per-landmark coverage at the highest level
    (``region_landmarks.csv``), and the reliability plot (nominal against empirical coverage at
    :data:`RELIABILITY_LEVELS`) of every shape, calibrated or not."""
    from hrexp.evaluation.tables import write_table_csv

    rows = assess(samples, calibration, levels, spacing)
    table = [{k: v for k, v in r.items() if k != "per_landmark_coverage"} for r in rows]
    write_table_csv(out_dir / "regions.csv", table)
    top = max(levels)
    landmark_rows = [{"landmark": name, **{f"{r['kind']} {r['shape']}": r["per_landmark_coverage"][k]
                                           for r in rows if r["level"] == top}}
                     for k, name in enumerate(keypoint_names)]
    write_table_csv(out_dir / "region_landmarks.csv", landmark_rows)
    grid = [l for l in RELIABILITY_LEVELS if any(math.isclose(l, c) for c in calibration.levels)]
    curves = {}
    for r in assess(samples, calibration, grid, spacing):
        nominal, empirical = curves.setdefault(f"{r['kind']} {r['shape']}", ([], []))
        nominal.append(r["level"])
        empirical.append(r["coverage"])
    plot = reliability_plot(curves, out_dir / "reliability.png")
    facts["regions"] = {"calibration": calibration.source, "rows": table}
    unit = "mm^2" if spacing is not None else "px^2"
    text = (f"Regions that should hold the truth with the nominal probability: split-conformal (calibrated on "
            f"{calibration.source.get('split', 'held-out')} images, {calibration.source.get('images', '?')} of them; "
            f"{'one threshold per landmark' if calibration.per_landmark else 'one threshold for all landmarks'}) "
            "and, beside them, the uncalibrated Gaussian ellipses of the heatmap's or the ensemble's own covariance. "
            f"Coverage: the share of test points inside their region; area in {unit}; Spearman's rho of a region's "
            "area with its error (does a larger region mean a less certain point?). The galleries draw each "
            f"prediction's {max(levels):g} region in light blue; the least certain images (largest mean region) "
            "are listed first.")
    shape = region_shape(calibration, samples)
    names = [str(s.get("image", s["index"])) for s in samples] if image_names is None else list(image_names)
    least = least_certain_rows(samples, calibration, shape, top, names)
    write_table_csv(out_dir / "least_certain.csv", least)
    facts["regions"]["least_certain"] = [r["image"] for r in least]
    return Section("Prediction regions", text=text,
                   tables=[TableBlock("Coverage and size", table, csv="regions.csv", max_rows=None),
                           TableBlock(f"Least certain images first (mean {top:g} {shape} region)", least,
                                      csv="least_certain.csv", max_rows=None),
                           TableBlock(f"Coverage per landmark at {top:g}", landmark_rows, csv="region_landmarks.csv",
                                      max_rows=None)],
                   figures=[Figure(plot, "Reliability: nominal against empirical coverage; a kept promise lies on "
                                         "the diagonal.")])


REGION_COLOUR = (0, 160, 255)  # RGB: a light blue outline around each prediction


def region_shape(calibration: Calibration, samples: Sequence[Mapping[str, Any]]) -> str:
    """The shape the report draws and ranks by: the heatmap's ellipses where the calibration and samples have
    them, else the ensemble's, else the discs."""
    for shape in ("heatmap", "ensemble"):
        if shape in calibration.thresholds and shape in available_shapes(samples, (shape,)):
            return shape
    return "radius"


def sample_regions(calibration: Calibration, shape: str, level: float,
                   samples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """``[N, K]`` every sample's regions (original px): semi-axes, angle, area."""
    key = COVARIANCE_KEYS[shape]
    return ellipses(calibration.threshold(shape, level)[None].repeat(len(samples), 0),
                    None if key is None else stack(samples, key))


def least_certain_rows(samples: Sequence[Mapping[str, Any]], calibration: Calibration, shape: str, level: float,
                       names: Sequence[str], count: int = 10) -> list[dict[str, Any]]:
    """The ``count`` images with the largest mean region first: a reader checks these before the others."""
    regions = sample_regions(calibration, shape, level, samples)
    distance = np.linalg.norm(errors_of(samples), axis=-1)
    mean_area = np.nanmean(regions["area"], axis=1)
    order = np.argsort(-mean_area, kind="stable")[:count]
    rows = []
    for i in order:
        worst = int(np.nanargmax(regions["major"][i]))
        rows.append({"image": names[i], "mean_region_area_px2": float(mean_area[i]),
                     "largest_region": f"landmark {worst}: {regions['major'][i, worst]:.1f} px",
                     "mre_px": float(np.nanmean(distance[i])) if np.isfinite(distance[i]).any() else math.nan})
    return rows


def region_decorator(calibration: Calibration, shape: str, level: float, samples: Sequence[Mapping[str, Any]]):
    """A gallery ``decorate(picture, batch, i, scale)`` drawing each prediction's region (the original-px ellipse
    mapped into the network input by the sample's affine: S_in = A S A^T) around the red dot."""
    import cv2

    by_index = {int(s["index"]): s for s in samples}
    threshold = calibration.threshold(shape, level)
    key = COVARIANCE_KEYS[shape]

    def decorate(picture: np.ndarray, batch: Mapping[str, Any], i: int, scale: int) -> np.ndarray:
        sample = by_index[int(batch["index"][i])]
        matrix = np.asarray(sample["matrix"], np.float64)
        linear = matrix[:2, :2]
        points = np.asarray(sample["keypoints"], np.float64) @ linear.T + matrix[:2, 2]
        cov = np.eye(2)[None].repeat(len(points), 0) if key is None else np.asarray(sample[key], np.float64)
        cov_in = linear @ cov @ linear.T
        geometry = ellipses(threshold, cov_in)
        out = np.ascontiguousarray(picture)
        for k, (x, y) in enumerate(points):
            major, minor = float(geometry["major"][k]), float(geometry["minor"][k])
            if not (np.isfinite([x, y, major, minor]).all()):
                continue
            centre = (int(round(((x + 0.5) * scale - 0.5) * 16)), int(round(((y + 0.5) * scale - 0.5) * 16)))
            axes = (max(1, int(round(major * scale * 16))), max(1, int(round(minor * scale * 16))))
            cv2.ellipse(out, centre, axes, float(geometry["angle"][k]), 0, 360, REGION_COLOUR, 1, cv2.LINE_AA, 4)
        return out

    return decorate
