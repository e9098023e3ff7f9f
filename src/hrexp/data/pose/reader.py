"""Reader for top-down pose data: person instances from COCO keypoints JSON and detection files.

One :class:`PoseInstance` per person box; a :class:`PoseSplit` is what every pose format reads a
split into (:func:`read_pose_coco` for COCO files, :func:`split_from_instances` for other formats).
Training and ground-truth-box evaluation use every annotated, non-crowd person with at least one
labelled keypoint and a box of positive size (clipped to its image); an evaluation split may instead
take its boxes from a COCO detection-results file (``[{"image_id", "category_id", "bbox", "score"}, ...]``).

The split's ground truth for OKS AP is kept as a normalised COCO dict (:attr:`PoseSplit.ground_truth`):
every annotation of the category, crowd and keypoint-less ones included, because COCOeval needs them
to ignore the detections that fall on them. Missing ``num_keypoints`` is counted from ``v > 0``;
missing ``area`` falls back to the box area (COCO's own ``area`` is the segmentation area).

Keypoint coordinates are taken as they are (pixel indices, the design's convention). COCO boxes are
continuous (pixel ``i`` spans ``[i, i + 1)``), so box centres are shifted by -0.5 px into the same
convention where they are used (:mod:`hrexp.data.pose.topdown`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hrexp.data.coco_json import is_number, keypoint_annotations, load_coco_file, load_json
from hrexp.data.errors import DataError, ErrorCollector
from hrexp.data.paths import resolve_path
from hrexp.data.pose.keypoint_meta import KeypointMeta, merge_with_annotations

log = logging.getLogger(__name__)


@dataclass
class PoseInstance:
    """One person box to crop, with its keypoints when they are known.

    Attributes:
        image_id: COCO image id.
        image_path: Absolute image path.
        image_size: ``(height, width)`` from the annotation file.
        bbox: float64 ``[4]`` box ``(x, y, w, h)``, COCO's continuous coordinates.
        keypoints: float64 ``[K, 2]`` original pixels, NaN where unlabelled (all NaN for a detection).
        visible: bool ``[K]``, labelled (``v > 0``).
        bbox_score: 1 for a ground-truth box, the detector's score otherwise.
        source: For messages: ``"file.json: annotation id 7"``.
    """

    image_id: int
    image_path: Path
    image_size: tuple[int, int]
    bbox: np.ndarray
    keypoints: np.ndarray
    visible: np.ndarray
    bbox_score: float = 1.0
    source: str = ""


@dataclass
class PoseSplit:
    """The person instances of one split and the COCO ground truth they are scored against."""

    meta: KeypointMeta
    instances: list[PoseInstance]
    ground_truth: dict[str, Any]
    source: str
    boxes: str = "ground truth"
    images: dict[int, tuple[Path, tuple[int, int]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def num_keypoints(self) -> int:
        return self.meta.num_keypoints


def clip_box(bbox: Any, size_hw: tuple[int, int]) -> np.ndarray | None:
    """``(x, y, w, h)`` clipped to the image; None for a malformed or empty box."""
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
        return None
    x, y, w, h = (float(v) for v in bbox)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(size_hw[1]), x + max(0.0, w)), min(float(size_hw[0]), y + max(0.0, h))
    if x2 <= x1 or y2 <= y1:
        return None
    return np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float64)


def _pick_category(categories: list, category_id: int | None, source: str) -> dict:
    candidates = [c for c in categories if isinstance(c, dict) and "id" in c]
    if category_id is not None:
        candidates = [c for c in candidates if c["id"] == category_id]
        if not candidates:
            raise DataError(f"{source}: field categories: no category with id {category_id}")
    if len(candidates) != 1:
        ids = [c.get("id") for c in candidates]
        raise DataError(f"{source}: field categories: expected one category, found ids {ids}; set data.category_id")
    return candidates[0]


def read_pose_coco(
    path: str | Path,
    *,
    image_dir: str | Path | None = None,
    metadata: KeypointMeta | None = None,
    category_id: int | None = None,
) -> PoseSplit:
    """Reads a COCO keypoints file into ground-truth-box instances and its COCO ground truth.

    Args:
        path: The annotation JSON.
        image_dir: Folder the images' ``file_name`` are relative to (default: the JSON's folder).
        metadata: Keypoint metadata from a file; None takes it from the file's category.
        category_id: The category to read when the file has several.

    Raises:
        DataError: Unreadable file, missing fields, bad annotations (reported together) or image
            files that do not exist.
    """
    path = Path(path).absolute()
    source = str(path)
    data = load_coco_file(path)
    category = _pick_category(data["categories"], category_id, source)
    meta = merge_with_annotations(metadata, category, source)
    base = Path(image_dir) if image_dir not in (None, "") else path.parent

    errors = ErrorCollector(source)
    images: dict[int, tuple[Path, tuple[int, int]]] = {}
    gt_images = []
    for n, image in enumerate(data["images"]):
        ok = isinstance(image, dict) and "id" in image and image.get("file_name")
        if not ok or not all(is_number(image.get(f)) and image.get(f) > 0 for f in ("width", "height")):
            errors.add(f"images[{n}]", "expected an object with 'id', 'file_name', and positive 'width' and 'height'")
            continue
        image_path = resolve_path(str(image["file_name"]), base)
        size = (int(image["height"]), int(image["width"]))
        images[image["id"]] = (image_path, size)
        gt_images.append({"id": image["id"], "width": size[1], "height": size[0], "file_name": str(image["file_name"])})

    instances: list[PoseInstance] = []
    gt_annotations = []
    skipped_box = 0
    for n, where, ann, flat in keypoint_annotations(data, category["id"], images, meta.names, errors):
        raw_box = ann.get("bbox")
        if not (isinstance(raw_box, (list, tuple)) and len(raw_box) == 4 and all(is_number(v) for v in raw_box)):
            errors.add(where, f"field bbox: expected [x, y, w, h] numbers, got {raw_box!r}")
            continue
        image_path, size = images[ann["image_id"]]
        visible = flat[:, 2] > 0
        keypoints = np.where(visible[:, None], flat[:, :2], np.nan)
        crowd = int(bool(ann.get("iscrowd", 0)))
        area = ann.get("area")
        if not is_number(area) or area <= 0:
            area = float(raw_box[2]) * float(raw_box[3])
        gt_annotations.append({
            "id": ann.get("id", n + 1),
            "image_id": ann["image_id"],
            "category_id": category["id"],
            "keypoints": flat.ravel().tolist(),
            "num_keypoints": int(ann.get("num_keypoints", int(visible.sum()))),
            "area": float(area),
            "bbox": [float(v) for v in raw_box],
            "iscrowd": crowd,
        })
        if crowd or not visible.any():
            continue
        bbox = clip_box(raw_box, size)
        if bbox is None:
            skipped_box += 1
            continue
        instances.append(PoseInstance(
            image_id=ann["image_id"],
            image_path=image_path,
            image_size=size,
            bbox=bbox,
            keypoints=keypoints,
            visible=visible,
            source=f"{path.name}: {where}",
        ))
    errors.raise_if_any()
    missing = sorted({str(p) for p, _ in images.values() if not p.is_file()})
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(f"{source}: {len(missing)} image file(s) not found (image folder {base}): {shown}")
    if skipped_box:
        log.warning("%s: %d annotated person(s) skipped: box empty after clipping to the image", source, skipped_box)
    ground_truth = {
        "images": gt_images,
        "annotations": gt_annotations,
        "categories": [{
            "id": category["id"],
            "name": str(category.get("name", "instance")),
            "keypoints": list(meta.names),
            "skeleton": [[a + 1, b + 1] for a, b in meta.skeleton],
        }],
    }
    return PoseSplit(meta=meta, instances=instances, ground_truth=ground_truth, source=source, images=images)


def split_from_instances(
    meta: KeypointMeta,
    instances: list[PoseInstance],
    source: str,
    *,
    category_id: int = 1,
    category_name: str = "person",
) -> PoseSplit:
    """A split of ground-truth-box people read from a format other than COCO, with the COCO ground truth
    they imply (what OKS AP is computed against).

    Every instance becomes one non-crowd annotation: its labelled keypoints (``v = 2``), its box and the
    box area as ``area``. Image sizes and paths come from the instances.
    """
    k = meta.num_keypoints
    images: dict[int, tuple[Path, tuple[int, int]]] = {}
    annotations = []
    for n, inst in enumerate(instances):
        images.setdefault(inst.image_id, (Path(inst.image_path), (int(inst.image_size[0]), int(inst.image_size[1]))))
        flat = np.zeros((k, 3), dtype=np.float64)
        flat[inst.visible, :2] = inst.keypoints[inst.visible]
        flat[inst.visible, 2] = 2
        box = [float(v) for v in inst.bbox]
        annotations.append({
            "id": n + 1,
            "image_id": inst.image_id,
            "category_id": category_id,
            "keypoints": flat.ravel().tolist(),
            "num_keypoints": int(np.count_nonzero(inst.visible)),
            "area": box[2] * box[3],
            "bbox": box,
            "iscrowd": 0,
        })
    ground_truth = {
        "images": [{"id": i, "width": size[1], "height": size[0], "file_name": path.name}
                   for i, (path, size) in images.items()],
        "annotations": annotations,
        "categories": [{
            "id": category_id,
            "name": category_name,
            "keypoints": list(meta.names),
            "skeleton": [[a + 1, b + 1] for a, b in meta.skeleton],
        }],
    }
    return PoseSplit(meta=meta, instances=list(instances), ground_truth=ground_truth, source=source, images=images)


def read_detections(path: str | Path, split: PoseSplit, score_threshold: float = 0.0) -> PoseSplit:
    """The same split with its person boxes taken from a COCO detection-results file.

    Detections of other categories, of images outside the split, or scoring below
    ``score_threshold`` are dropped; the ground truth (what AP is computed against) is unchanged.
    """
    path = Path(path).absolute()
    data = load_json(path, "detection file")
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of detections [{{image_id, category_id, bbox, score}}, ...]")
    category_id = split.ground_truth["categories"][0]["id"]
    k = split.num_keypoints
    errors = ErrorCollector(path)
    instances = []
    for n, det in enumerate(data):
        if not isinstance(det, dict) or not is_number(det.get("score")):
            errors.add(f"detection index {n}", "expected an object with image_id, bbox and a numeric score")
            continue
        if det.get("category_id", category_id) != category_id or det["image_id"] not in split.images:
            continue
        if det["score"] < score_threshold:
            continue
        image_path, size = split.images[det["image_id"]]
        bbox = clip_box(det.get("bbox"), size)
        if bbox is None:
            continue
        instances.append(PoseInstance(
            image_id=det["image_id"],
            image_path=image_path,
            image_size=size,
            bbox=bbox,
            keypoints=np.full((k, 2), np.nan),
            visible=np.zeros(k, dtype=bool),
            bbox_score=float(det["score"]),
            source=f"{path.name}: detection index {n}",
        ))
    errors.raise_if_any()
    if not instances:
        raise DataError(f"{path}: no detection of category {category_id} in the images of {split.source}")
    return PoseSplit(meta=split.meta, instances=instances, ground_truth=split.ground_truth,
                     source=f"{split.source} [boxes: {path}]", boxes=str(path), images=split.images)


def subset_images(split: PoseSplit, image_ids: set[int], source: str) -> PoseSplit:
    """The instances and ground truth of the given images only (a seeded train/val split by image)."""
    gt = split.ground_truth
    return PoseSplit(
        meta=split.meta,
        instances=[i for i in split.instances if i.image_id in image_ids],
        ground_truth={
            "images": [im for im in gt["images"] if im["id"] in image_ids],
            "annotations": [a for a in gt["annotations"] if a["image_id"] in image_ids],
            "categories": gt["categories"],
        },
        source=source,
        boxes=split.boxes,
        images={i: v for i, v in split.images.items() if i in image_ids},
    )
