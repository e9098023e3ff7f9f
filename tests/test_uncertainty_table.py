"""scripts/uncertainty_table.py's measurement, on eval's predictions.csv rows written by the report's own writer
from points whose errors are drawn from a known Gaussian: the per-point covariance columns read back as written,
leave-one-image-out and val-to-test conformal regions cover their level within the binomial tolerance, the
uncalibrated Gaussian ellipse does too when its covariance is the true one and fails when it is too small, and the
ellipse that knows each point's spread is smaller than the disc at the same coverage."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import uncertainty_table as ut  # noqa: E402
from hrexp.evaluation.landmark_report import prediction_rows  # noqa: E402
from hrexp.evaluation.tables import write_table_csv  # noqa: E402


class _Names:
    def image_name(self, index: int) -> str:
        return f"img{index:03d}.png"


def write_predictions(path: Path, n: int, k: int, seed: int, cov_scale: float = 1.0, spacing: float | None = 0.1):
    """``n`` images of ``k`` landmarks; each point's error ~ N(0, S) with its own random S (px^2); the CSV's
    covariance is ``cov_scale * S``. Returns the true errors and covariances."""
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(1.0, 8.0, (n, k, 2))
    angle = rng.uniform(0, np.pi, (n, k))
    c, s = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)
    cov = rot @ (np.eye(2) * sigma[..., None] ** 2) @ np.swapaxes(rot, -1, -2)
    errors = np.einsum("nkij,nkj->nki", np.linalg.cholesky(cov), rng.standard_normal((n, k, 2)))
    truth = rng.uniform(50, 450, (n, k, 2))
    samples = [{"index": i, "keypoints": truth[i] + errors[i], "keypoints_orig": truth[i],
                "visible_orig": np.ones(k), "scores": np.full(k, 0.5), "covariance": cov[i] * cov_scale,
                **({"spacing": np.float32(spacing)} if spacing is not None else {})} for i in range(n)]
    distance = np.linalg.norm(errors, axis=-1)
    write_table_csv(path, prediction_rows(samples, [f"L{j}" for j in range(k)], distance, _Names()))
    return errors, cov


def rows_by(rows, **match):
    return {(r["shape"], r["level"]): r for r in rows if all(r[key] == value for key, value in match.items())}


def binomial_tolerance(level: float, n: int) -> float:
    return 4 * math.sqrt(level * (1 - level) / n)  # four standard errors


def test_points_read_back_as_the_report_wrote_them(tmp_path):
    errors, cov = write_predictions(tmp_path / "predictions.csv", n=5, k=3, seed=0)
    points = ut.read_points(tmp_path / "predictions.csv")
    np.testing.assert_allclose(points["errors"], errors, atol=1e-9)
    np.testing.assert_allclose(points["covariance"], cov, rtol=1e-12)
    assert points["member_covariance"] is None and points["landmarks"] == ["L0", "L1", "L2"]
    np.testing.assert_allclose(points["spacing"], np.float32(0.1))
    assert ut.shapes_of(points) == ["radius", "heatmap"]


def test_leave_one_out_regions_keep_their_promise_and_raw_small_ellipses_do_not(tmp_path):
    n, k = 100, 4  # leave one out calibrates n times: kept small for the fast suite
    write_predictions(tmp_path / "true.csv", n, k, seed=1)
    points = ut.read_points(tmp_path / "true.csv")
    rows, per_landmark = ut.measure("synthetic", "leave one image out", None, points)
    conformal = rows_by(rows, kind="conformal", thresholds="per landmark")
    pooled = rows_by(rows, kind="conformal", thresholds="pooled")
    raw = rows_by(rows, kind="uncalibrated")
    for level in ut.LEVELS:
        for shape in ("radius", "heatmap"):
            for table in (conformal, pooled):
                assert abs(table[shape, level]["coverage"] - level) < binomial_tolerance(level, n * k), (shape, level)
        # the Gaussian ellipse of the true covariance is calibrated already
        assert abs(raw["heatmap", level]["coverage"] - level) < binomial_tolerance(level, n * k)
        # areas in mm^2 (0.1 mm per px); the ellipse that knows each point's spread is the smaller region
        assert conformal["radius", level]["area_unit"] == "mm^2"
        assert conformal["heatmap", level]["area_vs_radius"] < 0.8
        assert conformal["heatmap", level]["spearman_area_error"] > 0.2
    assert len(per_landmark) == k and all(0.85 < r["conformal heatmap"] <= 1 for r in per_landmark)
    # a region computed without calibration from a covariance that is too small fails the coverage test
    write_predictions(tmp_path / "small.csv", n, k, seed=1, cov_scale=0.25)
    small = ut.read_points(tmp_path / "small.csv")
    rows, _ = ut.measure("synthetic", "leave one image out", None, small)
    raw, conformal = rows_by(rows, kind="uncalibrated"), rows_by(rows, kind="conformal", thresholds="per landmark")
    for level in ut.LEVELS:
        assert level - raw["heatmap", level]["coverage"] > binomial_tolerance(level, n * k)
        assert abs(conformal["heatmap", level]["coverage"] - level) < binomial_tolerance(level, n * k)
    notes = ut.goals(rows, "synthetic")
    assert "all within 2 points" in notes[0] and "heatmap ellipse" in notes[1]


def test_val_to_test_regions_and_swapping_the_splits(tmp_path):
    n, k = 200, 3
    write_predictions(tmp_path / "a.csv", n, k, seed=2)
    write_predictions(tmp_path / "b.csv", n, k, seed=3)
    a, b = ut.read_points(tmp_path / "a.csv"), ut.read_points(tmp_path / "b.csv")
    forward = rows_by(ut.measure("x", "val split", a, b)[0], kind="conformal", thresholds="per landmark")
    backward = rows_by(ut.measure("x", "val split", b, a)[0], kind="conformal", thresholds="per landmark")
    for key, row in forward.items():
        level = key[1]
        # exchanging calibration and test changes nothing systematic: both cover, within the tolerance of each other
        assert abs(row["coverage"] - level) < binomial_tolerance(level, n * k)
        assert abs(row["coverage"] - backward[key]["coverage"]) < 2 * binomial_tolerance(level, n * k)


def test_too_few_calibration_images_give_infinite_regions_that_hold_every_point(tmp_path):
    write_predictions(tmp_path / "few.csv", n=10, k=3, seed=4, spacing=None)
    points = ut.read_points(tmp_path / "few.csv")
    rows, _ = ut.measure("few", "leave one image out", None, points)
    row = rows_by(rows, kind="conformal", thresholds="per landmark")["radius", 0.95]
    # 9 calibration images per landmark cannot promise 95 % (ceil(10 * 0.95) = 10 > 9): the whole plane
    assert row["coverage"] == 1.0 and math.isinf(row["mean_area"]) and row["area_unit"] == "px^2"
    # pooled, 27 scores can (ceil(28 * 0.95) = 27): a finite threshold
    assert math.isfinite(rows_by(rows, kind="conformal", thresholds="pooled")["radius", 0.95]["mean_area"])


def test_nothing_to_measure_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="give --ceph and/or --aasce"):
        ut.main(["--out", str(tmp_path), "--smoke"])
