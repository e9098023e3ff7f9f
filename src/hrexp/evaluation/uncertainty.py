"""How well an uncertainty ranks errors: Spearman's rank correlation, and the error of the least
confident share against the rest. Used for heatmap confidences (peak value, peak width) and for the
spread across the members of a seed ensemble."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr


def rank_against_error(uncertainty: np.ndarray, error: np.ndarray, share: float = 0.1) -> dict[str, float]:
    """Spearman's rho of ``uncertainty`` with ``error`` (positive: more uncertain, larger error), and the mean
    error of the ``share`` most uncertain items against the mean error of the rest.

    Pairs where either value is not finite are left out. With fewer than 3 pairs or a constant input
    the correlation is NaN.

    Returns:
        ``{"n", "spearman", "least_confident_mre", "rest_mre", "ratio"}`` (ratio = least confident / rest).
    """
    uncertainty, error = np.asarray(uncertainty, np.float64).ravel(), np.asarray(error, np.float64).ravel()
    ok = np.isfinite(uncertainty) & np.isfinite(error)
    uncertainty, error = uncertainty[ok], error[ok]
    n = int(ok.sum())
    constant = n < 3 or np.ptp(uncertainty) == 0 or np.ptp(error) == 0
    rho = math.nan if constant else float(spearmanr(uncertainty, error).statistic)
    if n == 0:
        return {"n": 0, "spearman": rho, "least_confident_mre": math.nan, "rest_mre": math.nan, "ratio": math.nan}
    count = max(1, math.ceil(share * n))
    order = np.argsort(-uncertainty, kind="stable")  # most uncertain first
    least, rest = error[order[:count]], error[order[count:]]
    least_mre = float(least.mean())
    rest_mre = float(rest.mean()) if rest.size else math.nan
    ratio = least_mre / rest_mre if rest.size and rest_mre > 0 else math.nan
    return {"n": n, "spearman": rho, "least_confident_mre": least_mre, "rest_mre": rest_mre, "ratio": ratio}
