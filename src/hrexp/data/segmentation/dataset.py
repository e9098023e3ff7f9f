"""Torch dataset over the image/mask pairs of one segmentation split."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from hrexp.data.errors import DataError
from hrexp.data.images import load_image
from hrexp.data.segmentation.reader import MaskDecoder, Pair
from hrexp.data.sampling import sample_rng


class SegDataset(Dataset):
    """Image/mask pairs as transform-output dicts.

    Args:
        pairs: ``[(id, image_path, mask_path), ...]``.
        decoder: Turns a mask file into ``uint8`` class ids.
        transform: :class:`~hrexp.data.segmentation.transforms.SegTrainTransform` or
            :class:`~hrexp.data.segmentation.transforms.SegEvalTransform` (``transform(image, mask)``).

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
        sample = self.transform(image, mask, rng=sample_rng(index))
        sample["index"] = torch.tensor(int(index), dtype=torch.int64)
        return sample
