"""Crash-safe training: killed (SIGKILL) or stopped (SIGTERM) mid-epoch, then resumed in the same folder with
ckpt_path=last, a run ends with the same weights and metrics as one never interrupted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import run_script

pytestmark = pytest.mark.slow  # ~2 min: three short training runs

# 17 training images in batches of 4: 5 steps per epoch (the last one a single image), 3 epochs.
# A step checkpoint every 3 steps: the kill at step 7 (epoch 1, batch 1) loses step 7 only.
RUN = [
    "model=hrnet_w18", "trainer.max_epochs=3", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
    "callbacks.checkpoint_steps.every_n_train_steps=3", "data.num_train=20", "data.num_test=4",
    "data.original_size=[128,64]", "data.image_size=[64,32]", "data.batch_size=4", "data.num_workers=2",
    "test=false", "seed=0",
]


def _val_rows(run: Path) -> dict[int, dict[str, str]]:
    """The validation rows by epoch; a step logged twice (before and after the interruption) keeps its later row."""
    with open(run / "csv" / "metrics.csv") as fh:
        return {int(r["epoch"]): r for r in csv.DictReader(fh) if r.get("val/mre")}


@pytest.fixture(scope="module")
def uninterrupted(module_tmp, cache_dir):
    run = module_tmp / "uninterrupted"
    run_script("train.py", [*RUN, f"hydra.run.dir={run}"], cache_dir)
    return run


def _assert_same_run(run: Path, reference: Path) -> None:
    a = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    b = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 15
    different = [k for k in b["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    for state_a, state_b in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert torch.equal(state_a["exp_avg"], state_b["exp_avg"])
    rows, ref_rows = _val_rows(run), _val_rows(reference)
    assert sorted(rows) == sorted(ref_rows) == [0, 1, 2]
    for epoch in ref_rows:
        for key in ("val/mre", "val/loss", "val/sdr_8"):
            assert float(rows[epoch][key]) == float(ref_rows[epoch][key]), (epoch, key)
    assert json.loads((run / "results.json").read_text())["best"] == json.loads((reference / "results.json").read_text())["best"]


def test_a_run_killed_mid_epoch_resumes_from_its_step_checkpoint_exactly(uninterrupted, tmp_path, cache_dir):
    run = tmp_path / "killed"
    killed = run_script("train.py", [*RUN, "+callbacks.stop._target_=tests.fit_helpers.SignalAtStep",
                                     "+callbacks.stop.step=7", f"hydra.run.dir={run}"], cache_dir, check=False)
    assert killed.returncode == -9 and not (run / "results.json").exists()
    step_ckpt = torch.load(run / "checkpoints" / "last-steps.ckpt", map_location="cpu", weights_only=True)
    assert step_ckpt["global_step"] == 6 and step_ckpt["epoch"] == 1  # mid-epoch 1, after its first batch
    resumed = run_script("train.py", [*RUN, "ckpt_path=last", f"hydra.run.dir={run}"], cache_dir)
    assert "last-steps.ckpt" in resumed.stdout + resumed.stderr
    _assert_same_run(run, uninterrupted)


def test_sigterm_writes_a_resumable_checkpoint_and_the_resumed_run_matches(uninterrupted, tmp_path, cache_dir):
    run = tmp_path / "stopped"
    stopped = run_script("train.py", [*RUN, "+callbacks.stop._target_=tests.fit_helpers.SignalAtStep",
                                      "+callbacks.stop.step=7", "+callbacks.stop.signal=SIGTERM",
                                      f"hydra.run.dir={run}"], cache_dir, check=False)
    assert stopped.returncode != 0
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("SIGTERM")
    assert f"hydra.run.dir={run} ckpt_path=last" in record["error"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 7 and "optimizer_states" in last  # the state after step 7, whole
    run_script("train.py", [*RUN, "ckpt_path=last", f"hydra.run.dir={run}"], cache_dir)
    _assert_same_run(run, uninterrupted)
