"""trainer.precision=auto and eval's precision=checkpoint: the end-of-run test and eval.py score a checkpoint in the same
precision unless told otherwise, and both record which."""

from __future__ import annotations

import json

import pytest

from hrexp.errors import ConfigError
from hrexp.training import precision as precision_module
from hrexp.training.precision import resolve_precision
from tests.helpers import run_script


def test_auto_picks_bf16_only_where_the_device_computes_it_natively(monkeypatch):
    monkeypatch.setattr(precision_module, "native_bf16", lambda accelerator="auto": True)
    assert resolve_precision("auto")[0] == "bf16-mixed"
    monkeypatch.setattr(precision_module, "native_bf16", lambda accelerator="auto": False)
    assert resolve_precision("auto") == ("32", "auto: no native bfloat16 on this device")
    # an explicit value is passed on as given (Lightning checks it and names it in its message)
    assert resolve_precision(32)[0] == 32 and resolve_precision("bf16-mixed")[0] == "bf16-mixed"


def test_checkpoint_precision_is_the_training_runs(monkeypatch):
    monkeypatch.setattr(precision_module, "native_bf16", lambda accelerator="auto": False)
    assert resolve_precision("checkpoint", stored="bf16-mixed")[0] == "bf16-mixed"
    chosen, why = resolve_precision("checkpoint", stored="auto")  # trained with auto: resolved for this device
    assert chosen == "32" and "auto -> 32" in why
    assert resolve_precision("checkpoint", stored=None)[0] == "32"
    with pytest.raises(ConfigError, match="trainer.precision"):
        resolve_precision("")


def test_native_bf16_asks_the_cpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert precision_module.native_bf16("cpu") is False


RUN = ["model=hrnet_w18", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0",
       "callbacks.progress_bar=null", "data.num_train=12", "data.num_test=4", "data.original_size=[128,64]",
       "data.image_size=[64,32]", "data.batch_size=4", "data.num_workers=0", "trainer.precision=bf16-mixed"]


@pytest.mark.slow  # one tiny bf16 training run and two evaluations (~1 min)
def test_eval_scores_in_the_training_precision_unless_told(tmp_path, cache_dir):
    run = tmp_path / "train"
    run_script("train.py", [*RUN, f"hydra.run.dir={run}"], cache_dir)
    record = json.loads((run / "results.json").read_text())
    assert record["precision"] == "bf16-mixed"
    ckpt = record["checkpoints"]["checkpoint_best_metric"]["path"]
    same = tmp_path / "eval_same"
    run_script("eval.py", [f"ckpt_path={ckpt}", "report.enabled=false", f"hydra.run.dir={same}"], cache_dir)
    fp32 = tmp_path / "eval_fp32"
    run_script("eval.py", [f"ckpt_path={ckpt}", "precision=32", "report.enabled=false", f"hydra.run.dir={fp32}"],
               cache_dir)
    summary_same = json.loads((same / "summary.json").read_text())
    summary_fp32 = json.loads((fp32 / "summary.json").read_text())
    assert summary_same["precision"] == "bf16-mixed" and summary_fp32["precision"] == "32-true"
    # the same images and weights: the end-of-run test (bf16) and eval.py at the run's precision agree exactly
    key = next(k for k in summary_same["metrics"] if k.endswith("/mre"))
    assert summary_same["metrics"][key] == pytest.approx(record["test"]["metrics"][key.replace(key.split("/")[0], "test")],
                                                         rel=1e-6)
