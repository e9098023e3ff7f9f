"""The batched patch crop: an exact copy of the image's pixels at aligned centres (NumPy slicing as the
reference), zeros outside, and the pixel-centre convention for sub-pixel centres."""

from __future__ import annotations

import numpy as np
import torch

from hrexp.refine.patches import aligned_centres, crop_patches


def test_patches_at_aligned_centres_are_the_images_pixels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (2, 3, 40, 30)).astype(np.float32)
    size = 8
    corners = np.array([[[3, 5], [10, 20]], [[0, 0], [22, 32]]])  # top-left pixel (x, y) of each patch
    centres = torch.as_tensor(corners + (size - 1) / 2, dtype=torch.float32)
    assert torch.equal(aligned_centres(centres + 0.3, size), centres)
    patches = crop_patches(torch.as_tensor(images), centres, size)
    assert patches.shape == (2, 2, 3, size, size)
    for b in range(2):
        for k in range(2):
            x, y = corners[b, k]
            expected = images[b, :, y:y + size, x:x + size]
            # equal up to float32 rounding of the normalised grid (grid_sample un-normalises it again)
            assert np.abs(patches[b, k].numpy() - expected).max() < 1e-3


def test_outside_the_image_is_zero_and_a_half_pixel_shift_averages_neighbours():
    image = torch.zeros(1, 1, 10, 10)
    image[0, 0, 4, 4] = 1.0
    patches = crop_patches(image, torch.tensor([[[-20.0, -20.0], [4.5, 4.0]]]), 2)
    assert float(patches[0, 0].abs().sum()) == 0.0
    # centre (4.5, 4): samples x = 4, 5 at y = 3.5, 4.5 -> the bright pixel weighs 0.5 in the two left samples
    assert torch.allclose(patches[0, 1, 0], torch.tensor([[0.5, 0.0], [0.5, 0.0]]))
