"""Gradient clipping, gradient accumulation and mixed precision as trainer overrides, checked on real state."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from hydra.errors import InstantiationException

from tests.fit_helpers import TINY_W18, LrRecorder, fit

# Plain SGD (no momentum, no decay, constant lr): one step moves the weights by exactly -lr * grad.
PLAIN_SGD = [
    *TINY_W18, "trainer.max_epochs=1", "trainer.limit_train_batches=1", "test=false", "optimizer=sgd",
    "optimizer.lr=0.1", "optimizer.momentum=0", "optimizer.weight_decay=0", "optimizer.nesterov=false",
    "scheduler=constant",
]
LR = 0.1


class FirstStep(pl.Callback):
    """The trainable weights before training and after the first optimizer step, and the grads' norm."""

    def __init__(self):
        self.before = self.after = None
        self.grad_norm = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.before = {k: v.detach().clone() for k, v in pl_module.named_parameters() if v.requires_grad}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # Lightning clips after this hook: this is the unclipped gradient.
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.after is None:
            self.after = {k: v.detach().clone() for k, v in pl_module.named_parameters() if k in self.before}

    def step(self) -> torch.Tensor:
        return torch.cat([(self.after[k] - self.before[k]).flatten() for k in self.before])


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_bounds_the_update(compose_cfg, algorithm):
    clip = 1e-3
    probe = FirstStep()
    fit(compose_cfg([*PLAIN_SGD, f"trainer.gradient_clip_val={clip}", f"trainer.gradient_clip_algorithm={algorithm}"]),
        [probe])
    step = probe.step()
    assert probe.grad_norm > 100 * clip  # clipping had something to do
    if algorithm == "norm":
        # The whole gradient rescaled to norm `clip`: the step's norm is lr * clip.
        assert float(torch.linalg.vector_norm(step)) == pytest.approx(LR * clip, rel=1e-3)
    else:
        # Each gradient value clamped to [-clip, clip]: no weight moves by more than lr * clip, many by exactly it.
        assert float(step.abs().max()) == pytest.approx(LR * clip, rel=1e-3)
        assert int((step.abs() > 0.999 * LR * clip).sum()) > 100


def test_unclipped_step_is_lr_times_gradient(compose_cfg):
    probe = FirstStep()
    fit(compose_cfg(PLAIN_SGD), [probe])
    assert float(torch.linalg.vector_norm(probe.step())) == pytest.approx(LR * probe.grad_norm, rel=1e-3)


def test_accumulation_steps_the_optimizer_and_the_schedule_every_n_batches(compose_cfg):
    """4 batches accumulated by 2: 2 optimizer steps, and the cosine schedule spans those 2 steps."""
    recorder = LrRecorder()
    cfg = compose_cfg([
        *TINY_W18, "trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.accumulate_grad_batches=2",
        "test=false", "optimizer.lr=1e-3", "scheduler=warmup_cosine", "scheduler.warmup_epochs=0", "scheduler.min_lr=0",
    ])
    trainer, _ = fit(cfg, [recorder])
    assert trainer.global_step == 2
    # cosine over T=2 steps: s=0 -> base, s=1 -> base * (1 + cos(pi/2)) / 2
    assert [r["head"] for r in recorder.lrs] == [pytest.approx(1e-3), pytest.approx(0.5e-3)]


class Dtypes(pl.Callback):
    """The dtype of the head's hidden activations (its output conv's input), of its output and of the weights
    during the first training step."""

    def __init__(self):
        self.hidden = self.output = self.weight = None

    def on_train_start(self, trainer, pl_module) -> None:
        def hidden(module, args):
            if self.hidden is None:
                self.hidden = args[0].dtype

        def output(module, args, out):
            if self.output is None:
                self.output = out.dtype

        pl_module.task.head.conv.register_forward_pre_hook(hidden)  # the head's first conv sees the backbone's dtype
        pl_module.task.head.register_forward_hook(output)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.weight = {p.dtype for p in pl_module.parameters()}
        self.grad = {p.grad.dtype for p in pl_module.parameters() if p.grad is not None}


# fp16 autocast is GPU-only: on the CPU Lightning runs 16-mixed as bf16-mixed (with a warning).
@pytest.mark.parametrize("precision, dtype", [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.bfloat16),
                                              ("32", torch.float32)])
def test_mixed_precision_computes_in_low_precision_and_keeps_fp32_weights(compose_cfg, precision, dtype):
    """The network computes in the low dtype under autocast, the heatmaps leave the head in fp32 (speed.
    float32_output, the default) or in the low dtype (switched off); weights and gradients stay fp32."""
    probe = Dtypes()
    fit(compose_cfg([*PLAIN_SGD, f"trainer.precision={precision}"]), [probe])
    assert probe.hidden == dtype and probe.output == torch.float32
    assert probe.weight == {torch.float32} and probe.grad == {torch.float32}
    probe = Dtypes()
    fit(compose_cfg([*PLAIN_SGD, f"trainer.precision={precision}", "speed.float32_output=false"]), [probe])
    assert probe.hidden == dtype and probe.output == dtype


def test_an_unknown_precision_is_refused_before_training(compose_cfg):
    # Lightning's own check, when the Trainer is built (before any step); Hydra names the config node.
    with pytest.raises(InstantiationException, match=r"(?s)Precision 17 is invalid.*full_key: trainer"):
        fit(compose_cfg([*PLAIN_SGD, "trainer.precision=17"]))
