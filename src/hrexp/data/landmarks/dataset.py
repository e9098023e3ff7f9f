"""Torch dataset over a LandmarkSet producing the batch contract of ``docs/design.md``."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset

from hrexp.data.errors import DataError
from hrexp.data.images import load_image
from hrexp.data.landmarks.records import LandmarkSet
from hrexp.data.transforms import LandmarkTransform
from hrexp.data.sampling import sample_rng


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
        sample = self.transform(image, record.keypoints, record.visible, rng=sample_rng(index))
        spacing = math.nan if record.spacing is None else float(record.spacing)
        sample["spacing"] = torch.tensor(spacing, dtype=torch.float32)
        sample["index"] = torch.tensor(int(index), dtype=torch.int64)
        return sample
