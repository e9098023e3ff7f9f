"""DDP on two CPU processes (gloo), launched from the script as users do: metrics are synced exactly."""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import run_script

DDP_TINY = [
    "trainer=ddp_cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.num_sanity_val_steps=0",
    # 40 images -> 34 train / 6 val: 3 val images per rank, so no sample is padded in twice.
    "data.num_train=40",
    "data.num_test=4",
    "data.original_size=[128,64]",
    "data.image_size=[64,32]",
    "data.batch_size=4",
    "seed=0",
]


def test_ddp_validation_metrics_equal_single_process_eval(tmp_path, cache_dir):
    run = tmp_path / "ddp"
    run_script("train.py", [*DDP_TINY, f"hydra.run.dir={run}"], cache_dir)
    with open(run / "csv" / "metrics.csv") as fh:
        logged = [r for r in csv.DictReader(fh) if r.get("val/mre")]
    assert len(logged) == 1

    # The same weights scored by one process on the whole validation split.
    out = tmp_path / "eval"
    run_script("eval.py", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "split=val", f"hydra.run.dir={out}"], cache_dir)
    single = json.loads((out / "summary.json").read_text())["metrics"]
    for key in ("val/mre", "val/loss", "val/sdr_24"):
        assert float(logged[0][key]) == pytest.approx(single[key], rel=1e-5), key


@pytest.mark.slow  # ~2 min: 60 DDP steps, so that the model finds people and a duplicate would count
def test_ddp_pose_ap_drops_the_padded_duplicate_and_equals_single_process_eval(tmp_path, cache_dir):
    """11 validation people on 2 ranks: DistributedSampler pads to 12, repeating one person.

    OKS NMS is off so that a repeated prediction would count (as a false positive): the logged
    val/AP must still equal one process scoring the 11 people.
    """
    from tests.helpers import shared_path

    coco = shared_path("pose_coco_samples", "coco")
    raw = json.loads((coco / "test_coco.json").read_text())
    labelled = [a for a in raw["annotations"] if a["num_keypoints"] > 0]
    raw["annotations"] = [a for a in raw["annotations"] if a["id"] != labelled[-1]["id"]]
    val = tmp_path / "val11.json"
    val.write_text(json.dumps(raw))
    run = tmp_path / "ddp_pose"
    args = [
        # 60 steps at lr 1e-3 without augmentation: enough for a non-zero AP, so a duplicate would show
        "trainer=ddp_cpu", "trainer.max_epochs=60", "trainer.limit_train_batches=1", "trainer.num_sanity_val_steps=0",
        "trainer.check_val_every_n_epoch=60", "optimizer.lr=1e-3", "scheduler.warmup_epochs=0",
        "data.scale=[1,1]", "data.rotation=0", "data.half_body_prob=0", "data.flip=false", "task.flip_test=false",
        "callbacks.progress_bar=null",
        "model=hrnet_w18", "task=pose", "task.oks_nms_threshold=null", "data=coco_pose", f"data.root={coco}",
        "data.train_json=test_coco.json", "data.train_images=null", f"data.val_json={val}", f"data.val_images={coco}",
        "data.image_size=[128,96]", "data.batch_size=6", "data.num_workers=0", "seed=0", "test=false",
        f"hydra.run.dir={run}",
    ]
    run_script("train.py", args, cache_dir)
    with open(run / "csv" / "metrics.csv") as fh:
        logged = [r for r in csv.DictReader(fh) if r.get("val/AP")]
    assert len(logged) == 1
    assert float(logged[0]["val/AP50"]) > 0, "the model must find someone for the comparison to mean anything"
    out = tmp_path / "eval"
    run_script("eval.py", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "split=val", f"hydra.run.dir={out}"], cache_dir)
    single = json.loads((out / "summary.json").read_text())["metrics"]
    for key in ("val/AP", "val/AP50", "val/AR"):
        assert float(logged[0][key]) == pytest.approx(single[key], abs=1e-9), key
