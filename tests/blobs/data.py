"""Generated blob images (the fourth task's data), as a datamodule on hrexp's base class.

Each image has 1-3 bright Gaussian blobs on a noisy dark background; the targets are their centres.
The number of blobs varies, so the datamodule brings its own collate (the base's collate hook). For
``predict.py`` the family says how a new image becomes a network input (its ``prediction_preparer``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import Dataset

from hrexp.data.datamodule import HRExpDataModule, ImagePreparer

MAX_BLOBS = 3


@dataclass
class BlobSample:
    image: np.ndarray  # float32 [H, W] in [0, 1]
    centres: np.ndarray  # float32 [N, 2] (x, y)


def make_blobs(count: int, size: tuple[int, int], seed: int) -> list[BlobSample]:
    rng = np.random.default_rng(seed)
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w]
    samples = []
    for _ in range(count):
        n = int(rng.integers(1, MAX_BLOBS + 1))
        centres = np.stack([rng.uniform(6, w - 7, n), rng.uniform(6, h - 7, n)], axis=1).astype(np.float32)
        image = rng.normal(0.1, 0.03, (h, w))
        for x, y in centres:
            image += 0.8 * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 2.0**2))
        samples.append(BlobSample(np.clip(image, 0, 1).astype(np.float32), centres))
    return samples


def network_input(image: np.ndarray) -> torch.Tensor:
    """A gray ``[H, W]`` image in [0, 1] -> the network's ``[3, H, W]`` input (the same for training and predict)."""
    return torch.from_numpy((image.astype(np.float32) - 0.5) / 0.25)[None].expand(3, -1, -1).contiguous()


class BlobDataset(Dataset):
    def __init__(self, samples: Sequence[BlobSample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.samples[index]
        return {"image": network_input(s.image), "centres": torch.from_numpy(s.centres), "index": torch.tensor(index)}


class BlobImage(ImagePreparer):
    """A new image for ``predict.py``: made gray (the mean of its channels) and normalised as in training; not
    resized (centres are in the image's own pixels, as the data's). Its sides must suit the model (UNet: x 32)."""

    def __call__(self, image: np.ndarray, path: Path) -> list[dict[str, Any]]:
        gray = image.mean(axis=2) if image.ndim == 3 else image
        return [{"image": network_input(gray)}]


def collate_blobs(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack images; pad the centres to the batch's largest count, with ``valid`` marking real ones."""
    m = max(len(item["centres"]) for item in items)
    centres = torch.zeros(len(items), m, 2)
    valid = torch.zeros(len(items), m)
    for i, item in enumerate(items):
        centres[i, :len(item["centres"])] = item["centres"]
        valid[i, :len(item["centres"])] = 1
    return {"image": torch.stack([item["image"] for item in items]), "centres": centres, "valid": valid,
            "index": torch.stack([item["index"] for item in items])}


class BlobDataModule(HRExpDataModule):
    """``num_train`` generated images split into train/val (``val_fraction``), ``num_test`` for test."""

    def __init__(self, num_train: int = 40, num_test: int = 8, image_size: Sequence[int] = (64, 64), seed: int = 0,
                 **common: Any):
        super().__init__(**common)
        self.num_train, self.num_test = int(num_train), int(num_test)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.seed = int(seed)

    def read_splits(self) -> dict[str, Any]:
        return {"train": make_blobs(self.num_train, self.image_size, self.seed),
                "test": make_blobs(self.num_test, self.image_size, self.seed + 1)}

    def complete_splits(self, splits: dict[str, Any]) -> dict[str, Any]:
        train_idx, val_idx = self.split_train_val(len(splits["train"]))
        return {"train": [splits["train"][i] for i in train_idx], "val": [splits["train"][i] for i in val_idx],
                "test": splits["test"]}

    def build_datasets(self, splits: dict[str, Any]) -> dict[str, Dataset]:
        return {name: BlobDataset(samples) for name, samples in splits.items()}

    @property
    def dataset_meta(self) -> dict[str, Any]:
        return {"kind": "blob_centres", "max_blobs": MAX_BLOBS}

    @property
    def input_size(self) -> tuple[int, int]:
        return self.image_size

    def collate_fn(self, split: str) -> Callable:
        return collate_blobs

    @classmethod
    def prediction_preparer(cls, run_cfg: DictConfig, boxes: Mapping[str, list[Any]] | None = None) -> BlobImage:
        """Each image whole (:class:`BlobImage`); blobs are found in the whole image, so no person boxes."""
        cls.refuse_boxes(run_cfg, boxes)
        return BlobImage()
