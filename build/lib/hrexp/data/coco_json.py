"""Reading COCO-format JSON: the file itself and its keypoint annotations, for every COCO reader.

Both the landmark reader (:mod:`hrexp.data.landmarks.coco_reader`, one record per annotation, whole image)
and the pose reader (:mod:`hrexp.data.pose.reader`, person boxes) go through here, so a file is
checked and an annotation is rejected the same way, with the same messages, in both.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Collection, Iterator, Sequence

import numpy as np

from hrexp.data.errors import DataError, ErrorCollector


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_json(path: Path, what: str = "file") -> Any:
    """Parse a JSON file; a missing or unreadable one is a DataError naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from None


def load_coco_file(path: Path) -> dict:
    """A COCO annotation file: a JSON object whose ``images``, ``annotations`` and ``categories`` are lists."""
    data = load_json(path, "annotation file")
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: field {key!r}: expected a list")
    return data


def keypoint_annotations(
    data: dict, category_id: Any, image_ids: Collection, names: Sequence[str], errors: ErrorCollector
) -> Iterator[tuple[int, str, dict, np.ndarray]]:
    """The well-formed keypoint annotations of one category: ``(index, where, annotation, [K, 3] x/y/v)``.

    Annotations of other categories are skipped; a malformed one (not an object, unknown
    ``image_id``, a ``keypoints`` list of the wrong length or with non-finite values) is recorded in
    ``errors``, named by ``where`` (``"annotation id 7 (index 2)"``), and skipped.
    """
    k = len(names)
    for n, ann in enumerate(data["annotations"]):
        where = f"annotation id {ann.get('id')} (index {n})" if isinstance(ann, dict) else f"annotation index {n}"
        if not isinstance(ann, dict):
            errors.add(where, "expected an object")
            continue
        if ann.get("category_id", category_id) != category_id:
            continue  # another category (e.g. a box-only class)
        if ann.get("image_id") not in image_ids:
            errors.add(where, f"field image_id: {ann.get('image_id')!r} is not in images")
            continue
        values = ann.get("keypoints")
        if not isinstance(values, list) or len(values) != 3 * k:
            got = len(values) if isinstance(values, list) else type(values).__name__
            errors.add(where, f"field keypoints: expected {3 * k} values ({k} keypoints x [x, y, v]), got {got}")
            continue
        ok = True
        for j in range(k):
            triple = values[3 * j : 3 * j + 3]
            if not all(is_number(t) for t in triple):
                errors.add(where, f"field keypoints[{3 * j}:{3 * j + 3}] ({names[j]}): expected finite numbers, got {triple}")
                ok = False
        if ok:
            yield n, where, ann, np.asarray(values, dtype=np.float64).reshape(k, 3)
