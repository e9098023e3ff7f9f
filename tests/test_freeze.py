"""model.freeze_stages: frozen parameters get no update and frozen BatchNorm keeps its statistics,
also after ``train()``; the rest trains. Scratch HRNet, timm HRNet and a timm ResNet."""

from __future__ import annotations

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from hrexp.models.hrnet import HighResolutionNet  # noqa: E402
from hrexp.models.timm_backbone import TimmBackbone  # noqa: E402
from hrexp.models.freeze import hrnet_frozen_modules  # noqa: E402

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _check_frozen_training(model: nn.Module, frozen: tuple[str, ...]) -> None:
    """One SGD step and one train-mode forward: frozen parts bit-identical, the rest changed."""
    assert frozen
    params = dict(model.named_parameters())
    frozen_params = {n for n in params if _under(n, frozen)}
    assert frozen_params, "nothing frozen"
    assert all(not params[n].requires_grad for n in frozen_params)
    assert all(params[n].requires_grad for n in params if n not in frozen_params)

    # Lightning calls .train() on the whole LightningModule every epoch; the backbone is a child.
    wrapper = nn.ModuleDict({"backbone": model}).train()
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    frozen_bns = {n for n in bns if _under(n, frozen)}
    assert frozen_bns and all(not bns[n].training for n in frozen_bns)
    assert all(bns[n].training for n in bns if n not in frozen_bns)
    assert wrapper.training and model.training

    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if trainable:
        optimizer = torch.optim.SGD(trainable, lr=0.1, weight_decay=1e-2)
        loss = sum(f.square().mean() for f in model(X))
        loss.backward()
        optimizer.step()
    else:
        with torch.no_grad():
            model(X)  # still a train-mode forward: unfrozen BN (none here) would update
    after = model.state_dict()

    for name in before:
        same = torch.equal(before[name], after[name])
        if _under(name, frozen):
            assert same, f"frozen {name} changed"
    for name in params:
        if name not in frozen_params:
            assert not torch.equal(before[name], after[name]), f"trainable {name} did not change"
    for name in bns:
        if name not in frozen_bns:
            assert not torch.equal(before[f"{name}.running_mean"], after[f"{name}.running_mean"])


@pytest.mark.parametrize("stages", [1, 4])
def test_scratch_hrnet_freeze(stages):
    model = HighResolutionNet(width=18, freeze_stages=stages)
    assert model.frozen_modules == tuple(hrnet_frozen_modules(stages))
    if stages == 1:
        assert model.frozen_modules == ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1")
    else:
        assert all(not p.requires_grad for p in model.parameters())
    _check_frozen_training(model, model.frozen_modules)


def test_timm_resnet50_freeze():
    # zero_init_last=False: with timm's default zero gamma in each block's last BN, the layers
    # before it get no gradient at step one, and "trainable parameters changed" would not hold.
    model = TimmBackbone("resnet50", freeze_stages=2, zero_init_last=False)
    stem_and_two = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2")
    assert model.frozen_modules == tuple(f"model.{n}" for n in stem_and_two)
    _check_frozen_training(model, model.frozen_modules)
    assert model.model.layer3[0].conv1.weight.requires_grad


def test_timm_hrnet_freezes_the_scratch_modules():
    model = TimmBackbone("hrnet_w18", feature_location="", freeze_stages=2)
    assert model.frozen_modules == tuple(f"model.{n}" for n in hrnet_frozen_modules(2))
    assert not model.model.transition2[2][0][0].weight.requires_grad
    assert model.model.stage3[0].branches[0][0].conv1.weight.requires_grad


@pytest.mark.parametrize(
    ("model_name", "kwargs", "expected"),
    [
        # FeatureListNet flattens ``stages.1`` into ``stages_1``.
        ("convnext_atto", {"out_indices": (0, 1, 2, 3)}, ["stem_0", "stem_1", "stages_0", "stages_1"]),
        # Stages inside one Sequential: frozen block by block.
        ("efficientnet_b0", {}, ["conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2"]),
    ],
)
def test_timm_freeze_other_layouts(model_name, kwargs, expected):
    model = TimmBackbone(model_name, freeze_stages=2, **kwargs)
    assert model.frozen_modules == tuple(f"model.{n}" for n in expected)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(not _under(n, model.frozen_modules) for n in trainable)


def test_no_freeze_by_default():
    model = HighResolutionNet(width=18).train()
    assert model.frozen_modules == ()
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("value", [-1, 5, 1.5, True, "2"])
def test_invalid_freeze_stages_raises(value):
    with pytest.raises(ValueError, match=r"model\.freeze_stages=.*from 0 .* to 4"):
        HighResolutionNet(width=18, freeze_stages=value)


@pytest.mark.parametrize("value", [-1, 5])
def test_invalid_freeze_stages_raises_for_timm(value):
    with pytest.raises(ValueError, match=rf"model\.freeze_stages={value}: .*from 0 .* to 4"):
        TimmBackbone("resnet18", freeze_stages=value)
