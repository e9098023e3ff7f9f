"""Optimizer param groups from config: membership, lr and weight decay per group, and their schedule."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from hydra.utils import instantiate

from hrexp.errors import ConfigError
from hrexp.training.build import build_datamodule, build_module
from hrexp.training.param_groups import ParamGroupRules, describe_groups
from tests.fit_helpers import TINY_W18, LrRecorder, fit

GROUPS = ["backbone", "backbone/no_decay", "head", "head/no_decay"]


def _ids(params) -> set[int]:
    return {id(p) for p in params}


@pytest.fixture
def module(compose_cfg):
    cfg = compose_cfg([*TINY_W18, "optimizer.lr=1e-3", "optimizer.weight_decay=0.05", "param_groups.backbone_lr_mult=0.1"])
    return build_module(cfg, build_datamodule(cfg.data))


def test_groups_split_backbone_and_head_and_exempt_norms_and_biases(module):
    optimizer = module.param_group_rules.create_optimizer(module.optimizer_factory, module.backbone, module.task)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == GROUPS

    # Independent characterisation: in these models every 1-D parameter is a BatchNorm weight or
    # bias or a conv bias, and every >= 2-D parameter is a conv weight.
    for part, owner in (("backbone", module.backbone), ("head", module.task)):
        params = list(owner.parameters())
        assert _ids(groups[part]["params"]) == _ids(p for p in params if p.ndim > 1)
        assert _ids(groups[f"{part}/no_decay"]["params"]) == _ids(p for p in params if p.ndim == 1)
    bn = [m for m in module.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(groups["backbone/no_decay"]["params"]) == 2 * len(bn)  # the scratch HRNet's convs have no bias

    assert groups["head"]["lr"] == groups["head/no_decay"]["lr"] == pytest.approx(1e-3)
    assert groups["backbone"]["lr"] == groups["backbone/no_decay"]["lr"] == pytest.approx(1e-4)
    assert groups["backbone"]["weight_decay"] == groups["head"]["weight_decay"] == pytest.approx(0.05)
    assert groups["backbone/no_decay"]["weight_decay"] == groups["head/no_decay"]["weight_decay"] == 0.0

    rows = {r["name"]: r for r in describe_groups(optimizer, module)}
    assert sum(r["params"] for r in rows.values()) == sum(p.numel() for p in module.parameters())


def test_flag_off_keeps_decay_everywhere_and_absolute_backbone_lr(module):
    rules = ParamGroupRules(backbone_lr=3e-5, no_decay_norm_bias=False)
    optimizer = rules.create_optimizer(module.optimizer_factory, module.backbone, module.task)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert list(groups) == ["backbone", "head"]
    assert groups["backbone"]["lr"] == pytest.approx(3e-5) and groups["head"]["lr"] == pytest.approx(1e-3)
    assert all(g["weight_decay"] == pytest.approx(0.05) for g in groups.values())


def test_frozen_stages_are_left_out_and_counted(compose_cfg):
    cfg = compose_cfg([*TINY_W18, "model.freeze_stages=2"])
    module = build_module(cfg, build_datamodule(cfg.data))
    optimizer = module.param_group_rules.create_optimizer(module.optimizer_factory, module.backbone, module.task)
    held = set().union(*(_ids(g["params"]) for g in optimizer.param_groups))
    assert held == _ids(p for p in module.parameters() if p.requires_grad)
    frozen = [r for r in describe_groups(optimizer, module) if r["lr"] is None]
    assert frozen and frozen[0]["params"] == sum(p.numel() for p in module.parameters() if not p.requires_grad) > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("param_groups.backbone_lr=-1", "param_groups.backbone_lr=-1"),
        ("param_groups.backbone_lr_mult=-0.5", "param_groups.backbone_lr_mult=-0.5"),
        ("param_groups.backbone_lr=1e-4 param_groups.backbone_lr_mult=0.1", "set one of them"),
    ],
)
def test_bad_group_options_fail_at_build_naming_the_option(compose_cfg, override, message):
    cfg = compose_cfg([*TINY_W18, *override.split()])
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        build_module(cfg, build_datamodule(cfg.data))


def test_each_group_follows_warmup_cosine_with_its_own_peak_and_is_logged(compose_cfg, tmp_path):
    """6 steps (3 epochs x 2), warmup 1 epoch = 2 steps, cosine to min_lr over the other 4."""
    cfg = compose_cfg([
        *TINY_W18, "trainer.max_epochs=3", "optimizer.lr=1e-3", "param_groups.backbone_lr_mult=0.1",
        "scheduler=warmup_cosine", "scheduler.warmup_epochs=1", "scheduler.min_lr=1e-6", "trainer.log_every_n_steps=1",
    ])
    recorder = LrRecorder()
    fit(cfg, [recorder])
    assert len(recorder.lrs) == 6

    def expected(base: float, s: int) -> float:
        if s < 2:
            return base * (s + 1) / 2
        return 1e-6 + (base - 1e-6) * 0.5 * (1 + math.cos(math.pi * (s - 2) / 4))

    for s, lrs in enumerate(recorder.lrs):
        assert list(lrs) == GROUPS
        for name, lr in lrs.items():
            base = 1e-4 if name.startswith("backbone") else 1e-3
            assert lr == pytest.approx(expected(base, s), rel=1e-9), (s, name)

    # LearningRateMonitor logs one lr-* curve per group, under the group's name.
    with open(tmp_path / "run" / "csv" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    for name in GROUPS:
        logged = [float(r[f"lr-AdamW/{name}"]) for r in rows if r.get(f"lr-AdamW/{name}")]
        assert logged, f"no lr-AdamW/{name} column"
        assert logged[0] == pytest.approx(expected(1e-4 if name.startswith("backbone") else 1e-3, 0), rel=1e-6)


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd"])
def test_each_optimizer_config_builds_the_groups(compose_cfg, name):
    cfg = compose_cfg([*TINY_W18, f"optimizer={name}"])
    module = build_module(cfg, build_datamodule(cfg.data))
    optimizer = module.param_group_rules.create_optimizer(instantiate(cfg.optimizer), module.backbone, module.task)
    assert type(optimizer).__name__.lower() == name
    assert [g["name"] for g in optimizer.param_groups] == GROUPS
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups if g["name"].endswith("no_decay"))
