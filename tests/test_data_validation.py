"""Bad data fails before training with a DataError naming the file and the row or field."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from hrexp.data.errors import DataError
from hrexp.data.images import load_image
from hrexp.data.landmarks.aasce_reader import read_aasce
from hrexp.data.landmarks.coco_reader import read_coco_keypoints
from hrexp.data.landmarks.datamodule import AasceDataModule
from hrexp.data.landmarks.csv_reader import read_landmarks_csv
from hrexp.data.landmarks.dataset import LandmarkDataset
from hrexp.data.transforms import LandmarkTransform
from hrexp.data.landmarks.validation import validate_landmark_set
from tests.helpers import write_image

HEADER = "image,a_x,a_y,b_x,b_y\n"


def csv_file(tmp_path: Path, body: str, header: str = HEADER) -> Path:
    path = tmp_path / "ann.csv"
    path.write_text(header + body)
    return path


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


def test_valid_csv_passes_and_fills_sizes(tmp_path):
    write_image(tmp_path / "ok.png", height=20, width=30)
    ls = validate_landmark_set(read_landmarks_csv(csv_file(tmp_path, "ok.png,1,2,3,4\n")), num_keypoints=2)
    assert ls.records[0].size == (20, 30)


def test_missing_image(tmp_path):
    write_image(tmp_path / "ok.png")
    path = csv_file(tmp_path, "ok.png,1,2,3,4\nmissing.png,1,2,3,4\n")
    with pytest.raises(DataError) as err:
        validate_landmark_set(read_landmarks_csv(path))
    msg = str(err.value)
    assert str(path) in msg and "row 2" in msg and "missing.png" in msg and "not found" in msg
    assert "row 1" not in msg


def test_unreadable_image_file(tmp_path):
    (tmp_path / "fake.png").write_bytes(b"this is text, not a png\n" * 4)
    path = csv_file(tmp_path, "fake.png,1,2,3,4\n")
    with pytest.raises(DataError) as err:
        validate_landmark_set(read_landmarks_csv(path))
    msg = str(err.value)
    assert str(path) in msg and "row 1" in msg and "fake.png" in msg and "not a readable image" in msg


def test_image_that_fails_to_decode_at_load_time(tmp_path):
    # A valid PNG header (so validation passes) with the pixel data cut off.
    ok, encoded = cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    (tmp_path / "cut.png").write_bytes(encoded.tobytes()[:60])
    ls = read_landmarks_csv(csv_file(tmp_path, "cut.png,1,2,3,4\n"))
    # Validation reads the header and checks the end marker: the cut is found before training.
    with pytest.raises(DataError, match=r"row 1: .*cut.png .*truncated"):
        validate_landmark_set(ls)
    # Should a file be cut after validation, loading it still names it.
    with pytest.raises(DataError, match="cut.png"):
        LandmarkDataset(ls, LandmarkTransform())[0]
    with pytest.raises(DataError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_wrong_number_of_coordinates(tmp_path):
    write_image(tmp_path / "ok.png")
    path = csv_file(tmp_path, "ok.png,1,2,3,4\nok.png,1,2,3\n")
    with pytest.raises(DataError) as err:
        read_landmarks_csv(path)
    msg = str(err.value)
    assert str(path) in msg and "row 2" in msg and "expected 5 fields" in msg and "got 4" in msg


def test_x_column_without_y_column(tmp_path):
    path = csv_file(tmp_path, "ok.png,1,2,3\n", header="image,a_x,a_y,b_x\n")
    with pytest.raises(DataError) as err:
        read_landmarks_csv(path)
    msg = str(err.value)
    assert str(path) in msg and "header" in msg and "'b_x'" in msg and "'b_y'" in msg


@pytest.mark.parametrize("bad", ["abc", "nan", "NaN", "inf"])
def test_non_numeric_or_nan_coordinate(tmp_path, bad):
    path = csv_file(tmp_path, f"ok.png,1,2,3,4\nok.png,1,{bad},3,4\n")
    with pytest.raises(DataError) as err:
        read_landmarks_csv(path)
    msg = str(err.value)
    assert str(path) in msg and "row 2" in msg and "'a_y'" in msg and repr(bad) in msg


def test_half_missing_landmark(tmp_path):
    path = csv_file(tmp_path, "ok.png,1,,3,4\n")
    with pytest.raises(DataError, match=r"row 1: column 'a_x' is set but 'a_y' is empty"):
        read_landmarks_csv(path)


def test_bad_spacing_cell(tmp_path):
    path = csv_file(tmp_path, "ok.png,-1,1,2\n", header="image,pixel_spacing,a_x,a_y\n")
    with pytest.raises(DataError, match=r"row 1: column 'pixel_spacing'"):
        read_landmarks_csv(path)


def test_all_row_errors_reported_together(tmp_path):
    body = "".join(f"ok{i}.png,{i},abc,3,4\n" for i in range(12))
    with pytest.raises(DataError) as err:
        read_landmarks_csv(csv_file(tmp_path, body))
    msg = str(err.value)
    assert "12 errors" in msg and "row 1:" in msg and "row 10:" in msg and "row 11:" not in msg
    assert "and 2 more" in msg


def test_empty_split(tmp_path):
    path = csv_file(tmp_path, "")
    ls = read_landmarks_csv(path)
    with pytest.raises(DataError) as err:
        validate_landmark_set(ls, split="train")
    msg = str(err.value)
    assert str(path) in msg and "'train'" in msg and "empty" in msg


def test_landmark_count_mismatch(tmp_path):
    write_image(tmp_path / "ok.png")
    path = csv_file(tmp_path, "ok.png,1,2,3,4\n")
    with pytest.raises(DataError) as err:
        validate_landmark_set(read_landmarks_csv(path), num_keypoints=40)
    msg = str(err.value)
    assert str(path) in msg and "num_keypoints" in msg and "40" in msg and "defines 2" in msg


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_landmarks_csv(tmp_path / "nope.csv")


# ----------------------------------------------------------------------------- COCO


def coco_file(tmp_path: Path, annotations: list, images=None) -> Path:
    data = {
        "images": images if images is not None else [{"id": 1, "file_name": "a.png"}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "x", "keypoints": ["p", "q"]}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


def test_coco_wrong_number_of_values(tmp_path):
    path = coco_file(
        tmp_path,
        [
            {"id": 5, "image_id": 1, "category_id": 1, "keypoints": [1, 2, 2, 3, 4, 2]},
            {"id": 7, "image_id": 1, "category_id": 1, "keypoints": [1, 2, 2, 3, 4]},
        ],
    )
    with pytest.raises(DataError) as err:
        read_coco_keypoints(path)
    msg = str(err.value)
    assert str(path) in msg and "annotation id 7 (index 1)" in msg and "expected 6 values" in msg
    assert "id 5" not in msg


def test_coco_nan_and_text_values(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(
        '{"images": [{"id": 1, "file_name": "a.png"}], "categories": [{"id": 1, "keypoints": ["p", "q"]}],'
        ' "annotations": [{"id": 3, "image_id": 1, "category_id": 1, "keypoints": [NaN, 2, 2, 1, 1, 2]},'
        ' {"id": 4, "image_id": 1, "category_id": 1, "keypoints": [1, 2, 2, "abc", 1, 2]}]}'
    )
    with pytest.raises(DataError) as err:
        read_coco_keypoints(path)
    msg = str(err.value)
    assert "annotation id 3 (index 0)" in msg and "annotation id 4 (index 1)" in msg and "(q)" in msg


def test_coco_unknown_image_and_bad_json(tmp_path):
    path = coco_file(tmp_path, [{"id": 9, "image_id": 2, "category_id": 1, "keypoints": [1, 2, 2, 3, 4, 2]}])
    with pytest.raises(DataError, match=r"annotation id 9 \(index 0\): field image_id"):
        read_coco_keypoints(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a readable JSON"):
        read_coco_keypoints(path)


def test_coco_missing_image_is_found_by_validation(tmp_path):
    path = coco_file(tmp_path, [{"id": 9, "image_id": 1, "category_id": 1, "keypoints": [1, 2, 2, 3, 4, 2]}])
    with pytest.raises(DataError) as err:
        validate_landmark_set(read_coco_keypoints(path))
    assert str(path) in str(err.value) and "annotation id 9" in str(err.value) and "a.png" in str(err.value)


def test_coco_bad_flip_pair_name(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({
        "images": [], "annotations": [],
        "categories": [{"id": 1, "keypoints": ["p", "q"], "flip_pairs": [["p", "zz"]]}],
    }))
    with pytest.raises(DataError, match=r"flip_pairs\[0\]"):
        read_coco_keypoints(path)


# ----------------------------------------------------------------------------- AASCE layout


def test_aasce_vertebra_order(tmp_path, caplog):
    """A row whose last vertebra ("L5") lies above T1: kept as given by default (logged, naming the file),
    moved to the top with every other vertebra one place down by ``top_to_bottom``."""
    (tmp_path / "labels" / "training").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg"):
        write_image(tmp_path / "data" / "training" / name, height=200, width=100)
    (tmp_path / "labels" / "training").joinpath("filenames.csv").write_text("a.jpg\nb.jpg\n")
    x = np.tile([0.4, 0.6, 0.4, 0.6], 17)
    centre = (np.arange(17) + 2) / 20  # vertebra v's centre at (v + 2) / 20 of the height
    y = (centre[:, None] + np.array([-0.01, -0.01, 0.01, 0.01])).ravel()
    y_b = y.copy()
    y_b[64:] = [0.04, 0.04, 0.06, 0.06]  # "L5" labelled above T1 (centre 0.1)
    rows = [np.concatenate([x, y]), np.concatenate([x, y_b])]
    (tmp_path / "labels" / "training" / "landmarks.csv").write_text("\n".join(",".join(map(str, r)) for r in rows))
    with caplog.at_level("INFO", logger="hrexp.data.landmarks.aasce_reader"):
        given = read_aasce(tmp_path, "training")
    assert "1 of 2 images" in caplog.text and "b.jpg" in caplog.text and "vertebra_order=top_to_bottom" in caplog.text
    np.testing.assert_allclose(given.records[1].keypoints[:, 1], y_b * 200)
    ordered = read_aasce(tmp_path, "training", "top_to_bottom")
    np.testing.assert_allclose(ordered.records[0].keypoints, given.records[0].keypoints)  # in order: untouched
    b = ordered.records[1].keypoints
    np.testing.assert_allclose(b[:4, 1], [8, 8, 12, 12])  # "L5"'s corners (0.04 / 0.06 * 200), now first
    np.testing.assert_allclose(b[4:, 1], y_b[:64] * 200)  # T1..L4, each one place down
    np.testing.assert_allclose(b[:, 0], x * 100)
    with pytest.raises(ValueError, match="vertebra_order='sorted'"):
        read_aasce(tmp_path, "training", "sorted")
    with pytest.raises(ValueError, match="data.vertebra_order='sorted'"):  # refused when the run is built
        AasceDataModule(root=tmp_path, vertebra_order="sorted")


def test_aasce_layout_errors(tmp_path):
    (tmp_path / "labels" / "training").mkdir(parents=True)
    write_image(tmp_path / "data" / "training" / "a.jpg")
    write_image(tmp_path / "data" / "training" / "b.jpg")
    (tmp_path / "labels" / "training" / "filenames.csv").write_text("a.jpg\nb.jpg\n")
    good = ",".join(["0.5"] * 136)
    short = ",".join(["0.5"] * 135)
    landmarks = tmp_path / "labels" / "training" / "landmarks.csv"
    landmarks.write_text(f"{good}\n{short}\n")
    with pytest.raises(DataError) as err:
        read_aasce(tmp_path, "training")
    msg = str(err.value)
    assert str(landmarks) in msg and "row 2 (b.jpg)" in msg and "expected 136 numbers" in msg
    landmarks.write_text(f"{good}\n")
    with pytest.raises(DataError, match="expected one row per image"):
        read_aasce(tmp_path, "training")
    landmarks.write_text(f"{good}\n{good}\n")
    ls = read_aasce(tmp_path, "training")
    np.testing.assert_allclose(ls.records[0].keypoints[0], [15.0, 10.0])  # 0.5 * (w=30, h=20)
    assert ls.records[1].size == (20, 30)
