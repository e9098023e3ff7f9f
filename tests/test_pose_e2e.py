"""End to end: the README's pose command on the COCO samples, eval from its best-AP checkpoint, and a
5-keypoint face set described only by its own metadata file (no COCO assumption)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import run_script, shared_path, write_image

# Small but real: 128 x 96 crops (the coarsest HRNet stride, 32, divides both), one batch of all
# 12 labelled people per step, 40 steps at lr 1e-3 without scale / rotation / half-body (flip and
# the flip test stay on), validated twice: enough for a non-zero AP, so that eval reproducing it
# means something.
TINY_POSE = [
    "data.image_size=[128,96]",
    "data.batch_size=12",
    "data.num_workers=0",
    "data.scale=[1,1]",
    "data.rotation=0",
    "data.half_body_prob=0",
    "optimizer.lr=1e-3",
    "scheduler.warmup_epochs=0",
    "trainer.max_epochs=40",
    "trainer.check_val_every_n_epoch=20",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar=null",
    "seed=0",
]


def read_rows(run_dir: Path, column: str) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as fh:
        return [r for r in csv.DictReader(fh) if r.get(column)]


@pytest.fixture(scope="module")
def pose_run(module_tmp, cache_dir):
    coco = shared_path("pose_coco_samples", "coco")
    run_dir = module_tmp / "run"
    args = [
        "model=hrnet_w32", "task=pose", "data=coco_pose", f"data.root={coco}",
        "data.train_json=test_coco.json", "data.train_images=null",
        "data.val_json=test_coco.json", "data.val_images=null",
        "data.test_json=test_coco.json", "data.test_bbox_file=test_coco_det_AP_H_56.json",
        *TINY_POSE, f"hydra.run.dir={run_dir}",
    ]
    run_script("train.py", args, cache_dir)
    return run_dir


@pytest.mark.slow  # one real COCO training run (~1.5 min) shared by three tests
def test_pose_run_logs_ap_and_keeps_best_ap_best_loss_and_last(pose_run):
    ckpts = sorted(p.name for p in (pose_run / "checkpoints").glob("*.ckpt"))
    assert any(n.startswith("best-val_AP-") for n in ckpts), ckpts
    assert any(n.startswith("best-val_loss-") for n in ckpts), ckpts
    assert "last.ckpt" in ckpts
    rows = read_rows(pose_run, "val/AP")
    assert len(rows) == 2
    for key in ("val/AP", "val/AP50", "val/AP75", "val/AR", "val/loss"):
        assert all(0.0 <= float(r[key]) for r in rows), key
    record = json.loads((pose_run / "results.json").read_text())
    assert record["status"] == "finished" and record["choices"]["task"] == "pose"
    best_ap = max(float(r["val/AP"]) for r in rows)
    assert record["best"]["val/AP"]["value"] == pytest.approx(best_ap)
    assert record["checkpoints"]["checkpoint_best_metric"]["monitor"] == "val/AP"
    # the test split crops the detector's boxes: AP is computed, there is no per-box loss
    test = record["test"]["metrics"]
    assert "test/AP" in test and "test/loss" not in test
    assert record["dataset_meta"]["num_keypoints"] == 17


@pytest.mark.slow  # one real COCO training run (~1.5 min) shared by three tests
def test_eval_from_the_best_ap_checkpoint_reproduces_the_logged_val_ap(pose_run, cache_dir, tmp_path):
    record = json.loads((pose_run / "results.json").read_text())
    ckpt = record["checkpoints"]["checkpoint_best_metric"]["path"]
    best = record["best"]["val/AP"]
    assert best["value"] > 0, "the model must find someone for the comparison to mean anything"
    out = tmp_path / "eval"
    run_script("eval.py", [f"ckpt_path={ckpt}", "split=val", f"hydra.run.dir={out}"], cache_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["val/AP"] == pytest.approx(best["value"], abs=1e-9)
    logged = [r for r in read_rows(pose_run, "val/AP") if int(r["epoch"]) == best["epoch"]][0]
    assert summary["metrics"]["val/AR"] == pytest.approx(float(logged["val/AR"]), abs=1e-6)
    # The report: PCK counts every labelled keypoint of the file's people once; the gallery's worst instance
    # is the one with the largest error; the AP table shows the metric eval logged.
    coco = json.loads((shared_path("pose_coco_samples", "coco") / "test_coco.json").read_text())
    labelled = sum(1 for a in coco["annotations"] if not a.get("iscrowd") and a.get("num_keypoints", 0) > 0
                   for v in a["keypoints"][2::3] if v > 0)
    with open(out / "pck.csv") as fh:
        pck = {r["keypoint"]: r for r in csv.DictReader(fh)}
    assert int(pck["all keypoints"]["n"]) == labelled and len(pck) == 18
    with open(out / "per_instance.csv") as fh:
        instances = [r for r in csv.DictReader(fh) if r["mean_error_over_box"]]
    worst = max(instances, key=lambda r: float(r["mean_error_over_box"]))
    assert json.loads((out / "report.json").read_text())["gallery_worst"][0] == int(worst["index"])
    assert f"{summary['metrics']['val/AP']:.4g}" in (out / "report.html").read_text()


@pytest.mark.slow  # one real COCO training run (~1.5 min) shared by three tests
def test_eval_of_a_pose_checkpoint_on_landmark_data_says_what_is_missing(pose_run, cache_dir, tmp_path):
    """Landmark data lacks what pose needs: the pose task says so, naming task, data and the option to set."""
    record = json.loads((pose_run / "results.json").read_text())
    for i in range(3):
        write_image(tmp_path / f"a{i}.png", height=64, width=48)
    csv_file = tmp_path / "points.csv"
    csv_file.write_text("image,p1_x,p1_y,p2_x,p2_y\n" + "".join(f"a{i}.png,1,2,3,4\n" for i in range(3)))
    proc = run_script("eval.py", [f"ckpt_path={record['checkpoints']['checkpoint_best_metric']['path']}",
                                  "data=landmarks_csv", f"data.csv={csv_file}", "data.image_size=[128,96]",
                                  f"hydra.run.dir={tmp_path / 'eval'}"], cache_dir, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "AttributeError" not in output
    # The first thing pose needs that plain landmark data lacks: flip pairs (for the flip test), then sigmas.
    assert "task=pose data=landmarks_csv model=hrnet_w32" in output
    assert "task.flip_test=true but the data defines no flip pairs" in output


FACE_POINTS = {  # 5 of the 300W (iBUG 68-point) landmarks, 0-based
    "right_eye_corner": 36, "left_eye_corner": 45, "nose_tip": 30, "right_mouth_corner": 48, "left_mouth_corner": 54,
}


def write_face5(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A 5-keypoint COCO-format file made from the 300W samples, and its metadata file."""
    src = shared_path("pose_coco_samples", "300w")
    raw = json.loads((src / "test_300w.json").read_text())
    for ann in raw["annotations"]:
        flat = ann["keypoints"]
        ann["keypoints"] = [v for i in FACE_POINTS.values() for v in flat[3 * i: 3 * i + 3]]
        ann["num_keypoints"] = sum(1 for i in FACE_POINTS.values() if flat[3 * i + 2] > 0)
    path = tmp_path / "face5.json"
    path.write_text(json.dumps(raw))
    names = list(FACE_POINTS)
    meta = tmp_path / "face5.yaml"
    meta.write_text(yaml.safe_dump({
        "names": names,
        "flip_pairs": [["right_eye_corner", "left_eye_corner"], ["right_mouth_corner", "left_mouth_corner"]],
        "sigmas": [0.025, 0.025, 0.026, 0.035, 0.035],
        "skeleton": [["right_eye_corner", "nose_tip"], ["left_eye_corner", "nose_tip"],
                     ["nose_tip", "right_mouth_corner"], ["nose_tip", "left_mouth_corner"]],
    }))
    return path, meta, src


