"""Top-down crops: one person box -> the network input, by ONE affine matrix per sample.

The box ``(x, y, w, h)`` is turned into a centre and a size with the input's aspect ratio (the
shorter side grown to match) and enlarged by ``padding`` (1.25: the person plus context). The crop
matrix maps that region onto the whole input. Training draws, per sample:

* half-body (probability ``half_body_prob``, when the metadata defines the upper body and more than
  ``half_body_min_keypoints`` keypoints are labelled): the box is replaced by the box of the upper
  or lower body's labelled keypoints, enlarged by 1.5;
* scale: the region's size times ``uniform(scale)`` (``0.65-1.35``: zoom in and out);
* rotation: ``uniform(+-rotation)`` degrees with probability ``rotation_prob``;
* horizontal flip with probability 0.5, swapping the flip pairs.

Everything else (warping, keypoint mapping, flip permutation, normalisation, the output fields)
is :class:`hrexp.data.transforms.LandmarkTransform`'s, so landmark and pose samples follow one
batch contract and ``inv(matrix)`` maps any prediction back to original pixels exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from hrexp.data.transforms import (
    AugmentParams,
    LandmarkTransform,
    draw_uniform,
    hflip_matrix,
    rotation,
    scaling,
    translation,
)

HALF_BODY_PADDING = 1.5


def box_to_region(bbox: Sequence[float], aspect: float, padding: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``(cx, cy)`` (pixel-centre convention) and size ``(w, h)`` with ``w / h == aspect``.

    COCO boxes are continuous (pixel ``i`` spans ``[i, i + 1)``), hence the -0.5 on the centre.
    """
    x, y, w, h = (float(v) for v in bbox)
    centre = np.array([x + 0.5 * w - 0.5, y + 0.5 * h - 0.5])
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return centre, np.array([w, h]) * padding


def region_matrix(centre: np.ndarray, size: np.ndarray, out_hw: Sequence[int], angle: float = 0.0) -> np.ndarray:
    """Maps the region (rotated by ``angle`` about its centre) onto an ``out_hw`` input.

    The region's extent maps onto the input's pixel extent ``[-0.5, W - 0.5]``: scale ``W / w``.
    """
    out_h, out_w = out_hw
    s = out_w / size[0]
    out_centre = ((out_w - 1) / 2.0, (out_h - 1) / 2.0)
    return translation(*out_centre) @ scaling(s) @ rotation(angle) @ translation(-centre[0], -centre[1])


@dataclass
class TopDownParams(AugmentParams):
    """One sample's draw: LandmarkTransform's, plus the half-body choice."""

    half_body: str | None = None  # "upper" | "lower" | None


