"""EMA of the weights: the average itself, validation and checkpoints on it, and eval reproducing it."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch

from hrexp.callbacks.ema import EMA
from tests.conftest import compose_for
from tests.fit_helpers import TINY_W18, fit, snapshot
from tests.helpers import run_script
from tests.test_train_e2e import read_val_rows

DECAY = 0.6
EMA_RUN = [*TINY_W18, "trainer.max_epochs=2", "optimizer.lr=1e-3", "callbacks=[default,ema]", f"callbacks.ema.decay={DECAY}"]


class StepWeights(pl.Callback):
    """The raw weights and buffers after every optimizer step."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(snapshot(pl_module))


def test_the_average_follows_the_ema_recursion(tmp_path, cache_dir):
    """ema_1 = w_1, ema_k = d * ema_(k-1) + (1 - d) * w_k; after fit the module holds the average."""
    recorder = StepWeights()
    _, module = fit(compose_for([*EMA_RUN, "test=false"], tmp_path), [recorder])
    assert len(recorder.steps) == 4
    final = snapshot(module)
    checked = 0
    for key, value in final.items():
        if not value.is_floating_point():
            continue
        expected = recorder.steps[0][key].double()
        for step in recorder.steps[1:]:
            expected = DECAY * expected + (1 - DECAY) * step[key].double()
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6, msg=key)
        checked += 1
    assert checked > 100
    assert any(not torch.equal(final[k], recorder.steps[-1][k]) for k in final)


@pytest.mark.slow  # ~45 s: one training run and three eval runs
def test_validation_and_checkpoints_use_the_ema_weights_and_eval_reproduces_them(tmp_path, cache_dir):
    run = tmp_path / "ema"
    run_script("train.py", [*EMA_RUN, f"hydra.run.dir={run}"], cache_dir)
    best = next((run / "checkpoints").glob("best-val_mre-*.ckpt"))
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    weights = ckpt["hrexp"]["weights"]
    assert weights["kind"] == "ema" and weights["decay"] == DECAY
    assert weights["updates"] == ckpt["global_step"]  # one update per optimizer step
    raw = ckpt["current_model_state"]
    assert any(not torch.equal(raw[k], v) for k, v in ckpt["state_dict"].items())

    logged = {int(r["epoch"]): float(r["val/mre"]) for r in read_val_rows(run)}
    out = tmp_path / "eval_ema"
    run_script("eval.py", [f"ckpt_path={best}", "split=val", f"hydra.run.dir={out}"], cache_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"]["kind"] == "ema"
    ema_mre = summary["metrics"]["val/mre"]
    assert ema_mre == pytest.approx(logged[ckpt["epoch"]], rel=1e-5)

    # The raw weights of the same checkpoint score differently: validation did not use them.
    raw_ckpt = dict(ckpt, state_dict=raw, hrexp={**ckpt["hrexp"], "weights": {"kind": "raw"}})
    raw_path = tmp_path / "raw.ckpt"
    torch.save(raw_ckpt, raw_path)
    out = tmp_path / "eval_raw"
    run_script("eval.py", [f"ckpt_path={raw_path}", "split=val", f"hydra.run.dir={out}"], cache_dir)
    raw_mre = json.loads((out / "summary.json").read_text())["metrics"]["val/mre"]
    assert abs(raw_mre - ema_mre) > 1e-3 * ema_mre

    # The final test ran on the EMA weights of the best checkpoint, not on its raw weights (which
    # Lightning's callback would load back outside fit).
    record = json.loads((run / "results.json").read_text())
    assert record["test"]["checkpoint"] == str(best)
    out = tmp_path / "eval_test"
    run_script("eval.py", [f"ckpt_path={best}", "split=test", f"hydra.run.dir={out}"], cache_dir)
    ema_test = json.loads((out / "summary.json").read_text())["metrics"]["test/mre"]
    assert record["test"]["metrics"]["test/mre"] == pytest.approx(ema_test, rel=1e-5)


def test_bad_ema_options_are_named():
    with pytest.raises(ValueError, match=r"callbacks\.ema\.decay=1\.0"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match=r"callbacks\.ema\.update_every_n_steps=0"):
        EMA(update_every_n_steps=0)
