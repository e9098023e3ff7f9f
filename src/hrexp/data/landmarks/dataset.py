"""Torch dataset over a LandmarkSet producing the batch contract of ``docs/design.md``."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from hrexp.data.errors import DataError
from hrexp.data.image_cache import ShrunkImageCache
from hrexp.data.images import load_image
from hrexp.data.landmarks.originals import OriginalImageCache, original_fields, reduce_original
from hrexp.data.landmarks.records import LandmarkRecord, LandmarkSet
from hrexp.data.transforms import LandmarkTransform, reduction_factor
from hrexp.data.sampling import sample_rng


class LandmarkDataset(Dataset):
    """Samples of a LandmarkSet as batch-contract dicts.

    Args:
        landmark_set: The records (validated; ``record.size`` is checked against the decoded image
            when known).
        transform: The per-sample transform (training or evaluation).
        image_cache: Where images reduced to the working resolution are kept (None: decode the
            original every time). Used for images the transform shrinks by 2x or more.
        refine_factor: When set (``data.refine_scale = 1 / refine_factor``), each item also has the
            un-augmented original reduced by this factor (:mod:`hrexp.data.landmarks.originals`;
            collate with :func:`~hrexp.data.landmarks.originals.collate_originals`).

    Each item has ``image``, ``keypoints``, ``visible``, ``keypoints_orig``, ``visible_orig``,
    ``matrix`` (see :class:`~hrexp.data.transforms.LandmarkTransform`), ``spacing`` (float32, NaN
    when unknown) and ``index`` (int64, position in this split); with ``refine_factor`` also
    ``original`` (uint8 ``[3, Hs, Ws]``) and ``original_scale`` (float32, ``1 / refine_factor``).
    """

    def __init__(self, landmark_set: LandmarkSet, transform: LandmarkTransform,
                 image_cache: ShrunkImageCache | None = None, refine_factor: int | None = None):
        self.landmark_set = landmark_set
        self.transform = transform
        self.image_cache = image_cache
        self.refine_factor = None if refine_factor is None else int(refine_factor)
        self.original_cache = None if image_cache is None else OriginalImageCache(image_cache.folder)

    def __len__(self) -> int:
        return len(self.landmark_set.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.landmark_set.records[index]
        full = None  # the decoded original, when the network input is warped from it
        factor = 1
        if self.image_cache is not None and record.size is not None:
            factor = reduction_factor(self.transform.max_scale(record.size))
        if factor > 1:
            # A large image seen small: read its reduced copy (decoded once), warp it with the
            # matrix corrected for the reduction; keypoints and matrix stay in original pixels.
            try:
                image, reduced_by = self.image_cache.load(record.image_path, tuple(record.size), factor)
            except ValueError as exc:
                raise DataError(f"{exc} ({record.source})") from None
            sample = self.transform(image, record.keypoints, record.visible, rng=sample_rng(index),
                                    original_hw=record.size, reduced_by=reduced_by)
        else:
            image = full = load_image(record.image_path)
            if record.size is not None and tuple(image.shape[:2]) != tuple(record.size):
                raise DataError(
                    f"{record.image_path}: decoded size {image.shape[:2]} differs from the header size "
                    f"{tuple(record.size)} ({record.source})"
                )
            sample = self.transform(image, record.keypoints, record.visible, rng=sample_rng(index))
        spacing = math.nan if record.spacing is None else float(record.spacing)
        sample["spacing"] = torch.tensor(spacing, dtype=torch.float32)
        sample["index"] = torch.tensor(int(index), dtype=torch.int64)
        if self.refine_factor is not None:
            sample.update(original_fields(self.reduced_original(record, full), self.refine_factor))
        return sample

    def reduced_original(self, record: LandmarkRecord, full: np.ndarray | None = None) -> np.ndarray:
        """The record's original reduced by ``refine_factor`` (uint8): from ``full`` when the image was
        decoded anyway, else from the cache (decoded and stored on the first read)."""
        if full is None and self.original_cache is not None and record.size is not None:
            try:
                return self.original_cache.load_original(record.image_path, tuple(record.size), self.refine_factor)
            except ValueError as exc:
                raise DataError(f"{exc} ({record.source})") from None
        if full is None:
            full = load_image(record.image_path)
        return reduce_original(full, self.refine_factor)
