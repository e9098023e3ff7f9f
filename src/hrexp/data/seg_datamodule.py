"""Semantic segmentation from image/mask folders: the dataset and the Lightning datamodule.

``setup()`` reads and checks everything before training, so that bad data fails in seconds with a
precise message: pairing of images and masks (:func:`~hrexp.data.seg_reader.pair_folder`), equal
image and mask sizes (from the file headers), and, with ``check_masks``, every mask's values against
the decoder (which also gives the class pixel counts of the training split: class weights and the
all-background baseline).

Batches (see :func:`~hrexp.data.seg_transforms.pad_collate`): ``image`` float ``[B, 3, Hp, Wp]``
normalised and padded with 0 to multiples of ``size_divisor``, ``mask`` int64 ``[B, Hm, Wm]`` padded
with ``ignore_index``, ``image_hw`` / ``mask_hw`` int64 ``[B, 2]`` (the unpadded sizes) and ``index``
int64 ``[B]``. Validation and test masks are at the original resolution.
"""

from __future__ import annotations

import functools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from lightning import LightningDataModule
from PIL import UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from hrexp.data.dataset import load_image
from hrexp.data.loaders import make_loader
from hrexp.data.records import DataError
from hrexp.data.seg_reader import MaskDecoder, pair_folder
from hrexp.data.seg_transforms import SegEvalTransform, SegTrainTransform, pad_collate
from hrexp.data.validation import ErrorCollector, read_image_size

log = logging.getLogger(__name__)

Pair = tuple[str, Path, Path]  # (id, image path, mask path)


def split_three(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Seeded train/val/test split of ``range(n)``, each part in index order.

    The test part is taken first from the permutation, so it depends only on ``seed`` and
    ``test_fraction`` (changing ``val_fraction`` does not move test images). A fraction of 0 gives
    an empty part; a positive one at least one item. Uses its own generator, independent of the
    global seed, so the splits stay the same across experiments.

    Raises:
        ValueError: A fraction outside ``[0, 1)``, or no item left for training.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {fraction}")

    def count(fraction: float) -> int:
        return 0 if fraction == 0.0 else max(1, int(round(n * fraction)))

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n - n_test - n_val < 1:
        raise ValueError(
            f"cannot split {n} images into {n_val} val and {n_test} test images and keep at least one for "
            f"training (val_fraction={val_fraction}, test_fraction={test_fraction})"
        )
    order = np.random.default_rng(seed).permutation(n)
    test = sorted(order[:n_test].tolist())
    val = sorted(order[n_test : n_test + n_val].tolist())
    train = sorted(order[n_test + n_val :].tolist())
    return train, val, test


class SegFolderDataset(Dataset):
    """Image/mask pairs as transform-output dicts.

    Args:
        pairs: ``[(id, image_path, mask_path), ...]``.
        decoder: Turns a mask file into ``uint8`` class ids.
        transform: :class:`SegTrainTransform` or :class:`SegEvalTransform` (``transform(image, mask)``).

    Each item has the transform's fields plus ``index`` (int64, position in this split; the
    metrics drop DDP-padding duplicates by it).
    """

    def __init__(self, pairs: Sequence[Pair], decoder: MaskDecoder, transform):
        self.pairs = list(pairs)
        self.decoder = decoder
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        _, image_path, mask_path = self.pairs[index]
        image = load_image(image_path)
        mask = self.decoder.decode(mask_path)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{image_path} is {image.shape[:2]} (h, w) but its mask {mask_path} is {mask.shape}: "
                f"expected the same size"
            )
        sample = self.transform(image, mask)
        sample["index"] = torch.tensor(index, dtype=torch.int64)
        return sample


