"""The reduced-image cache (hrexp.data.image_cache): a large image is decoded once, its reduced copy gives
the sample the original would (the same geometry, pixels within the uint16 quantisation), and a changed
or damaged file is never served stale."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import hrexp.data.image_cache as image_cache_module
from hrexp.data.image_cache import ShrunkImageCache
from hrexp.data.landmarks.dataset import LandmarkDataset
from hrexp.data.landmarks.records import LandmarkRecord, LandmarkSet
from hrexp.data.sampling import SampleKey
from hrexp.data.transforms import LandmarkTransform, reduction_factor, warp_image


def _xray(path: Path, h: int = 480, w: int = 360, seed: int = 0) -> np.ndarray:
    """A smooth gray image (what X-rays look like at the working resolution), saved as PNG."""
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.random((h // 24, w // 24)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    image = np.clip(image * 255, 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), image)
    return image


def _dataset(tmp_path: Path, train: bool, cache: bool, size=(480, 360), name: str = "xray.png") -> LandmarkDataset:
    path = tmp_path / name
    if not path.exists():
        _xray(path, *size)
    keypoints = np.array([[100.0, 120.0], [250.5, 300.25], [10.0, 470.0]])
    record = LandmarkRecord(path, keypoints, np.ones(3, bool), None, "test:row 1", size=size)
    landmark_set = LandmarkSet(["a", "b", "c"], [record], [], source="test")
    transform = LandmarkTransform(image_size=(64, 48), train=train)
    return LandmarkDataset(landmark_set, transform, ShrunkImageCache(tmp_path / "cache") if cache else None)


def test_reduction_factor_matches_what_warp_image_would_choose():
    assert [reduction_factor(s) for s in (1.0, 0.6, 0.5, 0.34, 0.1, 0.099)] == [1, 1, 2, 2, 10, 10]


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_cached_sample_equals_the_uncached_one(tmp_path, train):
    plain, cached = _dataset(tmp_path, train, cache=False), _dataset(tmp_path, train, cache=True)
    # Seen at most at 64/480 of its size (x 1.1, the largest training scale): reduced by 7 / 6.
    assert reduction_factor(cached.transform.max_scale((480, 360))) == (6 if train else 7)
    key = SampleKey(0, seed=5, epoch=2)  # the same augmentation draw for both
    a, b = plain[key], cached[key]
    for key in ("keypoints", "visible", "keypoints_orig", "visible_orig", "matrix"):
        assert np.array_equal(a[key].numpy(), b[key].numpy()), key
    diff = np.abs(a["image"].numpy() - b["image"].numpy())
    if not train:
        # Same INTER_AREA reduction as warp_image's own (factor 7 = floor(480/64)), then the same warp:
        # only the uint16 storage differs (1.5e-5 before normalisation by std ~0.22).
        assert diff.max() < 2e-4
    else:
        # The draw's scale (0.9-1.1) makes warp_image reduce by 6, 7 or 8; the cache holds the copy
        # reduced by 6 (enough for the largest draw), and the warp does the rest: close, not identical.
        # (0.05 after normalisation = about 3 grey levels of 255; the exact identity is tested below.)
        assert diff.mean() < 0.05 and diff.max() < 0.5


def test_the_original_is_decoded_once_then_read_from_the_cache(tmp_path, monkeypatch):
    calls = []
    real = image_cache_module.load_image
    monkeypatch.setattr(image_cache_module, "load_image", lambda p: calls.append(p) or real(p))
    dataset = _dataset(tmp_path, train=True, cache=True)
    key = SampleKey(0, seed=0, epoch=0)
    first = dataset[key]
    assert len(calls) == 1 and len(list((tmp_path / "cache").rglob("*.npy"))) == 1
    again = dataset[key]
    assert len(calls) == 1  # second epoch: no decode
    assert np.array_equal(first["image"].numpy(), again["image"].numpy())  # per-sample draw: same sample


def test_a_changed_file_is_read_again_never_served_stale(tmp_path):
    # BMP: new content of the same byte size, so only the modification time tells the change.
    dataset = _dataset(tmp_path, train=False, cache=True, name="xray.bmp")
    before = dataset[0]["image"].numpy()
    path = tmp_path / "xray.bmp"
    size = path.stat().st_size
    _xray(path, seed=1)
    assert path.stat().st_size == size
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    after = dataset[0]["image"].numpy()
    plain = LandmarkDataset(dataset.landmark_set, dataset.transform, None)[0]["image"].numpy()
    assert np.abs(after - before).mean() > 0.05
    assert np.abs(after - plain).max() < 2e-4
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 2  # a new key; the old entry is not read again


def test_a_damaged_entry_is_rebuilt(tmp_path):
    dataset = _dataset(tmp_path, train=False, cache=True)
    good = dataset[0]["image"].numpy()
    (entry,) = (tmp_path / "cache").rglob("*.npy")
    entry.write_bytes(entry.read_bytes()[:50])  # cut short, as a killed writer without the rename would
    assert np.array_equal(dataset[0]["image"].numpy(), good)
    assert np.load(entry).dtype == np.uint16


def test_small_images_are_not_cached(tmp_path):
    dataset = _dataset(tmp_path, train=False, cache=True, size=(96, 72))  # seen at 2/3 of its size
    dataset[0]
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_costs_speed_not_the_run(tmp_path):
    (tmp_path / "cache").write_text("a file where the cache folder should be")
    dataset = _dataset(tmp_path, train=False, cache=True)
    plain = LandmarkDataset(dataset.landmark_set, dataset.transform, None)[0]["image"].numpy()
    assert np.abs(dataset[0]["image"].numpy() - plain).max() < 2e-4


def test_reduced_warp_matches_warp_image_of_the_original(tmp_path):
    """The identity the cache relies on: warping the reduced copy with m @ inv(reduced_by) is warping
    the original with m (warp_image's own anti-aliasing path), for a rotated, scaled matrix too."""
    image = _xray(tmp_path / "x.png").astype(np.float32) / 255
    transform = LandmarkTransform(image_size=(64, 48), train=True)
    params = transform.sample_params(np.random.default_rng(3))
    m = transform.matrix(image.shape, params)
    small, reduced_by = ShrunkImageCache(tmp_path / "c").load(tmp_path / "x.png", image.shape, 7)
    direct = warp_image(image, m, (64, 48))
    via_cache = warp_image(small, m @ np.linalg.inv(reduced_by), (64, 48))
    if reduction_factor(transform.max_scale(image.shape) * params.scale / transform.scale[1]) == 7:
        assert np.abs(direct - via_cache).max() < 1e-4
    assert np.abs(direct - via_cache).mean() < 0.01
