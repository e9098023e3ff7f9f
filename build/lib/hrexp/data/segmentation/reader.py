"""Segmentation records: image/mask pairs (:class:`SegSet`), folder pairing by file stem, mask decoding.

Every format reads a split into a :class:`SegSet`. The folder format (:func:`pair_folder`) is a
folder with ``images/<id>.<ext>`` and ``masks/<id>.<ext>``; the two files of a pair share the stem
``<id>`` (the extensions may differ: JPG photos with PNG masks). Pairing is strict: every image needs a mask and every mask an image, so that a half-copied data set
fails before training instead of silently training on fewer samples.

Masks are decoded to ``uint8 [H, W]`` class ids by :class:`MaskDecoder`, either through a value map
(raw pixel value -> class id, e.g. Cityscapes label ids -> train ids with 255 for void) or through a
threshold (binary masks stored as JPG, whose values are noisy around 0 and 255).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

from hrexp.data.errors import DataError, ErrorCollector
from hrexp.data.images import IMAGE_EXTENSIONS

MAX_NAMED = 5  # file names listed in one pairing error; the count says how many there are in all

Pair = tuple[str, Path, Path]  # (id, image path, mask path)


@dataclass
class SegSet:
    """The image/mask pairs of one split: what every segmentation format reads a split into.

    Attributes:
        pairs: ``[(id, image_path, mask_path), ...]`` in the split's order.
        source: Where they came from (a folder, a list file; with a split suffix for subsets), named
            in messages.
    """

    pairs: list[Pair]
    source: str

    def __len__(self) -> int:
        return len(self.pairs)

    def subset(self, indices: Sequence[int], source: str | None = None) -> "SegSet":
        """A new set holding the pairs at ``indices``."""
        return replace(self, pairs=[self.pairs[i] for i in indices], source=self.source if source is None else source)


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > MAX_NAMED else f" ({len(items)})")


def _list_by_stem(folder: Path, errors: ErrorCollector) -> dict[str, Path]:
    """Image files of ``folder`` by stem; duplicated stems are reported to ``errors``."""
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        # Hidden files (.DS_Store, ._a.jpg from macOS copies) and non-images (txt, json) are not data.
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        by_stem.setdefault(path.stem, []).append(path)
    duplicated = sorted(stem for stem, paths in by_stem.items() if len(paths) > 1)
    if duplicated:
        examples = [" and ".join(p.name for p in by_stem[s]) for s in duplicated]
        errors.add(
            f"folder {folder}",
            f"{len(duplicated)} file stem(s) are used by more than one file, so the pairing is ambiguous "
            f"(expected one file per stem): {_names(examples)}",
        )
    return {stem: paths[0] for stem, paths in by_stem.items()}


def pair_folder(root: str | Path, images_dir: str = "images", masks_dir: str = "masks") -> list[Pair]:
    """Pairs ``root/images_dir`` and ``root/masks_dir`` files by stem.

    Args:
        root: The data set folder.
        images_dir: Images sub-folder.
        masks_dir: Masks sub-folder.

    Returns:
        ``[(id, image_path, mask_path), ...]`` sorted by id (the file stem).

    Raises:
        DataError: A folder is missing, a stem is used twice in a folder (``a.jpg`` and ``a.png``),
            an image has no mask or a mask has no image (the first few names and the count are
            listed), or there are no pairs at all.
    """
    root = Path(root)
    images_root, masks_root = root / images_dir, root / masks_dir
    missing = [p for p in (images_root, masks_root) if not p.is_dir()]
    if missing:
        raise DataError(
            f"{root}: folder(s) not found: {', '.join(str(p) for p in missing)} (expected images in "
            f"{images_root} and masks with the same file names in {masks_root})"
        )
    errors = ErrorCollector(root)
    images = _list_by_stem(images_root, errors)
    masks = _list_by_stem(masks_root, errors)
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask:
        errors.add(
            f"folder {images_root}",
            f"{len(no_mask)} image(s) have no mask in {masks_root} (expected a mask with the same stem): "
            f"{_names([images[s].name for s in no_mask])}",
        )
    if no_image:
        errors.add(
            f"folder {masks_root}",
            f"{len(no_image)} mask(s) have no image in {images_root} (expected an image with the same "
            f"stem): {_names([masks[s].name for s in no_image])}",
        )
    errors.raise_if_any()
    if not images:
        raise DataError(
            f"{root}: no image files in {images_root} (expected extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def read_mask_raw(path: str | Path) -> np.ndarray:
    """Reads a mask as one channel of raw values (``uint8`` or ``uint16`` ``[H, W]``).

    ``IMREAD_UNCHANGED`` keeps 16-bit label images intact and does no colour conversion. A
    3-channel mask whose channels are equal (a gray JPG saved as RGB) is taken as gray; an alpha
    channel is dropped.

    Raises:
        DataError: The file cannot be decoded, or the mask is a colour image (a palette/RGB-coded
            mask needs converting to class ids first).
    """
    path = Path(path)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataError(f"{path}: cannot decode the mask (missing, truncated or not an image)")
    if raw.ndim == 3:
        channels = raw.shape[2]
        if channels in (2, 4):  # drop alpha
            raw = raw[:, :, : channels - 1]
        if raw.shape[2] == 3:
            if not (np.array_equal(raw[:, :, 0], raw[:, :, 1]) and np.array_equal(raw[:, :, 0], raw[:, :, 2])):
                raise DataError(
                    f"{path}: the mask is a colour image (its 3 channels differ); expected a single-channel "
                    f"mask of class values (convert colour-coded masks to class ids first)"
                )
        raw = raw[:, :, 0]
    if raw.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: unsupported mask pixel type {raw.dtype}; expected 8- or 16-bit integers")
    return np.ascontiguousarray(raw)


class MaskDecoder:
    """Turns mask files into ``uint8 [H, W]`` class ids.

    Exactly one of ``value_map`` and ``threshold`` is given.

    Args:
        num_classes: Number of classes; every class id is ``< num_classes`` (or ``ignore_index``).
        value_map: Raw pixel value -> class id or ``ignore_index`` (e.g. Cityscapes label id ->
            train id, void -> 255). A raw value not in the map is an error (not silently ignored).
        threshold: Binary masks: raw value ``> threshold`` -> 1, else 0 (for masks stored as JPG,
            whose values are noisy around 0 and 255). Needs ``num_classes == 2``.
        ignore_index: The "not scored" label (``uint8``, so at most 255).

    Raises:
        ValueError: Both or neither of ``value_map`` / ``threshold``, a class id outside
            ``[0, num_classes)`` that is not ``ignore_index``, or a bad ``num_classes`` /
            ``ignore_index``.
    """

    def __init__(
        self,
        num_classes: int,
        value_map: Mapping[int, int] | None = None,
        threshold: float | None = None,
        ignore_index: int = 255,
    ):
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        if not 0 <= self.ignore_index <= 255:
            raise ValueError(f"ignore_index must be in [0, 255] (masks are uint8), got {ignore_index}")
        if not 1 <= self.num_classes <= 255 or self.ignore_index < self.num_classes:
            raise ValueError(
                f"num_classes must be in [1, 255] and below ignore_index ({self.ignore_index}) so that "
                f"class ids and the ignore label cannot collide, got num_classes={num_classes}"
            )
        if (value_map is None) == (threshold is None):
            raise ValueError(
                "give exactly one of value_map (raw mask value -> class id) and threshold (binary masks: "
                f"value > threshold -> 1), got value_map={value_map!r}, threshold={threshold!r}"
            )
        self.threshold = None if threshold is None else float(threshold)
        self.value_map: dict[int, int] | None = None
        if self.threshold is not None and self.num_classes != 2:
            raise ValueError(f"threshold gives binary masks (classes 0 and 1): num_classes must be 2, got {num_classes}")
        if value_map is not None:
            # int(): keys from YAML/OmegaConf may arrive as strings ("255": 1).
            self.value_map = {int(k): int(v) for k, v in dict(value_map).items()}
            if not self.value_map:
                raise ValueError("value_map is empty: expected raw mask value -> class id entries")
            bad = {k: v for k, v in self.value_map.items() if not (0 <= v < self.num_classes or v == self.ignore_index)}
            if bad:
                raise ValueError(
                    f"value_map maps to class ids outside [0, {self.num_classes}) that are not ignore_index "
                    f"({self.ignore_index}): {bad}"
                )
            bad_keys = [k for k in self.value_map if not 0 <= k <= 65535]
            if bad_keys:
                raise ValueError(f"value_map keys must be raw mask values in [0, 65535], got {bad_keys}")
            # One lookup table per depth: decoding is then a single indexing pass. -1 marks values
            # that the map does not know.
            self._lut = np.full(65536, -1, dtype=np.int16)
            for k, v in self.value_map.items():
                self._lut[k] = v

    def decode(self, path: str | Path) -> np.ndarray:
        """Reads ``path`` and returns its class ids, ``uint8 [H, W]``.

        Raises:
            DataError: Unreadable or colour mask (see :func:`read_mask_raw`), or raw values that are
                not in ``value_map`` (the message lists them and the map's keys).
        """
        raw = read_mask_raw(path)
        if self.threshold is not None:
            return (raw > self.threshold).astype(np.uint8)
        mapped = self._lut[raw]
        if (mapped < 0).any():
            unexpected = np.unique(raw[mapped < 0])
            shown = ", ".join(str(v) for v in unexpected[:20]) + (", ..." if len(unexpected) > 20 else "")
            hint = (
                " (a JPG mask has noisy values: use threshold for binary masks)"
                if Path(path).suffix.lower() in (".jpg", ".jpeg")
                else ""
            )
            raise DataError(
                f"{path}: mask has {len(unexpected)} unexpected value(s) {shown}; expected only the "
                f"value_map keys {sorted(self.value_map)}{hint}"
            )
        return mapped.astype(np.uint8)
