"""Drawing ground truth and predictions on images: keypoints, and class masks as colour overlays.

Used by each task's ``draw_predictions`` hook (the W&B image panel; evaluation galleries). Pure
NumPy/OpenCV on ``[H, W, 3]`` uint8 RGB pictures; coordinates in the picture's pixels with the
centre of pixel ``(0, 0)`` at ``(0.0, 0.0)`` (hrexp's convention).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from hrexp.data.transforms import IMAGENET_MEAN, IMAGENET_STD

GT_COLOR = (0, 255, 0)  # RGB green
PRED_COLOR = (255, 0, 0)  # RGB red
LINK_COLOR = (255, 255, 0)  # RGB yellow: ground truth -> prediction


def denormalise(image: torch.Tensor | np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """A normalised ``[3, H, W]`` network input back to ``[H, W, 3]`` uint8 RGB."""
    arr = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    arr = arr.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.ascontiguousarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8))


def enlarged_canvas(image: np.ndarray, scale: int) -> np.ndarray:
    """A new RGB uint8 copy of ``image`` (grey repeated to 3 channels), enlarged ``scale`` times with nearest
    pixels (kept sharp): what the drawing functions draw on."""
    out = np.ascontiguousarray(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2), dtype=np.uint8)
    if scale > 1:
        return cv2.resize(out, (out.shape[1] * scale, out.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    return out.copy()


def draw_keypoints(
    image: np.ndarray,
    gt: np.ndarray | None,
    pred: np.ndarray | None,
    gt_visible: np.ndarray | None = None,
    scale: int = 1,
    radius: int | None = None,
    links: bool = True,
) -> np.ndarray:
    """Draw ground truth (green dots) and predictions (red dots, on top) on an RGB uint8 image.

    Keypoints are ``[K, 2]`` ``(x, y)`` in the image's pixels, pixel ``(0, 0)``'s centre at
    ``(0.0, 0.0)`` (hrexp's convention). With ``links`` a thin yellow line joins each visible ground
    truth to its prediction. ``scale`` enlarges the image first (integer factor, nearest pixels
    kept sharp) and maps the keypoints with it: small network inputs become readable.

    Returns:
        A new ``[H * scale, W * scale, 3]`` uint8 image.
    """
    scale = max(1, int(scale))
    out = enlarged_canvas(image, scale)
    if radius is None:
        radius = max(2, round(min(out.shape[:2]) / 100))
    shift = 4  # sub-pixel drawing: coordinates in 1/16 pixel
    k = len(gt) if gt is not None else len(pred) if pred is not None else 0
    visible = np.ones(k, bool) if gt_visible is None else np.asarray(gt_visible).astype(bool)

    def to_px(points: np.ndarray | None) -> np.ndarray | None:
        if points is None:
            return None
        pts = (np.asarray(points, np.float64) + 0.5) * scale - 0.5
        return np.round(pts * (1 << shift)).astype(np.int64)

    g, p = to_px(gt), to_px(pred)
    ok_g = visible & np.all(np.isfinite(gt), axis=1) if gt is not None else np.zeros(k, bool)
    ok_p = np.all(np.isfinite(pred), axis=1) if pred is not None else np.zeros(k, bool)
    if links and g is not None and p is not None:
        for i in np.flatnonzero(ok_g & ok_p):
            cv2.line(out, tuple(map(int, g[i])), tuple(map(int, p[i])), LINK_COLOR, 1, cv2.LINE_AA, shift)
    for pts, ok, color in ((g, ok_g, GT_COLOR), (p, ok_p, PRED_COLOR)):
        if pts is None:
            continue
        for i in np.flatnonzero(ok):
            cv2.circle(out, tuple(map(int, pts[i])), radius << shift, color, -1, cv2.LINE_AA, shift)
    return out


# Class colours for masks: class 0 (background) is left uncoloured; then matplotlib's tab10 order.
PALETTE = np.array([
    (0, 0, 0), (255, 127, 14), (31, 119, 180), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
], np.uint8)


def class_color(class_id: int) -> tuple[int, int, int]:
    """The RGB colour of a class id (cycling after the palette; class 0 is black = not drawn)."""
    if class_id == 0:
        return (0, 0, 0)
    return tuple(int(v) for v in PALETTE[1 + (class_id - 1) % (len(PALETTE) - 1)])


def overlay_mask(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5, ignore_index: int | None = None,
                 scale: int = 1) -> np.ndarray:
    """Blend each non-background class of ``labels`` (``[H, W]`` class ids) over ``image`` in its colour.

    Background (0) and ``ignore_index`` pixels keep the image. ``labels`` of another size than the
    image are resized with nearest neighbours first; ``scale`` enlarges the result (integer factor).
    """
    out = np.ascontiguousarray(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2), dtype=np.uint8)
    labels = np.asarray(labels)
    if labels.shape != out.shape[:2]:
        labels = cv2.resize(labels.astype(np.int32), (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST)
    colored = labels > 0
    if ignore_index is not None:
        colored &= labels != ignore_index
    colors = np.zeros_like(out)
    for class_id in np.unique(labels[colored]):
        colors[labels == class_id] = class_color(int(class_id))
    blend = out.astype(np.float32)
    blend[colored] = (1 - alpha) * blend[colored] + alpha * colors[colored].astype(np.float32)
    out = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    scale = max(1, int(scale))
    if scale > 1:
        out = cv2.resize(out, (out.shape[1] * scale, out.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
    return out


def draw_skeleton(
    image: np.ndarray,
    keypoints: np.ndarray,
    visible: np.ndarray | None,
    skeleton: Sequence[tuple[int, int]],
    color: tuple[int, int, int],
    thickness: int = 2,
    scale: int = 1,
) -> np.ndarray:
    """Draw the limbs of a skeleton: a line for each 0-based pair ``(i, j)`` whose two keypoints are
    visible and finite. Coordinates and ``scale`` as in :func:`draw_keypoints` (draw the skeleton
    first and the keypoints on the result with ``scale=1`` to have the dots on top of the lines).

    Returns:
        A new ``[H * scale, W * scale, 3]`` uint8 image.
    """
    scale = max(1, int(scale))
    out = enlarged_canvas(image, scale)
    points = np.asarray(keypoints, np.float64).reshape(-1, 2)
    ok = np.all(np.isfinite(points), axis=1)
    if visible is not None:
        ok &= np.asarray(visible).astype(bool).reshape(-1)
    shift = 4  # sub-pixel drawing, as draw_keypoints
    px = np.round(np.nan_to_num((points + 0.5) * scale - 0.5) * (1 << shift)).astype(np.int64)
    for i, j in skeleton:
        if not (0 <= i < len(points) and 0 <= j < len(points)):
            raise ValueError(f"skeleton pair ({i}, {j}) out of range for {len(points)} keypoints")
        if ok[i] and ok[j]:
            cv2.line(out, tuple(map(int, px[i])), tuple(map(int, px[j])), tuple(map(int, color)),
                     max(1, int(thickness)), cv2.LINE_AA, shift)
    return out
