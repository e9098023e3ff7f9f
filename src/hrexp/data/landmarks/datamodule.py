"""Landmark datamodules: the family base and one thin subclass per annotation format.

Each Hydra config in ``conf/data/`` maps 1:1 to a class here. :class:`LandmarkDataModule` is the
family on :class:`~hrexp.data.datamodule.HRExpDataModule`: it validates every split
(:func:`~hrexp.data.landmarks.validation.validate_landmark_set`), splits validation off the training
file when there is no validation file, and builds the affine-transform datasets. A format only
says which files make up which split (:meth:`~hrexp.data.datamodule.HRExpDataModule.read_splits`,
into :class:`~hrexp.data.landmarks.records.LandmarkSet`).

Call ``prepare_data()`` then ``setup()`` before asking for ``num_keypoints`` / ``keypoint_names``
(e.g. to build the task's head); Lightning's own later ``setup`` calls are then no-ops.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig
from torch.utils.data import Dataset, default_collate

from hrexp.data.datamodule import HRExpDataModule, ImagePreparer
from hrexp.data.errors import DataError
from hrexp.data.image_cache import ShrunkImageCache
from hrexp.data.landmarks.aasce_reader import check_vertebra_order, read_aasce, read_aasce_angles
from hrexp.data.landmarks.coco_reader import read_coco_keypoints
from hrexp.data.landmarks.csv_reader import read_landmarks_csv
from hrexp.data.landmarks.dataset import LandmarkDataset
from hrexp.data.landmarks.originals import collate_originals, original_fields, reduce_original, refine_factor
from hrexp.data.landmarks.records import LandmarkSet
from hrexp.data.landmarks.synthetic_spine import build_synthetic_spine, synthetic_spine_folder
from hrexp.data.landmarks.validation import check_same_landmarks, validate_landmark_set
from hrexp.data.transforms import LandmarkTransform

log = logging.getLogger(__name__)

# New images carry no annotation: the transforms map an empty keypoint list.
_NO_KEYPOINTS = np.zeros((0, 2), np.float64)
_NO_VISIBLE = np.zeros((0,), bool)


class FitWholeImage(ImagePreparer):
    """Landmarks for ``predict.py``: the image fitted into ``image_size`` (aspect kept and padded, or stretched),
    no augmentation.

    Samples: ``image`` ``[3, h, w]`` normalised and ``matrix`` ``[3, 3]`` (original -> input px), as
    :class:`~hrexp.data.landmarks.dataset.LandmarkDataset` gives them for val/test. With
    ``refine_scale`` (the run's ``data.refine_scale``) also ``original`` and ``original_scale``, made
    from the image already decoded, and the batch is collated by
    :func:`~hrexp.data.landmarks.originals.collate_originals` (adds ``original_hw``).
    """

    def __init__(self, image_size: tuple[int, int], keep_aspect: bool, refine_scale: float | None = None):
        self.transform = LandmarkTransform(image_size=image_size, keep_aspect=keep_aspect, train=False)
        self.refine_factor = refine_factor(refine_scale)
        self.collate = default_collate if self.refine_factor is None else collate_originals

    def __call__(self, image: np.ndarray, path: Path) -> list[dict[str, Any]]:
        sample = self.transform(image, _NO_KEYPOINTS, _NO_VISIBLE)
        out = {"image": sample["image"], "matrix": sample["matrix"]}
        if self.refine_factor is not None:
            out.update(original_fields(reduce_original(image, self.refine_factor), self.refine_factor))
        return [out]


class LandmarkDataModule(HRExpDataModule):
    """Landmark family base; a format subclass implements :meth:`read_splits` (LandmarkSets).

    Args:
        image_size: Network input ``(height, width)``.
        batch_size: Batch size of every loader.
        num_workers: DataLoader workers.
        val_fraction: Validation share when there is no validation file.
        split_seed: Seed of the train/val split (independent of the global seed).
        num_keypoints: Expected landmark count; checked against the data when given.
        keep_aspect: Fit images with their aspect ratio kept (padding) instead of stretched.
        rotation: Training rotation range in degrees (``+-rotation``).
        scale: Training scale range ``(min, max)``.
        brightness: Training brightness jitter (additive, image in [0, 1]).
        contrast: Training contrast jitter (relative).
        flip: Horizontal flip in training: None = on iff the data defines flip pairs; True without
            flip pairs is a configuration error.
        pin_memory: DataLoader ``pin_memory``.
        image_cache: Folder of the images reduced to the working resolution
            (:class:`~hrexp.data.image_cache.ShrunkImageCache`); None decodes every original at
            every epoch.
        refine_scale: For coarse-to-fine refinement: None (off), or ``1/n`` for a whole number n >= 1
            (1.0, 0.5, 0.333.., 0.25): every sample of every split also carries the un-augmented
            original reduced by n (``original`` uint8 ``[3, Hs, Ws]``, ``original_scale``), and the
            loaders collate with :func:`~hrexp.data.landmarks.originals.collate_originals` (padded
            ``original``, ``original_scale`` ``[B]``, ``original_hw`` ``[B, 2]``); see
            :mod:`hrexp.data.landmarks.originals`.
        test_fraction: A test share carved (seeded, with the validation share) from the training file where the
            data has no test file; 0 (default): none, and the test split falls back to the validation split.

    Raises:
        ValueError: A bad ``refine_scale`` (the message names ``data.refine_scale``).
    """

    input_size_option = "data.image_size"

    def __init__(
        self,
        image_size: Sequence[int] = (256, 128),
        batch_size: int = 8,
        num_workers: int = 0,
        val_fraction: float = 0.15,
        split_seed: int = 0,
        num_keypoints: int | None = None,
        keep_aspect: bool = True,
        rotation: float = 10.0,
        scale: Sequence[float] = (0.9, 1.1),
        brightness: float = 0.1,
        contrast: float = 0.1,
        flip: bool | None = None,
        pin_memory: bool = False,
        image_cache: str | Path | None = None,
        refine_scale: float | None = None,
        test_fraction: float = 0.0,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         val_fraction=val_fraction, split_seed=split_seed)
        self.test_fraction = float(test_fraction)
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction={test_fraction!r}: expected a share in [0, 1)")
        self.image_cache = None if image_cache in (None, "", False) else ShrunkImageCache(image_cache)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.expected_num_keypoints = None if num_keypoints is None else int(num_keypoints)
        self.keep_aspect = bool(keep_aspect)
        self.rotation = float(rotation)
        self.scale = (float(scale[0]), float(scale[1]))
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.flip = flip
        self.refine_factor = refine_factor(refine_scale)
        self.refine_scale = None if self.refine_factor is None else 1.0 / self.refine_factor

    # ------------------------------------------------------------------ family hooks
    def complete_splits(self, splits: dict[str, LandmarkSet | None]) -> dict[str, LandmarkSet | None]:
        """Validates every split (images, landmark count, same landmarks) and splits val off train."""
        train, val, test = splits["train"], splits["val"], splits["test"]
        validate_landmark_set(train, split="train", num_keypoints=self.expected_num_keypoints)
        for name, other in (("val", val), ("test", test)):
            if other is not None:
                check_same_landmarks(train, other, name)
                validate_landmark_set(other, split=name, num_keypoints=self.expected_num_keypoints)
        carve_test = test is None and self.test_fraction > 0
        if val is None or carve_test:
            if carve_test:  # a seeded test split too (its images depend only on split_seed and test_fraction)
                train_idx, val_idx, test_idx = self.split_train_val_test(
                    len(train), 0.0 if val is not None else self.val_fraction, self.test_fraction)
                test = train.subset(test_idx, source=self.split_source(train.source, "test"))
                validate_landmark_set(test, split="test", check_images=False)
            else:
                train_idx, val_idx = self.split_train_val(len(train))
            if val is None:
                val = train.subset(val_idx, source=self.split_source(train.source, "val"))
                validate_landmark_set(val, split="val", check_images=False)
            train = train.subset(train_idx, source=self.split_source(train.source, "train"))
            validate_landmark_set(train, split="train", check_images=False)
        return {"train": train, "val": val, "test": test}

    def build_datasets(self, splits: dict[str, LandmarkSet]) -> dict[str, Dataset]:
        """Training datasets augment (rotation, scale, flip, jitter); evaluation ones only fit the input."""
        train = splits["train"]
        if self.flip and not train.flip_pairs:
            raise ValueError(
                f"flip=True but {train.source} defines no flip pairs: a flipped image would keep left "
                f"landmarks labelled left; set flip to null (auto) or false"
            )
        use_flip = bool(train.flip_pairs) if self.flip is None else bool(self.flip)
        common = dict(image_size=self.image_size, keep_aspect=self.keep_aspect, flip_pairs=train.flip_pairs)
        train_tf = LandmarkTransform(
            train=True,
            rotation=self.rotation,
            scale=self.scale,
            flip=use_flip,
            brightness=self.brightness,
            contrast=self.contrast,
            **common,
        )
        eval_tf = LandmarkTransform(train=False, **common)
        log.info(
            "landmark data: %d train, %d val, %d %s images, %d landmarks",
            len(train), len(splits["val"]), len(splits["test"]), self.test_split_name, train.num_keypoints,
        )
        originals = dict(image_cache=self.image_cache, refine_factor=self.refine_factor)
        return {
            "train": LandmarkDataset(train, train_tf, **originals),
            "val": LandmarkDataset(splits["val"], eval_tf, **originals),
            "test": LandmarkDataset(splits["test"], eval_tf, **originals),
        }

    def collate_fn(self, split: str) -> Callable | None:
        """:func:`~hrexp.data.landmarks.originals.collate_originals` when ``refine_scale`` is set (the
        originals differ in size); otherwise None (torch's default collate)."""
        return None if self.refine_factor is None else collate_originals

    @property
    def input_size(self) -> tuple[int, int]:
        """The network input ``(height, width)`` (``data.image_size``)."""
        return self.image_size

    @classmethod
    def prediction_preparer(cls, run_cfg: DictConfig, boxes: Mapping[str, list[Any]] | None = None) -> FitWholeImage:
        """The whole image fitted into ``data.image_size`` as for val/test (:class:`FitWholeImage`)."""
        cls.refuse_boxes(run_cfg, boxes)
        size = tuple(int(s) for s in cls.stored_option(run_cfg, "image_size"))
        return FitWholeImage(size, bool(cls.stored_option(run_cfg, "keep_aspect")), run_cfg.data.get("refine_scale"))

    def sample_name(self, split: str, index: int) -> str:
        record = self.splits[split].records[index]
        return f"{record.image_path} ({record.source})"

    @property
    def dataset_meta(self) -> dict:
        """What a task needs to know about the data: landmark count, names and flip pairs."""
        return {"num_keypoints": self.num_keypoints, "keypoint_names": self.keypoint_names, "flip_pairs": self.flip_pairs}

    # ------------------------------------------------------------------ landmark views of the splits
    @property
    def train_set(self) -> LandmarkSet:
        """Training records."""
        return self.splits["train"]

    @property
    def val_set(self) -> LandmarkSet:
        """Validation records."""
        return self.splits["val"]

    @property
    def test_set(self) -> LandmarkSet:
        """Test records (the validation records when there is no test file; see ``test_split_name``)."""
        return self.splits["test"]

    @property
    def keypoint_names(self) -> list[str]:
        """Landmark names in index order."""
        return list(self.train_set.names)

    @property
    def num_keypoints(self) -> int:
        """Number of landmarks K."""
        return self.train_set.num_keypoints

    @property
    def flip_pairs(self) -> list[tuple[int, int]]:
        """Landmark index pairs swapped by a horizontal flip (empty when none are defined)."""
        return list(self.train_set.flip_pairs)


class CsvLandmarkDataModule(LandmarkDataModule):
    """Landmarks from wide CSV files (see :mod:`hrexp.data.landmarks.csv_reader`).

    Args:
        csv: Training CSV (split into train/val unless ``val_csv`` is given).
        val_csv: Optional validation CSV.
        test_csv: Optional test CSV (otherwise the test split is the validation split).
        pixel_spacing: Spacing (mm per pixel) for rows without a spacing cell.
        image_column: Image-path column name (the first column when absent).
        spacing_column: Pixel-spacing column name.
        **common: :class:`LandmarkDataModule` arguments.
    """

    def __init__(
        self,
        csv: str | Path,
        val_csv: str | Path | None = None,
        test_csv: str | Path | None = None,
        pixel_spacing: float | None = None,
        image_column: str = "image",
        spacing_column: str | None = "pixel_spacing",
        **common,
    ):
        super().__init__(**common)
        self.csv = self.resolve_path(csv)
        self.val_csv = self.resolve_path(val_csv)
        self.test_csv = self.resolve_path(test_csv)
        self.pixel_spacing = pixel_spacing
        self.image_column = image_column
        self.spacing_column = spacing_column

    def _read(self, path: Path | None) -> LandmarkSet | None:
        if path is None:
            return None
        return read_landmarks_csv(
            path, image_column=self.image_column, spacing_column=self.spacing_column, pixel_spacing=self.pixel_spacing
        )

    def read_splits(self) -> dict[str, LandmarkSet | None]:
        return {"train": self._read(self.csv), "val": self._read(self.val_csv), "test": self._read(self.test_csv)}


class CocoLandmarkDataModule(LandmarkDataModule):
    """Landmarks from COCO keypoints JSON files (one sample per annotation, whole image).

    Args:
        json: Training JSON (split into train/val unless ``val_json`` is given).
        val_json: Optional validation JSON.
        test_json: Optional test JSON.
        pixel_spacing: Spacing (mm per pixel) for images without a ``pixel_spacing`` field.
        category_id: Category to read when the file has several with keypoint names.
        **common: :class:`LandmarkDataModule` arguments.
    """

    def __init__(
        self,
        json: str | Path,
        val_json: str | Path | None = None,
        test_json: str | Path | None = None,
        pixel_spacing: float | None = None,
        category_id: int | None = None,
        **common,
    ):
        super().__init__(**common)
        self.json = self.resolve_path(json)
        self.val_json = self.resolve_path(val_json)
        self.test_json = self.resolve_path(test_json)
        self.pixel_spacing = pixel_spacing
        self.category_id = category_id

    def _read(self, path: Path | None) -> LandmarkSet | None:
        if path is None:
            return None
        return read_coco_keypoints(path, pixel_spacing=self.pixel_spacing, category_id=self.category_id)

    def read_splits(self) -> dict[str, LandmarkSet | None]:
        return {"train": self._read(self.json), "val": self._read(self.val_json), "test": self._read(self.test_json)}


class AasceDataModule(LandmarkDataModule):
    """AASCE 2019 spine X-rays: train/val = seeded split of ``training``, test = ``test``.

    Args:
        root: Dataset folder (``data/`` and ``labels/``).
        vertebra_order: ``as_given`` or ``top_to_bottom`` (:func:`~hrexp.data.landmarks.aasce_reader.read_aasce`).
        **common: :class:`LandmarkDataModule` arguments.
    """

    def __init__(self, root: str | Path, vertebra_order: str = "as_given", **common):
        check_vertebra_order(vertebra_order, "data.vertebra_order")  # refused when the run is built
        super().__init__(**common)
        self.root = Path(root)
        self.vertebra_order = vertebra_order

    def read_splits(self) -> dict[str, LandmarkSet | None]:
        if not self.root.is_dir():
            raise DataError(f"{self.root}: AASCE data folder not found (set data.root or paths.shared_data)")
        return {"train": read_aasce(self.root, "training", self.vertebra_order), "val": None,
                "test": read_aasce(self.root, "test", self.vertebra_order)}

    def reference_angles(self, split: str) -> list[np.ndarray]:
        """The Cobb angles of ``angles.csv`` for each record of ``split`` (in its order), for eval's report."""
        records = self.splits[split].records
        # data/<AASCE split>/<name>.jpg: the folder says which angles.csv holds the image
        tables = {folder: read_aasce_angles(self.root, folder) for folder in {Path(r.image_path).parent.name for r in records}}
        return [tables[Path(r.image_path).parent.name][Path(r.image_path).name] for r in records]


class SyntheticSpineDataModule(CsvLandmarkDataModule):
    """The synthetic spine set (built on first use into ``cache_dir``), read as CSV.

    Args:
        cache_dir: Cache folder of the generated images and CSVs; each parameter set is built into
            a folder of its own there (:func:`~hrexp.data.landmarks.synthetic_spine.synthetic_spine_folder`).
        num_train: Generated training images (split into train/val).
        num_test: Generated test images.
        seed: Generator seed of the data set (not the split seed).
        original_size: Generated image ``(height, width)``.
        num_vertebrae: Blocks per image (landmarks = 4 x this).
        **common: :class:`LandmarkDataModule` arguments.
    """

    def __init__(
        self,
        cache_dir: str | Path,
        num_train: int = 240,
        num_test: int = 60,
        seed: int = 0,
        original_size: Sequence[int] = (512, 256),
        num_vertebrae: int = 10,
        **common,
    ):
        build_args = dict(
            num_train=int(num_train),
            num_test=int(num_test),
            seed=int(seed),
            image_size=(int(original_size[0]), int(original_size[1])),
            num_vertebrae=int(num_vertebrae),
        )
        cache_dir = synthetic_spine_folder(cache_dir, **build_args)
        super().__init__(csv=cache_dir / "train.csv", test_csv=cache_dir / "test.csv", **common)
        self.cache_dir = cache_dir
        self.build_args = build_args
        if num_test == 0:
            self.test_csv = None

    def prepare_data(self) -> None:
        """Builds the cache (no-op when it is already there with the same parameters)."""
        build_synthetic_spine(self.cache_dir, **self.build_args)

    def read_splits(self) -> dict[str, LandmarkSet | None]:
        # Also here: setup() may run without prepare_data() (tests, notebooks); a no-op when built.
        build_synthetic_spine(self.cache_dir, **self.build_args)
        return super().read_splits()