class SegFolderDataModule(LightningDataModule):
    """Segmentation data from ``root/images`` + ``root/masks`` (paired by file stem).

    Args:
        root: Training folder (split into train/val/test unless ``val_root`` / ``test_root`` are given).
        num_classes: Number of classes (ids ``0 .. num_classes - 1``).
        class_names: Class names (default ``["background", "class1", ...]``).
        images_dir: Images sub-folder of every root.
        masks_dir: Masks sub-folder of every root.
        value_map: Raw mask value -> class id (or ``ignore_index``); exclusive with ``threshold``.
        threshold: Binary masks: value ``> threshold`` -> 1 (JPG masks); exclusive with ``value_map``.
        ignore_index: Label of pixels not scored (void, padding).
        val_root: Validation folder (same layout); None = ``val_fraction`` of ``root``.
        test_root: Test folder; None = ``test_fraction`` of ``root`` (0: the test split is the
            validation split, see ``test_split_name``).
        val_fraction: Validation share of ``root`` without ``val_root``.
        test_fraction: Test share of ``root`` without ``test_root``.
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

    Raises:
        ValueError: Inconsistent options (class names, value map / threshold), at construction.
    """

    def __init__(
        self,
        root: str | Path,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        images_dir: str = "images",
        masks_dir: str = "masks",
        value_map: Mapping[int, int] | None = None,
        threshold: float | None = None,
        ignore_index: int = 255,
        val_root: str | Path | None = None,
        test_root: str | Path | None = None,
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
    ):
        super().__init__()
        self.root = Path(root)
        self.num_classes = int(num_classes)
        names = [f"class{i}" if i else "background" for i in range(self.num_classes)]
        self.class_names = names if class_names is None else [str(n) for n in class_names]
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names {self.class_names}, expected num_classes="
                f"{self.num_classes}"
            )
        self.images_dir = str(images_dir)
        self.masks_dir = str(masks_dir)
        self.ignore_index = int(ignore_index)
        # Built now: a bad value_map / threshold fails at construction, not after reading the data.
        self.decoder = MaskDecoder(self.num_classes, value_map=value_map, threshold=threshold, ignore_index=ignore_index)
        self.val_root = None if val_root in (None, "") else Path(val_root)
        self.test_root = None if test_root in (None, "") else Path(test_root)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        if self.val_root is None and self.val_fraction <= 0.0:
            raise ValueError(f"val_fraction must be > 0 without val_root, got {val_fraction}")
        self.split_seed = int(split_seed)
        self.train_transform = SegTrainTransform(
            crop_size=crop_size,
            scale=scale,
            flip=flip,
            brightness=brightness,
            contrast=contrast,
            saturation=saturation,
            ignore_index=self.ignore_index,
        )
        self.eval_transform = SegEvalTransform(max_size=eval_max_size)
        self.size_divisor = int(size_divisor)
        if self.size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.check_masks = bool(check_masks)
        self.test_split_name = "test"
        self.datasets: dict[str, SegFolderDataset] = {}
        self._pairs: dict[str, list[Pair]] | None = None
        self._class_pixel_counts: np.ndarray | None = None

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Pairs, splits and checks every split once (idempotent), then builds the datasets.

        Raises:
            DataError: Pairing problems, image/mask size mismatches, unreadable files, or mask values
                the decoder does not accept (all problems of a folder are reported together).
        """
        if self._pairs is not None:
            return
        pairs = self._pair(self.root)
        try:
            train_idx, val_idx, test_idx = split_three(
                len(pairs),
                0.0 if self.val_root is not None else self.val_fraction,
                0.0 if self.test_root is not None else self.test_fraction,
                self.split_seed,
            )
        except ValueError as exc:
            raise DataError(f"{self.root}: {len(pairs)} image/mask pairs: {exc}") from None
        train = [pairs[i] for i in train_idx]
        val = self._pair(self.val_root) if self.val_root is not None else [pairs[i] for i in val_idx]
        if self.test_root is not None:
            test, self.test_split_name = self._pair(self.test_root), "test"
        elif test_idx:
            test, self.test_split_name = [pairs[i] for i in test_idx], "test"
        else:
            log.warning("no test split (test_root unset, test_fraction=0): the test split is the validation split")
            test, self.test_split_name = val, "val"

        self._check_sizes(pairs, self.root)
        for other_root, other in ((self.val_root, val), (self.test_root, test)):
            if other_root is not None:
                self._check_sizes(other, other_root)
        if self.check_masks:
            counts = self._check_masks(pairs, self.root)
            self._class_pixel_counts = counts[train_idx].sum(axis=0) if train_idx else np.zeros(self.num_classes, np.int64)
            for other_root, other in ((self.val_root, val), (self.test_root, test)):
                if other_root is not None:
                    self._check_masks(other, other_root)

        self._pairs = {"train": train, "val": val, "test": test}
        self.datasets = {
            "train": SegFolderDataset(train, self.decoder, self.train_transform),
            "val": SegFolderDataset(val, self.decoder, self.eval_transform),
            "test": SegFolderDataset(test, self.decoder, self.eval_transform),
        }
        log.info(
            "segmentation data: %d train, %d val, %d %s images, %d classes (%s)",
            len(train), len(val), len(test), self.test_split_name, self.num_classes, self.root,
        )

    def _pair(self, root: Path) -> list[Pair]:
        return pair_folder(root, self.images_dir, self.masks_dir)

    @staticmethod
    def _check_sizes(pairs: Sequence[Pair], root: Path) -> None:
        """Image and mask of every pair have the same size (headers only: no pixel decoding)."""
        errors = ErrorCollector(root)
        for pair_id, image_path, mask_path in pairs:
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

    def _check_masks(self, pairs: Sequence[Pair], root: Path) -> np.ndarray:
        """Decodes every mask once; returns the per-pair class pixel counts, int64 ``[N, num_classes]``."""

        def count(pair: Pair) -> np.ndarray | DataError:
            try:
                mask = self.decoder.decode(pair[2])
            except DataError as exc:
                return exc
            return np.bincount(mask.ravel(), minlength=256)[: self.num_classes].astype(np.int64)

        # Threads: cv2 decoding releases the GIL, so the check of thousands of masks takes seconds.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(count, pairs))
        errors = ErrorCollector(root)
        for (pair_id, _, _), result in zip(pairs, results):
            if isinstance(result, DataError):
                errors.add(f"pair {pair_id}", str(result))
        errors.raise_if_any()
        return np.stack(results) if results else np.zeros((0, self.num_classes), np.int64)

    # ------------------------------------------------------------------ what the rest of hrexp reads
    def _require_setup(self, what: str) -> dict[str, list[Pair]]:
        if self._pairs is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for {what}")
        return self._pairs

    @property
    def dataset_meta(self) -> dict:
        """What a task needs to know about the data: ``num_classes``, ``class_names``, ``ignore_index``."""
        self._require_setup("dataset_meta")
        return {"num_classes": self.num_classes, "class_names": list(self.class_names), "ignore_index": self.ignore_index}

    @property
    def class_pixel_counts(self) -> np.ndarray | None:
        """Pixels of each class in the training split, int64 ``[num_classes]`` (None without ``check_masks``).

        Ignored pixels are not counted. ``counts[0] / counts.sum()`` is the pixel accuracy of the
        all-background prediction.
        """
        self._require_setup("class_pixel_counts")
        return None if self._class_pixel_counts is None else self._class_pixel_counts.copy()

    @property
    def train_pairs(self) -> list[Pair]:
        """``(id, image_path, mask_path)`` of the training split."""
        return list(self._require_setup("train_pairs")["train"])

    @property
    def val_pairs(self) -> list[Pair]:
        """``(id, image_path, mask_path)`` of the validation split."""
        return list(self._require_setup("val_pairs")["val"])

    @property
    def test_pairs(self) -> list[Pair]:
        """``(id, image_path, mask_path)`` of the test split (the validation split when ``test_split_name == "val"``)."""
        return list(self._require_setup("test_pairs")["test"])

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool, batch_size: int) -> DataLoader:
        self._require_setup(f"the {split} loader")
        return make_loader(
            self.datasets[split],
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # partial of a module-level function: picklable for worker processes.
            collate_fn=functools.partial(pad_collate, size_divisor=self.size_divisor, ignore_index=self.ignore_index),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training crops (the last partial batch is kept)."""
        return self._loader("train", shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        """Validation images in id order, masks at the original resolution."""
        return self._loader("val", shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        """Test images in id order, masks at the original resolution."""
        return self._loader("test", shuffle=False, batch_size=self.eval_batch_size)
