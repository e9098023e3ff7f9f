"""One affine matrix per sample: pixels and keypoints move together, exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hrexp.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentParams,
    LandmarkTransform,
    apply_matrix,
    fit_matrix,
    warp_image,
)


def gaussian_blobs(height: int, width: int, centres: np.ndarray, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width))
    for cx, cy in centres:
        image += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    return image.astype(np.float32)


def blob_centre(image: np.ndarray, guess: np.ndarray, radius: int) -> np.ndarray:
    """Intensity-weighted centroid in a window around ``guess``."""
    x0, y0 = int(round(guess[0])), int(round(guess[1]))
    ys, xs = np.mgrid[y0 - radius : y0 + radius + 1, x0 - radius : x0 + radius + 1]
    w = image[ys, xs].astype(np.float64)
    w = np.clip(w - 0.02 * w.max(), 0, None)  # ignore the far tails
    return np.array([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])


def denormalise(image: torch.Tensor) -> np.ndarray:
    mean = np.asarray(IMAGENET_MEAN)[:, None, None]
    std = np.asarray(IMAGENET_STD)[:, None, None]
    return image.numpy() * std + mean


def bilinear(image: np.ndarray, x: float, y: float) -> float:
    x0, y0 = int(math.floor(x)), int(math.floor(y))
    fx, fy = x - x0, y - y0
    return float(
        image[y0, x0] * (1 - fx) * (1 - fy)
        + image[y0, x0 + 1] * fx * (1 - fy)
        + image[y0 + 1, x0] * (1 - fx) * fy
        + image[y0 + 1, x0 + 1] * fx * fy
    )


def test_fit_matrix_pixel_centre_convention():
    # A 100x100 image into 256x128 with the aspect kept: scale 1.28, centred vertically.
    m = fit_matrix((100, 100), (256, 128), keep_aspect=True)
    edges = apply_matrix(m, np.array([[-0.5, -0.5], [99.5, 99.5]]))
    np.testing.assert_allclose(edges, [[-0.5, 63.5], [127.5, 191.5]], atol=1e-12)
    # Stretched: image edges map to input edges on both axes.
    m = fit_matrix((100, 50), (256, 128), keep_aspect=False)
    np.testing.assert_allclose(apply_matrix(m, np.array([[-0.5, -0.5], [49.5, 99.5]])), [[-0.5, -0.5], [127.5, 255.5]])
    # Same size: identity, pixel centres stay put.
    np.testing.assert_allclose(fit_matrix((30, 20), (30, 20)), np.eye(3), atol=1e-12)


def test_warp_samples_the_original_at_the_inverse_mapped_pixel():
    """cv2.warpAffine and our matrices use the same convention: exact per-pixel agreement."""
    rng = np.random.default_rng(0)
    original = rng.random((60, 40)).astype(np.float32)
    t = LandmarkTransform(image_size=(64, 48), train=True, rotation=20, scale=(1.0, 1.3), brightness=0, contrast=0)
    params = AugmentParams(angle=13.0, scale=1.2)
    m = t.matrix(original.shape, params)
    assert math.sqrt(abs(np.linalg.det(m[:2, :2]))) > 0.5  # no anti-alias shrink in this check
    warped = warp_image(original, m, (64, 48))
    inv = np.linalg.inv(m)
    checked = 0
    for yo in range(0, 64, 3):
        for xo in range(0, 48, 3):
            x, y = apply_matrix(inv, np.array([xo, yo], float))
            if 1 <= x <= 38 and 1 <= y <= 58:
                assert warped[yo, xo] == pytest.approx(bilinear(original, x, y), abs=2e-3)
                checked += 1
    assert checked > 100


@pytest.mark.parametrize(
    "src_hw,sigma,keep_aspect",
    [((300, 150), 3.0, True), ((200, 300), 3.0, True), ((300, 150), 3.0, False), ((3000, 1000), 30.0, True)],
)
def test_blobs_are_found_at_the_transformed_keypoints(src_hw, sigma, keep_aspect):
    h, w = src_hw
    rng = np.random.default_rng(1)
    centres = np.stack([rng.uniform(0.25 * w, 0.75 * w, 4), rng.uniform(0.2 * h, 0.8 * h, 4)], axis=1)
    centres[:, 1] = np.linspace(0.2 * h, 0.8 * h, 4) + rng.uniform(-2, 2, 4)  # keep blobs apart
    image = gaussian_blobs(h, w, centres, sigma)
    t = LandmarkTransform(image_size=(256, 128), keep_aspect=keep_aspect, brightness=0, contrast=0)
    out = t(image, centres, np.ones(4, bool))
    warped = denormalise(out["image"])[0]
    kp = out["keypoints"].numpy()
    assert out["visible"].numpy().all()
    scale = math.sqrt(abs(np.linalg.det(out["matrix"].numpy()[:2, :2].astype(np.float64))))
    radius = max(3, int(4 * sigma * scale))
    for point in kp:
        found = blob_centre(warped, point, radius)
        np.testing.assert_allclose(found, point, atol=0.04)  # measured <= 0.014 px


def test_inverse_matrix_maps_keypoints_back_exactly():
    rng = np.random.default_rng(2)
    image = rng.random((400, 200)).astype(np.float32)
    kp = np.stack([rng.uniform(20, 180, 30), rng.uniform(20, 380, 30)], axis=1)
    t = LandmarkTransform(image_size=(256, 128), train=True, rotation=10, scale=(0.9, 1.1))
    for _ in range(5):
        out = t(image, kp, np.ones(30, bool), rng=rng)
        m = out["matrix"].numpy().astype(np.float64)
        vis = out["visible"].numpy().astype(bool)
        back = apply_matrix(np.linalg.inv(m), out["keypoints"].numpy().astype(np.float64))
        np.testing.assert_allclose(back[vis], kp[vis], atol=2e-3)  # float32 storage of the outputs
        np.testing.assert_allclose(out["keypoints_orig"].numpy(), kp, atol=1e-4)


def test_random_draws_respect_the_ranges():
    t = LandmarkTransform(train=True, rotation=10, scale=(0.9, 1.1), brightness=0.1, contrast=0.1)
    rng = np.random.default_rng(3)
    draws = [t.sample_params(rng) for _ in range(500)]
    angles = np.array([p.angle for p in draws])
    scales = np.array([p.scale for p in draws])
    assert angles.min() >= -10 and angles.max() <= 10 and angles.min() < -9 and angles.max() > 9
    assert scales.min() >= 0.9 and scales.max() <= 1.1 and scales.min() < 0.91 and scales.max() > 1.09
    assert all(-0.1 <= p.brightness <= 0.1 and 0.9 <= p.contrast <= 1.1 for p in draws)
    assert not any(p.flip for p in draws)  # no flip pairs -> never flipped
    # the matrix carries exactly the drawn rotation and scale on top of the fit
    fit = fit_matrix((512, 256), (256, 128))
    p = draws[0]
    m = t.matrix((512, 256), p) @ np.linalg.inv(fit)
    assert math.degrees(math.atan2(-m[1, 0], m[0, 0])) == pytest.approx(p.angle)
    assert math.sqrt(np.linalg.det(m[:2, :2])) == pytest.approx(p.scale)
    # the augmentation acts about the input centre
    np.testing.assert_allclose(apply_matrix(m, np.array([63.5, 127.5])), [63.5, 127.5], atol=1e-9)
    # evaluation transforms are never random
    assert LandmarkTransform(train=False).sample_params(rng) == AugmentParams()


def test_torch_rng_is_used_without_a_generator():
    t = LandmarkTransform(train=True)
    torch.manual_seed(0)
    a = t.sample_params()
    torch.manual_seed(0)
    assert t.sample_params() == a
    assert t.sample_params() != a


def test_flip_swaps_pairs():
    image = np.zeros((100, 50), np.float32)
    kp = np.array([[10.0, 20.0], [40.0, 22.0], [25.0, 60.0]])  # left, right, middle
    t = LandmarkTransform(image_size=(100, 50), train=True, flip=True, flip_pairs=[(0, 1)])
    assert sum(t.sample_params(np.random.default_rng(i)).flip for i in range(200)) in range(70, 131)
    out = t(image, kp, np.array([True, False, True]), params=AugmentParams(flip=True))
    got = out["keypoints"].numpy()
    # index 0 ("left") is now the mirror image of the original right point, which is missing
    np.testing.assert_array_equal(out["visible"].numpy(), [0, 1, 1])
    np.testing.assert_array_equal(out["visible_orig"].numpy(), [0, 1, 1])
    np.testing.assert_allclose(got[1], [49 - 10.0, 20.0])
    np.testing.assert_allclose(got[2], [49 - 25.0, 60.0])
    # the fields stay consistent: matrix @ keypoints_orig == keypoints
    m = out["matrix"].numpy().astype(np.float64)
    np.testing.assert_allclose(apply_matrix(m, out["keypoints_orig"].numpy()[1:]), got[1:], atol=1e-5)
    with pytest.raises(ValueError, match="flip_pairs"):
        LandmarkTransform(train=True, flip=True)


def test_out_of_image_keypoints_become_invisible():
    image = np.zeros((200, 100), np.float32)
    kp = np.array([[50.0, 100.0], [-30.0, 10.0], [50.0, 250.0], [np.nan, np.nan]])
    t = LandmarkTransform(image_size=(256, 128))
    out = t(image, kp, np.array([True, True, True, False]))
    np.testing.assert_array_equal(out["visible"].numpy(), [1, 0, 0, 0])
    np.testing.assert_array_equal(out["visible_orig"].numpy(), [1, 1, 1, 0])
    np.testing.assert_array_equal(out["keypoints"].numpy()[1:], 0)  # ignored -> stored as 0
    np.testing.assert_array_equal(out["keypoints_orig"].numpy()[3], 0)
    np.testing.assert_allclose(out["keypoints_orig"].numpy()[1], [-30, 10])
    # a rotation can push a corner point out of the input
    corner = np.array([[0.0, 0.0]])
    rotated = t.__class__(image_size=(200, 100), train=True)(image, corner, np.array([True]), params=AugmentParams(angle=10))
    assert rotated["visible"].item() == 0 and rotated["visible_orig"].item() == 1


def test_gray_replicated_and_normalised_and_photometric_only_in_training():
    image = np.full((64, 32), 0.5, np.float32)
    out = LandmarkTransform(image_size=(64, 32))(image, np.zeros((1, 2)), np.ones(1, bool))
    assert out["image"].shape == (3, 64, 32) and out["image"].dtype == torch.float32
    expected = (0.5 - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    np.testing.assert_allclose(out["image"].numpy()[:, 10, 10], expected, atol=1e-5)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "image": (3, 64, 32), "keypoints": (1, 2), "visible": (1,), "keypoints_orig": (1, 2),
        "visible_orig": (1,), "matrix": (3, 3),
    }
    t = LandmarkTransform(image_size=(64, 32), train=True, rotation=0, scale=(1, 1))
    bright = t(image, np.zeros((1, 2)), np.ones(1, bool), params=AugmentParams(brightness=0.1))
    np.testing.assert_allclose(denormalise(bright["image"])[:, 10, 10], 0.6, atol=1e-5)
    rgb = np.zeros((64, 32, 3), np.float32)
    rgb[..., 0] = 1.0
    out = LandmarkTransform(image_size=(64, 32))(rgb, np.zeros((1, 2)), np.ones(1, bool))
    np.testing.assert_allclose(denormalise(out["image"])[:, 5, 5], [1, 0, 0], atol=1e-5)
