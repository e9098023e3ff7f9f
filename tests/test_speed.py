"""The GPU fast path's switches, checked on the CPU: channels_last and torch.compile change the speed, not
the numbers, keep checkpoints interchangeable, and ``trainer=gpu_fast`` turns the set on."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf

from hrexp.errors import ConfigError
from hrexp.training.build import build_datamodule, build_module
from hrexp.jobs.eval_run import run_config_for_eval
from hrexp.training.speed import SpeedOptions
from tests.fit_helpers import TINY_W18, fit

ONE_STEP = [*TINY_W18, "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
            "test=false"]


def _module_and_batch(cfg):
    torch.manual_seed(0)
    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, datamodule)
    return module, next(iter(datamodule.train_dataloader()))


def _loss_and_grads(module, batch):
    module.train()
    module.zero_grad(set_to_none=True)
    loss = module.task.loss(module(batch["image"]), batch)
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}


def test_channels_last_gives_the_same_loss_and_gradients(compose_cfg):
    plain, batch = _module_and_batch(compose_cfg(TINY_W18))
    fast, _ = _module_and_batch(compose_cfg([*TINY_W18, "speed.channels_last=true"]))
    fast.load_state_dict(plain.state_dict())  # same weights; copy_ keeps each parameter's memory order
    convs = [p for p in fast.parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    # (a 1x1 kernel is both orders at once; a 3x3 one is NCHW-contiguous only when not converted)
    assert not any(p.is_contiguous() for p in convs if p.shape[-1] > 1)
    seen = []
    first_conv = next(m for m in fast.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))

    # In float64, so that the only difference, the order of the sums, is far below the tolerance (in
    # float32 the first conv's gradient, 100 layers down, differs by ~1 % either way).
    plain.double(), fast.double()
    batch = {**batch, "image": batch["image"].double()}
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.parameters() if p.dim() == 4)
    loss0, grads0 = _loss_and_grads(plain, batch)
    loss1, grads1 = _loss_and_grads(fast, batch)
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and not seen[0].is_contiguous()
    assert torch.allclose(loss0, loss1, rtol=1e-10)
    assert grads0.keys() == grads1.keys()
    for name in grads0:
        assert _relative_difference(grads0[name], grads1[name]) < 1e-8, name


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(a).clamp_min(1e-12))


def test_a_channels_last_run_trains_and_its_checkpoint_loads_into_a_plain_model(compose_cfg, tmp_path):
    class ParamOrder(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.channels_last = all(p.is_contiguous(memory_format=torch.channels_last)
                                     for p in pl_module.parameters() if p.dim() == 4)

    probe = ParamOrder()
    cfg = compose_cfg([*ONE_STEP, "speed.channels_last=true"])
    trainer, module = fit(cfg, [probe])
    assert probe.channels_last  # the Trainer's move to the device kept the memory order
    path = tmp_path / "cl.ckpt"
    trainer.save_checkpoint(path)
    plain, batch = _module_and_batch(compose_cfg(TINY_W18))
    plain.load_state_dict(torch.load(path, weights_only=True)["state_dict"], strict=True)
    module.eval(), plain.eval()
    with torch.no_grad():
        assert torch.allclose(module(batch["image"]), plain(batch["image"]), atol=1e-5)


def test_compile_is_in_place_and_keeps_the_state_dict_keys(compose_cfg):
    plain, _ = _module_and_batch(compose_cfg(TINY_W18))
    compiled, _ = _module_and_batch(compose_cfg([*TINY_W18, "speed.compile={mode: reduce-overhead}"]))
    # nn.Module.compile: the modules themselves are compiled (lazily, at the first call), not wrapped, so
    # checkpoints keep their keys and load into an uncompiled model.
    assert compiled.backbone._compiled_call_impl is not None and compiled.task.head._compiled_call_impl is not None
    assert plain.backbone._compiled_call_impl is None and plain.task.head._compiled_call_impl is None
    assert compiled.state_dict().keys() == plain.state_dict().keys()


@pytest.mark.slow
def test_a_compiled_training_step_matches_eager(compose_cfg):
    """One training step (forward, loss, backward) through dynamo and AOTAutograd against the same step
    eager. aot_eager traces what inductor compiles, without its code generation (minutes on this CPU: a
    W18 step under inductor took over 10 minutes here)."""
    plain, batch = _module_and_batch(compose_cfg(TINY_W18))
    compiled, _ = _module_and_batch(compose_cfg([*TINY_W18, "speed.compile={backend: aot_eager}",
                                                 "speed.channels_last=true"]))
    compiled.load_state_dict(plain.state_dict())
    plain.double(), compiled.double()  # float64: see the channels_last test
    batch = {**batch, "image": batch["image"].double()}
    loss0, grads0 = _loss_and_grads(plain, batch)
    loss1, grads1 = _loss_and_grads(compiled, batch)
    assert torch.allclose(loss0, loss1, rtol=1e-10)
    # The last fusions into HRNet's coarser branches feed nothing the 1/4 head reads: eager leaves their
    # gradients None, the traced graph returns zeros for them (AdamW then decays those unused weights).
    extra = grads1.keys() - grads0.keys()
    assert grads0.keys() <= grads1.keys() and all(not grads1[k].any() for k in extra)
    assert all(".fuse_layers." in k for k in extra)
    for name in grads0:
        assert _relative_difference(grads0[name], grads1[name]) < 1e-8, name


def test_gpu_fast_turns_on_the_set_and_single_options_still_override_it(compose_cfg):
    cfg = compose_cfg(["trainer=gpu_fast"])
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("gpu", 1)
    assert (cfg.trainer.precision, cfg.trainer.benchmark) == ("bf16-mixed", True)
    assert (cfg.speed.channels_last, cfg.speed.compile) == (True, True)
    # The atomic checkpoint plugin and the other defaults come with it (it extends trainer=gpu).
    assert cfg.trainer.plugins[0]._target_.endswith("AtomicCheckpointIO")
    cfg = compose_cfg(["trainer=gpu_fast", "speed.compile=false", "trainer.precision=32"])
    assert (cfg.speed.compile, cfg.trainer.precision, cfg.speed.channels_last) == (False, 32, True)
    # the README's several-GPU line composes
    cfg = compose_cfg(["trainer=gpu_fast", "trainer.devices=4", "+trainer.strategy=ddp_find_unused_parameters_true",
                       "+trainer.sync_batchnorm=true"])
    assert (cfg.trainer.devices, cfg.trainer.sync_batchnorm, cfg.speed.compile) == (4, True, True)
    default = compose_cfg([])
    assert (default.speed.channels_last, default.speed.compile, default.trainer.benchmark) == ("auto", False, None)
    assert default.trainer.precision == "auto"


@pytest.mark.parametrize("key, value, expected", [
    ("channels_last", "yes", "speed.channels_last='yes': expected true, false or auto"),
    ("compile", "fast", "speed.compile='fast': expected true, false or a mapping"),
    ("compile", "{modee: max-autotune}", "speed.compile has unknown keys ['modee']"),
])
def test_bad_speed_options_are_refused_before_training(compose_cfg, key, value, expected):
    cfg = compose_cfg([*TINY_W18, f"speed.{key}={value}"])
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        build_module(cfg, build_datamodule(cfg.data))


def test_eval_runs_the_network_as_its_own_command_says(compose_cfg):
    """A checkpoint trained with trainer=gpu_fast is not compiled by eval.py unless eval asks for it."""
    trained = OmegaConf.to_container(compose_cfg(["trainer=gpu_fast"]), resolve=False)
    ckpt = {"hrexp": {"config": {**trained, "choices": {"data": "synthetic_spine"}}}}
    eval_default = compose_cfg(["ckpt_path=x.ckpt"], name="eval")
    assert run_config_for_eval(ckpt, eval_default).speed == {**eval_default.speed}
    assert SpeedOptions().compiling is False
    asked = compose_cfg(["ckpt_path=x.ckpt", "speed.channels_last=true"], name="eval")
    assert run_config_for_eval(ckpt, asked).speed.channels_last is True


@pytest.mark.slow
def test_a_fast_path_run_with_ema_is_evaluated_uncompiled_to_the_same_metric(tmp_path, cache_dir):
    """train.py with channels_last, compile (dynamo, eager backend) and EMA; eval.py, which compiles nothing
    unless asked, reproduces the run's test MRE from the best checkpoint."""
    import json

    from tests.helpers import run_script

    run = tmp_path / "run"
    run_script("train.py", [*TINY_W18, "callbacks=[default,ema]", "speed.compile={backend: eager}",
                            "speed.channels_last=true", "trainer.max_epochs=2", f"hydra.run.dir={run}"],
               cache_dir, env={"OMP_NUM_THREADS": "1"})
    record = json.loads((run / "results.json").read_text())
    ckpt = record["checkpoints"]["checkpoint_best_metric"]["path"]
    run_script("eval.py", [f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}"], cache_dir)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["weights"]["kind"] == "ema"
    assert summary["metrics"]["test/mre"] == pytest.approx(record["test"]["metrics"]["test/mre"], rel=1e-5)
