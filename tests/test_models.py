"""Backbones (scratch HRNet, timm wrapper), the HRNet weight mapping, and the heatmap head."""

from __future__ import annotations

import math

import hydra.utils
import numpy as np
import pytest
import timm
import torch
from torch import nn

from hrexp.startup import CONFIG_DIR
from hrexp.models.heads import HeatmapHead
from hrexp.models.hrnet import HighResolutionNet, load_timm_hrnet_state_dict
from hrexp.models.timm_backbone import TimmBackbone

CONF_DIR = CONFIG_DIR / "model"
STRIDES = [4, 8, 16, 32]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _assert_features_match_info(features, feature_info, input_hw):
    """Each output has the channels and the (ceil) stride its feature_info entry claims."""
    assert len(features) == len(feature_info)
    h, w = input_hw
    for feat, info in zip(features, feature_info):
        s = info["reduction"]
        assert feat.shape[1] == info["num_chs"]
        assert tuple(feat.shape[-2:]) == (math.ceil(h / s), math.ceil(w / s))


# --------------------------------------------------------------------------- scratch HRNet


@pytest.mark.parametrize("width", [18, 32, 48])
def test_scratch_hrnet_feature_shapes(width):
    model = HighResolutionNet(width=width).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 128, 96))
    # Paper: branch i has width * 2**i channels at stride 4 * 2**i.
    assert [tuple(f.shape) for f in feats] == [
        (1, width * 2**i, 128 // s, 96 // s) for i, s in enumerate(STRIDES)
    ]
    assert model.feature_info == [
        {"num_chs": width * 2**i, "reduction": s} for i, s in enumerate(STRIDES)
    ]
    _assert_features_match_info(feats, model.feature_info, (128, 96))


def test_scratch_hrnet_input_not_multiple_of_32():
    model = HighResolutionNet(width=18).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 100, 70))
    # Every stride-2 3x3 conv (padding 1) rounds up: 100 -> 50 -> 25 -> 13 -> 7 -> 4.
    assert [tuple(f.shape[-2:]) for f in feats] == [(25, 18), (13, 9), (7, 5), (4, 3)]


def test_scratch_hrnet_single_scale_output_and_backward():
    model = HighResolutionNet(width=18, multi_scale_output=False).train()
    feats = model(torch.randn(1, 3, 64, 64))
    assert len(feats) == 1 and tuple(feats[0].shape) == (1, 18, 16, 16)
    assert model.feature_info == [{"num_chs": 18, "reduction": 4}]
    feats[0].square().mean().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("width", "expected_millions"),
    [(32, 28.5), (48, 63.6)],  # Sun et al. 2019, Table 1 (pose network incl. 1x1 head)
)
def test_scratch_hrnet_parameter_count_matches_paper(width, expected_millions):
    # The paper's pose network keeps only the stride-4 branch in the last module, followed by a
    # 1x1 conv to 17 COCO keypoint heatmaps.
    backbone = HighResolutionNet(width=width, multi_scale_output=False)
    head = nn.Conv2d(width, 17, 1)
    count = _num_params(backbone) + _num_params(head)
    assert abs(count / 1e6 - expected_millions) / expected_millions < 0.01, count


# --------------------------------------------------------------------------- timm wrapper


@pytest.mark.parametrize(
    ("model_name", "kwargs", "channels"),
    [
        ("hrnet_w32", {"feature_location": ""}, [32, 64, 128, 256]),
        ("resnet50", {}, [256, 512, 1024, 2048]),
    ],
)
def test_timm_backbone_shapes(model_name, kwargs, channels):
    model = TimmBackbone(model_name, **kwargs).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 128, 96))
    assert isinstance(feats, list)
    assert model.feature_info == [
        {"num_chs": c, "reduction": s} for c, s in zip(channels, STRIDES)
    ]
    _assert_features_match_info(feats, model.feature_info, (128, 96))


def test_timm_backbone_pretrained_without_hub_fails_fast():
    try:
        TimmBackbone("resnet18", pretrained=True)
    except FileNotFoundError as err:  # looked up in the local HF cache only
        message = str(err)
        assert "resnet18" in message and "no hub access" in message
        assert "local weights file" in message
    else:
        pytest.skip("resnet18 weights are in the local HF cache; nothing to fail on")


# --------------------------------------------------------------------------- weight mapping


def _calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> None:
    """Sets every BN's running stats to the statistics of one batch.

    Randomly initialised deep ReLU nets in eval mode with default running stats (mean 0, var 1)
    blow activations up to ~1e8, where float32 rounding alone exceeds 1e-4. Calibrated stats keep
    them O(1), and the running stats then also take part in the comparison.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, exactly its statistics
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


@pytest.mark.parametrize("width", [18, 32, 48])
def test_timm_hrnet_weights_load_and_outputs_match(width):
    reference = timm.create_model(
        f"hrnet_w{width}", features_only=True, feature_location="", out_indices=(1, 2, 3, 4)
    )
    _calibrate_batchnorm(reference, torch.randn(4, 3, 64, 64))

    model = HighResolutionNet(width=width)
    report = load_timm_hrnet_state_dict(model, reference.state_dict())
    assert report.missing_keys == [] and report.unexpected_keys == []
    model.eval()

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x)
        actual = model(x)
    assert len(actual) == len(expected) == 4
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert e.abs().max() > 0.1  # activations are O(1), so 1e-4 is a meaningful bound
        assert (a - e).abs().max().item() <= 1e-4


def test_scratch_hrnet_trains_like_timm():
    """Training mode (batch statistics) and backward: the fusion's in-place sums change no gradient."""
    torch.manual_seed(0)
    reference = timm.create_model("hrnet_w18", features_only=True, feature_location="", out_indices=(1, 2, 3, 4))
    model = HighResolutionNet(width=18)
    load_timm_hrnet_state_dict(model, reference.state_dict())
    reference.double().train(), model.double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    grads, losses = [], []
    for net in (reference, model):
        image = x.clone().requires_grad_()
        loss = sum(f.pow(2).mean() for f in net(image))
        loss.backward()
        losses.append(loss.detach())
        grads.append(image.grad)
    assert torch.allclose(losses[0], losses[1], rtol=1e-12)
    assert torch.linalg.vector_norm(grads[0]) > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)


