"""Reader for COCO keypoints JSON.

Uses ``images`` (``id``, ``file_name``, optional ``pixel_spacing`` in mm per pixel),
``annotations`` (``image_id``, ``category_id``, ``keypoints`` = ``[x, y, v] * K``) and the
category's ``keypoints`` names. One record per annotation. ``v = 0`` means missing; ``v = 1``
(labelled but occluded) and ``v = 2`` count as annotated, as in COCO evaluation. Flip pairs come
from an optional category field ``flip_pairs`` (pairs of landmark names or 0-based indices); without it there
are none (COCO files do not carry them in a standard field).

COCO's own keypoint coordinates follow the same convention as ours in practice (pixel indices of
the annotated pixel), so they are taken as they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hrexp.data.coco_json import keypoint_annotations, load_coco_file
from hrexp.data.errors import DataError, ErrorCollector
from hrexp.data.landmarks.records import LandmarkRecord, LandmarkSet
from hrexp.data.landmarks.validation import parse_spacing
from hrexp.data.paths import resolve_path
from hrexp.data.pose.keypoint_meta import parse_flip_pairs


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
    data = load_coco_file(path)

    category = _pick_category(data["categories"], category_id, source)
    names = [str(n) for n in category["keypoints"]]
    where = f"{source}: field categories[id={category.get('id')}].flip_pairs"
    flip_pairs = list(parse_flip_pairs(category.get("flip_pairs"), names, where))

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
    for _, where, ann, flat in keypoint_annotations(data, category["id"], images, names, errors):
        visible = flat[:, 2] > 0
        keypoints = np.where(visible[:, None], flat[:, :2], np.nan)
        image, spacing = images[ann["image_id"]]
        if spacing is None:
            spacing = default_spacing
        records.append(
            LandmarkRecord(
                image_path=resolve_path(str(image["file_name"]), path.parent),
                keypoints=keypoints,
                visible=visible,
                spacing=spacing,
                source=f"{path.name}:{where}",
            )
        )
    errors.raise_if_any()
    return LandmarkSet(names=names, records=records, flip_pairs=flip_pairs, source=source)
