"""Segmentation transforms (image + mask) and the padding collate function.

Training: random rescale of the whole image, pad to the crop size, random crop, horizontal flip,
photometric jitter, ImageNet normalisation. Evaluation: the image at its original resolution (or
shrunk to ``max_size``) while the mask is NEVER resized, so that metrics are computed at the
original resolution (the task upsamples its logits to ``mask_hw``).

Masks are resampled with nearest neighbour only, so they never contain interpolated (made-up)
class ids. We use ``INTER_NEAREST_EXACT``, the pixel-centre-aligned nearest neighbour: plain
``INTER_NEAREST`` samples ``floor(x / s)`` and shifts the mask by up to half a source pixel against
the bilinear image, whose sampling is centre-aligned.

Padded pixels are ``0`` in the normalised image (the mean colour) and ``ignore_index`` in the mask,
so they are ignored by the loss and the metrics; ``image_hw`` / ``mask_hw`` give the real extent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from hrexp.data.transforms import IMAGENET_MEAN, IMAGENET_STD, draw_uniform, scale_range

# Luma weights of the saturation jitter (ITU-R 601, as torchvision's rgb_to_grayscale).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """``[H, W]`` or ``[H, W, 1]`` gray -> ``[H, W, 3]`` float32 (ImageNet backbones take 3 channels)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.shape[2] != 3:
        raise ValueError(f"expected a gray or RGB image, got shape {image.shape}")
    return image.astype(np.float32, copy=False)


