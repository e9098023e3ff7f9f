"""Overfitting the 4 COCO sample images (12 people with keypoints) must reach OKS AP >= 0.9.

The whole pose path is in the loop: crops, heatmap targets, training, flip test, DARK decoding,
un-cropping, OKS rescoring + NMS and pycocotools. Scratch HRNet-W18 at 128x96 on a 2-core CPU:
300 steps (one batch of all 12 people per epoch), about 13 minutes. Scale, rotation and half-body
augmentation are off (it is an overfitting check); the horizontal flip stays on, so the flip test
sees mirrored people the network was trained on.
"""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import shared_path
from tests.helpers import run_script

pytestmark = pytest.mark.slow


def test_overfitting_the_coco_samples_reaches_ap_0_9(tmp_path, cache_dir):
    coco = shared_path("pose_coco_samples", "coco")
    out = tmp_path / "overfit"
    args = [
        "model=hrnet_w18", "task=pose", "data=coco_pose_samples", f"paths.shared_data={coco.parent.parent}",
        "data.image_size=[128,96]", "data.batch_size=12", "data.scale=[1,1]", "data.rotation=0",
        "data.half_body_prob=0", "optimizer.lr=1e-3", "scheduler.warmup_epochs=10",
        "trainer.max_epochs=300", "trainer.check_val_every_n_epoch=100", "trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar=null", "seed=0", f"hydra.run.dir={out}",
    ]
    run_script("train.py", args, cache_dir, timeout=2400)
    record = json.loads((out / "results.json").read_text())
    with open(out / "csv" / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("val/AP")]
    curve = [(int(r["epoch"]), round(float(r["val/AP"]), 4)) for r in rows]
    print(f"pose overfit: val/AP by epoch {curve}, train time {record['train_time_s']:.0f} s, "
          f"test (detector boxes) AP {record['test']['metrics'].get('test/AP')}")
    assert record["best"]["val/AP"]["value"] >= 0.9, curve
    assert float(rows[-1]["val/AP"]) >= 0.9, curve
