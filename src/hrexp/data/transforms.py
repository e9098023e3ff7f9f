"""Per-sample geometry and photometry: one affine matrix per sample, applied once.

Every geometric step (fit of the original image into the network input, then for training a random
rotation and scale about the input centre and an optional horizontal flip) is composed into ONE
3x3 homogeneous matrix ``M`` (original pixels -> input pixels). The image is warped once with
``cv2.warpAffine`` (bilinear, constant border) and the keypoints are mapped with the same ``M``.
Coordinates use the pixel-centre convention of the design (the centre of pixel ``(0, 0)`` is
``(0.0, 0.0)``), which is also ``cv2.warpAffine``'s convention, so keypoint and pixel mapping agree
exactly. We compose matrices ourselves with OpenCV rather than using albumentations because
decoding needs the exact inverse of the full geometric transform of every sample: with one explicit
matrix per sample, ``inv(M)`` maps predictions back to original pixels with no approximation, no
per-library keypoint rounding and no guessing of which internal crop/pad/resize steps were applied.

Large downscales (e.g. a 3000 px X-ray into 256 px) are anti-aliased: the image is first shrunk by
an integer factor with ``INTER_AREA`` and the warp matrix is corrected for that shrink, so the
recorded matrix still maps original pixels to input pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def translation(tx: float, ty: float) -> np.ndarray:
    """3x3 translation matrix."""
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def scaling(sx: float, sy: float | None = None) -> np.ndarray:
    """3x3 scaling matrix about the origin."""
    sy = sx if sy is None else sy
    return np.array([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]])


def rotation(degrees: float) -> np.ndarray:
    """3x3 rotation about the origin; positive angles turn counter-clockwise on screen (y down)."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def pixel_scaling(src_hw: Sequence[int], dst_hw: Sequence[int]) -> np.ndarray:
    """Matrix of a plain resize from ``src_hw`` to ``dst_hw`` in the pixel-centre convention.

    A resize maps pixel edges to pixel edges: ``x' + 0.5 = (x + 0.5) * W'/W``.
    """
    sx = dst_hw[1] / src_hw[1]
    sy = dst_hw[0] / src_hw[0]
    return translation(-0.5, -0.5) @ scaling(sx, sy) @ translation(0.5, 0.5)


def fit_matrix(src_hw: Sequence[int], dst_hw: Sequence[int], keep_aspect: bool = True) -> np.ndarray:
    """Matrix fitting an image of size ``src_hw`` into ``dst_hw`` (both ``(height, width)``).

    With ``keep_aspect`` the image is scaled by one factor so that it fits, and centred (the rest is
    padding); without it each axis is stretched to fill the input.
    """
    if not keep_aspect:
        return pixel_scaling(src_hw, dst_hw)
    h, w = src_hw
    dh, dw = dst_hw
    s = min(dw / w, dh / h)
    # Edges [-0.5, w - 0.5] map to a centred span of length s * w.
    ox = (dw - s * w) / 2.0
    oy = (dh - s * h) / 2.0
    return translation(ox - 0.5, oy - 0.5) @ scaling(s) @ translation(0.5, 0.5)


