"""Synthetic spine: deterministic, cached, 40 exact corner landmarks."""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from hrexp.data.errors import DataError
from hrexp.data.landmarks import synthetic_spine as synth
from hrexp.data.landmarks.csv_reader import read_landmarks_csv
from hrexp.data.landmarks.synthetic_spine import build_synthetic_spine
from hrexp.data.landmarks.synthetic_spine_render import (
    _coverage,
    inset_polygon,
    render_spine_image,
    synthetic_landmark_names,
)
from hrexp.data.landmarks.validation import validate_landmark_set

SMALL = dict(num_train=3, num_test=2, seed=0)


def file_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_writes_csv_images_and_40_landmarks(tmp_path):
    out = build_synthetic_spine(tmp_path / "cache", **SMALL)
    assert out == (tmp_path / "cache").absolute()
    train = validate_landmark_set(read_landmarks_csv(out / "train.csv"), num_keypoints=40)
    test = validate_landmark_set(read_landmarks_csv(out / "test.csv"), num_keypoints=40)
    assert len(train) == 3 and len(test) == 2
    assert train.names == synthetic_landmark_names(10)
    assert train.names[:5] == ["V01_tl", "V01_tr", "V01_bl", "V01_br", "V02_tl"] and train.names[-1] == "V10_br"
    for rec in train.records + test.records:
        assert rec.size == (512, 256)
        assert rec.spacing == 0.5
        assert rec.visible.all()
        assert rec.image_path.parent.parent.parent == out  # images/<split>/<file>.png
        x, y = rec.keypoints[:, 0], rec.keypoints[:, 1]
        assert x.min() > 0 and x.max() < 255 and y.min() > 0 and y.max() < 511
        c = rec.keypoints.reshape(10, 4, 2)
        assert (c[:, 0, 0] < c[:, 1, 0]).all() and (c[:, 2, 0] < c[:, 3, 0]).all()  # left < right
        assert (c[:, 0, 1] < c[:, 2, 1]).all() and (c[:, 1, 1] < c[:, 3, 1]).all()  # top < bottom
        assert (np.diff(c[:, :, 1].mean(axis=1)) > 0).all()  # vertebrae top to bottom
    image = cv2.imread(str(train.records[0].image_path), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint8 and image.shape == (512, 256)
    assert image.std() > 10  # not blank


def test_deterministic_per_seed(tmp_path):
    a = build_synthetic_spine(tmp_path / "a", **SMALL)
    b = build_synthetic_spine(tmp_path / "b", **SMALL)
    c = build_synthetic_spine(tmp_path / "c", **{**SMALL, "seed": 1})
    files_a, files_b, files_c = file_bytes(a), file_bytes(b), file_bytes(c)
    assert files_a == files_b
    assert files_a["train.csv"] != files_c["train.csv"]
    assert files_a["images/train/train_00000.png"] != files_c["images/train/train_00000.png"]
    # image i does not depend on how many images were asked for
    d = build_synthetic_spine(tmp_path / "d", num_train=1, num_test=1, seed=0)
    assert file_bytes(d)["images/train/train_00000.png"] == files_a["images/train/train_00000.png"]


def test_cache_is_reused_and_rebuilt_on_changed_params(tmp_path):
    out = build_synthetic_spine(tmp_path / "cache", **SMALL)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    build_synthetic_spine(tmp_path / "cache", **SMALL)
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing rewritten
    build_synthetic_spine(tmp_path / "cache", **{**SMALL, "num_train": 4})
    assert len(read_landmarks_csv(out / "train.csv")) == 4
    assert '"num_train": 4' in (out / "manifest.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no temp or old folders left


def test_each_parameter_set_of_the_datamodule_has_its_own_folder(tmp_path):
    """A run with other parameters (a sweep over data.num_train, a test beside a training run) used to
    rebuild the one folder while another run was reading it: that run then failed on a vanished image."""
    from hrexp.data.landmarks.datamodule import SyntheticSpineDataModule

    def datamodule(**params):
        dm = SyntheticSpineDataModule(tmp_path / "cache", original_size=(128, 64), image_size=(64, 32), batch_size=2,
                                      **{**SMALL, **params})
        dm.prepare_data()
        dm.setup("fit")
        return dm

    first = datamodule()
    images = sorted(p for p in first.cache_dir.rglob("*.png"))
    before = {p: p.stat().st_mtime_ns for p in images}
    second = datamodule(num_train=4)
    assert second.cache_dir != first.cache_dir and second.cache_dir.parent == first.cache_dir.parent
    assert {p: p.stat().st_mtime_ns for p in images} == before  # the first run's files untouched
    assert len(first.train_set) + len(first.val_set) == 3 and len(second.train_set) + len(second.val_set) == 4
    assert datamodule().cache_dir == first.cache_dir  # the same parameters find the same folder
    assert synth.synthetic_spine_folder(tmp_path, **SMALL) != synth.synthetic_spine_folder(tmp_path, **{**SMALL, "seed": 1})


def test_changed_generator_version_rebuilds(tmp_path, monkeypatch):
    out = build_synthetic_spine(tmp_path / "cache", **SMALL)
    mtime = (out / "train.csv").stat().st_mtime_ns
    monkeypatch.setattr(synth, "GENERATOR_VERSION", synth.GENERATOR_VERSION + 1)
    build_synthetic_spine(tmp_path / "cache", **SMALL)
    assert (out / "train.csv").stat().st_mtime_ns != mtime


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    real = synth._render_split

    def failing(folder, split, count, params):
        if split == "test":
            raise KeyboardInterrupt
        real(folder, split, count, params)

    monkeypatch.setattr(synth, "_render_split", failing)
    with pytest.raises(KeyboardInterrupt):
        build_synthetic_spine(tmp_path / "cache", **SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synth, "_render_split", real)
    out = build_synthetic_spine(tmp_path / "cache", **SMALL)
    assert (out / "test.csv").is_file()


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to overwrite"):
        build_synthetic_spine(tmp_path / "mine", **SMALL)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_coverage_rasterisation_is_geometrically_exact():
    """Block outlines are drawn where the landmarks say: area and centroid of the coverage match."""
    quad = np.array([[20.3, 10.7], [51.9, 13.2], [49.4, 40.6], [18.8, 37.1]])  # cyclic order
    cov = _coverage([quad], 64, 64).astype(np.float64)
    x, y = quad[:, 0], quad[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    cx = ((x + np.roll(x, -1)) * cross).sum() / (6 * area)
    cy = ((y + np.roll(y, -1)) * cross).sum() / (6 * area)
    yy, xx = np.mgrid[0:64, 0:64]
    perimeter = np.linalg.norm(quad - np.roll(quad, -1, axis=0), axis=1).sum()
    assert cov.sum() == pytest.approx(area, abs=0.01 * perimeter)  # edges within 0.01 px on average
    assert (cov * xx).sum() / cov.sum() == pytest.approx(cx, abs=0.02)
    assert (cov * yy).sum() / cov.sum() == pytest.approx(cy, abs=0.02)
    # an axis-aligned box gets its exact pixel coverage, corners included
    box = _coverage([np.array([[2.2, 3.0], [6.5, 3.0], [6.5, 5.75], [2.2, 5.75]])], 8, 8)
    assert box[3, 2] == pytest.approx(0.3 * 0.5, abs=1e-6) and box[6, 6] == pytest.approx(1.0 * 0.25, abs=1e-6)
    assert box[4, 4] == 1.0 and box[1, 1] == 0.0
    # the rim outline is moved inwards by exactly its thickness
    rect = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 6.0], [0.0, 6.0]])
    np.testing.assert_allclose(inset_polygon(rect, 1.5), [[1.5, 1.5], [8.5, 1.5], [8.5, 4.5], [1.5, 4.5]])


def test_corners_lie_on_the_drawn_blocks():
    """Just inside a corner is bone (bright rim), just outside is background."""
    inside, outside = [], []
    for i in range(4):
        image, kp = render_spine_image(np.random.default_rng([7, 0, i]))
        assert kp.shape == (40, 2)
        image = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.7)  # average the noise a little
        corners = kp.reshape(10, 4, 2)
        for block in corners:
            centre = block.mean(axis=0)
            for corner in block:
                d = (centre - corner) / np.linalg.norm(centre - corner)
                for offset, bucket in ((1.5, inside), (-2.5, outside)):
                    x, y = corner + offset * d
                    bucket.append(image[int(round(y)), int(round(x))])
    inside, outside = np.array(inside), np.array(outside)
    assert (inside > outside).mean() > 0.95
    assert np.median(inside - outside) > 40


def test_render_is_deterministic_for_a_generator_seed():
    a, ka = render_spine_image(np.random.default_rng(5), (256, 128), 10)
    b, kb = render_spine_image(np.random.default_rng(5), (256, 128), 10)
    assert a.shape == (256, 128)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ka, kb)
