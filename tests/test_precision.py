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


def test_auto_keeps_fp32_on_a_cpu_for_inputs_under_128_px(monkeypatch):
    """oneDNN's bf16 kernels gave NaN at a 64x32 input (docs/results/bf16_check.table.md): auto trusts bf16 on a
    CPU from 128 px on the shorter side."""
    monkeypatch.setattr(precision_module, "native_bf16", lambda accelerator="auto": True)
    chosen, why = resolve_precision("auto", "cpu", input_size=(64, 32))
    assert chosen == "32" and "64x32" in why and "128" in why
    assert resolve_precision("auto", "cpu", input_size=(256, 127))[0] == "32"
    assert resolve_precision("auto", "cpu", input_size=(128, 128))[0] == "bf16-mixed"
    assert resolve_precision("auto", "cpu", input_size=(384, 320))[0] == "bf16-mixed"
    # checkpoint=auto is resolved for the same input
    assert resolve_precision("checkpoint", "cpu", stored="auto", input_size=(64, 32))[0] == "32"


def test_channels_last_auto_follows_the_input_size():
    from hrexp.training.speed import SpeedOptions

    assert SpeedOptions(channels_last="auto").resolve((64, 32)).channels_last is False
    assert SpeedOptions(channels_last="auto").resolve((127, 512)).channels_last is False
    assert SpeedOptions(channels_last="auto").resolve((128, 128)).channels_last is True
    assert SpeedOptions(channels_last="auto").resolve(None).channels_last is False  # unknown input: NCHW
    assert SpeedOptions(channels_last=False).resolve((512, 512)).channels_last is False  # explicit values stay
    assert SpeedOptions(channels_last=True).resolve((64, 32)).channels_last is True
    with pytest.raises(ValueError, match="speed.channels_last='yes': expected true, false or auto"):
        SpeedOptions(channels_last="yes")


def test_the_fit_validates_in_fp32_under_mixed_precision():
    """Training steps autocast to bf16; validation steps run in float32 unless val_precision=fit."""
    import torch

    plugin = precision_module.fit_precision_plugin("bf16-mixed", "cpu")
    a = torch.randn(8, 8)
    with plugin.train_step_context():
        assert (a @ a).dtype == torch.bfloat16
    with plugin.val_step_context():
        assert (a @ a).dtype == torch.float32
    with plugin.test_step_context():  # the end-of-run test swaps in test_precision's own plugin
        assert (a @ a).dtype == torch.bfloat16
    assert precision_module.fit_precision_plugin("bf16-mixed", "cpu", "fit") is None  # Lightning's own plugin
    assert precision_module.fit_precision_plugin("32-true", "cpu") is None  # nothing to change
    with pytest.raises(ConfigError, match="val_precision='16': expected 32"):
        precision_module.fit_precision_plugin("bf16-mixed", "cpu", "16")


def test_checkpoint_precision_is_the_training_runs(monkeypatch):
    monkeypatch.setattr(precision_module, "native_bf16", lambda accelerator="auto": False)
    assert resolve_precision("checkpoint", stored="bf16-mixed")[0] == "bf16-mixed"
    chosen, why = resolve_precision("checkpoint", stored="auto")  # trained with auto: resolved for this device
    assert chosen == "32" and "auto -> 32" in why
    assert resolve_precision("checkpoint", stored=None)[0] == "32"
    with pytest.raises(ConfigError, match="trainer.precision"):
        resolve_precision("")


def test_native_bf16_asks_the_cpu_unless_the_environment_says(monkeypatch):
    import torch

    monkeypatch.delenv("HREXP_NATIVE_BF16", raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert precision_module.native_bf16("cpu") is False
    monkeypatch.setenv("HREXP_NATIVE_BF16", "1")
    assert precision_module.native_bf16("cpu") is True
    assert resolve_precision("auto", "cpu", input_size=(256, 128))[0] == "bf16-mixed"
    monkeypatch.setenv("HREXP_NATIVE_BF16", "0")
    assert resolve_precision("auto", "cpu", input_size=(256, 128))[0] == "32"
    monkeypatch.setenv("HREXP_NATIVE_BF16", "yes")
    with pytest.raises(ConfigError, match="HREXP_NATIVE_BF16='yes': expected 1"):
        precision_module.native_bf16("cpu")


RUN = ["model=hrnet_w18", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.num_sanity_val_steps=0",
       "callbacks.progress_bar=null", "data.num_train=12", "data.num_test=4", "data.original_size=[128,64]",
       "data.image_size=[64,32]", "data.batch_size=4", "data.num_workers=0", "trainer.precision=bf16-mixed"]


@pytest.mark.slow  # one tiny bf16 training run and three evaluations (~1 min)
def test_the_end_of_run_test_and_eval_score_in_fp32_unless_told(tmp_path, cache_dir):
    """A bf16 run: its validation, its end-of-run test and eval.py all score in fp32 by default and agree
    exactly; eval.py precision=checkpoint scores in the run's bf16, which differs; each says which precision it
    used."""
    run = tmp_path / "train"
    run_script("train.py", [*RUN, f"hydra.run.dir={run}"], cache_dir)
    record = json.loads((run / "results.json").read_text())
    assert record["precision"] == "bf16-mixed" and record["test_precision"] == "32-true"
    assert record["val_precision"] == "32"
    # the best validation value the fit logged (and chose the checkpoint on) is eval.py's on the val split
    ckpt = record["checkpoints"]["checkpoint_best_metric"]["path"]
    on_val = tmp_path / "eval_val"
    run_script("eval.py", [f"ckpt_path={ckpt}", "split=val", "report.enabled=false", f"hydra.run.dir={on_val}"],
               cache_dir)
    val_metrics = json.loads((on_val / "summary.json").read_text())["metrics"]
    headline = record["monitor"]["metric"]
    assert val_metrics[headline] == pytest.approx(record["best"][headline]["value"], rel=1e-6)
    ckpt = record["checkpoints"]["checkpoint_best_metric"]["path"]
    default, same = tmp_path / "eval_default", tmp_path / "eval_checkpoint"
    run_script("eval.py", [f"ckpt_path={ckpt}", "report.enabled=false", f"hydra.run.dir={default}"], cache_dir)
    run_script("eval.py", [f"ckpt_path={ckpt}", "precision=checkpoint", "report.enabled=false",
                           f"hydra.run.dir={same}"], cache_dir)
    summary_default = json.loads((default / "summary.json").read_text())
    summary_same = json.loads((same / "summary.json").read_text())
    assert summary_default["precision"] == "32-true" and summary_same["precision"] == "bf16-mixed"
    key = next(k for k in summary_default["metrics"] if k.endswith("/mre"))
    test_value = record["test"]["metrics"][key.replace(key.split("/")[0], "test")]
    # the same images and weights at the same precision: the end-of-run test and eval.py agree exactly
    assert summary_default["metrics"][key] == pytest.approx(test_value, rel=1e-6)
    # ... and in bf16 the numbers move (so the precision really changed)
    assert summary_same["metrics"][key] != pytest.approx(test_value, rel=1e-6)


def test_the_test_precision_plugin_is_what_lightning_builds():
    from lightning.pytorch import Trainer

    for precision in ("32", "bf16-mixed", "64"):
        plugin = precision_module.precision_plugin(precision, "cpu")
        built = Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False).precision_plugin
        assert type(plugin) is type(built) and plugin.precision == built.precision, precision
    with pytest.raises(ConfigError, match="test_precision"):
        precision_module.precision_plugin("17", "cpu")
