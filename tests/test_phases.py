"""Training phases: a frozen backbone for the first epochs, then the whole model, resumable."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from hrexp.callbacks.freeze_backbone import BackboneFreeze
from hrexp.training.schedules import delayed
from tests.fit_helpers import TINY_W18, LrRecorder, changed, fit, snapshot

# 3 epochs of 2 steps; the backbone is frozen in epochs 0 and 1 and trains in epoch 2.
PHASED = [
    *TINY_W18, "trainer.max_epochs=3", "optimizer.lr=1e-3", "scheduler=constant", "test=false",
    "callbacks=[default,freeze_backbone]", "callbacks.freeze_backbone.epochs=2", "model.freeze_stages=1",
]
STEPS_PER_EPOCH = 2


class EpochSnapshots(pl.Callback):
    """Backbone and head state at the start of fit and at the end of every training epoch."""

    def __init__(self):
        self.backbone: list[dict[str, torch.Tensor]] = []
        self.head: list[dict[str, torch.Tensor]] = []

    def _take(self, pl_module) -> None:
        self.backbone.append(snapshot(pl_module.backbone))
        self.head.append(snapshot(pl_module.task))

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.backbone:
            self._take(pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._take(pl_module)


class StopAfterEpoch(pl.Callback):
    """Ends fit after the given epoch, as a crash would (last.ckpt of that epoch is on disk)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


# The stem and stage 1 (model.freeze_stages=1) stay frozen in every phase.
STEM_AND_STAGE1 = ("conv1.", "bn1.", "conv2.", "bn2.", "layer1.", "transition1.")


def _adam_steps(trainer) -> dict[str, set[int]]:
    """Adam's step count per group (empty set: no state, never updated)."""
    optimizer = trainer.optimizers[0]
    out = {}
    for group in optimizer.param_groups:
        out[group["name"]] = {int(optimizer.state[p]["step"]) for p in group["params"] if p in optimizer.state}
    return out


@pytest.fixture(scope="module")
def phased_run(module_tmp, cache_dir):
    from tests.conftest import compose_for

    snaps, lrs = EpochSnapshots(), LrRecorder()
    cfg = compose_for(PHASED, module_tmp)
    trainer, module = fit(cfg, [snaps, lrs])
    return trainer, module, snaps, lrs


def test_frozen_phase_keeps_backbone_and_bn_statistics_bit_identical(phased_run):
    _, _, snaps, _ = phased_run
    start, after0, after1, after2 = snaps.backbone
    assert changed(start, after0) == [] and changed(start, after1) == []
    assert changed(snaps.head[0], snaps.head[1]) and changed(snaps.head[1], snaps.head[2])

    # After the switch both weights and BatchNorm statistics change, except the freeze_stages part.
    moved = changed(after1, after2)
    assert any(k.endswith(".weight") and "conv" in k for k in moved)
    assert any(k.endswith("running_mean") for k in moved)
    assert any(k.startswith("stage4.") for k in moved)
    assert not [k for k in moved if k.startswith(STEM_AND_STAGE1)]


def test_backbone_lr_is_zero_while_frozen_and_optimizer_state_starts_at_the_switch(phased_run):
    trainer, module, _, lrs = phased_run
    assert len(lrs.lrs) == 3 * STEPS_PER_EPOCH
    for step, groups in enumerate(lrs.lrs):
        frozen = step < 2 * STEPS_PER_EPOCH
        for name, lr in groups.items():
            assert lr == (0.0 if frozen and name.startswith("backbone") else pytest.approx(1e-3)), (step, name)
    # The head's Adam state counts every step; the backbone's starts at the switch (bias correction
    # from its own first step), and no parameter that stayed frozen has any.
    steps = _adam_steps(trainer)
    assert steps["head"] == steps["head/no_decay"] == {6}
    assert steps["backbone"] == steps["backbone/no_decay"] == {2}
    assert module.backbone_frozen is False


