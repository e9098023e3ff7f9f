"""Torch dataset over a LandmarkSet producing the batch contract of ``docs/design.md``."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from hrexp.data.records import DataError, LandmarkSet
from hrexp.data.transforms import LandmarkTransform


def load_image(path: str | Path) -> np.ndarray:
    """Decodes an image to float32 in [0, 1]: ``[H, W]`` for gray, ``[H, W, 3]`` RGB otherwise.

    ``IMREAD_UNCHANGED`` keeps gray images single-channel (warping one channel is 3x cheaper; the
    transform replicates it after the warp) and keeps 16-bit X-rays at full depth; it also ignores
    EXIF orientation, like the PIL header read that validation used for the size.

    Raises:
        DataError: The file cannot be decoded.
    """
    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: cannot decode the image (missing, truncated or not an image)")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 2:  # gray + alpha
            image = image[:, :, 0]
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        else:
            image = cv2.cvtColor(image[:, :, :4], cv2.COLOR_BGRA2RGB)
    if image.dtype == np.uint8:
        return image.astype(np.float32) * (1.0 / 255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * (1.0 / 65535.0)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32)
    raise DataError(f"{path}: unsupported pixel type {image.dtype}")


class LandmarkDataset(Dataset):
    """Samples of a LandmarkSet as batch-contract dicts.

    Args:
        landmark_set: The records (validated; ``record.size`` is checked against the decoded image
            when known).
        transform: The per-sample transform (training or evaluation).

    Each item has ``image``, ``keypoints``, ``visible``, ``keypoints_orig``, ``visible_orig``,
    ``matrix`` (see :class:`~hrexp.data.transforms.LandmarkTransform`), ``spacing`` (float32, NaN
    when unknown) and ``index`` (int64, position in this split).
    """

    def __init__(self, landmark_set: LandmarkSet, transform: LandmarkTransform):
        self.landmark_set = landmark_set
        self.transform = transform

    def __len__(self) -> int:
        return len(self.landmark_set.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        record = self.landmark_set.records[index]
        image = load_image(record.image_path)
        if record.size is not None and tuple(image.shape[:2]) != tuple(record.size):
            raise DataError(
                f"{record.image_path}: decoded size {image.shape[:2]} differs from the header size "
                f"{tuple(record.size)} ({record.source})"
            )
        sample = self.transform(image, record.keypoints, record.visible)
        spacing = math.nan if record.spacing is None else float(record.spacing)
        sample["spacing"] = torch.tensor(spacing, dtype=torch.float32)
        sample["index"] = torch.tensor(index, dtype=torch.int64)
        return sample
