"""The files ``predict.py`` writes, each streamed as the batches come (nothing grows with the folder in memory).

Keypoint coordinates, in every file, are ORIGINAL-image pixels in hrexp's convention: the centre of
pixel ``(0, 0)`` is ``(0.0, 0.0)`` and ``x`` grows to the right, ``y`` downwards. COCO's keypoint
annotations use the same numbers (the pixel index of the annotated pixel): hrexp's COCO readers take
them as they are and its pose AP feeds its predictions to COCOeval unchanged, so
``predictions.json`` holds the same values as ``predictions.csv`` (:data:`COCO_KEYPOINT_OFFSET` is
0) and can be scored with pycocotools directly. COCO's BOXES are continuous (pixel ``i`` spans
``[i, i + 1)``): ``bbox`` is written in that convention, as boxes are read.
"""

from __future__ import annotations

import csv
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from hrexp.data.pose.datamodule import UNKNOWN_IMAGE_ID
from hrexp.prediction.regions import COLUMNS as REGION_COLUMNS
from hrexp.prediction.regions import PointRegions
from hrexp.reports.drawing import draw_keypoints, overlay_mask

# Added to hrexp's keypoint coordinates in the COCO JSON (0: COCO keypoints are pixel indices, see above).
COCO_KEYPOINT_OFFSET = 0.0
COCO_CATEGORY_ID = 1
BOX_COLOR = (255, 255, 0)  # RGB yellow: the person box a pose crop came from

COORDINATES_NOTE = (
    "Coordinates: original-image pixels; the centre of pixel (0, 0) is (0.0, 0.0), x to the right, y down\n"
    "(hrexp's convention). COCO keypoint annotations use the same numbers, so predictions.json holds the same\n"
    "keypoint values as predictions.csv; its \"bbox\" is COCO's continuous [x, y, w, h] (pixel i spans [i, i + 1)).\n"
)


@dataclass
class PredictedImage:
    """One input image as a writer sees it.

    ``rows``: the rows of the batch's inputs and predictions that are this image's samples (one per image;
    pose: one per person box, possibly none); ``picture``: the original as RGB uint8 when overlays are drawn.
    """

    file: str
    name: str  # the output name (no extension), unique among the inputs
    index: int  # 0-based position in the input list
    picture: np.ndarray | None
    rows: list[int]


class PredictionWriter(ABC):
    """The files ``predict.py`` writes for one task (a task's ``prediction_writer`` hook gives it).

    :meth:`add` takes each image's predictions as the batches come and returns the overlay to draw (or None),
    :meth:`close` finishes the files; :attr:`files`, :meth:`counts`, :attr:`coordinates` and
    :meth:`readme_lines` / :attr:`readme_note` go into ``predict.json`` and ``README.txt``.
    """

    #: What predict.json says of the coordinates (None: the files hold none).
    coordinates: str | None = None
    #: A paragraph at the end of README.txt (None: none).
    readme_note: str | None = None

    @abstractmethod
    def add(self, image: PredictedImage, inputs: Mapping[str, Any] | None,
            preds: Mapping[str, Any] | None) -> np.ndarray | None:
        """Write one image's predictions (``preds`` rows ``image.rows``; None when the batch had no sample);
        returns the predictions drawn on ``image.picture`` when it is given, else None."""

    @abstractmethod
    def close(self) -> None:
        """Finish the files (also after an error: what was written stays readable)."""

    @property
    @abstractmethod
    def files(self) -> dict[str, str]:
        """What the writer wrote, for predict.json's ``files`` (``{"predictions_csv": "predictions.csv"}``)."""

    def counts(self) -> dict[str, int]:
        """The writer's own counts for predict.json (e.g. ``instances``)."""
        return {}

    @abstractmethod
    def readme_lines(self) -> list[str]:
        """README.txt's lines for the writer's files (``<file>   <what it holds>``)."""


def unique_names(files: Sequence[str | Path]) -> dict[str, str]:
    """An output name (no extension) per input file: its stem, or its full name where stems repeat
    (``a.png`` and ``a.jpg``), with a counter where even names repeat (same name in two folders)."""
    paths = [Path(f) for f in files]
    stem_count: dict[str, int] = {}
    for p in paths:
        stem_count[p.stem] = stem_count.get(p.stem, 0) + 1
    names: dict[str, str] = {}
    used: set[str] = set()
    for p in paths:
        base = p.stem if stem_count[p.stem] == 1 else p.name
        name, n = base, 1
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        names[str(p)] = name
    return names


