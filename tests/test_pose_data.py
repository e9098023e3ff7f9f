"""Top-down pose data: keypoint metadata, the COCO person reader, the crop transform, the datamodule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hrexp.codecs.heatmap import GaussianHeatmapCodec
from hrexp.data.errors import DataError
from hrexp.data.pose.datamodule import CocoPoseDataModule
from hrexp.data.pose.keypoint_meta import build_meta, load_meta
from hrexp.data.pose.reader import read_detections, read_pose_coco
from hrexp.data.pose.topdown import TopDownParams, TopDownTransform, box_to_region
from hrexp.data.transforms import apply_matrix
from tests.helpers import shared_path

COCO_NAMES = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
              "right_knee", "left_ankle", "right_ankle"]


@pytest.fixture(scope="module")
def coco_dir() -> Path:
    return shared_path("pose_coco_samples", "coco")


# ---------------------------------------------------------------------------------- metadata
def test_shipped_coco_metadata_matches_the_coco_definition():
    meta = load_meta("coco_person")
    assert list(meta.names) == COCO_NAMES
    # pycocotools' kpt_oks_sigmas
    expected = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10
    np.testing.assert_allclose(meta.sigmas, expected)
    pairs = {(COCO_NAMES[a], COCO_NAMES[b]) for a, b in meta.flip_pairs}
    assert len(pairs) == 8 and all(a.replace("left", "right") == b for a, b in pairs)
    assert len(meta.skeleton) == 19 and set(meta.lower_body) == set(range(11, 17))


@pytest.mark.parametrize(
    "raw, field, words",
    [
        ({"names": ["a", "b"], "flip_pairs": [["a", "c"]]}, "flip_pairs", "'c' is not a keypoint name"),
        ({"names": ["a", "b"], "flip_pairs": [[0, 2]]}, "flip_pairs", "index 2 is outside"),
        ({"names": ["a", "b"], "sigmas": [0.1]}, "sigmas", "1 sigmas for 2 keypoints"),
        ({"names": ["a", "b"], "sigmas": [0.1, -1]}, "sigmas[1]", "positive"),
        ({"names": ["a", "a"]}, "names", "duplicate"),
        ({"names": ["a", "b", "c"], "flip_pairs": [["a", "b"], ["b", "c"]]}, "flip_pairs", "more than one pair"),
        ({"names": ["a", "b"], "upper_body": ["z"]}, "upper_body", "'z' is not a keypoint name"),
    ],
)
def test_bad_metadata_names_the_file_and_field(raw, field, words):
    with pytest.raises(DataError) as err:
        build_meta(raw, "meta.yaml")
    assert f"meta.yaml: field {field}" in str(err.value) and words in str(err.value)


def test_missing_metadata_file_is_reported(tmp_path):
    with pytest.raises(DataError, match="metadata file not found"):
        load_meta(str(tmp_path / "nope.yaml"))
    with pytest.raises(DataError, match="not a shipped metadata name"):
        load_meta("no_such_name")


# ---------------------------------------------------------------------------------- reader
def test_reader_keeps_people_with_keypoints_and_the_full_ground_truth(coco_dir):
    split = read_pose_coco(coco_dir / "test_coco.json", metadata=load_meta("coco_person"))
    raw = json.loads((coco_dir / "test_coco.json").read_text())
    with_kp = [a for a in raw["annotations"] if a["num_keypoints"] > 0]
    assert len(split.instances) == len(with_kp) == 12
    assert len(split.ground_truth["annotations"]) == len(raw["annotations"]) == 14  # incl. the 2 without keypoints
    assert {im["id"] for im in split.ground_truth["images"]} == {im["id"] for im in raw["images"]}
    first, inst = with_kp[0], split.instances[0]
    flat = np.asarray(first["keypoints"], dtype=float).reshape(17, 3)
    np.testing.assert_array_equal(inst.visible, flat[:, 2] > 0)
    np.testing.assert_allclose(inst.keypoints[inst.visible], flat[flat[:, 2] > 0, :2])
    assert np.isnan(inst.keypoints[~inst.visible]).all()
    assert inst.image_path == (coco_dir / "000000000785.jpg").absolute()


def test_reader_takes_metadata_from_the_category_and_checks_a_metadata_file(coco_dir, tmp_path):
    split = read_pose_coco(coco_dir / "test_coco.json")  # no metadata file: names + skeleton from the category
    assert list(split.meta.names) == COCO_NAMES and split.meta.sigmas == () and split.meta.flip_pairs == ()
    assert split.meta.skeleton[0] == (15, 13)  # COCO's 1-based [16, 14]
    other = build_meta({"names": COCO_NAMES[::-1]}, "reversed.yaml")
    with pytest.raises(DataError, match="differ from reversed.yaml's names"):
        read_pose_coco(coco_dir / "test_coco.json", metadata=other)


def test_reader_reports_bad_annotations_and_missing_images(coco_dir, tmp_path):
    raw = json.loads((coco_dir / "test_coco.json").read_text())
    raw["annotations"][1]["keypoints"] = raw["annotations"][1]["keypoints"][:-3]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError) as err:
        read_pose_coco(path, image_dir=coco_dir)
    assert f"annotation id {raw['annotations'][1]['id']} (index 1): field keypoints: expected 51 values" in str(err.value)
    raw = json.loads((coco_dir / "test_coco.json").read_text())
    path.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"4 image file\(s\) not found"):
        read_pose_coco(path)  # images are not beside the copied file


def test_detection_boxes_replace_instances_but_not_the_ground_truth(coco_dir):
    split = read_pose_coco(coco_dir / "test_coco.json", metadata=load_meta("coco_person"))
    dets = read_detections(coco_dir / "test_coco_det_AP_H_56.json", split, score_threshold=0.0)
    raw = json.loads((coco_dir / "test_coco_det_AP_H_56.json").read_text())
    assert len(dets.instances) == len(raw) == 118
    assert dets.ground_truth is split.ground_truth
    assert sorted(i.bbox_score for i in dets.instances) == pytest.approx(sorted(d["score"] for d in raw))
    assert not any(i.visible.any() for i in dets.instances)
    high = read_detections(coco_dir / "test_coco_det_AP_H_56.json", split, score_threshold=0.5)
    assert len(high.instances) == sum(d["score"] >= 0.5 for d in raw)


# ---------------------------------------------------------------------------------- crop transform
def test_box_region_is_enlarged_and_fixed_to_the_input_aspect():
    # a 100 x 100 box into a 256 x 192 input (w/h = 0.75): height stays 100, width grows to 133.3, x1.25
    centre, size = box_to_region((10.0, 20.0, 100.0, 100.0), aspect=0.75, padding=1.25)
    np.testing.assert_allclose(centre, (59.5, 69.5))
    np.testing.assert_allclose(size, (125.0, 125.0 / 0.75))
    centre, size = box_to_region((0.0, 0.0, 30.0, 120.0), aspect=0.75, padding=1.0)
    np.testing.assert_allclose(size, (90.0, 120.0))


def test_crop_maps_the_region_onto_the_input_and_back_exactly():
    tf = TopDownTransform(image_size=(64, 48), padding=1.0)
    image = np.random.default_rng(0).random((100, 120)).astype(np.float32)
    bbox = (20.0, 10.0, 30.0, 40.0)  # 30 x 40 == aspect 0.75: no growth; 1 input px = 40/64 image px
    kps = np.array([[20.0 - 0.5 + 0.3125, 10.0 - 0.5 + 0.3125], [34.5, 29.5]])  # first: centre of input (0, 0)
    out = tf(image, kps, np.array([True, True]), bbox)
    np.testing.assert_allclose(out["keypoints"].numpy(), [[0.0, 0.0], [23.5, 31.5]], atol=1e-5)
    m = out["matrix"].double().numpy()
    np.testing.assert_allclose(apply_matrix(np.linalg.inv(m), out["keypoints"].numpy()), kps, atol=1e-4)


def test_training_draws_stay_in_range_and_flip_swaps_pairs():
    tf = TopDownTransform(image_size=(64, 48), train=True, scale=(0.65, 1.35), rotation=40, rotation_prob=0.6,
                          flip=True, flip_pairs=[(0, 1)])
    rng = np.random.default_rng(0)
    draws = [tf.sample_params(rng) for _ in range(400)]
    scales = np.array([d.scale for d in draws])
    angles = np.array([d.angle for d in draws])
    assert scales.min() >= 0.65 and scales.max() <= 1.35 and scales.max() - scales.min() > 0.6
    assert np.abs(angles).max() <= 40 and 0.3 < np.mean(angles == 0.0) < 0.5  # 40 % not rotated
    assert 0.4 < np.mean([d.flip for d in draws]) < 0.6
    image = np.zeros((100, 100), np.float32)
    kps = np.array([[40.0, 50.0], [60.0, 50.0]])  # 0 = left at x 40, 1 = right at x 60
    out = tf(image, kps, np.array([True, True]), (30.0, 20.0, 40.0, 60.0), params=TopDownParams(flip=True))
    # after the flip, index 0 (still "left") is the point that was index 1, mirrored to the left side
    x = out["keypoints"][:, 0].numpy()
    assert x[0] < x[1]
    np.testing.assert_allclose(out["keypoints_orig"].numpy(), kps[[1, 0]])


def test_half_body_crop_frames_the_chosen_half():
    upper, n = list(range(6)), 12
    tf = TopDownTransform(image_size=(64, 48), train=True, half_body_prob=1.0, half_body_min_keypoints=8,
                          upper_body=upper)
    kps = np.stack([np.full(n, 50.0), np.linspace(10, 120, n)], axis=1)  # a vertical body, head at the top
    vis = np.ones(n, bool)
    out = tf(np.zeros((140, 100), np.float32), kps, vis, (30.0, 0.0, 40.0, 130.0), params=TopDownParams(half_body="upper"))
    inside = out["visible"].numpy().astype(bool)
    assert inside[upper].all() and not inside[8:].any()
    full = tf(np.zeros((140, 100), np.float32), kps, vis, (30.0, 0.0, 40.0, 130.0), params=TopDownParams())
    assert full["visible"].numpy().all()
    # too few labelled keypoints: the whole box is kept
    vis_few = vis.copy()
    vis_few[:5] = False
    few = tf(np.zeros((140, 100), np.float32), kps, vis_few, (30.0, 0.0, 40.0, 130.0), params=TopDownParams(half_body="upper"))
    np.testing.assert_allclose(few["matrix"].numpy(), full["matrix"].numpy())


# ---------------------------------------------------------------------------------- datamodule
def _dm(coco_dir, **kw) -> CocoPoseDataModule:
    args = dict(train_json=coco_dir / "test_coco.json", val_json=coco_dir / "test_coco.json", metadata="coco_person",
                image_size=(256, 192), batch_size=12)
    args.update(kw)
    dm = CocoPoseDataModule(**args)
    dm.setup()
    return dm


def test_unlabelled_keypoints_get_zero_weight_and_crops_hold_every_labelled_one(coco_dir):
    dm = _dm(coco_dir)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (12, 3, 256, 192)
    # eval crops (box x 1.25) contain every labelled keypoint of these people
    assert torch.equal(batch["visible"], batch["visible_orig"])
    _, weights = GaussianHeatmapCodec(2.0).encode(batch["keypoints"], batch["visible"], (64, 48), stride=4.0)
    split = dm.splits["val"]
    expected = torch.tensor(np.stack([inst.visible for inst in split.instances]), dtype=torch.float32)
    assert torch.equal(weights, expected) and (expected == 0).any()
    assert dm.dataset_meta["num_keypoints"] == 17 and len(dm.dataset_meta["sigmas"]) == 17


def test_split_by_image_without_val_json(coco_dir):
    dm = _dm(coco_dir, val_json=None, val_fraction=0.25)
    train_ids = {i.image_id for i in dm.splits["train"].instances}
    val_ids = {im["id"] for im in dm.splits["val"].ground_truth["images"]}
    assert len(val_ids) == 1 and not train_ids & val_ids
    assert {a["image_id"] for a in dm.splits["val"].ground_truth["annotations"]} == val_ids


def test_metadata_errors_fail_at_setup(coco_dir, tmp_path):
    meta = tmp_path / "meta.yaml"
    meta.write_text("names: " + json.dumps(COCO_NAMES) + "\nflip_pairs: [[left_eye, right_eyes]]\n")
    with pytest.raises(DataError, match=r"meta.yaml: field flip_pairs\[0\]: 'right_eyes' is not a keypoint name"):
        _dm(coco_dir, metadata=str(meta))
    with pytest.raises(DataError, match="defines no flip_pairs"):
        _dm(coco_dir, metadata=None, flip=True)


def test_half_body_needs_upper_body_and_is_switched_off_without(coco_dir, caplog):
    dm = _dm(coco_dir, metadata={"names": COCO_NAMES, "sigmas": [0.05] * 17}, half_body_prob=0.3)
    assert dm.datasets["train"].transform.half_body_prob == 0.0
    assert "defines no upper_body" in caplog.text
    assert _dm(coco_dir).datasets["train"].transform.half_body_prob == 0.3