class TopDownTransform(LandmarkTransform):
    """Crops one person box to the network input (see the module docstring).

    Args:
        image_size: Network input ``(height, width)`` (256x192 for COCO).
        padding: Box enlargement (1.25).
        train: Draw the random augmentation.
        scale: ``(min, max)`` factor of the region's size.
        rotation: Maximum absolute rotation in degrees.
        rotation_prob: Probability of rotating at all.
        flip: Random horizontal flip (needs ``flip_pairs``).
        flip_pairs: Keypoint index pairs swapped by a flip.
        half_body_prob: Probability of a half-body crop (needs ``upper_body``).
        half_body_min_keypoints: A half-body crop needs more labelled keypoints than this.
        upper_body: Indices of the upper-body keypoints (the rest is the lower body).
        brightness: Maximum additive brightness change (image in [0, 1]).
        contrast: Maximum relative contrast change.
    """

    def __init__(
        self,
        image_size: Sequence[int] = (256, 192),
        padding: float = 1.25,
        train: bool = False,
        scale: Sequence[float] = (0.65, 1.35),
        rotation: float = 40.0,
        rotation_prob: float = 0.6,
        flip: bool = False,
        flip_pairs: Sequence[Sequence[int]] = (),
        half_body_prob: float = 0.0,
        half_body_min_keypoints: int = 8,
        upper_body: Sequence[int] = (),
        brightness: float = 0.0,
        contrast: float = 0.0,
    ):
        super().__init__(
            image_size=image_size, train=train, rotation=rotation, scale=scale, flip=flip,
            flip_pairs=flip_pairs, brightness=brightness, contrast=contrast,
        )
        if not padding > 0:
            raise ValueError(f"padding must be > 0, got {padding!r}")
        if not 0.0 <= rotation_prob <= 1.0 or not 0.0 <= half_body_prob <= 1.0:
            raise ValueError(f"rotation_prob and half_body_prob must be in [0, 1], got {rotation_prob}, {half_body_prob}")
        if half_body_prob > 0 and not upper_body:
            raise ValueError("half_body_prob > 0 needs the upper-body keypoints (metadata field upper_body)")
        self.padding = float(padding)
        self.rotation_prob = float(rotation_prob)
        self.half_body_prob = float(half_body_prob)
        self.half_body_min_keypoints = int(half_body_min_keypoints)
        self.upper_body = [int(i) for i in upper_body]

    @property
    def aspect(self) -> float:
        return self.image_size[1] / self.image_size[0]

    def sample_params(self, rng: np.random.Generator | None = None) -> TopDownParams:
        base = super().sample_params(rng)
        if not self.train:
            return TopDownParams()

        angle = base.angle if draw_uniform(rng=rng) < self.rotation_prob else 0.0
        half = None
        if draw_uniform(rng=rng) < self.half_body_prob:
            half = "upper" if draw_uniform(rng=rng) < 0.5 else "lower"
        return TopDownParams(angle=angle, scale=base.scale, flip=base.flip, brightness=base.brightness,
                             contrast=base.contrast, half_body=half)

    def region(self, bbox: Sequence[float], keypoints: np.ndarray, visible: np.ndarray,
               params: TopDownParams) -> tuple[np.ndarray, np.ndarray]:
        """The crop region of one sample: the box (or the half-body box), scaled by the draw."""
        centre, size = box_to_region(bbox, self.aspect, self.padding)
        if params.half_body and visible.sum() > self.half_body_min_keypoints:
            upper = set(self.upper_body)
            part = [i for i in range(len(visible)) if visible[i] and ((i in upper) == (params.half_body == "upper"))]
            if len(part) < 2:  # the other half, as in the HRNet reference implementation
                part = [i for i in range(len(visible)) if visible[i] and ((i in upper) != (params.half_body == "upper"))]
            if len(part) >= 2:
                pts = keypoints[part]
                lo, hi = pts.min(axis=0), pts.max(axis=0)
                # Keypoints are pixel centres; in COCO's continuous box coordinates (ours + 0.5) their
                # pixels span [lo, hi + 1].
                box = (lo[0], lo[1], hi[0] - lo[0] + 1.0, hi[1] - lo[1] + 1.0)
                centre, size = box_to_region(box, self.aspect, HALF_BODY_PADDING)
        return centre, size * params.scale

    def crop_matrix(self, bbox: Sequence[float], keypoints: np.ndarray, visible: np.ndarray,
                    params: TopDownParams) -> np.ndarray:
        centre, size = self.region(bbox, keypoints, visible, params)
        m = region_matrix(centre, size, self.image_size, params.angle)
        if params.flip:
            m = hflip_matrix(self.image_size[1]) @ m
        return m

    def __call__(self, image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray, bbox: Sequence[float],
                 params: TopDownParams | None = None, rng: np.random.Generator | None = None) -> dict[str, torch.Tensor]:
        """Crops one person; returns LandmarkTransform's fields (see its ``__call__``)."""
        if params is None:
            params = self.sample_params(rng)
        keypoints = np.asarray(keypoints, dtype=np.float64)
        visible = np.asarray(visible, dtype=bool) & np.all(np.isfinite(keypoints), axis=1)
        matrix = self.crop_matrix(bbox, np.nan_to_num(keypoints), visible, params)
        return self.apply(image, keypoints, visible, matrix, params)
