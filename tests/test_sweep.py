"""The one-command model comparison: a Hydra multirun over models, each run with its own record."""

from __future__ import annotations

import json

from test_train_e2e import TINY, run_script


def test_multirun_over_three_models_records_params_and_best_metrics(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    args = ["-m", "model=unet,resnet50,hrnet_w32", "task=landmarks", *TINY, "trainer.max_epochs=1", "test=false",
            f"hydra.sweep.dir={sweep}"]
    run_script("train.py", args, cache_dir)
    records = {}
    for job in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        record = json.loads((job / "results.json").read_text())
        records[record["choices"]["model"]] = record
        assert (job / "csv" / "metrics.csv").is_file()
    assert set(records) == {"unet", "resnet50", "hrnet_w32"}
    assert records["resnet50"]["choices"]["head"] == "deconv"
    # each run's parameter count is its own model's (backbone + head), and best values are recorded
    assert records["hrnet_w32"]["params_backbone"] == 29_305_536
    assert records["unet"]["params_backbone"] == 7_217_456
    assert records["resnet50"]["params"]["total"] > records["resnet50"]["params_backbone"] + 10_000_000  # deconv head
    for record in records.values():
        assert record["best"]["val/mre"]["value"] > 0 and record["best"]["val/loss"]["epoch"] == 0
