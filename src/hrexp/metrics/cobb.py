"""Cobb angles from vertebra corners, computed the way the AASCE 2019 challenge computed its ground truth.

Data and method: the AASCE challenge (Accurate Automated Spinal Curvature Estimation, MICCAI 2019) on
SpineWeb dataset 16 (Wu, Bailey, Rasoulinejad and Li, "Automatic landmark estimation for adolescent
idiopathic scoliosis assessment using BoostNet", MICCAI 2017): 17 vertebrae (T1-L5), 4 corners each
(top-left, top-right, bottom-left, bottom-right), and 3 Cobb angles per image in ``angles.csv``. The
challenge derived the angles from the corners with its evaluation script; this module is written from
that procedure:

1. Each vertebra's direction runs from the midpoint of its left edge (top-left, bottom-left) to the
   midpoint of its right edge.
2. The angle between every two vertebrae is the arccos of their directions' cosine, 0-180 degrees (the
   script does not fold angles above 90 back; a few ground-truth angles are above 90).
3. The largest angle is the first Cobb angle; its two vertebrae, ``upper`` and ``lower``, end the main
   curve.
4. The spine is a single (C) curve when the endplate midpoints all lie on one side of the straight line
   from the first to the last one (offsets measured in coordinates normalised by that line's x and y
   extent); otherwise it is S-shaped (also when that extent is zero in x or y, as in the script).
5. C: the second angle is between the top vertebra and ``upper``, the third between the bottom vertebra
   and ``lower``. S with the main curve in the upper half of the image (the bottom-endplate midpoints of
   ``upper`` and ``lower`` average above the middle row): the largest angle between ``upper`` and a
   vertebra above it, and between ``lower`` and a vertebra below it. S in the lower half: the largest
   angle between ``upper`` and a vertebra above it (at vertebra ``k``), then between ``k`` and a
   vertebra above ``k``.

``angles.csv`` holds the three in that order (first, second, third). By region, a main curve in the
upper half (or a C curve) is the main thoracic one (MT) with the proximal-thoracic (PT) curve above and
the thoracolumbar/lumbar (TL/L) one below; a main curve in the lower half is TL/L, with MT and then PT
above it. Checked against ``angles.csv`` from the ground-truth corners of all 609 images of
``../shared/data/spine_aasce`` (tests/test_cobb.py): every angle within 0.005 degrees (the file's
rounding).

The challenge scores predictions by the symmetric mean absolute percentage error over the three angles,
:func:`cobb_smape`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Offsets of the endplate midpoints from the line through the first and last: all of one sign (their
# pairwise products' sum equals the sum of its absolute values, to this tolerance) means a C curve.
_ONE_SIDED_TOLERANCE = 1e-4
REGIONS = ("PT", "MT", "TL/L")


@dataclass(frozen=True)
class CobbAngles:
    """The three Cobb angles of one spine, in degrees.

    Attributes:
        angles: ``(first, second, third)`` in ``angles.csv``'s order: the largest first.
        curve: ``"C"``, ``"S upper"`` (main curve in the upper half) or ``"S lower"``.
        vertebrae: The 0-based vertebrae (``upper``, ``lower``) that end the main curve.
    """

    angles: tuple[float, float, float]
    curve: str
    vertebrae: tuple[int, int]

    @property
    def by_region(self) -> dict[str, float]:
        """``{"PT": ..., "MT": ..., "TL/L": ...}``."""
        first, second, third = self.angles
        if self.curve == "S lower":
            return {"PT": third, "MT": second, "TL/L": first}
        return {"PT": second, "MT": first, "TL/L": third}


def vertebra_angles(corners: np.ndarray) -> np.ndarray:
    """``[V, V]`` angles in degrees between the directions of every two vertebrae.

    Args:
        corners: ``[4 V, 2]`` ``(x, y)`` pixels, four corners per vertebra from the top
            (top-left, top-right, bottom-left, bottom-right).
    """
    left = (corners[0::4] + corners[2::4]) / 2
    right = (corners[1::4] + corners[3::4]) / 2
    direction = right - left
    direction = direction / np.linalg.norm(direction, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(direction @ direction.T, -1.0, 1.0)))


def is_s_shaped(endplate_midpoints: np.ndarray) -> bool:
    """Whether the midpoints (top and bottom endplate of each vertebra, from the top) cross the straight
    line from the first to the last one. The last two points are not tested (the script's rule)."""
    first, last = endplate_midpoints[0], endplate_midpoints[-1]
    points = endplate_midpoints[:-2]
    with np.errstate(divide="ignore", invalid="ignore"):
        offset = (points[:, 1] - last[1]) / (first[1] - last[1]) - (points[:, 0] - last[0]) / (first[0] - last[0])
        pairs = np.outer(offset, offset)
        # A zero extent gives NaN/inf: not one-sided, so S (as the script decides).
        return not abs(pairs.sum() - np.abs(pairs).sum()) < _ONE_SIDED_TOLERANCE


def cobb_angles(corners: np.ndarray, image_height: float) -> CobbAngles:
    """The Cobb angles of one spine from its vertebra corners (see the module's description).

    Args:
        corners: ``[4 V, 2]`` ``(x, y)`` in original-image pixels (AASCE: V = 17).
        image_height: The image's height in pixels (which half the main curve lies in).

    Raises:
        ValueError: ``corners`` is not ``[4 V, 2]`` with V >= 2, or holds a non-finite value.
    """
    corners = np.asarray(corners, dtype=np.float64)
    if corners.ndim != 2 or corners.shape[1] != 2 or corners.shape[0] % 4 or corners.shape[0] < 8:
        raise ValueError(f"corners must be [4 x vertebrae, 2] with at least 2 vertebrae, got {corners.shape}")
    if not np.isfinite(corners).all():
        raise ValueError("corners hold NaN or inf: Cobb angles need every corner")
    angles = vertebra_angles(corners)
    last = len(angles) - 1
    upper, lower = np.unravel_index(int(np.argmax(angles)), angles.shape)  # row-major: upper <= lower
    upper, lower = int(upper), int(lower)
    first = angles[upper, lower]
    midpoints = (corners[0::2] + corners[1::2]) / 2  # top and bottom endplate midpoints, 2 per vertebra
    if not is_s_shaped(midpoints):
        return CobbAngles((first, angles[0, upper], angles[last, lower]), "C", (upper, lower))
    if midpoints[2 * upper + 1, 1] + midpoints[2 * lower + 1, 1] < image_height:
        return CobbAngles((first, angles[upper, : upper + 1].max(), angles[lower, lower:].max()), "S upper",
                          (upper, lower))
    above = int(np.argmax(angles[upper, : upper + 1]))
    return CobbAngles((first, angles[upper, above], angles[above, : above + 1].max()), "S lower", (upper, lower))


def cobb_smape(predicted: np.ndarray, truth: np.ndarray) -> float:
    """The challenge's symmetric mean absolute percentage error, in percent.

    ``100 / N * sum_i (sum_j |p_ij - t_ij|) / (sum_j (p_ij + t_ij))`` over N images and their 3 angles
    (an image whose angles are all zero in both counts 0).

    Args:
        predicted, truth: ``[N, 3]`` angles in degrees, in the same order.
    """
    predicted, truth = np.asarray(predicted, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if predicted.shape != truth.shape or predicted.ndim != 2:
        raise ValueError(f"predicted {predicted.shape} and truth {truth.shape} must both be [N, angles]")
    error = np.abs(predicted - truth).sum(axis=1)
    total = (predicted + truth).sum(axis=1)
    per_image = np.divide(error, total, out=np.zeros_like(error), where=total > 0)
    return float(100 * per_image.mean())
