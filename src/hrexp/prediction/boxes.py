"""Person boxes for top-down pose prediction (``boxes=<file.json>``), found by image file name.

Two COCO layouts are read:

* an annotation file (or detections in that layout): ``{"images": [{"id", "file_name"}, ...],
  "annotations": [{"image_id", "bbox", "score"?, "iscrowd"?}, ...]}``; ``score`` defaults to 1;
* a list of detections that name their image: ``[{"file_name", "bbox", "score"?, "image_id"?}, ...]``.
  (COCO's detection results carry only ``image_id``; without the ``images`` list that maps ids to
  files they cannot be matched to image files, hence the first layout.)

Boxes are COCO's ``[x, y, w, h]`` in continuous coordinates (pixel ``i`` spans ``[i, i + 1)``), as
the pose datamodule reads them. An image is matched by its file NAME (``Path(file_name).name``), so
the JSON may hold paths relative to another folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrexp.data.coco_json import is_number, load_json
from hrexp.data.errors import DataError
from hrexp.errors import ConfigError


@dataclass(frozen=True)
class PersonBox:
    """One box to crop: ``bbox`` ``(x, y, w, h)`` in COCO's continuous coordinates, its score and image id."""

    bbox: tuple[float, float, float, float]
    score: float = 1.0
    image_id: int | None = None


def _box(value: Any) -> tuple[float, float, float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(is_number(v) for v in value):
        return tuple(float(v) for v in value)  # type: ignore[return-value]
    return None


def read_boxes(path: str | Path, score_threshold: float = 0.0) -> dict[str, list[PersonBox]]:
    """``{file name: [PersonBox, ...]}`` from a COCO annotation / detection JSON (see the module docstring).

    Boxes scoring below ``score_threshold``, crowd annotations and boxes of zero size are left out.

    Raises:
        ConfigError: the file is missing, is no JSON, has neither layout, or a box or file name is
            malformed (the message names ``boxes``, the entry and what was expected).
    """
    where = f"boxes={str(path)!r}"
    try:
        data = load_json(Path(path), "boxes file")
    except DataError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("images"), list) and isinstance(data.get("annotations"), list):
        names = {}
        for n, image in enumerate(data["images"]):
            if not (isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str)):
                raise ConfigError(f"{where}: images[{n}]: expected an object with 'id' and 'file_name'")
            names[image["id"]] = image["file_name"]
        entries = []
        for n, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or ann.get("image_id") not in names:
                raise ConfigError(f"{where}: annotations[{n}]: expected an object whose image_id is in images")
            if ann.get("iscrowd"):
                continue
            entries.append((f"annotations[{n}]", names[ann["image_id"]], ann["image_id"], ann))
    elif isinstance(data, list):
        entries = []
        for n, det in enumerate(data):
            if not (isinstance(det, dict) and isinstance(det.get("file_name"), str)):
                raise ConfigError(f"{where}: [{n}]: expected an object with 'file_name' and 'bbox' (a detection "
                                  f"list must name each image's file; or give {{'images': [...], 'annotations': [...]}})")
            entries.append((f"[{n}]", det["file_name"], det.get("image_id"), det))
    else:
        raise ConfigError(f"{where}: expected a COCO file {{'images': [...], 'annotations': [...]}} or a list of "
                          f"detections [{{'file_name', 'bbox', 'score'}}, ...]")

    boxes: dict[str, list[PersonBox]] = {}
    for entry, file_name, image_id, item in entries:
        bbox = _box(item.get("bbox"))
        score = item.get("score", 1.0)
        if bbox is None or not is_number(score):
            raise ConfigError(f"{where}: {entry}: expected 'bbox' [x, y, w, h] numbers and a numeric 'score', got "
                              f"bbox={item.get('bbox')!r} score={score!r}")
        if score < score_threshold or not (bbox[2] > 0 and bbox[3] > 0):
            continue
        boxes.setdefault(Path(file_name).name, []).append(
            PersonBox(bbox, float(score), int(image_id) if is_number(image_id) else None))
    return boxes