def test_load_full_timm_hrnet_drops_only_head_keys():
    full = timm.create_model("hrnet_w18")  # classification model: has the V2 head
    model = HighResolutionNet(width=18)
    report = load_timm_hrnet_state_dict(model, full.state_dict())
    prefixes = {key.split(".")[0] for key in report.dropped_keys}
    assert prefixes == {"incre_modules", "downsamp_modules", "final_layer", "classifier"}
    assert torch.equal(
        model.stage4[2].fuse_layers[3][0][2][0].weight,
        full.state_dict()["stage4.2.fuse_layers.3.0.2.0.weight"],
    )


def test_load_mismatched_state_dict_reports_keys():
    state = HighResolutionNet(width=18).state_dict()
    state.pop("stage2.0.branches.0.0.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    model = HighResolutionNet(width=18)
    with pytest.raises(RuntimeError, match="1 missing keys"):
        load_timm_hrnet_state_dict(model, state)
    report = load_timm_hrnet_state_dict(model, state, strict=False)
    assert report.missing_keys == ["stage2.0.branches.0.0.conv1.weight"]
    assert report.unexpected_keys == ["extra.weight"]


# --------------------------------------------------------------------------- heads

FEATURE_INFO = [{"num_chs": 32, "reduction": 4}, {"num_chs": 64, "reduction": 8}]


def _features(batch=2, h=32, w=24):
    return [torch.randn(batch, 32, h, w), torch.randn(batch, 64, h // 2, w // 2)]


def test_heatmap_head_shape_and_stride():
    head = HeatmapHead(FEATURE_INFO, num_outputs=17)
    assert head.stride == 4
    out = head(_features())
    assert tuple(out.shape) == (2, 17, 32, 24)
    assert head.conv.out_channels == 32  # hidden_channels=None: the feature's channels
    assert torch.all(head.final.bias == 0)
    assert 0.0005 < head.final.weight.std().item() < 0.002


def test_heatmap_head_hidden_channels_and_kernel():
    head = HeatmapHead(FEATURE_INFO, num_outputs=5, hidden_channels=16, kernel_size=1)
    assert head.conv.weight.shape == (16, 32, 1, 1)
    assert tuple(head(_features()).shape) == (2, 5, 32, 24)


def test_heatmap_head_upsample_to_input():
    head = HeatmapHead(FEATURE_INFO, num_outputs=3, upsample_to_input=True).eval()
    assert head.stride == 1
    feats = _features(batch=1)
    with torch.no_grad():
        out = head(feats)
        head.upsample_to_input = False
        low = head(feats)
    assert tuple(out.shape) == (1, 3, 128, 96)
    # Half-pixel convention: input pixel x sits at heatmap coordinate u = (x + 0.5) / 4 - 0.5.
    x = np.arange(96)
    u = np.clip((x + 0.5) / 4 - 0.5, 0, 23)
    row = 50  # v = 12.125: interpolate between low-res rows 12 and 13
    v = (row + 0.5) / 4 - 0.5
    low_np = low[0, 1].numpy()
    low_row = (1 - (v - 12)) * low_np[12] + (v - 12) * low_np[13]
    expected = np.interp(u, np.arange(24), low_row)
    np.testing.assert_allclose(out[0, 1, row].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize(
    ("feature_info", "match"),
    [
        ([], "empty"),
        (None, "list of dicts"),
        ([32], r"feature_info\[0\] must be a dict"),
        ([{"num_chs": 32}], r"feature_info\[0\]\['reduction'\]"),
        ([{"num_chs": 0, "reduction": 4}], r"\['num_chs'\] must be a positive int"),
        (list(reversed(FEATURE_INFO)), "highest resolution first"),
    ],
)
def test_heatmap_head_rejects_bad_feature_info(feature_info, match):
    with pytest.raises(ValueError, match=match):
        HeatmapHead(feature_info, num_outputs=3)


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_model_config_instantiates_and_runs(path, compose_cfg):
    # composed as train.py does: some model configs pull in others or choose their head
    model = hydra.utils.instantiate(compose_cfg([f"model={path.stem}"]).model).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [info["reduction"] for info in model.feature_info] == STRIDES
    _assert_features_match_info(feats, model.feature_info, (64, 64))
    head = HeatmapHead(model.feature_info, num_outputs=4)
    with torch.no_grad():
        assert tuple(head(feats).shape) == (1, 4, 16, 16)


def test_all_model_configs_present():
    names = {p.stem for p in CONF_DIR.glob("*.yaml")}
    assert {"hrnet_w18", "hrnet_w32", "hrnet_w48", "timm_hrnet_w32", "timm_resnet50"} <= names
