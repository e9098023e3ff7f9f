"""Split-conformal landmark regions (hrexp.conformal.regions): the threshold's rank by hand, the ellipse geometry
by hand, and the promise itself on errors drawn from known distributions: calibrated regions cover within the
binomial tolerance of their level, swapping calibration and test changes nothing systematic, and regions that
were not calibrated miss."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hrexp.conformal.regions import (calibrate, conformal_quantile, contains, coverage, ellipses, gaussian_threshold,
                                     scores)

LEVELS = (0.9, 0.95)


def test_the_threshold_is_the_ceil_n_plus_one_times_level_th_smallest():
    values = np.arange(1.0, 20.0)  # n = 19
    assert conformal_quantile(values, 0.9) == 18.0  # ceil(20 * 0.9) = 18
    assert conformal_quantile(values, 0.95) == 19.0  # ceil(20 * 0.95) = 19
    assert conformal_quantile(values[::-1], 0.5) == 10.0  # ceil(10) = 10, order does not matter
    assert conformal_quantile(values[:9], 0.95) == math.inf  # ceil(10 * 0.95) = 10 > 9: no promise possible
    assert conformal_quantile(np.r_[values, np.nan], 0.9) == 18.0  # NaN left out
    with pytest.raises(ValueError, match="coverage level 1.5"):
        conformal_quantile(values, 1.5)


def test_scores_and_ellipses_by_hand():
    cov = np.array([[4.0, 0.0], [0.0, 1.0]])
    assert scores(np.array([3.0, 4.0])) == 5.0
    assert scores(np.array([2.0, 0.0]), cov) == pytest.approx(1.0)  # 2 / sqrt(4)
    assert scores(np.array([0.0, 2.0]), cov) == pytest.approx(2.0)
    assert math.isnan(scores(np.array([1.0, 1.0]), np.zeros((2, 2))))  # not positive definite
    geometry = ellipses(np.array(2.0), cov)
    assert (geometry["major"], geometry["minor"], geometry["angle"]) == pytest.approx((4.0, 2.0, 0.0))
    assert geometry["area"] == pytest.approx(math.pi * 8)
    # the same ellipse turned by 30 degrees: R diag(4, 1) R^T
    t = math.radians(30)
    rotation = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    turned = ellipses(np.array(2.0), rotation @ cov @ rotation.T)
    assert (turned["major"], turned["minor"], turned["angle"]) == pytest.approx((4.0, 2.0, 30.0))
    # the tip of the major axis is on the boundary, just beyond it outside
    tip = 4.0 * np.array([math.cos(t), math.sin(t)])
    assert contains(tip * 0.999, np.zeros(2), 2.0, rotation @ cov @ rotation.T)
    assert not contains(tip * 1.001, np.zeros(2), 2.0, rotation @ cov @ rotation.T)
    assert ellipses(np.array(3.0))["area"] == pytest.approx(9 * math.pi)  # a disc
    assert gaussian_threshold(0.95) == pytest.approx(math.sqrt(5.991464547), rel=1e-6)  # chi2(2) 95 %


def _errors(rng, n: int, k: int):
    """Errors with a known law: landmark j's covariance is its own (scales 1..k px, anisotropic, turned), and
    each image scales it by a factor the model 'knows' (the predicted covariance)."""
    base = []
    for j in range(k):
        t = rng.uniform(0, math.pi)
        rotation = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        base.append(rotation @ np.diag([(1 + j) ** 2, (0.5 + 0.3 * j) ** 2]) @ rotation.T)
    factor = rng.uniform(0.5, 2.0, (n, k))
    cov = factor[..., None, None] ** 2 * np.array(base)[None]
    errors = np.einsum("nkij,nkj->nki", np.linalg.cholesky(cov), rng.standard_normal((n, k, 2)))
    return errors, cov


@pytest.mark.parametrize("shape", ["radius", "ellipse"])
def test_calibrated_regions_cover_within_the_binomial_tolerance(shape):
    rng = np.random.default_rng(0)
    k, n = 5, 4000
    errors, cov = _errors(rng, 2 * n, k)
    s = scores(errors, None if shape == "radius" else cov)
    thresholds = calibrate(s[:n], LEVELS)
    covered = coverage(s[n:], thresholds)
    for level, row in zip(LEVELS, covered):
        # 4 binomial standard deviations per landmark, of the test draw and of the calibration draw together
        tolerance = 4 * math.sqrt(2 * level * (1 - level) / n)
        assert np.all(np.abs(row - level) < tolerance), (shape, level, row)
    if shape == "ellipse":  # the ellipses know each point's uncertainty: smaller than the discs on average
        discs = ellipses(calibrate(scores(errors[:n]), LEVELS))["area"]
        areas = ellipses(thresholds[:, None, :], cov[None, n:])["area"].mean(1)
        assert np.all(areas < 0.8 * discs), (areas, discs)


def test_swapping_calibration_and_test_changes_nothing_systematic():
    rng = np.random.default_rng(1)
    n, k = 3000, 4
    errors, cov = _errors(rng, 2 * n, k)
    s = scores(errors, cov)
    a, b = s[:n], s[n:]
    forward, backward = coverage(b, calibrate(a, LEVELS)), coverage(a, calibrate(b, LEVELS))
    tolerance = 4 * math.sqrt(2 * 0.95 * 0.05 / n)
    assert np.all(np.abs(forward - backward) < 2 * tolerance)
    assert np.allclose(calibrate(a, LEVELS), calibrate(b, LEVELS), rtol=0.1)


def test_regions_that_were_not_calibrated_fail_the_coverage_test():
    """A model whose heatmaps are twice too confident: the Gaussian regions of its covariances miss, the
    conformal ones on the same covariances keep the promise; an ensemble that never saw the bias misses too."""
    rng = np.random.default_rng(2)
    n, k = 4000, 3
    errors, cov = _errors(rng, 2 * n, k)
    overconfident = cov / 4  # standard deviations half the true ones
    naive = np.array([[gaussian_threshold(level)] * k for level in LEVELS])
    s = scores(errors[n:], overconfident[n:])
    missed = coverage(s, naive)
    kept = coverage(s, calibrate(scores(errors[:n], overconfident[:n]), LEVELS))
    for level, low, good in zip(LEVELS, missed, kept):
        tolerance = 4 * math.sqrt(2 * level * (1 - level) / n)
        assert np.all(level - low > 5 * tolerance), (level, low)  # far below the promise
        assert np.all(np.abs(good - level) < tolerance), (level, good)


def test_pooled_thresholds_are_one_for_all_landmarks_and_cover_overall():
    rng = np.random.default_rng(3)
    n, k = 3000, 4
    errors, cov = _errors(rng, 2 * n, k)
    s = scores(errors, cov)
    pooled = calibrate(s[:n], LEVELS, per_landmark=False)
    assert np.all(pooled == pooled[:, :1])
    overall = coverage(s[n:].reshape(-1, 1), pooled[:, :1])
    assert np.all(np.abs(overall[:, 0] - np.array(LEVELS)) < 4 * math.sqrt(0.05 * 0.95 / (n * k)) * 2)
    with pytest.raises(ValueError, match=r"expected \[images, landmarks\]"):
        calibrate(s[:, 0], LEVELS)


def test_a_flat_map_has_no_region_and_too_few_images_give_the_whole_plane():
    geometry = ellipses(np.array([2.0, math.inf]), np.array([np.zeros((2, 2)), np.eye(2)]))
    assert np.isnan(geometry["major"][0]) and np.isnan(geometry["area"][0])  # not positive definite
    assert np.isinf(geometry["major"][1]) and np.isinf(geometry["area"][1])  # threshold infinite
