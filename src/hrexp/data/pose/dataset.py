"""Torch dataset over the person instances of a :class:`~hrexp.data.pose.reader.PoseSplit`."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from hrexp.data.errors import DataError
from hrexp.data.images import load_image
from hrexp.data.pose.reader import PoseSplit
from hrexp.data.pose.topdown import TopDownTransform
from hrexp.data.sampling import sample_rng


class PoseDataset(Dataset):
    """One item per person box, in the landmark batch contract plus the pose fields.

    Each item has LandmarkTransform's ``image``, ``keypoints``, ``visible``, ``keypoints_orig``,
    ``visible_orig`` and ``matrix``, plus ``image_id`` (int64), ``bbox_score`` (float32: 1 for a
    ground-truth box) and ``index`` (int64, the instance's position in this split: the metric drops
    the duplicates a padded DistributedSampler adds by it).

    Args:
        split: The instances and their COCO ground truth.
        transform: The top-down crop (training or evaluation).
    """

    def __init__(self, split: PoseSplit, transform: TopDownTransform):
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split.instances)

    @property
    def ground_truth(self) -> dict[str, Any]:
        """The split's COCO ground truth (what OKS AP is computed against)."""
        return self.split.ground_truth

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        inst = self.split.instances[index]
        image = load_image(inst.image_path)
        if tuple(image.shape[:2]) != tuple(inst.image_size):
            raise DataError(
                f"{inst.image_path}: decoded size {image.shape[:2]} differs from the annotation file's "
                f"(height, width) {tuple(inst.image_size)} ({inst.source})"
            )
        sample = self.transform(image, inst.keypoints, inst.visible, inst.bbox, rng=sample_rng(index))
        sample["image_id"] = torch.tensor(int(inst.image_id), dtype=torch.int64)
        sample["bbox_score"] = torch.tensor(inst.bbox_score, dtype=torch.float32)
        sample["index"] = torch.tensor(int(index), dtype=torch.int64)
        return sample
