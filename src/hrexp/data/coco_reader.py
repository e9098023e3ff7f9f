"""Reader for COCO keypoints JSON.

Uses ``images`` (``id``, ``file_name``, optional ``pixel_spacing`` in mm per pixel),
``annotations`` (``image_id``, ``category_id``, ``keypoints`` = ``[x, y, v] * K``) and the
category's ``keypoints`` names. One record per annotation. ``v = 0`` means missing; ``v = 1``
(labelled but occluded) and ``v = 2`` count as annotated, as in COCO evaluation. Flip pairs come
from an optional category field ``flip_pairs`` (a list of landmark-name pairs); without it there
are none (COCO files do not carry them in a standard field).

COCO's own keypoint coordinates follow the same convention as ours in practice (pixel indices of
the annotated pixel), so they are taken as they are.
"""

from __future__ import annotations

import json as jsonlib
import math
from pathlib import Path

import numpy as np

from hrexp.data.csv_reader import resolve_image_path
from hrexp.data.records import DataError, LandmarkRecord, LandmarkSet
from hrexp.data.validation import ErrorCollector, parse_spacing


def _pick_category(categories: list, category_id: int | None, source: str) -> dict:
    with_keypoints = [c for c in categories if isinstance(c, dict) and c.get("keypoints")]
    if category_id is not None:
        matches = [c for c in with_keypoints if c.get("id") == category_id]
        if not matches:
            raise DataError(f"{source}: field categories: no category with id {category_id} and keypoint names")
        return matches[0]
    if len(with_keypoints) != 1:
        raise DataError(
            f"{source}: field categories: expected exactly one category with 'keypoints' names, found "
            f"{len(with_keypoints)} (pass category_id to choose one)"
        )
    return with_keypoints[0]


def _flip_pairs(category: dict, names: list[str], source: str) -> list[tuple[int, int]]:
    raw = category.get("flip_pairs") or []
    index = {name: i for i, name in enumerate(names)}
    pairs = []
    for n, pair in enumerate(raw):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(p in index for p in pair)):
            raise DataError(
                f"{source}: field categories[id={category.get('id')}].flip_pairs[{n}]: expected a pair of "
                f"landmark names from {names}, got {pair!r}"
            )
        pairs.append((index[pair[0]], index[pair[1]]))
    return pairs


def read_coco_keypoints(
    path: str | Path,
    *,
    pixel_spacing: float | None = None,
    category_id: int | None = None,
) -> LandmarkSet:
    """Reads a COCO keypoints JSON file into a LandmarkSet (one record per annotation).

    Args:
        path: The JSON file; image ``file_name`` is relative to its folder unless absolute.
        pixel_spacing: Spacing for images without a ``pixel_spacing`` field (mm per pixel).
        category_id: The category to read when the file has several with keypoints.

    Raises:
        DataError: Unreadable JSON, missing fields, or bad annotations (reported together, each
            named by annotation id and index).
    """
    path = Path(path).absolute()
    source = str(path)
    default_spacing, problem = parse_spacing(pixel_spacing)
    if problem:
        raise DataError(f"{source}: config field pixel_spacing: {problem}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = jsonlib.load(handle)
    except FileNotFoundError:
        raise DataError(f"{source}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, jsonlib.JSONDecodeError) as exc:
        raise DataError(f"{source}: not a readable JSON file ({exc})") from None
    if not isinstance(data, dict):
        raise DataError(f"{source}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{source}: field {key!r}: expected a list")

    category = _pick_category(data["categories"], category_id, source)
    names = [str(n) for n in category["keypoints"]]
    k = len(names)
    flip_pairs = _flip_pairs(category, names, source)

    errors = ErrorCollector(source)
    images: dict = {}
    for n, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not image.get("file_name"):
            errors.add(f"images[{n}]", "expected an object with 'id' and 'file_name'")
            continue
        spacing, problem = parse_spacing(image.get("pixel_spacing"))
        if problem:
            errors.add(f"images[{n}] (id {image['id']})", f"field pixel_spacing: {problem}")
        images[image["id"]] = (image, spacing)

    records: list[LandmarkRecord] = []
    for n, ann in enumerate(data["annotations"]):
        where = f"annotation id {ann.get('id')} (index {n})" if isinstance(ann, dict) else f"annotation index {n}"
        if not isinstance(ann, dict):
            errors.add(where, "expected an object")
            continue
        if ann.get("category_id", category["id"]) != category.get("id"):
            continue  # another category (e.g. a box-only class)
        if ann.get("image_id") not in images:
            errors.add(where, f"field image_id: {ann.get('image_id')!r} is not in images")
            continue
        values = ann.get("keypoints")
        if not isinstance(values, list) or len(values) != 3 * k:
            got = len(values) if isinstance(values, list) else type(values).__name__
            errors.add(where, f"field keypoints: expected {3 * k} values ({k} landmarks x [x, y, v]), got {got}")
            continue
        keypoints = np.full((k, 2), np.nan, dtype=np.float64)
        visible = np.zeros(k, dtype=bool)
        ok = True
        for j in range(k):
            x, y, v = values[3 * j : 3 * j + 3]
            if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in (x, y, v)):
                errors.add(where, f"field keypoints[{3 * j}:{3 * j + 3}] ({names[j]}): expected finite numbers, got {[x, y, v]}")
                ok = False
                continue
            if v > 0:
                keypoints[j] = (x, y)
                visible[j] = True
        if not ok:
            continue
        image, spacing = images[ann["image_id"]]
        if spacing is None:
            spacing = default_spacing
        records.append(
            LandmarkRecord(
                image_path=resolve_image_path(str(image["file_name"]), path.parent),
                keypoints=keypoints,
                visible=visible,
                spacing=spacing,
                source=f"{path.name}:{where}",
            )
        )
    errors.raise_if_any()
    return LandmarkSet(names=names, records=records, flip_pairs=flip_pairs, source=source)
