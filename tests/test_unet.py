"""UNet backbone: feature shapes vs feature_info, parameter counts by hand, the model config."""

from __future__ import annotations


import hydra.utils
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from hrexp.startup import CONFIG_DIR
from hrexp.models.heads import HeatmapHead
from hrexp.models.unet import UNet

CONFIG = CONFIG_DIR / "model" / "unet.yaml"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


from test_models import _assert_features_match_info, _num_params  # noqa: E402


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("bilinear", [True, False])
def test_decoder_features_highest_resolution_first(bilinear):
    model = UNet(base_width=8, depth=4, bilinear=bilinear).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    # Decoder outputs at strides 1, 2, 4, 8, then the bottleneck at 16; level l: 8 * 2**l channels.
    assert model.feature_info == [
        {"num_chs": 8 * 2**level, "reduction": 2**level} for level in range(5)
    ]
    assert [tuple(f.shape) for f in feats] == [
        (1, 8 * 2**level, 64 // 2**level, 64 // 2**level) for level in range(5)
    ]


def test_min_stride_stops_the_decoder_early():
    model = UNet(base_width=8, depth=4, min_stride=4).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16]
    assert [tuple(f.shape) for f in feats] == [(1, 32, 16, 16), (1, 64, 8, 8), (1, 128, 4, 4)]
    # Two decoder levels (8 -> 4 and 16 -> 8) are built; the stride-2 and stride-1 ones are not.
    assert len(model.up) == 2


@pytest.mark.parametrize("bilinear", [True, False])
def test_odd_input_sizes_give_ceil_sized_features(bilinear):
    model = UNet(base_width=4, depth=3, bilinear=bilinear).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 37, 50))
    _assert_features_match_info(feats, model.feature_info, (37, 50))


def test_head_on_finest_feature_trains_every_parameter():
    # Every returned feature lies on the path to features[0], so no parameter is unused (DDP).
    model = UNet(base_width=4, depth=3, min_stride=2).train()
    feats = model(torch.randn(2, 3, 32, 32))
    feats[0].square().mean().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    assert unused == []


def test_bilinear_reduction_commutes_with_upsampling():
    # Up.reduce (1x1 conv) runs before the bilinear x2 to save compute; the result must equal
    # the conventional order (upsample, then 1x1 conv), bias included.
    model = UNet(base_width=4, depth=1, bilinear=True)
    reduce = model.up[0].reduce
    nn.init.normal_(reduce.bias)
    x = torch.randn(1, 8, 5, 7)
    up = lambda t: F.interpolate(t, scale_factor=2.0, mode="bilinear", align_corners=False)  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(up(reduce(x)), reduce(up(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_stride": 3}, "min_stride must be a power of two"),
        ({"depth": 2, "min_stride": 8}, r"min_stride must be a power of two from 1 to 2\*\*depth = 4"),
        ({"depth": 0}, "depth must be a positive int"),
        ({"base_width": 0}, "base_width must be a positive int"),
        ({"norm": "layer"}, "norm must be one of"),
    ],
)
def test_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


# --------------------------------------------------------------------------- parameter counts


def _double_conv(c_in: int, c_out: int, norm: bool = True) -> int:
    # two 3x3 convs; with a norm: no conv bias, 2 * c_out BN parameters each; without: a bias each.
    per_layer_extra = 2 * c_out if norm else c_out
    return 9 * c_in * c_out + per_layer_extra + 9 * c_out * c_out + per_layer_extra


def test_parameter_count_tiny_bilinear_by_hand():
    # base 4, depth 2: levels of 4, 8, 16 channels.
    expected = (
        _double_conv(3, 4)  # level 0
        + _double_conv(4, 8)  # pool, level 1
        + _double_conv(8, 16)  # pool, level 2 (bottleneck)
        + (16 * 8 + 8) + _double_conv(8 + 8, 8)  # 1x1 conv 16 -> 8 (bias), cat skip, double conv
        + (8 * 4 + 4) + _double_conv(4 + 4, 4)  # 1x1 conv 8 -> 4 (bias), cat skip, double conv
    )
    assert _num_params(UNet(base_width=4, depth=2, bilinear=True)) == expected == 7064


def test_parameter_count_tiny_transposed_by_hand():
    expected = (
        _double_conv(3, 4)
        + _double_conv(4, 8)
        + _double_conv(8, 16)
        + (16 * 8 * 2 * 2 + 8) + _double_conv(16, 8)  # 2x2 transposed conv 16 -> 8 (bias)
        + (8 * 4 * 2 * 2 + 4) + _double_conv(8, 4)  # 2x2 transposed conv 8 -> 4 (bias)
    )
    assert _num_params(UNet(base_width=4, depth=2, bilinear=False)) == expected


def test_parameter_count_tiny_without_norm_and_min_stride_by_hand():
    # min_stride=2 drops the level-0 decoder step; norm="none" gives every 3x3 conv a bias.
    expected = (
        _double_conv(3, 4, norm=False)
        + _double_conv(4, 8, norm=False)
        + _double_conv(8, 16, norm=False)
        + (16 * 8 + 8) + _double_conv(16, 8, norm=False)
    )
    model = UNet(base_width=4, depth=2, norm="none", min_stride=2)
    assert _num_params(model) == expected


def test_parameter_count_defaults():
    # The paper's layout (base 64, depth 4, decoder to full resolution) with bilinear + 1x1 conv
    # up-sampling: 28.95 M; with the paper's 2x2 transposed convs: 31.04 M. (The often-quoted
    # "17 M bilinear U-Net" halves the bottleneck and decoder widths; this one does not.)
    assert _num_params(UNet()) == 28_948_608
    assert _num_params(UNet(bilinear=False)) == 31_037_568


# --------------------------------------------------------------------------- config


def test_config_instantiates_and_runs():
    cfg = OmegaConf.load(CONFIG)
    model = hydra.utils.instantiate(cfg).eval()
    assert isinstance(model, UNet)
    assert model.feature_info == [
        {"num_chs": 64, "reduction": 4},
        {"num_chs": 128, "reduction": 8},
        {"num_chs": 256, "reduction": 16},
        {"num_chs": 512, "reduction": 32},
    ]
    assert _num_params(model) == 7_217_456
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    _assert_features_match_info(feats, model.feature_info, (64, 64))
    head = HeatmapHead(model.feature_info, num_outputs=4)
    with torch.no_grad():
        assert tuple(head(feats).shape) == (1, 4, 16, 16)


def test_norm_as_hydra_partial():
    cfg = OmegaConf.create(
        {
            "_target_": "hrexp.models.unet.UNet",
            "base_width": 4,
            "depth": 2,
            "norm": {"_target_": "torch.nn.InstanceNorm2d", "_partial_": True, "affine": True},
        }
    )
    # The partial supplies the options, UNet the channels: norm(num_channels).
    model = hydra.utils.instantiate(cfg)
    assert any(isinstance(m, nn.InstanceNorm2d) for m in model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    feats = model(torch.randn(1, 3, 16, 16))
    assert tuple(feats[0].shape) == (1, 4, 16, 16)
