"""Semantic segmentation datamodules: the family base (masks, checks, transforms, padding) and the folder format.

:class:`SegDataModule` is the family on :class:`~hrexp.data.datamodule.HRExpDataModule`. Its
``setup()`` checks everything before training, so that bad data fails in seconds with a precise
message: equal image and mask sizes (from the file headers) and, with ``check_masks``, every mask's
values against the decoder (which also gives the class pixel counts of the training split: class
weights and the all-background baseline). Validation and test are split off the training split
(seeded) when the format gives none. A format reads its files into
:class:`~hrexp.data.segmentation.reader.SegSet` in ``read_splits()``: :class:`SegFolderDataModule`
pairs ``images/`` and ``masks/`` folders by file stem.

Batches (see :func:`~hrexp.data.segmentation.transforms.pad_collate`): ``image`` float
``[B, 3, Hp, Wp]`` normalised and padded with 0 to multiples of ``size_divisor``, ``mask`` int64
``[B, Hm, Wm]`` padded with ``ignore_index``, ``image_hw`` / ``mask_hw`` int64 ``[B, 2]`` (the
unpadded sizes) and ``index`` int64 ``[B]``. Validation and test masks are at the original resolution.
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig
from PIL import UnidentifiedImageError
from torch.utils.data import Dataset

from hrexp.data.datamodule import HRExpDataModule, ImagePreparer
from hrexp.data.errors import DataError, ErrorCollector
from hrexp.data.images import read_image_size
from hrexp.data.segmentation.dataset import SegDataset
from hrexp.data.segmentation.reader import MaskDecoder, Pair, SegSet, pair_folder
from hrexp.data.segmentation.transforms import SegEvalTransform, SegTrainTransform, pad_collate

log = logging.getLogger(__name__)


class SegWholeImage(ImagePreparer):
    """Segmentation for ``predict.py``: the image at its own size (or shrunk to ``eval_max_size``), padded in the
    batch.

    A blank mask of the image's size stands in for the missing ground truth: the task reads only its
    size (``mask_hw``: the logits are resized back to the ORIGINAL image size before the argmax).
    """

    def __init__(self, max_size: int | None, size_divisor: int, ignore_index: int):
        self.transform = SegEvalTransform(max_size=max_size)
        self.collate = functools.partial(pad_collate, size_divisor=size_divisor, ignore_index=ignore_index)

    def __call__(self, image: np.ndarray, path: Path) -> list[dict[str, Any]]:
        return [self.transform(image, np.zeros(image.shape[:2], np.uint8))]


class SegDataModule(HRExpDataModule):
    """Segmentation family base; a format subclass implements :meth:`read_splits` (SegSets).

    Args:
        num_classes: Number of classes (ids ``0 .. num_classes - 1``).
        class_names: Class names (default ``["background", "class1", ...]``).
        value_map: Raw mask value -> class id (or ``ignore_index``); exclusive with ``threshold``.
        threshold: Binary masks: value ``> threshold`` -> 1 (JPG masks); exclusive with ``value_map``.
        ignore_index: Label of pixels not scored (void, padding).
        val_fraction: Validation share of the training split when the format gives no validation split.
        test_fraction: Test share of the training split when the format gives no test split (0: the
            test split is the validation split, see ``test_split_name``).
        split_seed: Seed of those splits (its own generator, independent of the global seed).
        crop_size: Training crop ``(height, width)``.
        scale: Training rescale range ``(min, max)``.
        flip: Training horizontal flip.
        brightness: Training brightness jitter (additive, image in [0, 1]).
        contrast: Training contrast jitter (relative).
        saturation: Training saturation jitter (relative).
        eval_max_size: Evaluation images whose long side exceeds this are shrunk to it (masks never).
        size_divisor: Batched images are padded to multiples of this.
        batch_size: Training batch size.
        eval_batch_size: Validation / test batch size.
        num_workers: DataLoader workers.
        pin_memory: DataLoader ``pin_memory``.
        check_masks: Decode every mask in ``setup()`` to check its values (and count class pixels).
        root: Folder that :meth:`resolve_path` resolves relative paths against.

    Raises:
        ValueError: Inconsistent options (class names, value map / threshold), at construction.
    """

    input_size_option = "data.crop_size"

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        value_map: Mapping[int, int] | None = None,
        threshold: float | None = None,
        ignore_index: int = 255,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        crop_size: Sequence[int] = (512, 512),
        scale: Sequence[float] = (0.5, 2.0),
        flip: bool = True,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        eval_max_size: int | None = None,
        size_divisor: int = 32,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        check_masks: bool = True,
        root: str | Path | None = None,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                         pin_memory=pin_memory, val_fraction=val_fraction, split_seed=split_seed, root=root)
        self.num_classes = int(num_classes)
        names = [f"class{i}" if i else "background" for i in range(self.num_classes)]
        self.class_names = names if class_names is None else [str(n) for n in class_names]
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names {self.class_names}, expected num_classes="
                f"{self.num_classes}"
            )
        self.ignore_index = int(ignore_index)
        # Built now: a bad value_map / threshold fails at construction, not after reading the data.
        self.decoder = MaskDecoder(self.num_classes, value_map=value_map, threshold=threshold, ignore_index=ignore_index)
        self.test_fraction = float(test_fraction)
        self.train_transform = SegTrainTransform(
            crop_size=crop_size,
            scale=scale,
            flip=flip,
            brightness=brightness,
            contrast=contrast,
            saturation=saturation,
            ignore_index=self.ignore_index,
        )
        self.crop_size = self.train_transform.crop_size
        self.eval_transform = SegEvalTransform(max_size=eval_max_size)
        self.size_divisor = int(size_divisor)
        if self.size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.check_masks = bool(check_masks)
        self._class_pixel_counts: np.ndarray | None = None

    # ------------------------------------------------------------------ family hooks
    def complete_splits(self, splits: dict[str, SegSet | None]) -> dict[str, SegSet | None]:
        """Splits val and test off the training split where the format gave none, then checks every
        pair's sizes and (with ``check_masks``) mask values, counting the training split's class pixels.

        Raises:
            DataError: Too few pairs to split, image/mask size mismatches, unreadable files, or mask
                values the decoder does not accept (all problems of a split are reported together).
        """
        read, val, test = splits["train"], splits["val"], splits["test"]
        if val is None and self.val_fraction <= 0.0:
            raise DataError(f"{read.source}: no validation split given and val_fraction={self.val_fraction}: "
                            f"expected val_fraction > 0")
        try:
            train_idx, val_idx, test_idx = self.split_train_val_test(
                len(read), 0.0 if val is not None else self.val_fraction, 0.0 if test is not None else self.test_fraction
            )
        except ValueError as exc:
            raise DataError(f"{read.source}: {len(read)} image/mask pairs: {exc}") from None
        for other in (read, val, test):
            if other is not None:
                self._check_sizes(other)
        if self.check_masks:
            counts = self._check_masks(read)
            self._class_pixel_counts = counts[train_idx].sum(axis=0) if train_idx else np.zeros(self.num_classes, np.int64)
            for other in (val, test):
                if other is not None:
                    self._check_masks(other)
        if val is None:
            val = read.subset(val_idx, self.split_source(read.source, "val"))
        if test is None and test_idx:
            test = read.subset(test_idx, self.split_source(read.source, "test"))
        train = read if len(train_idx) == len(read) else read.subset(train_idx, self.split_source(read.source, "train"))
        return {"train": train, "val": val, "test": test}

    def build_datasets(self, splits: dict[str, SegSet]) -> dict[str, Dataset]:
        """Random crops for training; whole images (masks at their original resolution) for evaluation."""
        log.info(
            "segmentation data: %d train, %d val, %d %s images, %d classes (%s)",
            len(splits["train"]), len(splits["val"]), len(splits["test"]), self.test_split_name, self.num_classes,
            splits["train"].source,
        )
        return {
            "train": SegDataset(splits["train"].pairs, self.decoder, self.train_transform),
            "val": SegDataset(splits["val"].pairs, self.decoder, self.eval_transform),
            "test": SegDataset(splits["test"].pairs, self.decoder, self.eval_transform),
        }

    def collate_fn(self, split: str) -> Callable:
        """Padding collate (images and masks differ in size); a partial of a module-level function, so
        worker processes can pickle it."""
        return functools.partial(pad_collate, size_divisor=self.size_divisor, ignore_index=self.ignore_index)

    @property
    def input_size(self) -> tuple[int, int]:
        """The training crop ``(height, width)`` (``data.crop_size``); evaluation sees whole images."""
        return self.crop_size

    @classmethod
    def prediction_preparer(cls, run_cfg: DictConfig, boxes: Mapping[str, list[Any]] | None = None) -> SegWholeImage:
        """The whole image, shrunk to ``data.eval_max_size`` as for val/test (:class:`SegWholeImage`)."""
        cls.refuse_boxes(run_cfg, boxes)
        max_size = cls.stored_option(run_cfg, "eval_max_size")
        return SegWholeImage(None if max_size is None else int(max_size),
                             int(cls.stored_option(run_cfg, "size_divisor")), int(cls.stored_option(run_cfg, "ignore_index")))

    def sample_name(self, split: str, index: int) -> str:
        pair_id, image_path, mask_path = self.splits[split].pairs[index]
        return f"{image_path} + {mask_path.name} (pair {pair_id!r})"

    @property
    def dataset_meta(self) -> dict:
        """What a task needs to know about the data: ``num_classes``, ``class_names``, ``ignore_index``."""
        self.splits  # noqa: B018 (raises before setup)
        return {"num_classes": self.num_classes, "class_names": list(self.class_names), "ignore_index": self.ignore_index}

    # ------------------------------------------------------------------ checks
    @staticmethod
    def _check_sizes(pairs: SegSet) -> None:
        """Image and mask of every pair have the same size (headers only: no pixel decoding)."""
        errors = ErrorCollector(pairs.source)
        for pair_id, image_path, mask_path in pairs.pairs:
            sizes = []
            for path in (image_path, mask_path):
                try:
                    sizes.append(read_image_size(path))
                except (UnidentifiedImageError, OSError, ValueError) as exc:
                    errors.add(f"pair {pair_id}", f"{path} is not a readable image file ({exc.__class__.__name__})")
            if len(sizes) == 2 and sizes[0] != sizes[1]:
                errors.add(
                    f"pair {pair_id}",
                    f"image {image_path} is {sizes[0]} (h, w) but mask {mask_path} is {sizes[1]}: expected the same size",
                )
        errors.raise_if_any()

    def _check_masks(self, pairs: SegSet) -> np.ndarray:
        """Decodes every mask once; returns the per-pair class pixel counts, int64 ``[N, num_classes]``."""

        def count(pair: Pair) -> np.ndarray | DataError:
            try:
                mask = self.decoder.decode(pair[2])
            except DataError as exc:
                return exc
            return np.bincount(mask.ravel(), minlength=256)[: self.num_classes].astype(np.int64)

        # Threads: cv2 decoding releases the GIL, so the check of thousands of masks takes seconds.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(count, pairs.pairs))
        errors = ErrorCollector(pairs.source)
        for (pair_id, _, _), result in zip(pairs.pairs, results):
            if isinstance(result, DataError):
                errors.add(f"pair {pair_id}", str(result))
        errors.raise_if_any()
        return np.stack(results) if results else np.zeros((0, self.num_classes), np.int64)

    # ------------------------------------------------------------------ segmentation views of the splits
    @property
    def class_pixel_counts(self) -> np.ndarray | None:
        """Pixels of each class in the training split, int64 ``[num_classes]`` (None without ``check_masks``).

        Ignored pixels are not counted. ``counts[0] / counts.sum()`` is the pixel accuracy of the
        all-background prediction.
        """
        self.splits  # noqa: B018 (raises before setup)
        return None if self._class_pixel_counts is None else self._class_pixel_counts.copy()

    @property
    def train_pairs(self) -> list[Pair]:
        """``(id, image_path, mask_path)`` of the training split."""
        return list(self.splits["train"].pairs)

    @property
    def val_pairs(self) -> list[Pair]:
        """``(id, image_path, mask_path)`` of the validation split."""
        return list(self.splits["val"].pairs)

    @property
    def test_pairs(self) -> list[Pair]:
        """``(id, image_path, mask_path)`` of the test split (the validation split when ``test_split_name == "val"``)."""
        return list(self.splits["test"].pairs)


class SegFolderDataModule(SegDataModule):
    """Segmentation data from ``root/images`` + ``root/masks`` (paired by file stem).

    Args:
        root: Training folder (split into train/val/test unless ``val_root`` / ``test_root`` are given).
        images_dir: Images sub-folder of every root.
        masks_dir: Masks sub-folder of every root.
        val_root: Validation folder (same layout); None = ``val_fraction`` of ``root``.
        test_root: Test folder; None = ``test_fraction`` of ``root`` (0: the test split is the
            validation split, see ``test_split_name``).
        **common: :class:`SegDataModule` arguments (``num_classes``, ``threshold``, ...).

    Raises:
        ValueError: Inconsistent options, at construction.
    """

    def __init__(
        self,
        root: str | Path,
        images_dir: str = "images",
        masks_dir: str = "masks",
        val_root: str | Path | None = None,
        test_root: str | Path | None = None,
        **common,
    ):
        super().__init__(root=root, **common)
        self.images_dir = str(images_dir)
        self.masks_dir = str(masks_dir)
        self.val_root = None if val_root in (None, "") else Path(val_root)
        self.test_root = None if test_root in (None, "") else Path(test_root)
        if self.val_root is None and self.val_fraction <= 0.0:
            raise ValueError(f"val_fraction must be > 0 without val_root, got {self.val_fraction}")

    def _pair(self, root: Path | None) -> SegSet | None:
        if root is None:
            return None
        return SegSet(pair_folder(root, self.images_dir, self.masks_dir), source=str(root))

    def read_splits(self) -> dict[str, SegSet | None]:
        return {"train": self._pair(self.root), "val": self._pair(self.val_root), "test": self._pair(self.test_root)}