def test_resume_from_a_frozen_phase_checkpoint_continues_the_schedule_exactly(phased_run, tmp_path):
    from tests.conftest import compose_for

    trainer_full, _, snaps_full, lrs_full = phased_run
    first = compose_for(PHASED, tmp_path / "a")
    fit(first, [StopAfterEpoch(0)])
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == STEPS_PER_EPOCH

    snaps, lrs = EpochSnapshots(), LrRecorder()
    trainer, module = fit(compose_for(PHASED, tmp_path / "b"), [snaps, lrs], ckpt_path=str(last))
    # Steps 2..5 of the resumed run have the uninterrupted run's lr, group by group.
    assert lrs.lrs == lrs_full.lrs[STEPS_PER_EPOCH:]
    # Epoch 1 is still frozen after the resume; epoch 2 trains the backbone.
    backbone_at_ckpt = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    assert changed(backbone_at_ckpt, snaps.backbone[1]) == []
    assert changed(snaps.backbone[1], snaps.backbone[2])
    assert _adam_steps(trainer) == _adam_steps(trainer_full)


def test_delayed_factor_hand_values():
    f = delayed(lambda s: 0.5, start_step=4, ramp_steps=2)
    assert [f(s) for s in range(8)] == [0, 0, 0, 0, 0.25, 0.5, 0.5, 0.5]


def test_bad_phase_options_fail_before_training(compose_cfg):
    with pytest.raises(ValueError, match="callbacks.freeze_backbone.epochs=0"):
        BackboneFreeze(epochs=0)
    cfg = compose_cfg([*PHASED[:-3], "callbacks=[default,freeze_backbone]", "callbacks.freeze_backbone.epochs=3"])
    with pytest.raises(ValueError, match=r"epochs=3 >= trainer.max_epochs=3"):
        fit(cfg)
    cb = BackboneFreeze(epochs=1)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2, logger=False)
    with pytest.raises(ValueError, match="ddp_find_unused_parameters_true"):
        cb.setup(trainer, None, "fit")
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn_find_unused_parameters_true", max_epochs=2,
                         logger=False)
    gates = {}
    module = SimpleNamespace(add_schedule_gate=lambda name, part, gate: gates.update({name: (part, gate)}))
    cb.setup(trainer, module, "fit")
    # The callback reaches the optimizer only through the module's hook: the backbone's groups start at epoch 1.
    part, gate = gates["callbacks.freeze_backbone"]
    assert part == "backbone" and gate(10) == {"start_step": 10, "ramp_steps": 0}


@pytest.mark.slow  # ~1 min: two DDP processes
def test_under_ddp_the_frozen_backbone_stays_fixed_and_then_trains_in_step_on_both_ranks(tmp_path, cache_dir):
    """The shipped DDP configs use find_unused_parameters (a frozen backbone gets no gradient); after
    the switch the backbone's gradients are all-reduced: both ranks hold the same new weights."""
    from tests.test_ddp import DDP_TINY
    from tests.helpers import run_script

    hashes = tmp_path / "hashes"
    run_script("train.py", [
        *DDP_TINY, "model=hrnet_w18", "trainer.max_epochs=2", "callbacks=[default,freeze_backbone]",
        "callbacks.freeze_backbone.epochs=1", "callbacks.progress_bar=null", "test=false",
        "+callbacks.hashes._target_=tests.fit_helpers.BackboneHashes", f"+callbacks.hashes.out_dir={hashes}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ], cache_dir)
    read = {p.stem: p.read_text() for p in hashes.glob("*.txt")}
    assert sorted(read) == ["rank0_epoch0", "rank0_epoch1", "rank0_start", "rank1_epoch0", "rank1_epoch1", "rank1_start"]
    assert read["rank0_start"] == read["rank1_start"] == read["rank0_epoch0"] == read["rank1_epoch0"]
    assert read["rank0_epoch1"] == read["rank1_epoch1"] != read["rank0_epoch0"]
