"""A NaN/inf training loss: stop naming the step and the samples (keeping the checkpoints), or skip the batch."""

from __future__ import annotations

import json

import pytest
import torch

from tests.fit_helpers import TINY_W18, NanAtStep, changed, fit

# 2 optimizer steps per epoch: step 2 is the first batch of epoch 1, after epoch 0's checkpoints.
NAN_AT_2 = [*TINY_W18, "trainer.max_epochs=2", "+callbacks.nan._target_=tests.fit_helpers.NanAtStep",
            "+callbacks.nan.step=2"]


def test_a_nonfinite_loss_stops_the_run_naming_step_and_samples_and_keeps_the_checkpoints(compose_cfg, tmp_path):
    from hrexp.jobs.train_run import run_job

    with pytest.raises(FloatingPointError) as err:
        run_job(compose_cfg(NAN_AT_2))
    message = str(err.value)
    assert "training loss nan at step 2 (epoch 1, batch 0)" in message
    assert "train.csv:row" in message and ".png" in message  # the batch's samples, by file and row
    assert "nonfinite_loss=skip" in message
    assert "oneDNN" not in message  # the bf16 hint only under bf16 (next test)
    run = tmp_path / "run"
    files = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert len(files) == 3
    assert all(torch.load(run / "checkpoints" / f, map_location="cpu", weights_only=True)["epoch"] == 0 for f in files)
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "failed" and "at step 2" in record["error"]


def test_a_nonfinite_loss_in_bf16_on_a_cpu_names_the_precision_and_what_to_try(compose_cfg):
    from hrexp.jobs.train_run import run_job

    with pytest.raises(FloatingPointError) as err:
        run_job(compose_cfg([*NAN_AT_2, "trainer.precision=bf16-mixed", "trainer.accelerator=cpu"]))
    message = str(err.value)
    assert "training loss nan at step 2" in message and "trained in bf16-mixed on a CPU" in message
    assert "trainer.precision=32" in message and "speed.channels_last=false" in message


def test_skip_leaves_weights_and_optimizer_state_untouched_for_that_batch_and_counts_it(compose_cfg):
    cfg = compose_cfg([*NAN_AT_2, "nonfinite_loss=skip"])
    trainer, module = fit(cfg)
    nan = next(cb for cb in trainer.callbacks if isinstance(cb, NanAtStep))
    assert nan.before is not None and not changed(nan.before, nan.after), "the skipped batch changed the weights"
    assert trainer.global_step == 4 and module.skipped_batches == 1
    optimizer = trainer.optimizers[0]
    steps = {int(state["step"]) for state in optimizer.state.values()}
    assert steps == {3}, steps  # 4 batches, 3 optimizer updates
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert trainer.logged_metrics["train/skipped_batches"] == 1