def test_a_five_keypoint_face_set_trains_from_its_own_metadata(tmp_path, cache_dir):
    json_path, meta, images = write_face5(tmp_path)
    run_dir = tmp_path / "run"
    args = [
        "model=hrnet_w18", "task=pose", "data=coco_pose", f"data.root={tmp_path}",
        f"data.train_json={json_path.name}", f"data.train_images={images}",
        f"data.val_json={json_path.name}", f"data.val_images={images}",
        f"data.metadata={meta}", "data.image_size=[64,64]", "data.batch_size=2", "data.num_workers=0",
        "trainer.max_epochs=2", "trainer.num_sanity_val_steps=0", "seed=0", f"hydra.run.dir={run_dir}",
    ]
    proc = run_script("train.py", args, cache_dir)
    # no upper body in the metadata: half-body crops are switched off, not guessed
    assert "defines no upper_body" in proc.stdout + proc.stderr
    record = json.loads((run_dir / "results.json").read_text())
    assert record["dataset_meta"]["keypoint_names"] == list(FACE_POINTS)
    assert record["dataset_meta"]["sigmas"] == [0.025, 0.025, 0.026, 0.035, 0.035]
    assert record["dataset_meta"]["flip_pairs"] == [[0, 1], [3, 4]]
    assert "val/AP" in record["best"] and "test/AP" in record["test"]["metrics"]
    ckpt = torch.load(record["checkpoints"]["checkpoint_last"]["path"], map_location="cpu", weights_only=True)
    assert ckpt["state_dict"]["task.head.final.weight"].shape[0] == 5
    assert ckpt["hrexp"]["config"]["data"]["metadata"] == str(meta)
