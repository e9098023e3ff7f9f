"""Segmentation transforms: the training crop/flip/jitter, the eval resize and the padding collate."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from hrexp.data.segmentation.transforms import SegAugmentParams, SegEvalTransform, SegTrainTransform, pad_collate
from hrexp.data.transforms import IMAGENET_MEAN, IMAGENET_STD

MEAN = np.asarray(IMAGENET_MEAN, dtype=np.float32)
STD = np.asarray(IMAGENET_STD, dtype=np.float32)


def denormalise(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` normalised tensor -> ``[H, W, 3]`` in [0, 1] units."""
    return image.numpy().transpose(1, 2, 0) * STD + MEAN


# ---------------------------------------------------------------------------------- train transform
def squares_sample(h=180, w=260, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Dark image with bright rectangles; the mask is 1 exactly where the image is bright."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 0.1, np.float32)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(4):
        y, x = rng.integers(0, h - 40), rng.integers(0, w - 40)
        sh, sw = rng.integers(15, 40, size=2)
        image[y : y + sh, x : x + sw] = 0.9
        mask[y : y + sh, x : x + sw] = 1
    return image, mask


def test_train_transform_keeps_image_and_mask_aligned():
    image, mask = squares_sample()
    tf = SegTrainTransform(crop_size=(128, 160), scale=(0.5, 2.0), brightness=0, contrast=0, saturation=0)
    rng = np.random.default_rng(1)
    flips = 0
    for _ in range(30):
        params = tf.sample_params(rng)
        flips += params.flip
        out = tf(image, mask, params=params)
        assert out["image"].shape == (3, 128, 160) and out["image"].dtype == torch.float32
        assert out["mask"].shape == (128, 160) and out["mask"].dtype == torch.int64
        m = out["mask"].numpy()
        bright = denormalise(out["image"])[:, :, 0] > 0.5
        valid = m != 255
        # Away from the rectangles' edges and the crop's border (2 px bands), the mask is exactly
        # where the image is bright.
        fg = (m == 1).astype(np.uint8)
        kernel = np.ones((5, 5), np.uint8)
        band = cv2.dilate(fg, kernel) != cv2.erode(fg, kernel)
        inner = cv2.erode(valid.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0
        check = inner & ~band
        assert check.sum() > 1000
        np.testing.assert_array_equal(bright[check], m[check] == 1)
        # Padding (scale < crop) is ignore in the mask and 0 (the mean colour) in the image.
        assert (out["image"].numpy()[:, ~valid] == 0).all()
    assert 5 < flips < 25


def test_train_masks_keep_their_values_nearest_neighbour():
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 3, 7], np.uint8), size=(97, 131))
    image = rng.random((97, 131, 3), dtype=np.float32)
    tf = SegTrainTransform(crop_size=(120, 100), scale=(0.6, 1.7))
    seen = set()
    for _ in range(20):
        out = tf(image, mask, rng=rng)
        seen |= set(np.unique(out["mask"].numpy()).tolist())
        img = denormalise(out["image"])
        valid = out["mask"].numpy() != 255
        assert img[valid].min() >= -1e-5 and img[valid].max() <= 1 + 1e-5  # jitter clipped to [0, 1]
    assert seen == {0, 3, 7, 255}


def test_train_crop_without_rescale_is_an_exact_window_and_flip_mirrors():
    image, mask = squares_sample(100, 120)
    tf = SegTrainTransform(crop_size=(64, 80), brightness=0, contrast=0, saturation=0)
    params = SegAugmentParams(scale=1.0, crop_y=0.5, crop_x=0.999, flip=False)
    out = tf(image, mask, params=params)
    y0, x0 = int(0.5 * (100 - 64 + 1)), 120 - 80
    np.testing.assert_allclose(denormalise(out["image"]), image[y0 : y0 + 64, x0 : x0 + 80], atol=1e-6)
    np.testing.assert_array_equal(out["mask"].numpy(), mask[y0 : y0 + 64, x0 : x0 + 80])
    flipped = tf(image, mask, params=SegAugmentParams(scale=1.0, crop_y=0.5, crop_x=0.999, flip=True))
    torch.testing.assert_close(flipped["image"], out["image"].flip(-1))
    torch.testing.assert_close(flipped["mask"], out["mask"].flip(-1))
    # The same generator state gives the same sample (tests can pin the draw).
    a = tf(image, mask, rng=np.random.default_rng(5))
    b = tf(image, mask, rng=np.random.default_rng(5))
    torch.testing.assert_close(a["image"], b["image"])
    torch.testing.assert_close(a["mask"], b["mask"])