class JsonArrayWriter:
    """A JSON list written one element at a time (valid JSON once closed)."""

    def __init__(self, path: Path):
        self.fh = open(path, "w")
        self.fh.write("[")
        self.count = 0

    def add(self, item: dict[str, Any]) -> None:
        self.fh.write(("," if self.count else "") + "\n" + json.dumps(item))
        self.count += 1

    def close(self) -> None:
        self.fh.write("\n]\n")
        self.fh.close()


class KeypointWriter:
    """``predictions.csv`` (one row per image x [instance x] keypoint) and ``predictions.json`` (COCO results).

    CSV columns: ``file, [instance,] keypoint, x, y, score`` (``instance``: pose only, the box's number
    in the image). JSON: one entry per image (per person box for pose) ``{"image_id", "file_name",
    "category_id": 1, "keypoints": [x, y, score, ...], "score"}``; pose adds ``"bbox"`` and ``"box_score"``
    and its ``score`` is ``box_score * mean keypoint score`` (the instance ranking COCOeval uses).
    ``image_id``: the boxes file's id when it has one, else the file's 1-based position in the input list.
    """

    def __init__(self, out_dir: Path, keypoint_names: Sequence[str], per_instance: bool):
        self.names = list(keypoint_names)
        self.per_instance = per_instance
        self.csv_fh = open(out_dir / "predictions.csv", "w", newline="")
        self.csv = csv.writer(self.csv_fh)
        self.json = JsonArrayWriter(out_dir / "predictions.json")
        self.instances = 0
        self.unusual = 0
        self.reviews = 0
        self.regions: PointRegions | None = None  # set before the first image (the CSV's header follows it)
        self._header = False

    def _write_header(self) -> None:
        if not self._header:
            extra = []
            if self.regions is not None:
                extra = [*REGION_COLUMNS, *(("region_major_mm", "region_minor_mm") if self.regions.spacing else ()),
                         "unusual_image"]
            self.csv.writerow(["file", *(["instance"] if self.per_instance else []), "keypoint", "x", "y", "score", *extra])
            self._header = True

    def add(self, file: str, image_id: int, keypoints: np.ndarray, scores: np.ndarray,
            boxes: np.ndarray | None = None, box_scores: np.ndarray | None = None,
            covariances: np.ndarray | None = None) -> None:
        """One image's predictions: ``keypoints`` ``[N, K, 2]`` original px, ``scores`` ``[N, K]``; pose: ``boxes``
        ``[N, 4]``; with :attr:`regions`, each point's region (``covariances [N, K, 2, 2]``, original px^2)."""
        self._write_header()
        regions = None if self.regions is None else self.regions.of(covariances, len(keypoints))
        for n in range(len(keypoints)):
            unusual = self.regions is not None and self.regions.unusual(scores[n])
            self.unusual += int(unusual)
            for k, (name, (x, y), score) in enumerate(zip(self.names, keypoints[n], scores[n])):
                extra = []
                if regions is not None:
                    extra = [*(repr(float(regions[key][n, k])) for key in ("major", "minor", "angle", "area")),
                             int(regions["review"][n, k])]
                    if self.regions.spacing:
                        extra += [repr(float(regions[key][n, k] * self.regions.spacing)) for key in ("major", "minor")]
                    extra.append(int(unusual))
                self.csv.writerow([file, *([n] if self.per_instance else []), name, repr(float(x)), repr(float(y)),
                                   repr(float(score)), *extra])
            flat = np.concatenate([keypoints[n] + COCO_KEYPOINT_OFFSET, scores[n][:, None]], axis=1).ravel()
            entry: dict[str, Any] = {"image_id": int(image_id), "file_name": file, "category_id": COCO_CATEGORY_ID,
                                     "keypoints": [float(v) for v in flat], "score": float(np.mean(scores[n]))}
            if boxes is not None:
                box_score = 1.0 if box_scores is None else float(box_scores[n])
                entry.update(bbox=[float(v) for v in boxes[n]], box_score=box_score,
                             score=box_score * float(np.mean(scores[n])))
            if regions is not None:
                entry["regions"] = {key: [float(v) for v in regions[key][n]] for key in ("major", "minor", "angle", "area")}
                entry["regions"]["review"] = [bool(v) for v in regions["review"][n]]
                entry["unusual_image"] = bool(unusual)
                self.reviews += int(regions["review"][n].sum())
            self.json.add(entry)
            self.instances += 1

    def close(self) -> None:
        self._write_header()
        self.csv_fh.close()
        self.json.close()


