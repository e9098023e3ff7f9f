"""Split-conformal prediction regions for landmarks (issue 28): a region per predicted point that holds the
truth with a chosen probability, calibrated on held-out images.

A region's shape comes from a nonconformity score ``s`` of each (image, landmark) error ``e = point - truth``:

* ``radius``: ``s = |e|``; the region is a disc of radius ``q``;
* ``heatmap`` / ``ensemble``: ``s = sqrt(e^T S^-1 e)`` with ``S`` the point's own 2x2 covariance (the heatmap
  peak's, or the spread of an ensemble's members); the region is the ellipse ``{x: |x - p|_S <= q}``, whose
  size follows each point's own uncertainty.

Split conformal prediction (Angelopoulos & Bates, "A gentle introduction to conformal prediction", 2021): with
``n`` calibration scores, ``q`` is the ``ceil((n + 1) * level)``-th smallest; a new exchangeable score is then
at most ``q`` with probability at least ``level`` (and below ``level + 1 / (n + 1)``). Per landmark (the
default) each landmark has its own ``q`` from its ``n`` calibration images; pooled, one ``q`` for all.

Uncalibrated regions, reported beside the conformal ones as in Jonkers et al. 2025: the ellipse a Gaussian of
covariance ``S`` would give, ``q = sqrt(-2 ln(1 - level))`` (the chi-square quantile with 2 degrees of freedom).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

SHAPES = ("radius", "heatmap", "ensemble")


def scores(errors: np.ndarray, covariances: np.ndarray | None = None) -> np.ndarray:
    """``[...]`` nonconformity scores of errors ``[..., 2]``: their length, or with ``covariances [..., 2, 2]``
    their Mahalanobis length ``sqrt(e^T S^-1 e)``. NaN where the error or the covariance is not finite or the
    covariance is not positive definite."""
    errors = np.asarray(errors, np.float64)
    if covariances is None:
        return np.linalg.norm(errors, axis=-1)
    cov = np.asarray(covariances, np.float64)
    a, b, c = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 1]
    det = a * c - b * b
    ok = np.isfinite(det) & (det > 0) & (a > 0)
    safe = np.where(ok, det, 1.0)
    x, y = errors[..., 0], errors[..., 1]
    # e^T S^-1 e with S^-1 = [[c, -b], [-b, a]] / det
    squared = (c * x * x - 2 * b * x * y + a * y * y) / safe
    return np.where(ok, np.sqrt(np.maximum(squared, 0.0)), np.nan)


def conformal_quantile(values: np.ndarray, level: float) -> float:
    """The split-conformal threshold of ``level`` from calibration ``values`` (non-finite ones left out): the
    ``ceil((n + 1) * level)``-th smallest, or infinity when that is beyond ``n`` (too few to promise it)."""
    if not 0 < level < 1:
        raise ValueError(f"coverage level {level}: expected a number between 0 and 1")
    v = np.sort(np.asarray(values, np.float64).ravel())
    v = v[np.isfinite(v)]
    rank = math.ceil((v.size + 1) * level)
    return float(v[rank - 1]) if 1 <= rank <= v.size else math.inf


def calibrate(calibration_scores: np.ndarray, levels: Sequence[float], per_landmark: bool = True) -> np.ndarray:
    """``[L, K]`` thresholds, one per level and landmark, from scores ``[N, K]`` of N calibration images (pooled:
    every landmark gets the threshold of all N x K scores)."""
    s = np.asarray(calibration_scores, np.float64)
    if s.ndim != 2:
        raise ValueError(f"calibration scores: expected [images, landmarks], got shape {s.shape}")
    k = s.shape[1]
    if per_landmark:
        return np.array([[conformal_quantile(s[:, j], level) for j in range(k)] for level in levels])
    return np.array([[conformal_quantile(s, level)] * k for level in levels])


def gaussian_threshold(level: float) -> float:
    """The Mahalanobis radius holding ``level`` of a 2-D Gaussian: ``sqrt(-2 ln(1 - level))``."""
    if not 0 < level < 1:
        raise ValueError(f"coverage level {level}: expected a number between 0 and 1")
    return math.sqrt(-2.0 * math.log1p(-level))


def coverage(test_scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``[L, K]``: the share of each landmark's finite test scores ``[N, K]`` within its threshold ``[L, K]``."""
    s = np.asarray(test_scores, np.float64)
    t = np.asarray(thresholds, np.float64)
    seen = np.isfinite(s)
    inside = (s[None] <= t[:, None, :]) & seen[None]
    counts = seen.sum(0)
    return np.where(counts > 0, inside.sum(1) / np.maximum(counts, 1), np.nan)


def ellipses(thresholds: np.ndarray, covariances: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The regions' geometry for thresholds ``[...]`` (broadcast against ``covariances [..., 2, 2]``; None: discs
    of radius ``threshold``): semi-axes ``major >= minor``, the major axis's ``angle`` in degrees from the x axis
    (towards +y, image rows down), and ``area`` (pi * major * minor); NaN where a covariance is not positive
    definite, infinite where a threshold is. Computed by :func:`ellipse_axes` (the exported graph's too)."""
    q = np.asarray(thresholds, np.float64)
    if covariances is None:
        return {"major": q, "minor": q, "angle": np.zeros_like(q), "area": math.pi * q * q}
    import torch

    cov = torch.from_numpy(np.ascontiguousarray(covariances, np.float64))
    major, minor, angle = (t.numpy() for t in ellipse_axes(torch.from_numpy(q), cov))
    return {"major": major, "minor": minor, "angle": angle, "area": math.pi * major * minor}


def ellipse_axes(thresholds, covariances):
    """Torch tensors ``(major, minor, angle)`` of the ellipses ``{e: sqrt(e^T S^-1 e) <= q}``: thresholds ``q``
    broadcast against covariances ``S [..., 2, 2]``; the angle in degrees. Plain tensor code, so that the ONNX
    export traces it (closed-form 2x2 eigenvalues; ``atan2`` exports)."""
    import torch

    a, b, c = covariances[..., 0, 0], covariances[..., 0, 1], covariances[..., 1, 1]
    half_trace, root = (a + c) / 2, torch.sqrt(((a - c) / 2) ** 2 + b * b)
    big, small = half_trace + root, (half_trace - root).clamp(min=0.0)
    angle = torch.rad2deg(0.5 * torch.atan2(2 * b, a - c))
    q = torch.as_tensor(thresholds, dtype=covariances.dtype)
    infinite = torch.isinf(q)  # too few calibration images for the level: the whole plane
    finite_q = torch.where(infinite, torch.zeros_like(q), q)
    major = torch.where(infinite, q, finite_q * torch.sqrt(big))
    minor = torch.where(infinite, q, finite_q * torch.sqrt(small))
    # a covariance that is not positive definite (a flat map) has no region: NaN, as its score
    det = a * c - b * b
    defined = torch.isfinite(det) & (det > 0)
    nan = torch.full_like(det, math.nan)
    return torch.where(defined, major, nan), torch.where(defined, minor, nan), torch.where(defined, angle, nan)


def contains(points: np.ndarray, centres: np.ndarray, thresholds: np.ndarray,
             covariances: np.ndarray | None = None) -> np.ndarray:
    """Whether each of ``points [..., 2]`` lies in the region around ``centres [..., 2]``."""
    return scores(np.asarray(points) - np.asarray(centres), covariances) <= np.asarray(thresholds)
