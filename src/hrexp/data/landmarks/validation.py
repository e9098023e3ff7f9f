"""Checks that run before any training, so bad data fails in seconds with a precise message.

Two kinds of checks live here:

- text-level rules used by the readers while parsing (:func:`parse_coordinate`,
  :func:`parse_spacing`): a reader is the only place that sees the raw text, but the rules (what is
  a valid number) are defined once here;
- set-level checks (:func:`validate_landmark_set`): images exist and have a readable header (which
  also fills ``record.size``), the split is not empty, the landmark count matches the configured
  ``num_keypoints``, and each record is internally consistent.

Every failure is a :class:`~hrexp.data.errors.DataError` whose message names the file and the row
(1-based data row, or COCO annotation id/index) or field, and what was expected; the row errors of a
file are reported together (:class:`~hrexp.data.errors.ErrorCollector`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from hrexp.data.errors import DataError, ErrorCollector
from hrexp.data.images import read_image_size
from hrexp.data.landmarks.records import LandmarkRecord, LandmarkSet


def parse_coordinate(text: str | None) -> tuple[float | None, str | None]:
    """Parses one coordinate cell.

    Returns:
        ``(value, None)`` for a finite number, ``(None, None)`` for an empty cell (a missing
        landmark), and ``(None, reason)`` for anything else. Literal ``nan``/``inf`` text is an
        error rather than "missing": only an empty cell means missing, so that a NaN produced by a
        broken export script is not silently dropped.
    """
    if text is None:
        return None, "missing field"
    stripped = text.strip()
    if stripped == "":
        return None, None
    try:
        value = float(stripped)
    except ValueError:
        return None, f"expected a number or an empty cell, got {text!r}"
    if not math.isfinite(value):
        return None, f"expected a finite number or an empty cell, got {text!r}"
    return value, None


def parse_spacing(value: object) -> tuple[float | None, str | None]:
    """Parses a pixel spacing (mm per pixel): empty/None -> unknown, else a positive number."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None, None
    try:
        spacing = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None, f"expected a positive pixel spacing (mm per pixel), got {value!r}"
    if not math.isfinite(spacing) or spacing <= 0:
        return None, f"expected a positive pixel spacing (mm per pixel), got {value!r}"
    return spacing, None


def validate_landmark_set(
    landmark_set: LandmarkSet,
    *,
    split: str = "train",
    num_keypoints: int | None = None,
    check_images: bool = True,
) -> LandmarkSet:
    """Validates a set in place and fills ``record.size`` from the image headers.

    Args:
        landmark_set: The set to check.
        split: Split name, used in messages (``"train"``, ``"val"``, ``"test"``).
        num_keypoints: Expected landmark count (from the config), or None to accept any.
        check_images: Whether to open every image header (True before training).

    Returns:
        The same set, for chaining.

    Raises:
        DataError: Empty split, landmark count mismatch, or any record/image problem (all record
            problems of the set are reported together).
    """
    source = landmark_set.source or "<unknown annotation file>"
    if len(landmark_set.records) == 0:
        raise DataError(f"{source}: split {split!r} is empty: expected at least one annotated image")
    if num_keypoints is not None and landmark_set.num_keypoints != int(num_keypoints):
        raise DataError(
            f"{source}: field num_keypoints: the config expects {int(num_keypoints)} landmarks, the "
            f"annotation file defines {landmark_set.num_keypoints} "
            f"({', '.join(landmark_set.names[:5])}{', ...' if landmark_set.num_keypoints > 5 else ''})"
        )
    k = landmark_set.num_keypoints
    errors = ErrorCollector(source)
    for record in landmark_set.records:
        where = record.source or str(record.image_path)
        kp = np.asarray(record.keypoints)
        vis = np.asarray(record.visible)
        if kp.shape != (k, 2) or vis.shape != (k,):
            errors.add(where, f"expected keypoints [{k}, 2] and visible [{k}], got {kp.shape} and {vis.shape}")
            continue
        if not np.all(np.isfinite(kp[vis])):
            errors.add(where, "a landmark marked visible has a non-finite coordinate")
        if record.spacing is not None and not (math.isfinite(record.spacing) and record.spacing > 0):
            errors.add(where, f"expected a positive pixel spacing, got {record.spacing!r}")
        if check_images:
            path = Path(record.image_path)
            if not path.is_file():
                errors.add(where, f"image not found: {path}")
                continue
            try:
                size = read_image_size(path)
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                errors.add(where, f"image is not a readable image file: {path} ({exc.__class__.__name__}: {exc})")
                continue
            if record.size is not None and tuple(record.size) != size:
                errors.add(where, f"image {path} is {size} (h, w), the annotation says {tuple(record.size)}")
                continue
            record.size = size
            outside = _far_outside(record, landmark_set.names)
            if outside:
                errors.add(where, outside)
    errors.raise_if_any()
    return landmark_set


# Landmarks a little outside the image happen (a corner cut off by the field of view); far outside,
# the coordinates are wrong: swapped x/y, another unit, another image's size.
OUTSIDE_MARGIN = 0.1  # of the image's side


def _far_outside(record: LandmarkRecord, names: list[str]) -> str | None:
    """A message for the visible landmarks more than 10 % of the image's side outside it, or None."""
    h, w = record.size
    xy = np.asarray(record.keypoints, dtype=np.float64)
    vis = np.asarray(record.visible, dtype=bool) & np.isfinite(xy).all(axis=1)
    low = np.array([-0.5 - OUTSIDE_MARGIN * w, -0.5 - OUTSIDE_MARGIN * h])
    high = np.array([w - 0.5 + OUTSIDE_MARGIN * w, h - 0.5 + OUTSIDE_MARGIN * h])
    bad = np.flatnonzero(vis & ((xy < low) | (xy > high)).any(axis=1))
    if not len(bad):
        return None
    shown = ", ".join(f"{names[i]} at ({xy[i, 0]:.1f}, {xy[i, 1]:.1f})" for i in bad[:3])
    return (f"{len(bad)} landmark(s) far outside the {w} x {h} (w x h) image: {shown}"
            f"{', ...' if len(bad) > 3 else ''}; expected x in [0, {w}) and y in [0, {h}) (swapped x/y, another "
            f"unit or another image?)")


def check_same_landmarks(reference: LandmarkSet, other: LandmarkSet, split: str) -> None:
    """Raises a DataError when two splits define different landmark names or flip pairs."""
    if list(reference.names) != list(other.names):
        raise DataError(
            f"{other.source}: split {split!r} defines landmarks {other.names[:5]}... "
            f"({other.num_keypoints}), expected the same as {reference.source} "
            f"{reference.names[:5]}... ({reference.num_keypoints})"
        )
    if sorted(map(tuple, reference.flip_pairs)) != sorted(map(tuple, other.flip_pairs)):
        raise DataError(
            f"{other.source}: split {split!r} defines flip pairs {other.flip_pairs}, expected "
            f"{reference.flip_pairs} as in {reference.source}"
        )