class MaskWriter:
    """``masks/<name>.png`` (class id per pixel, uint8, original size) and ``predictions.csv``.

    CSV columns: ``file, mask, height, width`` and the pixel count of each class (``pixels_<class>``).
    """

    def __init__(self, out_dir: Path, class_names: Sequence[str]):
        if len(class_names) > 256:
            raise ValueError(f"{len(class_names)} classes do not fit a uint8 mask PNG")
        self.out_dir = out_dir
        self.mask_dir = out_dir / "masks"
        self.mask_dir.mkdir(parents=True, exist_ok=True)
        self.num_classes = len(class_names)
        self.csv_fh = open(out_dir / "predictions.csv", "w", newline="")
        self.csv = csv.writer(self.csv_fh)
        self.csv.writerow(["file", "mask", "height", "width", *(f"pixels_{c}" for c in class_names)])

    def add(self, file: str, name: str, labels: np.ndarray) -> Path:
        path = self.mask_dir / f"{name}.png"
        if not cv2.imwrite(str(path), labels.astype(np.uint8)):
            raise OSError(f"{path}: could not write the mask")
        counts = np.bincount(labels.ravel(), minlength=self.num_classes)[: self.num_classes]
        self.csv.writerow([file, str(path.relative_to(self.out_dir)), labels.shape[0], labels.shape[1],
                           *(int(c) for c in counts)])
        return path

    def close(self) -> None:
        self.csv_fh.close()


class KeypointPredictionWriter(PredictionWriter):
    """Keypoint tasks: :class:`KeypointWriter`'s CSV and COCO JSON (keypoints in original pixels); overlays draw them.

    Args:
        keypoint_names: The K names (the CSV's ``keypoint`` column).
        per_instance: Several samples per image (pose: one per person box, whose ``bbox``, ``box_score`` and
            ``image_id`` the inputs carry).
        confidence: What the scores are (the codec's ``confidence``), for README.txt.
    """

    coordinates = ("original-image pixels, centre of pixel (0, 0) at (0.0, 0.0); the same in predictions.json (COCO "
                   "keypoint annotations are pixel indices); bbox in COCO's continuous [x, y, w, h]")
    readme_note = COORDINATES_NOTE

    def __init__(self, out_dir: Path, keypoint_names: Sequence[str], per_instance: bool, confidence: str):
        self.writer = KeypointWriter(out_dir, keypoint_names, per_instance)
        self.per_instance = per_instance
        self.confidence = confidence
        self.without_boxes: list[str] = []

    def add(self, image: PredictedImage, inputs: Mapping[str, Any] | None,
            preds: Mapping[str, Any] | None) -> np.ndarray | None:
        rows, k = image.rows, len(self.writer.names)
        keypoints = preds["keypoints"][rows].double().numpy() if rows else np.zeros((0, k, 2))
        scores = preds["scores"][rows].double().numpy() if rows else np.zeros((0, k))
        image_id = image.index + 1
        boxes = box_scores = None
        if self.per_instance:
            boxes = inputs["bbox"][rows].numpy() if rows else np.zeros((0, 4))
            box_scores = inputs["box_score"][rows].numpy() if rows else np.zeros((0,))
            ids = [int(i) for i in inputs["image_id"][rows]] if rows else []
            image_id = ids[0] if ids and ids[0] != UNKNOWN_IMAGE_ID else image_id
            if not rows:
                self.without_boxes.append(image.file)
        covariances = preds["covariance"][rows].double().numpy() if rows and "covariance" in preds else None
        self.writer.add(image.file, image_id, keypoints, scores, boxes, box_scores, covariances)
        return None if image.picture is None else keypoint_overlay(image.picture, keypoints, boxes)

    def set_regions(self, regions: PointRegions) -> None:
        """Write each point's prediction region (before the first image)."""
        self.writer.regions = regions

    def close(self) -> None:
        self.writer.close()

    @property
    def files(self) -> dict[str, str]:
        return {"predictions_csv": "predictions.csv", "predictions_json": "predictions.json"}

    def counts(self) -> dict[str, int]:
        out = {"instances": self.writer.instances}
        if self.writer.regions is not None:
            out.update(points_to_review=self.writer.reviews, unusual_images=self.writer.unusual)
        if self.per_instance:
            out["images_without_boxes"] = len(self.without_boxes)
        return out

    def readme_lines(self) -> list[str]:
        regions = self.writer.regions
        lines = [] if regions is None else [
            f"                  and its {regions.level:.0%} prediction region ({regions.shape}, calibrated: "
            f"{regions.file.name}): an ellipse of semi-axes region_major / region_minor (original pixels"
            f"{'; _mm: millimetres' if regions.spacing else ''}) turned region_angle degrees from the x axis "
            f"towards +y, region_area (px^2); review = 1 where the region reaches farther than "
            f"{regions.review_px} px; unusual_image = 1 where the image's mean peak score is below every "
            "calibration image's (unlike what the model was calibrated on: check it by eye)"]
        return [f"predictions.csv   one row per image x {'person box x ' if self.per_instance else ''}keypoint: "
                f"x, y (original pixels), score ({self.confidence})", *lines,
                "predictions.json  COCO keypoint results: keypoints [x, y, score, ...], score"
                + (", bbox, box_score" if self.per_instance else "")]


