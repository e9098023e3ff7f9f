"""Top-down pose datamodules: the family base (person crops, keypoint metadata, detections) and the COCO format.

:class:`PoseDataModule` is the family on :class:`~hrexp.data.datamodule.HRExpDataModule`: it checks
the splits (same keypoints, people to train and validate on), splits validation images off the
training split when the format gives no validation split, swaps the test split's boxes for a
detection file's when one is given, and builds the crop datasets (augmentation from the keypoint
metadata: flip pairs, upper body). A format reads its files into
:class:`~hrexp.data.pose.reader.PoseSplit` in ``read_splits()``: :class:`CocoPoseDataModule` reads
COCO keypoints files.

Every split is read and checked in ``setup()`` (before training): annotation files, image files,
keypoint metadata (names, flip pairs, OKS sigmas, skeleton) and the detection file when one is
given. Paths may be relative to ``root`` (e.g. a COCO folder with ``annotations/``, ``train2017/``,
``val2017/``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from hrexp.data.datamodule import HRExpDataModule, ImagePreparer
from hrexp.data.errors import DataError
from hrexp.data.pose.dataset import PoseDataset
from hrexp.data.pose.keypoint_meta import KeypointMeta, load_meta
from hrexp.data.pose.reader import PoseSplit, clip_box, read_detections, read_pose_coco, subset_images
from hrexp.data.pose.topdown import TopDownTransform

log = logging.getLogger(__name__)

# The image id of a crop whose box names none (predict.py without a boxes file, or boxes without ids).
UNKNOWN_IMAGE_ID = -1
# New images carry no annotation: the transforms map an empty keypoint list.
_NO_KEYPOINTS = np.zeros((0, 2), np.float64)
_NO_VISIBLE = np.zeros((0,), bool)


class TopDownCrops(ImagePreparer):
    """Top-down pose for ``predict.py``: one crop per person box of the image, no augmentation.

    Args:
        image_size: Network input ``(height, width)``.
        padding: Box enlargement (``data.padding``).
        boxes: Boxes by image file name (objects with ``bbox`` ``(x, y, w, h)`` in COCO's continuous
            coordinates, ``score`` and ``image_id``, as :func:`hrexp.prediction.boxes.read_boxes` reads them);
            None: the whole image is one box. Boxes are clipped to the image as the pose reader clips them.

    Samples: ``image``, ``matrix`` (as :class:`~hrexp.data.pose.dataset.PoseDataset`), ``bbox`` ``[4]``
    (the clipped box, COCO continuous coordinates), ``box_score`` and ``image_id`` (-1 when unknown).
    """

    per_instance = True

    def __init__(self, image_size: tuple[int, int], padding: float, boxes: Mapping[str, Sequence[Any]] | None):
        self.transform = TopDownTransform(image_size=image_size, padding=padding, train=False)
        self.boxes = None if boxes is None else dict(boxes)

    def person_boxes(self, path: Path, size_hw: tuple[int, int]) -> list[tuple[tuple[float, ...], float, int | None]]:
        """``(bbox, score, image_id)`` of the image's boxes clipped to it (empty ones dropped); the whole image
        without a boxes file."""
        if self.boxes is None:
            return [((0.0, 0.0, float(size_hw[1]), float(size_hw[0])), 1.0, None)]
        out = []
        for box in self.boxes.get(path.name, []):
            clipped = clip_box(list(box.bbox), size_hw)
            if clipped is not None:
                out.append((tuple(float(v) for v in clipped), float(box.score), box.image_id))
        return out

    def __call__(self, image: np.ndarray, path: Path) -> list[dict[str, Any]]:
        samples = []
        for bbox, score, image_id in self.person_boxes(path, image.shape[:2]):
            sample = self.transform(image, _NO_KEYPOINTS, _NO_VISIBLE, bbox)
            samples.append({
                "image": sample["image"], "matrix": sample["matrix"],
                "bbox": torch.tensor(bbox, dtype=torch.float64),
                "box_score": torch.tensor(score, dtype=torch.float64),
                "image_id": torch.tensor(UNKNOWN_IMAGE_ID if image_id is None else image_id, dtype=torch.int64),
            })
        return samples


class PoseDataModule(HRExpDataModule):
    """Top-down keypoints of any keypoint set (see :mod:`hrexp.data.pose.keypoint_meta`): the family base.

    A format subclass implements :meth:`read_splits` (PoseSplits); :meth:`load_metadata` gives it the
    configured metadata to read the annotations with.

    Args:
        root: Folder that relative paths are resolved against (None: the working directory).
        test_bbox_file: COCO detection results whose person boxes the test split crops (None: the
            ground-truth boxes). AP is always computed against the test split's ground truth.
        bbox_score_threshold: Detections scoring below this are dropped.
        metadata: Keypoint metadata file, shipped name (``coco_person``) or inline mapping; None takes
            it from the annotation file.
        image_size: Network input ``(height, width)``.
        batch_size: Batch size of every loader.
        num_workers: DataLoader workers.
        pin_memory: DataLoader ``pin_memory``.
        val_fraction: Share of the training images used for validation without a validation split.
        split_seed: Seed of that split.
        padding: Box enlargement before cropping.
        scale: Training scale range of the crop region.
        rotation: Training rotation range (+- degrees).
        rotation_prob: Probability of a rotation.
        flip: Random horizontal flip: None = on iff the metadata has flip pairs.
        half_body_prob: Probability of a half-body crop; needs the metadata's ``upper_body`` (without
            it half-body crops are off, with a warning).
        half_body_min_keypoints: A half-body crop needs more labelled keypoints than this.
        brightness: Training brightness jitter.
        contrast: Training contrast jitter.
    """

    input_size_option = "data.image_size"

    def __init__(
        self,
        root: str | Path | None = None,
        test_bbox_file: str | Path | None = None,
        bbox_score_threshold: float = 0.0,
        metadata: str | Path | Mapping[str, Any] | None = None,
        image_size: Sequence[int] = (256, 192),
        batch_size: int = 32,
        num_workers: int = 0,
        pin_memory: bool = False,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        padding: float = 1.25,
        scale: Sequence[float] = (0.65, 1.35),
        rotation: float = 40.0,
        rotation_prob: float = 0.6,
        flip: bool | None = None,
        half_body_prob: float = 0.3,
        half_body_min_keypoints: int = 8,
        brightness: float = 0.0,
        contrast: float = 0.0,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         val_fraction=val_fraction, split_seed=split_seed, root=root)
        self.test_bbox_file = self.resolve_path(test_bbox_file)
        self.bbox_score_threshold = float(bbox_score_threshold)
        self.metadata = metadata
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.augment = dict(
            padding=float(padding), scale=tuple(scale), rotation=float(rotation), rotation_prob=float(rotation_prob),
            half_body_min_keypoints=int(half_body_min_keypoints), brightness=float(brightness),
            contrast=float(contrast),
        )
        self.flip = flip
        self.half_body_prob = float(half_body_prob)

    def load_metadata(self) -> KeypointMeta | None:
        """``data.metadata`` read and validated (None: none configured, the annotations supply it)."""
        return load_meta(self.metadata)

    # ------------------------------------------------------------------ family hooks
    def complete_splits(self, splits: dict[str, PoseSplit | None]) -> dict[str, PoseSplit | None]:
        """Checks that every split has the training keypoints and that there are people to train and
        validate on; splits validation images off the training split (by image) when there is none."""
        train, val, test = splits["train"], splits["val"], splits["test"]
        names = list(train.meta.names)
        for name, other in (("val", val), ("test", test)):
            if other is not None and list(other.meta.names) != names:
                raise DataError(f"{other.source}: split {name!r} has keypoints {list(other.meta.names)}, expected "
                                f"{names} as in {train.source}")
        if val is None:
            ids = sorted({i.image_id for i in train.instances})
            if len(ids) < 2:
                raise DataError(f"{train.source}: {len(ids)} image(s) with people: too few to split off validation "
                                f"images; give a validation split (data.val_json)")
            train_idx, val_idx = self.split_train_val(len(ids))
            val = subset_images(train, {ids[i] for i in val_idx}, self.split_source(train.source, "val"))
            train = subset_images(train, {ids[i] for i in train_idx}, self.split_source(train.source, "train"))
        for name, split in (("train", train), ("val", val)):
            if not split.instances:
                raise DataError(f"{split.source}: no annotated person to {'train on' if name == 'train' else 'validate on'}")
        return {"train": train, "val": val, "test": test}

    def build_datasets(self, splits: dict[str, PoseSplit]) -> dict[str, Dataset]:
        """Crop datasets; with ``test_bbox_file`` the test split (kept in ``splits``) crops the detections."""
        if self.test_bbox_file is not None:
            splits["test"] = read_detections(self.test_bbox_file, splits["test"], self.bbox_score_threshold)
        train, val, test = splits["train"], splits["val"], splits["test"]
        meta = train.meta
        if self.flip and not meta.flip_pairs:
            raise DataError(f"data.flip=true but {meta.source or train.source} defines no flip_pairs")
        flip = bool(meta.flip_pairs) if self.flip is None else bool(self.flip)
        half_body = self.half_body_prob
        if half_body > 0 and not meta.upper_body:
            log.warning("half_body_prob=%s ignored: the keypoint metadata defines no upper_body", half_body)
            half_body = 0.0
        common = dict(image_size=self.image_size, padding=self.augment["padding"], flip_pairs=meta.flip_pairs,
                      upper_body=meta.upper_body)
        train_tf = TopDownTransform(train=True, flip=flip, half_body_prob=half_body, **common,
                                    **{k: v for k, v in self.augment.items() if k != "padding"})
        eval_tf = TopDownTransform(train=False, **common)
        log.info("pose data: %d train, %d val, %d %s person boxes (%s), %d keypoints", len(train), len(val),
                 len(test), self.test_split_name, test.boxes, meta.num_keypoints)
        return {"train": PoseDataset(train, train_tf), "val": PoseDataset(val, eval_tf),
                "test": PoseDataset(test, eval_tf)}

    @property
    def meta(self) -> KeypointMeta:
        """The keypoint metadata of the data (after ``setup()``)."""
        return self.splits["train"].meta

    @property
    def dataset_meta(self) -> dict[str, Any]:
        """Keypoint count, names, flip pairs, OKS sigmas, skeleton and upper body."""
        return self.meta.as_dict()

    @property
    def input_size(self) -> tuple[int, int]:
        """The crop size ``(height, width)`` the network sees (``data.image_size``)."""
        return self.image_size

    @classmethod
    def prediction_preparer(cls, run_cfg: DictConfig, boxes: Mapping[str, Sequence[Any]] | None = None) -> TopDownCrops:
        """One crop per person box (``boxes``; without: the whole image) as for val/test (:class:`TopDownCrops`)."""
        size = tuple(int(s) for s in cls.stored_option(run_cfg, "image_size"))
        return TopDownCrops(size, float(cls.stored_option(run_cfg, "padding")), boxes)

    def sample_name(self, split: str, index: int) -> str:
        instance = self.splits[split].instances[index]
        return f"{instance.image_path} ({instance.source or f'image id {instance.image_id}'})"


class CocoPoseDataModule(PoseDataModule):
    """Person keypoints from COCO keypoints files (one per split).

    Args:
        train_json: Training annotations (split by image into train/val unless ``val_json`` is given).
        train_images: Folder of the training images (None: the annotation file's folder).
        val_json: Validation annotations (ground-truth boxes).
        val_images: Folder of the validation images.
        test_json: Test annotations (None: the validation split).
        test_images: Folder of the test images.
        category_id: The category to read when a file has several.
        **common: :class:`PoseDataModule` arguments (``root``, ``metadata``, ``test_bbox_file``, ...).
    """

    def __init__(
        self,
        train_json: str | Path,
        train_images: str | Path | None = None,
        val_json: str | Path | None = None,
        val_images: str | Path | None = None,
        test_json: str | Path | None = None,
        test_images: str | Path | None = None,
        category_id: int | None = None,
        **common,
    ):
        super().__init__(**common)
        self.paths = {
            "train_json": self.resolve_path(train_json), "train_images": self.resolve_path(train_images),
            "val_json": self.resolve_path(val_json), "val_images": self.resolve_path(val_images),
            "test_json": self.resolve_path(test_json), "test_images": self.resolve_path(test_images),
        }
        if self.paths["train_json"] is None:
            raise DataError("data.train_json: no training annotation file given")
        self.category_id = category_id

    def _read(self, split: str, meta: KeypointMeta | None) -> PoseSplit | None:
        path = self.paths[f"{split}_json"]
        if path is None:
            return None
        return read_pose_coco(path, image_dir=self.paths[f"{split}_images"], metadata=meta, category_id=self.category_id)

    def read_splits(self) -> dict[str, PoseSplit | None]:
        """The training file's metadata (the configured one, checked against the file) reads the others."""
        train = self._read("train", self.load_metadata())
        return {"train": train, "val": self._read("val", train.meta), "test": self._read("test", train.meta)}