def test_train_padding_when_the_image_is_smaller_than_the_crop():
    image, mask = squares_sample(50, 60)
    tf = SegTrainTransform(crop_size=(64, 64), brightness=0, contrast=0, saturation=0)
    out = tf(image, mask, params=SegAugmentParams(scale=1.0, crop_y=0.7, crop_x=0.3))
    m = out["mask"].numpy()
    np.testing.assert_array_equal(m[:50, :60], mask)
    assert (m[50:] == 255).all() and (m[:, 60:] == 255).all()
    assert (out["image"][:, 50:] == 0).all() and (out["image"][:, :, 60:] == 0).all()


# ---------------------------------------------------------------------------------- eval transform, collate
def test_eval_transform_never_resizes_the_mask():
    rng = np.random.default_rng(0)
    image = rng.random((300, 500, 3), dtype=np.float32)
    mask = rng.integers(0, 3, size=(300, 500), dtype=np.uint8)
    small = SegEvalTransform(max_size=256)(image, mask)
    assert small["image"].shape == (3, 154, 256)  # 300 * 256 / 500 = 153.6
    assert small["image_hw"].tolist() == [154, 256] and small["mask_hw"].tolist() == [300, 500]
    np.testing.assert_array_equal(small["mask"].numpy(), mask)
    for max_size in (None, 500, 800):
        full = SegEvalTransform(max_size=max_size)(image, mask)
        assert full["image_hw"].tolist() == [300, 500]
        np.testing.assert_allclose(denormalise(full["image"]), image, atol=1e-6)
        np.testing.assert_array_equal(full["mask"].numpy(), mask)


def test_pad_collate_pads_images_to_multiples_and_masks_with_ignore():
    rng = np.random.default_rng(0)
    tf = SegEvalTransform(max_size=90)
    items = []
    for h, w in ((100, 150), (130, 70)):
        image = rng.random((h, w, 3), dtype=np.float32)
        mask = rng.integers(0, 2, size=(h, w), dtype=np.uint8)
        items.append(tf(image, mask) | {"index": torch.tensor(len(items))})
    batch = pad_collate(items)
    assert batch["image"].shape == (2, 3, 96, 96)  # images (60, 90) and (90, 48): max (90, 90) -> 96
    assert batch["mask"].shape == (2, 130, 150)
    assert batch["image_hw"].tolist() == [[60, 90], [90, 48]] and batch["mask_hw"].tolist() == [[100, 150], [130, 70]]
    assert batch["index"].tolist() == [0, 1]
    for i, item in enumerate(items):
        (ih, iw), (mh, mw) = item["image_hw"].tolist(), item["mask_hw"].tolist()
        torch.testing.assert_close(batch["image"][i, :, :ih, :iw], item["image"])
        torch.testing.assert_close(batch["mask"][i, :mh, :mw], item["mask"])
        assert (batch["mask"][i, mh:] == 255).all() and (batch["mask"][i, :, mw:] == 255).all()
        assert (batch["image"][i, :, ih:] == 0).all() and (batch["image"][i, :, :, iw:] == 0).all()

    # Training crops have no sizes: both are the crop size.
    train = SegTrainTransform(crop_size=(40, 50))
    crops = [train(rng.random((60, 60, 3), dtype=np.float32), np.zeros((60, 60), np.uint8), rng=rng) for _ in range(3)]
    batch = pad_collate(crops)
    assert batch["image"].shape == (3, 3, 64, 64) and batch["mask"].shape == (3, 40, 50)
    assert batch["image_hw"].tolist() == [[40, 50]] * 3 and batch["mask_hw"].tolist() == [[40, 50]] * 3