class MaskPredictionWriter(PredictionWriter):
    """Segmentation: :class:`MaskWriter`'s mask PNGs and CSV; the overlays blend the classes over the image."""

    def __init__(self, out_dir: Path, class_names: Sequence[str]):
        self.writer = MaskWriter(out_dir, class_names)

    def add(self, image: PredictedImage, inputs: Mapping[str, Any] | None,
            preds: Mapping[str, Any] | None) -> np.ndarray | None:
        row = image.rows[0]  # one sample per image
        mh, mw = (int(v) for v in inputs["mask_hw"][row])
        labels = preds["labels"][row, :mh, :mw].numpy().astype(np.uint8)
        self.writer.add(image.file, image.name, labels)
        return None if image.picture is None else mask_overlay(image.picture, labels)

    def close(self) -> None:
        self.writer.close()

    @property
    def files(self) -> dict[str, str]:
        return {"predictions_csv": "predictions.csv", "masks": "masks/"}

    def readme_lines(self) -> list[str]:
        return ["predictions.csv   one row per image: its mask file, size and pixels per class",
                "masks/            <name>.png: class id per pixel (uint8), at the original image size"]


def keypoint_overlay(picture: np.ndarray, keypoints: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
    """The predicted keypoints (``[N, K, 2]``, original px) drawn on the original picture; pose boxes in yellow."""
    out = picture
    for n in range(len(keypoints)):
        out = draw_keypoints(out, None, keypoints[n])
        if boxes is not None:
            x, y, w, h = (float(v) for v in boxes[n])  # continuous box -> corner pixel centres
            cv2.rectangle(out, (round(x), round(y)), (round(x + w) - 1, round(y + h) - 1), BOX_COLOR, 1)
    return out if len(keypoints) else picture.copy()


def mask_overlay(picture: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The predicted classes blended over the original picture (background left as it is)."""
    return overlay_mask(picture, labels)


def write_overlay(folder: Path, name: str, source: str, picture: np.ndarray) -> Path:
    """``<folder>/<name>.jpg`` for a JPEG input, ``.png`` otherwise; ``picture`` is RGB uint8."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".jpg" if Path(source).suffix.lower() in (".jpg", ".jpeg") else ".png"
    path = folder / f"{name}{suffix}"
    if not cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{path}: could not write the overlay")
    return path


def write_skipped(path: Path, skipped: Sequence[tuple[str, str]]) -> Path:
    """``skipped.csv``: ``file, reason`` per file that was not predicted (a header only when none was)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "reason"])
        writer.writerows(skipped)
    return path


def write_readme(out_dir: Path, checkpoint: str, writer: PredictionWriter, overlays: bool) -> Path:
    """``README.txt``: what each file holds (the writer's own lines first) and the writer's note."""
    lines = [f"Predictions of {checkpoint}", "", *writer.readme_lines()]
    if overlays:
        lines.append("overlays/         the prediction drawn on each original image")
    lines += ["skipped.csv       files that could not be predicted (file, reason)",
              "predict.json      summary: checkpoint, counts, options", ""]
    if writer.readme_note:
        lines.append(writer.readme_note)
    path = out_dir / "README.txt"
    path.write_text("\n".join(lines))
    return path
