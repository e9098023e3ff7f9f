"""The original image in every landmark batch, for coarse-to-fine refinement (``data.refine_scale``).

Stage 1 finds the landmarks on the network input (the whole image fitted into ``data.image_size``);
stage 2 cuts a patch around each landmark from the ORIGINAL image, at ``refine_scale`` of its size
(1.0: native pixels), and refines it there. With ``data.refine_scale`` set, every landmark sample
(train, val, test, and predict.py's) also carries:

* ``original``: uint8 ``[3, Hs, Ws]``, the decoded image (RGB; a gray image in all three channels, as
  the network input gets it), NOT augmented (no rotation, scale, flip or brightness) and not
  normalised, reduced by the integer factor ``n = round(1 / refine_scale)`` with ``INTER_AREA``;
* ``original_scale``: float32 scalar, ``1 / n``: original pixels -> ``original`` pixels.

Coordinates follow hrexp's pixel-centre convention (the centre of pixel ``(0, 0)`` is ``(0.0, 0.0)``):
a reduction by ``n`` maps pixel edges to pixel edges, so ``x_s = (x + 0.5) * s - 0.5`` and back
``x = (x_s + 0.5) / s - 0.5`` with ``s = original_scale``, the same on both axes. To keep that exact
when ``n`` does not divide the image size, the image is first padded by repeating its last row /
column up to a multiple of ``n``: ``Hs = ceil(H / n)``, ``Ws = ceil(W / n)`` (``Hs / H == s`` when
``n`` divides ``H``).

The pixels are quantised to uint8 (``round(v * 255)`` of the decoded value in [0, 1]) BEFORE the
reduction, so an 8-bit file gives exactly ``cv2.resize(rgb_uint8, (Ws, Hs), INTER_AREA)``. A 16-bit
X-ray loses its extra depth here (the network input keeps it).

The batch is collated by :func:`collate_originals`: ``original`` zero-padded (bottom / right) to the
batch's largest ``Hs, Ws``, ``original_scale`` stacked to ``[B]``, and ``original_hw`` int64
``[B, 2]``, the unpadded ``(Hs, Ws)`` of each sample; every other key by torch's default collate.

Reduced originals are stored in the image cache folder (:class:`OriginalImageCache`, entries of their
own beside :class:`~hrexp.data.image_cache.ShrunkImageCache`'s), so a large image the network sees
reduced is still decoded once, not at every epoch.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import default_collate

from hrexp.data.image_cache import ShrunkImageCache
from hrexp.data.images import load_image

OPTION = "data.refine_scale"
ORIGINAL_KEYS = ("original", "original_scale")
# 1 / refine_scale may be this far from a whole number (0.333 for 1/3 is 3.003)
_FACTOR_TOLERANCE = 0.01


def refine_factor(refine_scale: Any) -> int | None:
    """The integer reduction ``n`` of ``data.refine_scale`` (``1 / n``); None when it is null (off).

    Raises:
        ValueError: Not null and not ``1 / n`` for a whole number ``n >= 1`` (the message names
            ``data.refine_scale``).
    """
    if refine_scale is None:
        return None
    expected = "expected null (off) or 1/n for a whole number n >= 1: 1.0 (native pixels), 0.5, 0.333.., 0.25, ..."
    if isinstance(refine_scale, bool) or not isinstance(refine_scale, (int, float)):
        raise ValueError(f"{OPTION}={refine_scale!r}: {expected}")
    scale = float(refine_scale)
    if not math.isfinite(scale) or scale <= 0 or scale > 1:
        raise ValueError(f"{OPTION}={refine_scale!r}: {expected}")
    factor = round(1.0 / scale)
    if factor < 1 or abs(1.0 / scale - factor) > _FACTOR_TOLERANCE:
        raise ValueError(f"{OPTION}={refine_scale!r}: 1/{refine_scale} = {1.0 / scale:.4g} is not a whole number; "
                         f"{expected}")
    return factor


def original_size(size_hw: Sequence[int], factor: int) -> tuple[int, int]:
    """``(Hs, Ws)`` of an image of ``size_hw`` reduced by ``factor``: ``ceil`` of each side / factor."""
    return -(-int(size_hw[0]) // factor), -(-int(size_hw[1]) // factor)


def reduce_original(image: np.ndarray, factor: int) -> np.ndarray:
    """A decoded image (``load_image``: float32 in [0, 1], ``[H, W]`` or ``[H, W, C]``) as uint8, reduced by ``factor``.

    Returns ``[Hs, Ws]`` for gray (the tensor repeats it to three channels) or ``[Hs, Ws, 3]`` RGB; see
    the module docstring for the rounding, the edge padding and the sizes.
    """
    if image.ndim == 3:
        image = image[:, :, 0] if image.shape[2] == 1 else image[:, :, :3]
    pixels = np.clip(image * np.float32(255.0) + np.float32(0.5), 0.0, 255.0).astype(np.uint8)
    if factor == 1:
        return np.ascontiguousarray(pixels)
    h, w = pixels.shape[:2]
    hs, ws = original_size((h, w), factor)
    if (hs * factor, ws * factor) != (h, w):
        pixels = cv2.copyMakeBorder(pixels, 0, hs * factor - h, 0, ws * factor - w, cv2.BORDER_REPLICATE)
    return cv2.resize(pixels, (ws, hs), interpolation=cv2.INTER_AREA)


def original_fields(reduced: np.ndarray, factor: int) -> dict[str, torch.Tensor]:
    """``original`` (uint8 ``[3, Hs, Ws]``; a gray image expanded, a view) and ``original_scale`` (float32, ``1/factor``)."""
    pixels = torch.from_numpy(np.ascontiguousarray(reduced))
    original = pixels.expand(3, *pixels.shape) if pixels.ndim == 2 else pixels.permute(2, 0, 1)
    return {"original": original, "original_scale": torch.tensor(1.0 / factor, dtype=torch.float32)}


class OriginalImageCache(ShrunkImageCache):
    """uint8 originals reduced by ``refine_scale``'s factor, decoded once and read back from ``folder``.

    Shares the folder and the key (path, byte size, mtime, factor) of
    :class:`~hrexp.data.image_cache.ShrunkImageCache`, tagged so its uint8 entries never meet that
    cache's uint16 ones.
    """

    def key(self, path: Path, factor: int) -> str:
        return hashlib.sha1(f"original-uint8|{super().key(path, factor)}".encode()).hexdigest()

    def load_original(self, path: str | Path, size_hw: tuple[int, int], factor: int) -> np.ndarray:
        """:func:`reduce_original` of the image at ``path`` (of size ``size_hw``); decodes and stores it on a miss.

        Raises:
            DataError: The file cannot be decoded (from ``load_image``).
            ValueError: The decoded size differs from ``size_hw`` (the file changed after validation).
        """
        small_hw = original_size(size_hw, factor)
        entry = self.entry(path, factor)
        if entry.is_file():
            try:
                stored = np.load(entry, allow_pickle=False)
                if stored.dtype == np.uint8 and stored.shape[:2] == small_hw and stored.ndim in (2, 3):
                    return stored
            except (OSError, ValueError):  # a damaged entry is rebuilt
                pass
        full = load_image(path)
        if tuple(full.shape[:2]) != tuple(size_hw):
            raise ValueError(f"{path}: decoded size {full.shape[:2]} differs from the validated size {tuple(size_hw)}")
        reduced = reduce_original(full, factor)
        self._write(entry, reduced)
        return reduced


def collate_originals(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collates samples with ``original`` of different sizes (see the module docstring).

    Returns the default collate of the other keys, plus ``original`` uint8 ``[B, 3, Hmax, Wmax]``
    (zero-padded bottom / right), ``original_scale`` float32 ``[B]`` and ``original_hw`` int64 ``[B, 2]``
    (the unpadded ``(Hs, Ws)``).
    """
    if not batch:
        raise ValueError("collate_originals: empty batch")
    originals = [item["original"] for item in batch]
    hmax = max(o.shape[-2] for o in originals)
    wmax = max(o.shape[-1] for o in originals)
    padded = originals[0].new_zeros((len(batch), 3, hmax, wmax))
    for i, o in enumerate(originals):
        padded[i, :, : o.shape[-2], : o.shape[-1]] = o
    out = default_collate([{k: v for k, v in item.items() if k not in ORIGINAL_KEYS} for item in batch])
    out["original"] = padded
    out["original_scale"] = torch.stack([item["original_scale"] for item in batch]).to(torch.float32)
    out["original_hw"] = torch.tensor([tuple(o.shape[-2:]) for o in originals], dtype=torch.int64)
    return out