def _as_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Checks the mask against the image and returns it as ``uint8`` (what cv2.resize takes)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or image.shape[:2] != mask.shape:
        raise ValueError(f"expected a [H, W] mask of the image's size {image.shape[:2]}, got {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"mask values must be class ids in [0, 255], got {mask.min()}..{mask.max()}")
        mask = mask.astype(np.uint8)
    return mask


def _normalise(image: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return (image - mean) / std


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


@dataclass
class SegAugmentParams:
    """The random draw of one training sample (identity, top-left crop by default).

    ``crop_y`` / ``crop_x`` are in ``[0, 1)`` and pick the crop offset among the possible ones, so a
    draw does not depend on the image size.
    """

    scale: float = 1.0
    crop_y: float = 0.0
    crop_x: float = 0.0
    flip: bool = False
    brightness: float = 0.0  # added, image in [0, 1]
    contrast: float = 1.0  # factor about the image's mean gray
    saturation: float = 1.0  # factor about each pixel's gray


class SegTrainTransform:
    """Random rescale, pad, crop, flip and photometric jitter of an image and its mask.

    Args:
        crop_size: Output ``(height, width)``.
        scale: ``(min, max)`` of the uniform rescale factor of the whole image.
        flip: Horizontal flip with probability 0.5.
        brightness: Maximum absolute additive brightness change (image in [0, 1]).
        contrast: Maximum relative contrast change (factor in ``[1 - c, 1 + c]``).
        saturation: Maximum relative saturation change (factor in ``[1 - s, 1 + s]``).
        ignore_index: Mask value of padded pixels.
        mean: Normalisation mean (RGB).
        std: Normalisation std (RGB).
    """

    def __init__(
        self,
        crop_size: Sequence[int] = (512, 512),
        scale: Sequence[float] = (0.5, 2.0),
        flip: bool = True,
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.2,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        if min(self.crop_size) < 1:
            raise ValueError(f"crop_size must be positive (height, width), got {tuple(crop_size)}")
        self.scale = scale_range(scale)
        self.flip = bool(flip)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        self.ignore_index = int(ignore_index)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def sample_params(self, rng: np.random.Generator | None = None) -> SegAugmentParams:
        """Draws one sample's parameters.

        Without ``rng`` the torch global generator is used, which DataLoader seeds differently in
        every worker and Lightning's ``seed_everything`` seeds in the main process.
        """

        def uniform(low: float, high: float) -> float:
            return draw_uniform(low, high, rng)

        return SegAugmentParams(
            scale=uniform(*self.scale),
            crop_y=uniform(0.0, 1.0),
            crop_x=uniform(0.0, 1.0),
            flip=self.flip and uniform(0.0, 1.0) < 0.5,
            brightness=uniform(-self.brightness, self.brightness),
            contrast=uniform(1.0 - self.contrast, 1.0 + self.contrast),
            saturation=uniform(1.0 - self.saturation, 1.0 + self.saturation),
        )

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        params: SegAugmentParams | None = None,
        rng: np.random.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Transforms one sample.

        Args:
            image: ``[H, W]`` gray or ``[H, W, 3]`` RGB, float32 in [0, 1].
            mask: ``[H, W]`` integer class ids (``uint8``).
            params: A fixed draw (tests); sampled when None.
            rng: Generator for the draw (tests); the torch global one when None.

        Returns:
            ``image`` float32 ``[3, crop_h, crop_w]`` normalised (padding 0), ``mask`` int64
            ``[crop_h, crop_w]`` (padding ``ignore_index``).
        """
        image = _as_rgb(image)
        mask = _as_mask(image, mask)
        if params is None:
            params = self.sample_params(rng)
        ch, cw = self.crop_size
        h, w = image.shape[:2]

        # Rescale the whole image (the crop then sees objects at a new scale).
        sh, sw = max(1, round(h * params.scale)), max(1, round(w * params.scale))
        if (sh, sw) != (h, w):
            image = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (sw, sh), interpolation=cv2.INTER_NEAREST_EXACT)

        # Crop from the image padded bottom/right to at least the crop size; only the real part of
        # the crop is cut here, the padding is added after the photometry (which must not see it).
        ph, pw = max(sh, ch), max(sw, cw)
        y0 = min(int(params.crop_y * (ph - ch + 1)), ph - ch)
        x0 = min(int(params.crop_x * (pw - cw + 1)), pw - cw)
        image = image[y0 : y0 + ch, x0 : x0 + cw]
        mask = mask[y0 : y0 + ch, x0 : x0 + cw]

        image = _normalise(self.photometric(image, params), self.mean, self.std)
        out_image = np.zeros((ch, cw, 3), dtype=np.float32)
        out_mask = np.full((ch, cw), self.ignore_index, dtype=np.int64)
        out_image[: image.shape[0], : image.shape[1]] = image
        out_mask[: mask.shape[0], : mask.shape[1]] = mask
        if params.flip:
            out_image = out_image[:, ::-1]
            out_mask = out_mask[:, ::-1]
        return {"image": _to_chw(out_image), "mask": torch.from_numpy(np.ascontiguousarray(out_mask))}

    @staticmethod
    def photometric(image: np.ndarray, params: SegAugmentParams) -> np.ndarray:
        """Brightness (added), contrast (about the mean gray), saturation (about each pixel's gray).

        The image stays in [0, 1]: it is clipped after every step, as torchvision's ColorJitter does.
        """
        out = image
        if params.brightness != 0.0:
            out = np.clip(out + np.float32(params.brightness), 0.0, 1.0)
        if params.contrast != 1.0:
            mean = float((out @ _LUMA).mean()) if out.size else 0.0
            out = np.clip((out - mean) * np.float32(params.contrast) + mean, 0.0, 1.0)
        if params.saturation != 1.0:
            gray = (out @ _LUMA)[:, :, None]
            out = np.clip((out - gray) * np.float32(params.saturation) + gray, 0.0, 1.0)
        return out.astype(np.float32, copy=False)


class SegEvalTransform:
    """The image at its original resolution (or shrunk to ``max_size``), the mask untouched.

    Args:
        max_size: When the image's long side exceeds this, the image is resized (aspect kept) so
            that its long side is ``max_size``; None keeps every image at full resolution.
        mean: Normalisation mean (RGB).
        std: Normalisation std (RGB).
    """

    def __init__(
        self,
        max_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.max_size = None if max_size is None else int(max_size)
        if self.max_size is not None and self.max_size < 1:
            raise ValueError(f"max_size must be positive or None, got {max_size}")
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def image_size(self, hw: Sequence[int]) -> tuple[int, int]:
        """The network input size ``(h, w)`` of an original image of size ``hw``."""
        h, w = int(hw[0]), int(hw[1])
        if self.max_size is None or max(h, w) <= self.max_size:
            return h, w
        s = self.max_size / max(h, w)
        # The long side is exactly max_size; the short one is rounded.
        return (self.max_size, max(1, round(w * s))) if h >= w else (max(1, round(h * s)), self.max_size)

    def __call__(self, image: np.ndarray, mask: np.ndarray,
                 rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """Transforms one sample (``rng`` is accepted like the training transform's; nothing is random here).

        Returns:
            ``image`` float32 ``[3, h, w]`` normalised, ``mask`` int64 ``[H, W]`` at the original
            resolution, ``image_hw`` int64 ``[2]`` = ``(h, w)``, ``mask_hw`` int64 ``[2]`` = ``(H, W)``.
        """
        image = _as_rgb(image)
        mask = _as_mask(image, mask)
        h, w = self.image_size(image.shape[:2])
        if (h, w) != image.shape[:2]:
            # Always a shrink here: INTER_AREA averages instead of skipping pixels (no aliasing).
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        return {
            "image": _to_chw(_normalise(image, self.mean, self.std)),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "image_hw": torch.tensor([h, w], dtype=torch.int64),
            "mask_hw": torch.tensor(mask.shape[:2], dtype=torch.int64),
        }


def round_up(value: int, divisor: int) -> int:
    """The smallest multiple of ``divisor`` that is >= ``value``."""
    return int(math.ceil(value / divisor) * divisor)


def pad_collate(
    batch: Sequence[dict[str, Any]], size_divisor: int = 32, ignore_index: int = 255
) -> dict[str, Any]:
    """Collates samples of different sizes by padding (bottom/right).

    Every ``image`` is padded with 0 to the batch's largest ``h, w`` rounded up to a multiple of
    ``size_divisor`` (what the network's strides need); every ``mask`` with ``ignore_index`` to the
    batch's largest mask size. Items without ``image_hw`` / ``mask_hw`` (training crops) get their
    unpadded sizes. Other tensor fields (``index``) are stacked; anything else is gathered in a list.

    Args:
        batch: Transform outputs (``image`` ``[3, h, w]``, ``mask`` ``[H, W]``, ...).
        size_divisor: Padded image sizes are multiples of this.
        ignore_index: Mask value of padded pixels.

    Returns:
        ``image`` float ``[B, 3, Hp, Wp]``, ``mask`` int64 ``[B, Hm, Wm]``, ``image_hw`` and
        ``mask_hw`` int64 ``[B, 2]``, plus the other fields stacked.
    """
    if not batch:
        raise ValueError("pad_collate: empty batch")
    images = [item["image"] for item in batch]
    masks = [item["mask"] for item in batch]
    hp = round_up(max(im.shape[-2] for im in images), size_divisor)
    wp = round_up(max(im.shape[-1] for im in images), size_divisor)
    hm = max(m.shape[-2] for m in masks)
    wm = max(m.shape[-1] for m in masks)
    image_out = images[0].new_zeros((len(batch), images[0].shape[0], hp, wp))
    mask_out = torch.full((len(batch), hm, wm), ignore_index, dtype=torch.int64)
    for i, (im, m) in enumerate(zip(images, masks)):
        image_out[i, :, : im.shape[-2], : im.shape[-1]] = im
        mask_out[i, : m.shape[-2], : m.shape[-1]] = m
    out: dict[str, Any] = {"image": image_out, "mask": mask_out}
    out["image_hw"] = torch.stack(
        [item["image_hw"] if "image_hw" in item else torch.tensor(im.shape[-2:]) for item, im in zip(batch, images)]
    ).to(torch.int64)
    out["mask_hw"] = torch.stack(
        [item["mask_hw"] if "mask_hw" in item else torch.tensor(m.shape[-2:]) for item, m in zip(batch, masks)]
    ).to(torch.int64)
    for key in batch[0]:
        if key in out:
            continue
        values = [item[key] for item in batch]
        out[key] = torch.stack(values) if all(isinstance(v, torch.Tensor) for v in values) else values
    return out
