"""Readers: one per annotation format, each on a hand-written fixture and (when present) real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hrexp.data.landmarks.aasce_reader import AASCE_LANDMARK_NAMES, read_aasce, vertebrae_out_of_order
from hrexp.data.landmarks.coco_reader import read_coco_keypoints
from hrexp.data.landmarks.csv_reader import read_landmarks_csv, write_landmarks_csv
from hrexp.data.landmarks.records import LandmarkRecord, LandmarkSet
from hrexp.data.landmarks.validation import validate_landmark_set
from tests.helpers import SHARED_DATA as SHARED, write_image

AASCE = SHARED / "spine_aasce"
COCO = SHARED / "pose_coco_samples" / "coco"
_aasce_present = pytest.mark.skipif(
    not (AASCE / "labels" / "training" / "landmarks.csv").is_file(),
    reason=f"shared AASCE spine data not found at {AASCE} (set HREXP_SHARED_DATA)",
)
_coco_present = pytest.mark.skipif(
    not (COCO / "test_coco.json").is_file(),
    reason=f"shared COCO samples not found at {COCO} (set HREXP_SHARED_DATA)",
)


def needs_aasce(test):
    """Real AASCE data: marked shared_data and skipped with a reason when absent."""
    return pytest.mark.shared_data(_aasce_present(test))


def needs_coco(test):
    """Real COCO samples: marked shared_data and skipped with a reason when absent."""
    return pytest.mark.shared_data(_coco_present(test))


# ----------------------------------------------------------------------------- wide CSV


def test_csv_reader_coordinates_paths_missing_and_spacing(tmp_path):
    write_image(tmp_path / "imgs" / "a.png")
    absolute = write_image(tmp_path / "elsewhere" / "b.png")
    csv_file = tmp_path / "ann" / "train.csv"
    csv_file.parent.mkdir()
    csv_file.write_text(
        "image,pixel_spacing,nose_x,nose_y,chin_x,chin_y\n"
        "../imgs/a.png,0.25,1.5,2.25,,\n"
        f"{absolute},,3,4,5.5,6\n"
    )
    ls = read_landmarks_csv(csv_file, pixel_spacing=0.7)
    assert ls.names == ["nose", "chin"]
    assert ls.flip_pairs == []
    assert ls.source == str(csv_file.absolute())
    assert len(ls) == 2
    a, b = ls.records
    assert a.image_path == (tmp_path / "imgs" / "a.png").absolute()
    assert a.image_path.is_file()
    assert b.image_path == absolute
    np.testing.assert_array_equal(a.keypoints[0], [1.5, 2.25])
    assert np.isnan(a.keypoints[1]).all()
    np.testing.assert_array_equal(a.visible, [True, False])
    np.testing.assert_array_equal(b.keypoints, [[3, 4], [5.5, 6]])
    np.testing.assert_array_equal(b.visible, [True, True])
    assert a.spacing == 0.25  # the column wins
    assert b.spacing == 0.7  # empty cell -> the config value
    assert "row 1" in a.source and "row 2" in b.source
    assert a.size is None  # validation fills it

    without_config = read_landmarks_csv(csv_file)
    assert without_config.records[1].spacing is None


def test_csv_reader_image_column_and_first_column_fallback(tmp_path):
    write_image(tmp_path / "x.png")
    named = tmp_path / "named.csv"
    named.write_text("id,L1_x,L1_y,file\n7,1,2,x.png\n")
    rec = read_landmarks_csv(named, image_column="file").records[0]
    assert rec.image_path == (tmp_path / "x.png").absolute()
    assert rec.spacing is None
    first = tmp_path / "first.csv"
    first.write_text("path,L1_x,L1_y,L2_x,L2_y\nx.png,1,2,3,4\n")
    ls = read_landmarks_csv(first)  # no "image" column -> first column
    assert ls.names == ["L1", "L2"]
    assert ls.records[0].image_path == (tmp_path / "x.png").absolute()


def test_csv_write_read_round_trip(tmp_path):
    write_image(tmp_path / "i.png")
    kp = np.array([[1.125, 2.5], [np.nan, np.nan], [10.0, 0.0]])
    rec = LandmarkRecord(tmp_path / "i.png", kp, np.array([True, False, True]), 0.5, "x")
    write_landmarks_csv(tmp_path / "o.csv", LandmarkSet(["a", "b", "c"], [rec]), relative_to=tmp_path)
    assert "i.png,0.5," in (tmp_path / "o.csv").read_text()
    back = read_landmarks_csv(tmp_path / "o.csv").records[0]
    np.testing.assert_array_equal(back.visible, rec.visible)
    np.testing.assert_allclose(back.keypoints[[0, 2]], kp[[0, 2]])
    assert back.spacing == 0.5 and back.image_path == (tmp_path / "i.png").absolute()


# ----------------------------------------------------------------------------- COCO


def _coco_fixture(tmp_path: Path, flip_pairs=None) -> Path:
    write_image(tmp_path / "images" / "p1.png")
    absolute = write_image(tmp_path / "other" / "p2.png")
    category = {"id": 1, "name": "face", "keypoints": ["left_eye", "right_eye", "nose"]}
    if flip_pairs is not None:
        category["flip_pairs"] = flip_pairs
    data = {
        "images": [
            {"id": 10, "file_name": "images/p1.png", "pixel_spacing": 0.2},
            {"id": 11, "file_name": str(absolute)},
        ],
        "annotations": [
            {"id": 100, "image_id": 10, "category_id": 1, "keypoints": [1, 2, 2, 3.5, 4, 1, 0, 0, 0]},
            {"id": 101, "image_id": 11, "category_id": 1, "keypoints": [5, 6, 2, 7, 8, 2, 9, 10, 2]},
            {"id": 102, "image_id": 10, "category_id": 1, "keypoints": [0, 0, 0, 0, 0, 0, 11, 12, 2]},
        ],
        "categories": [category],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_reader(tmp_path):
    ls = read_coco_keypoints(_coco_fixture(tmp_path), pixel_spacing=0.9)
    assert ls.names == ["left_eye", "right_eye", "nose"]
    assert ls.flip_pairs == []
    assert len(ls) == 3  # one record per annotation, two on image 10
    r0, r1, r2 = ls.records
    assert r0.image_path == (tmp_path / "images" / "p1.png").absolute()
    assert r1.image_path == (tmp_path / "other" / "p2.png").absolute()
    assert r2.image_path == r0.image_path
    np.testing.assert_array_equal(r0.keypoints[:2], [[1, 2], [3.5, 4]])
    np.testing.assert_array_equal(r0.visible, [True, True, False])  # v=1 counts, v=0 is missing
    assert np.isnan(r0.keypoints[2]).all()
    np.testing.assert_array_equal(r2.visible, [False, False, True])
    assert r0.spacing == 0.2 and r1.spacing == 0.9
    assert "annotation id 101" in r1.source


def test_coco_reader_flip_pairs_by_name(tmp_path):
    ls = read_coco_keypoints(_coco_fixture(tmp_path, flip_pairs=[["left_eye", "right_eye"]]))
    assert ls.flip_pairs == [(0, 1)]


@needs_coco
def test_coco_reader_on_real_samples():
    ls = read_coco_keypoints(COCO / "test_coco.json")
    data = json.loads((COCO / "test_coco.json").read_text())
    assert ls.num_keypoints == 17 and ls.names[0] == "nose"
    assert len(ls) == len(data["annotations"])
    first = data["annotations"][0]
    kp = np.asarray(first["keypoints"], float).reshape(-1, 3)
    np.testing.assert_array_equal(ls.records[0].visible, kp[:, 2] > 0)
    np.testing.assert_array_equal(ls.records[0].keypoints[kp[:, 2] > 0], kp[kp[:, 2] > 0, :2])
    validate_landmark_set(ls)
    image = next(i for i in data["images"] if i["id"] == first["image_id"])
    assert ls.records[0].size == (image["height"], image["width"])


# ----------------------------------------------------------------------------- AASCE


@needs_aasce
def test_aasce_counts_names_and_sizes():
    train = read_aasce(AASCE, "training")
    test = read_aasce(AASCE, "test")
    assert len(train) == 481 and len(test) == 128
    assert train.num_keypoints == 68 and train.names == AASCE_LANDMARK_NAMES
    assert train.names[:4] == ["T1_tl", "T1_tr", "T1_bl", "T1_br"] and train.names[-1] == "L5_br"
    assert all(r.visible.all() and r.spacing is None for r in train.records)
    first = train.records[0]
    assert first.image_path.name == "sunhl-1th-02-Jan-2017-162 A AP.jpg"
    assert first.size == (2125, 755)  # (h, w) from the JPEG header
    # corner order: left corners left of right ones, top corners above bottom ones (almost always)
    kp = np.stack([r.keypoints for r in train.records]).reshape(481, 17, 4, 2)
    assert (kp[:, :, 0, 0] < kp[:, :, 1, 0]).mean() > 0.99
    assert (kp[:, :, 0, 1] < kp[:, :, 2, 1]).mean() > 0.99


@needs_aasce
@pytest.mark.parametrize("split,unordered", [("training", 24), ("test", 4)])
def test_aasce_vertebra_order_on_the_real_rows(split, unordered):
    """The count of rows not listed top to bottom, from landmarks.csv by NumPy alone (each vertebra's mean
    normalised y; the height is a common factor), equals the reader's; top_to_bottom orders every row
    strictly but one, whose "L5" and "L4" have the same height."""
    rows = np.loadtxt(AASCE / "labels" / split / "landmarks.csv", delimiter=",")
    centre_y = rows[:, 68:].reshape(-1, 17, 4).mean(axis=2)
    assert ((np.diff(centre_y, axis=1) <= 0).any(axis=1)).sum() == unordered
    as_given = read_aasce(AASCE, split)
    assert sum(bool(vertebrae_out_of_order(r.keypoints)) for r in as_given.records) == unordered
    ordered = read_aasce(AASCE, split, "top_to_bottom")
    still = [r.image_path.name for r in ordered.records if vertebrae_out_of_order(r.keypoints)]
    assert still == (["sunhl-1th-25-Jul-2016-15 B AP.jpg"] if split == "training" else [])
    for a, b in zip(as_given.records, ordered.records):  # the same corners, as whole vertebrae
        key = lambda kp: sorted(map(tuple, kp.reshape(17, 4, 2).reshape(17, 8).round(3)))  # noqa: E731
        assert key(a.keypoints) == key(b.keypoints)


@needs_aasce
@pytest.mark.parametrize("split,rows", [("training", [0, 1, 200, 394, 480]), ("test", [0, 64, 127])])
def test_aasce_coordinates_match_mat_p2(split, rows):
    """landmarks.csv * image size reproduces the .mat ``p2`` pixel points.

    ``p2`` is uint16 (whole pixels) and landmarks.csv is ``p2 / [w, h]`` printed with 5 significant
    digits, so the product is within ~0.04 px of ``p2`` (not 1e-3 px) and rounds to it exactly.
    """
    scipy_io = pytest.importorskip("scipy.io")
    ls = read_aasce(AASCE, split)
    for row in rows:
        rec = ls.records[row]
        p2 = scipy_io.loadmat(AASCE / "labels" / split / f"{rec.image_path.name}.mat")["p2"]
        assert p2.shape == (68, 2) and p2.dtype == np.uint16
        assert np.abs(rec.keypoints - p2).max() < 0.05
        np.testing.assert_array_equal(np.round(rec.keypoints), p2)


@needs_aasce
def test_aasce_landmark_outside_its_image_is_kept():
    rec = read_aasce(AASCE, "training").records[394]
    assert rec.image_path.name == "sunhl-1th-25-Jul-2016-49 A AP.jpg"
    h, _ = rec.size
    assert rec.keypoints[63, 1] > h  # L4_br lies below the image border in the source data
    assert rec.visible[63]


@needs_aasce
def test_csv_reader_on_real_spine_images(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    names = sorted((AASCE / "data" / "training").iterdir())[:3]
    header = ["image"] + [f"{n}_{a}" for n in AASCE_LANDMARK_NAMES for a in "xy"]
    lines = [",".join(header)]
    expected = []
    for image in names:
        p2 = scipy_io.loadmat(AASCE / "labels" / "training" / f"{image.name}.mat")["p2"].astype(float)
        expected.append(p2)
        lines.append(",".join([str(image.absolute())] + [str(float(v)) for v in p2.reshape(-1)]))
    (tmp_path / "spine.csv").write_text("\n".join(lines) + "\n")
    ls = validate_landmark_set(read_landmarks_csv(tmp_path / "spine.csv"), num_keypoints=68)
    assert ls.names == AASCE_LANDMARK_NAMES
    for rec, image, p2 in zip(ls.records, names, expected):
        assert rec.image_path == image.absolute()
        np.testing.assert_array_equal(rec.keypoints, p2)
        assert rec.size is not None and min(rec.size) > 300


@needs_aasce
def test_coco_reader_on_real_spine_images(tmp_path):
    """The same real spine annotations through the COCO format equal the AASCE reader's records."""
    reference = read_aasce(AASCE, "training")
    picked = reference.records[:3]
    data = {
        "images": [{"id": i + 1, "file_name": str(r.image_path), "height": r.size[0], "width": r.size[1]}
                   for i, r in enumerate(picked)],
        "annotations": [
            {"id": 10 + i, "image_id": i + 1, "category_id": 1, "num_keypoints": 68,
             "keypoints": [v for (x, y) in r.keypoints.tolist() for v in (x, y, 2)]}
            for i, r in enumerate(picked)
        ],
        "categories": [{"id": 1, "name": "spine", "keypoints": AASCE_LANDMARK_NAMES, "skeleton": []}],
    }
    (tmp_path / "spine_coco.json").write_text(json.dumps(data))
    ls = validate_landmark_set(read_coco_keypoints(tmp_path / "spine_coco.json"), num_keypoints=68)
    assert ls.names == AASCE_LANDMARK_NAMES
    for rec, ref in zip(ls.records, picked):
        assert rec.image_path == ref.image_path and rec.size == ref.size
        np.testing.assert_allclose(rec.keypoints, ref.keypoints, atol=1e-9)
        assert rec.visible.all()
