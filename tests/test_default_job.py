"""The default job, exactly as `make train` runs it: it must beat the mean-shape baseline by 2x."""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_script

pytestmark = pytest.mark.slow


def test_default_job_halves_the_mean_shape_baseline(tmp_path, cache_dir):
    out = tmp_path / "default"
    # ~13 min on 2 cores; the limit only guards against a hang
    proc = run_script("train.py", ["model=hrnet_w32", "task=landmarks", f"hydra.run.dir={out}"], cache_dir, timeout=2400)
    record = json.loads((out / "results.json").read_text())
    best = record["best"]["val/mre"]["value"]
    baseline = record["baselines"]["mean_shape_val"]["mre"]
    print(f"default job: best val/mre {best:.3f} px, mean-shape baseline {baseline:.3f} px, "
          f"train time {record['train_time_s']:.0f} s")
    assert best <= 0.5 * baseline, (best, baseline)
    # Both numbers are printed at the end of the run.
    assert "mean-shape baseline val/mre" in proc.stdout and "best val/mre" in proc.stdout
    assert record["test"]["checkpoint"].split("/")[-1].startswith("best-val_mre-")
