"""DDP on two CPU processes (gloo), launched from the script as users do: metrics are synced exactly."""

from __future__ import annotations

import csv
import json

import pytest

from test_train_e2e import run_script

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