def about_centre(matrix: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """Conjugates ``matrix`` so that it acts about the centre of an image of ``size_hw``."""
    cx = (size_hw[1] - 1) / 2.0
    cy = (size_hw[0] - 1) / 2.0
    return translation(cx, cy) @ matrix @ translation(-cx, -cy)


def hflip_matrix(width: int) -> np.ndarray:
    """Horizontal flip of an image of the given width: ``x' = (W - 1) - x``."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Maps ``[..., 2]`` points with a 3x3 affine matrix (NaN stays NaN)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def flip_permutation(num_keypoints: int, flip_pairs: Sequence[Sequence[int]]) -> np.ndarray:
    """Index permutation swapping every flip pair (an involution)."""
    perm = np.arange(num_keypoints)
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm


def reduction_factor(max_scale: float) -> int:
    """The integer factor by which an image seen at most at ``max_scale`` of its size is reduced before
    the warp (1 = kept as it is): :func:`warp_image`'s anti-aliasing step, and the image cache's key."""
    return max(1, int(math.floor(1.0 / max_scale))) if max_scale > 0 else 1


def reduced_size(size_hw: Sequence[int], factor: int) -> tuple[int, int]:
    """The size of an image of ``size_hw`` reduced by ``factor``."""
    return max(1, round(size_hw[0] / factor)), max(1, round(size_hw[1] / factor))


def warp_image(image: np.ndarray, matrix: np.ndarray, dst_hw: Sequence[int]) -> np.ndarray:
    """Warps ``image`` with ``matrix`` (original -> output px) into ``dst_hw``, anti-aliasing big shrinks.

    Bilinear sampling of a strong downscale skips pixels (aliasing, noisy thin cortical edges), so
    when the matrix shrinks by more than 2x the image is first reduced by an integer factor with
    ``INTER_AREA`` and the warp is corrected by the exact matrix of that resize.
    """
    factor = reduction_factor(math.sqrt(abs(np.linalg.det(matrix[:2, :2]))))
    if factor >= 2:
        h, w = image.shape[:2]
        small_hw = reduced_size((h, w), factor)
        image = cv2.resize(image, (small_hw[1], small_hw[0]), interpolation=cv2.INTER_AREA)
        matrix = matrix @ np.linalg.inv(pixel_scaling((h, w), small_hw))
    return cv2.warpAffine(
        image,
        matrix[:2].astype(np.float64),
        (int(dst_hw[1]), int(dst_hw[0])),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def inside_image(points: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """True where a point lies within the image extent ``[-0.5, W - 0.5) x [-0.5, H - 0.5)``."""
    x, y = points[..., 0], points[..., 1]
    with np.errstate(invalid="ignore"):
        return (x >= -0.5) & (x < size_hw[1] - 0.5) & (y >= -0.5) & (y < size_hw[0] - 0.5)


def draw_uniform(low: float = 0.0, high: float = 1.0, rng: np.random.Generator | None = None) -> float:
    """One draw from ``U(low, high)``: from ``rng`` (tests), else from the torch global generator,
    which DataLoader seeds differently in every worker and Lightning's ``seed_everything`` seeds in
    the main process."""
    if rng is not None:
        return float(rng.uniform(low, high))
    return float(torch.empty((), dtype=torch.float64).uniform_(low, high))


def scale_range(scale: Sequence[float]) -> tuple[float, float]:
    """A random-scale option ``(min, max)``, checked: ``0 < min <= max``."""
    low, high = float(scale[0]), float(scale[1])
    if low <= 0 or low > high:
        raise ValueError(f"scale must be (min, max) with 0 < min <= max, got {tuple(scale)}")
    return low, high


@dataclass
class AugmentParams:
    """The random draw of one sample (identity by default)."""

    angle: float = 0.0  # degrees
    scale: float = 1.0
    flip: bool = False
    brightness: float = 0.0  # added, in [0, 1] intensity units
    contrast: float = 1.0  # factor about the image mean


class LandmarkTransform:
    """Maps an original image and its keypoints to the network input (batch-contract fields).

    Args:
        image_size: Network input ``(height, width)``.
        keep_aspect: Keep the aspect ratio (pad) instead of stretching.
        train: Apply the random augmentation (otherwise only the fit).
        rotation: Maximum absolute rotation in degrees (uniform in ``[-rotation, rotation]``).
        scale: ``(min, max)`` scale factor about the input centre.
        flip: Random horizontal flip with probability 0.5 (needs ``flip_pairs``).
        flip_pairs: Landmark index pairs swapped by a flip.
        brightness: Maximum absolute additive brightness change (image in [0, 1]).
        contrast: Maximum relative contrast change about the image mean.
        mean: Per-channel normalisation mean (RGB).
        std: Per-channel normalisation std (RGB).
    """

    def __init__(
        self,
        image_size: Sequence[int] = (256, 128),
        keep_aspect: bool = True,
        train: bool = False,
        rotation: float = 10.0,
        scale: Sequence[float] = (0.9, 1.1),
        flip: bool = False,
        flip_pairs: Sequence[Sequence[int]] = (),
        brightness: float = 0.1,
        contrast: float = 0.1,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ):
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.keep_aspect = bool(keep_aspect)
        self.train = bool(train)
        self.rotation = float(rotation)
        self.scale = scale_range(scale)
        self.flip_pairs = [(int(a), int(b)) for a, b in flip_pairs]
        if flip and not self.flip_pairs:
            raise ValueError("flip=True needs flip_pairs: without them a flipped left landmark would keep its label")
        self.flip = bool(flip)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def sample_params(self, rng: np.random.Generator | None = None) -> AugmentParams:
        """Draws the random parameters of one sample (identity when not training).

        Without ``rng`` the torch global generator is used, which DataLoader seeds differently in
        every worker and Lightning's ``seed_everything`` seeds in the main process.
        """
        if not self.train:
            return AugmentParams()

        def uniform(low: float, high: float) -> float:
            return draw_uniform(low, high, rng)

        return AugmentParams(
            angle=uniform(-self.rotation, self.rotation),
            scale=uniform(*self.scale),
            flip=self.flip and uniform(0.0, 1.0) < 0.5,
            brightness=uniform(-self.brightness, self.brightness),
            contrast=uniform(1.0 - self.contrast, 1.0 + self.contrast),
        )

    def matrix(self, src_hw: Sequence[int], params: AugmentParams | None = None) -> np.ndarray:
        """The full original -> input matrix for an image of ``src_hw`` and the given draw."""
        params = params or AugmentParams()
        m = fit_matrix(src_hw, self.image_size, self.keep_aspect)
        aug = about_centre(rotation(params.angle) @ scaling(params.scale), self.image_size)
        m = aug @ m
        if params.flip:
            m = hflip_matrix(self.image_size[1]) @ m
        return m

    def max_scale(self, src_hw: Sequence[int]) -> float:
        """The largest scale (input px per original px) any draw gives an image of ``src_hw``: what an
        image may be reduced to beforehand without losing detail (rotation and flip keep the scale)."""
        fit = fit_matrix(src_hw, self.image_size, self.keep_aspect)
        return math.sqrt(abs(np.linalg.det(fit[:2, :2]))) * (self.scale[1] if self.train else 1.0)

    def __call__(
        self,
        image: np.ndarray,
        keypoints: np.ndarray,
        visible: np.ndarray,
        params: AugmentParams | None = None,
        rng: np.random.Generator | None = None,
        original_hw: Sequence[int] | None = None,
        reduced_by: np.ndarray | None = None,
    ) -> dict[str, torch.Tensor]:
        """Transforms one sample.

        Args:
            image: ``[H, W]`` or ``[H, W, C]`` float32 RGB (or gray) in [0, 1].
            keypoints: ``[K, 2]`` original pixels, NaN where missing.
            visible: ``[K]`` bool, annotated in the original.
            params: A fixed draw (tests); sampled when None.
            rng: Generator for the draw (tests); the torch global one when None.
            original_hw: The original image's ``(h, w)`` when ``image`` is a reduced copy of it.
            reduced_by: The matrix from original to ``image`` pixels for such a copy
                (:class:`~hrexp.data.image_cache.ShrunkImageCache`); keypoints and ``matrix`` stay in
                original pixels.

        Returns:
            ``image`` float32 ``[3, h, w]`` normalised, ``keypoints`` ``[K, 2]`` input px (0 where
            not visible), ``visible`` ``[K]`` (annotated and inside the input), ``keypoints_orig``
            ``[K, 2]`` (0 where missing), ``visible_orig`` ``[K]``, ``matrix`` ``[3, 3]``. Under a
            flip every per-landmark array is permuted by the flip pairs, so index ``i`` is the same
            landmark in every field and ``matrix @ keypoints_orig == keypoints`` still holds.
        """
        if params is None:
            params = self.sample_params(rng)
        m = self.matrix(image.shape[:2] if original_hw is None else original_hw, params)
        return self.apply(image, keypoints, visible, m, params, reduced_by)

    def apply(
        self, image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray, m: np.ndarray, params: AugmentParams,
        reduced_by: np.ndarray | None = None,
    ) -> dict[str, torch.Tensor]:
        """Warps the image and maps the keypoints with the sample's matrix ``m``; applies the photometry.

        ``m`` already contains the flip when ``params.flip``; the flip pairs are permuted here.
        ``reduced_by``: ``image`` is a reduced copy of the original (original -> copy pixels).
        """
        out = warp_image(image, m if reduced_by is None else m @ np.linalg.inv(reduced_by), self.image_size)
        if out.ndim == 2:
            out = out[:, :, None]
        if out.shape[2] == 1:
            out = np.repeat(out, 3, axis=2)  # gray X-rays -> 3 channels for ImageNet backbones
        elif out.shape[2] > 3:
            out = out[:, :, :3]
        if params.contrast != 1.0 or params.brightness != 0.0:
            mean = float(out.mean())
            out = (out - mean) * params.contrast + mean + params.brightness
            np.clip(out, 0.0, 1.0, out=out)
        out = (out - self.mean) / self.std

        keypoints = np.asarray(keypoints, dtype=np.float64)
        visible_orig = np.asarray(visible, dtype=bool) & np.all(np.isfinite(keypoints), axis=1)
        mapped = apply_matrix(m, keypoints)
        visible_in = visible_orig & inside_image(mapped, self.image_size)
        kp_orig = np.where(visible_orig[:, None], keypoints, 0.0)
        if params.flip:
            perm = flip_permutation(len(keypoints), self.flip_pairs)
            mapped, visible_in = mapped[perm], visible_in[perm]
            kp_orig, visible_orig = kp_orig[perm], visible_orig[perm]
        mapped = np.where(visible_in[:, None], mapped, 0.0)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)),
            "keypoints": torch.from_numpy(mapped.astype(np.float32)),
            "visible": torch.from_numpy(visible_in.astype(np.float32)),
            "keypoints_orig": torch.from_numpy(kp_orig.astype(np.float32)),
            "visible_orig": torch.from_numpy(visible_orig.astype(np.float32)),
            "matrix": torch.from_numpy(m.astype(np.float32)),
        }
