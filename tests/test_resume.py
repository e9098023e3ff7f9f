"""Crash-safe training: killed (SIGKILL) or stopped (SIGTERM) mid-epoch, then resumed in the same folder with
ckpt_path=last, a run ends with the same weights and metrics as one never interrupted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
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


class RecordFitStart(pl.Callback):
    """Writes ``path`` (JSON) at the first batch a run trains: the checkpoint fit resumed from, and the epoch,
    batch index and global step training starts at (``+callbacks.start._target_=tests.test_resume.RecordFitStart``)."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.path.exists():
            self.path.write_text(json.dumps({"ckpt_path": trainer.ckpt_path, "epoch": trainer.current_epoch,
                                             "batch_idx": batch_idx, "global_step": trainer.global_step}))


def _resume(run: Path, cache_dir: Path) -> dict:
    """Resume ``run`` with ckpt_path=last; returns where its training started (see RecordFitStart)."""
    start = run / "fit_start.json"
    run_script("train.py", [*RUN, "ckpt_path=last", "+callbacks.start._target_=tests.test_resume.RecordFitStart",
                            f"+callbacks.start.path={start}", f"hydra.run.dir={run}"], cache_dir)
    return json.loads(start.read_text())


def _batches_done(ckpt: dict) -> int:
    """The batches of the current epoch a checkpoint had trained, optimizer step included (Lightning's fit-loop
    progress: a checkpoint written in on_train_batch_end counts its batch as processed, not yet completed)."""
    return ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]


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
    assert a["state_dict"].keys() == b["state_dict"].keys()
    different = [k for k in b["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # AdamW: both moments and the step count of every parameter, and each group's lr (the schedule's position)
    (opt_a,), (opt_b,) = a["optimizer_states"], b["optimizer_states"]
    assert len(opt_b["state"]) > 0
    for (index, state_a), (index_b, state_b) in zip(opt_a["state"].items(), opt_b["state"].items(), strict=True):
        assert index == index_b and state_a.keys() == state_b.keys() == {"step", "exp_avg", "exp_avg_sq"}, index
        assert int(state_b["step"]) == 15, index
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state_a[name], state_b[name]), (index, name)
    assert opt_a["param_groups"] == opt_b["param_groups"]
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
    assert _batches_done(step_ckpt) == 1
    epoch_end = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert epoch_end["global_step"] == 5  # the end of epoch 0: resuming from it would redo steps 6-7
    start = _resume(run, cache_dir)
    # it continued from the step checkpoint, at its exact step: epoch 1, batch 1 (the 7th optimizer step)
    assert Path(start.pop("ckpt_path")) == run / "checkpoints" / "last-steps.ckpt"
    assert start == {"epoch": 1, "batch_idx": 1, "global_step": 6}
    _assert_same_run(run, uninterrupted)


def test_sigterm_writes_a_resumable_checkpoint_and_the_resumed_run_matches(uninterrupted, tmp_path, cache_dir):
    run = tmp_path / "stopped"
    stopped = run_script("train.py", [*RUN, "+callbacks.stop._target_=tests.fit_helpers.SignalAtStep",
                                      "+callbacks.stop.step=7", "+callbacks.stop.signal=SIGTERM",
                                      f"hydra.run.dir={run}"], cache_dir, check=False)
    assert stopped.returncode == 143, stopped.stderr[-2000:]  # 128 + SIGTERM, as the README says
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("SIGTERM")
    assert f"hydra.run.dir={run} ckpt_path=last" in record["error"]
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 7 and "optimizer_states" in last  # the state after step 7, whole
    assert last["epoch"] == 1 and _batches_done(last) == 2
    start = _resume(run, cache_dir)
    # from the SIGTERM checkpoint (not the older last-steps.ckpt of step 6): epoch 1, batch 2
    assert Path(start.pop("ckpt_path")) == run / "checkpoints" / "last.ckpt"
    assert start == {"epoch": 1, "batch_idx": 2, "global_step": 7}
    _assert_same_run(run, uninterrupted)
