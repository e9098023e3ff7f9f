"""Top-down pose datamodule: COCO keypoints files -> person crops, with the split's COCO ground truth.

Every split is read and checked in ``setup()`` (before training): annotation files, image files,
keypoint metadata (names, flip pairs, OKS sigmas, skeleton) and the detection file when one is
given. Paths may be relative to ``root`` (e.g. a COCO folder with ``annotations/``, ``train2017/``,
``val2017/``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from lightning import LightningDataModule
from torch.utils.data import DataLoader

from hrexp.data.datamodule import split_indices
from hrexp.data.keypoint_meta import KeypointMeta, load_meta
from hrexp.data.loaders import make_loader
from hrexp.data.pose_dataset import PoseDataset
from hrexp.data.pose_reader import PoseSplit, read_detections, read_pose_coco, subset_images
from hrexp.data.records import DataError
from hrexp.data.topdown import TopDownTransform

log = logging.getLogger(__name__)


class PoseDataModule(LightningDataModule):
    """COCO-format top-down keypoints (any keypoint set; see :mod:`hrexp.data.keypoint_meta`).

    Args:
        train_json: Training annotations (split by image into train/val unless ``val_json`` is given).
        root: Folder that relative paths are resolved against (None: the working directory).
        train_images: Folder of the training images (None: the annotation file's folder).
        val_json: Validation annotations (ground-truth boxes).
        val_images: Folder of the validation images.
        test_json: Test annotations (None: the validation split).
        test_images: Folder of the test images.
        test_bbox_file: COCO detection results whose person boxes the test split crops (None: the
            ground-truth boxes). AP is always computed against ``test_json``'s ground truth.
        bbox_score_threshold: Detections scoring below this are dropped.
        metadata: Keypoint metadata file, shipped name (``coco_person``) or inline mapping; None takes
            it from the annotation file's category.
        category_id: The category to read when a file has several.
        image_size: Network input ``(height, width)``.
        batch_size: Batch size of every loader.
        num_workers: DataLoader workers.
        pin_memory: DataLoader ``pin_memory``.
        val_fraction: Share of the training images used for validation without ``val_json``.
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

    def __init__(
        self,
        train_json: str | Path,
        root: str | Path | None = None,
        train_images: str | Path | None = None,
        val_json: str | Path | None = None,
        val_images: str | Path | None = None,
        test_json: str | Path | None = None,
        test_images: str | Path | None = None,
        test_bbox_file: str | Path | None = None,
        bbox_score_threshold: float = 0.0,
        metadata: str | Path | Mapping[str, Any] | None = None,
        category_id: int | None = None,
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
        super().__init__()
        self.root = None if root in (None, "") else Path(root)
        self.paths = {
            "train_json": self._path(train_json), "train_images": self._path(train_images),
            "val_json": self._path(val_json), "val_images": self._path(val_images),
            "test_json": self._path(test_json), "test_images": self._path(test_images),
            "test_bbox_file": self._path(test_bbox_file),
        }
        if self.paths["train_json"] is None:
            raise DataError("data.train_json: no training annotation file given")
        self.bbox_score_threshold = float(bbox_score_threshold)
        self.metadata = metadata
        self.category_id = category_id
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.augment = dict(
            padding=float(padding), scale=tuple(scale), rotation=float(rotation), rotation_prob=float(rotation_prob),
            half_body_min_keypoints=int(half_body_min_keypoints), brightness=float(brightness),
            contrast=float(contrast),
        )
        self.flip = flip
        self.half_body_prob = float(half_body_prob)
        self.splits: dict[str, PoseSplit] | None = None
        self.datasets: dict[str, PoseDataset] = {}
        self.test_split_name = "test"

    def _path(self, value: str | Path | None) -> Path | None:
        if value in (None, ""):
            return None
        path = Path(value).expanduser()
        if not path.is_absolute() and self.root is not None:
            path = self.root / path
        return path

    # ------------------------------------------------------------------ reading
    def _read(self, split: str, meta: KeypointMeta | None) -> PoseSplit | None:
        path = self.paths[f"{split}_json"]
        if path is None:
            return None
        return read_pose_coco(path, image_dir=self.paths[f"{split}_images"], metadata=meta, category_id=self.category_id)

    def setup(self, stage: str | None = None) -> None:
        """Reads and checks every split once (idempotent), then builds the datasets."""
        if self.splits is not None:
            return
        meta = load_meta(self.metadata)
        train = self._read("train", meta)
        meta = train.meta
        val, test = self._read("val", meta), self._read("test", meta)
        if val is None:
            ids = sorted({i.image_id for i in train.instances})
            if len(ids) < 2:
                raise DataError(f"{train.source}: {len(ids)} image(s) with people: too few to split off validation "
                                f"images; give data.val_json")
            train_idx, val_idx = split_indices(len(ids), self.val_fraction, self.split_seed)
            val = subset_images(train, {ids[i] for i in val_idx}, f"{train.source} [val split, seed {self.split_seed}]")
            train = subset_images(train, {ids[i] for i in train_idx}, f"{train.source} [train split, seed {self.split_seed}]")
        if test is None:
            test, self.test_split_name = val, "val"
            log.warning("no test annotations: the test split is the validation split")
        else:
            self.test_split_name = "test"
        if self.paths["test_bbox_file"] is not None:
            test = read_detections(self.paths["test_bbox_file"], test, self.bbox_score_threshold)
        for name, split in (("train", train), ("val", val)):
            if not split.instances:
                raise DataError(f"{split.source}: no annotated person to {'train on' if name == 'train' else 'validate on'}")

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
        self.meta = meta
        self.splits = {"train": train, "val": val, "test": test}
        self.datasets = {"train": PoseDataset(train, train_tf), "val": PoseDataset(val, eval_tf),
                         "test": PoseDataset(test, eval_tf)}
        log.info("pose data: %d train, %d val, %d %s person boxes (%s), %d keypoints", len(train), len(val),
                 len(test), self.test_split_name, test.boxes, meta.num_keypoints)

    @property
    def dataset_meta(self) -> dict[str, Any]:
        """Keypoint count, names, flip pairs, OKS sigmas, skeleton and upper body."""
        if self.splits is None:
            raise RuntimeError("PoseDataModule: call setup() before dataset_meta")
        return self.meta.as_dict()

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if self.splits is None:
            raise RuntimeError("PoseDataModule: call setup() before asking for data")
        return make_loader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                           num_workers=self.num_workers, pin_memory=self.pin_memory)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
