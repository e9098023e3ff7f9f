"""Heads: HRNetV2Head, DeconvHead, and the fit checks shared with HeatmapHead."""

from __future__ import annotations

import hydra.utils
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from hrexp.startup import CONFIG_DIR
from hrexp.models.head_fit import check_head_fits
from hrexp.models.heads import DeconvHead, HRNetV2Head, HeatmapHead
from hrexp.models.hrnet import HighResolutionNet
from hrexp.models.timm_backbone import TimmBackbone
from hrexp.models.unet import UNet

HRNET_W32_INFO = [
    {"num_chs": 32, "reduction": 4},
    {"num_chs": 64, "reduction": 8},
    {"num_chs": 128, "reduction": 16},
    {"num_chs": 256, "reduction": 32},
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def hrnet_w32():
    return HighResolutionNet(width=32).eval()


# --------------------------------------------------------------------------- HRNetV2Head


def test_hrnetv2_head_on_scratch_hrnet_w32(hrnet_w32):
    head = HRNetV2Head(hrnet_w32.feature_info, num_outputs=7).eval()
    # HRNetV2: 32 + 64 + 128 + 256 channels concatenated at 1/4.
    assert head.conv.in_channels == 480
    assert head.conv.out_channels == 480  # hidden_channels=None: the concatenated width
    assert head.conv.kernel_size == (1, 1) and head.final.kernel_size == (1, 1)
    assert head.stride == 4
    with torch.no_grad():
        out = head(hrnet_w32(torch.randn(2, 3, 64, 96)))
    assert tuple(out.shape) == (2, 7, 16, 24)


def test_hrnetv2_head_matches_reference_computation():
    head = HRNetV2Head(HRNET_W32_INFO, num_outputs=5, hidden_channels=48)
    # Non-trivial BN statistics and output weights, so that every term is exercised.
    with torch.no_grad():
        head.bn.running_mean.normal_()
        head.bn.running_var.uniform_(0.5, 2.0)
        head.bn.weight.normal_()
        head.bn.bias.normal_()
        head.final.weight.normal_(std=0.1)
        head.final.bias.normal_()
    head.eval()
    h, w = 16, 24
    feats = [torch.randn(2, c["num_chs"], h * 4 // c["reduction"], w * 4 // c["reduction"])
             for c in HRNET_W32_INFO]

    ups = [feats[0]] + [
        F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False) for f in feats[1:]
    ]
    x = torch.cat(ups, dim=1)
    assert x.shape[1] == 480
    x = F.conv2d(x, head.conv.weight)
    x = F.batch_norm(
        x, head.bn.running_mean, head.bn.running_var, head.bn.weight, head.bn.bias,
        training=False, eps=head.bn.eps,
    )
    expected = F.conv2d(F.relu(x), head.final.weight, head.final.bias)

    with torch.no_grad():
        actual = head(feats)
    assert tuple(actual.shape) == (2, 5, h, w)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def test_hrnetv2_head_odd_input_and_upsample_to_input(hrnet_w32):
    x = torch.randn(1, 3, 100, 70)
    with torch.no_grad():
        feats = hrnet_w32(x)
        out = HRNetV2Head(hrnet_w32.feature_info, num_outputs=3).eval()(feats)
        full = HRNetV2Head(hrnet_w32.feature_info, 3, upsample_to_input=True).eval()(feats)
    # Branch sizes are ceil(100 / s) x ceil(70 / s); the head predicts on the finest one.
    assert tuple(out.shape) == (1, 3, 25, 18)
    assert tuple(full.shape) == (1, 3, 100, 72)


def test_hrnetv2_head_on_unet_config_features():
    cfg = OmegaConf.load(CONFIG_DIR / "model" / "unet.yaml")
    cfg.base_width = 4  # the config's layout, narrower: fast
    backbone = hydra.utils.instantiate(cfg).eval()
    head = HRNetV2Head(backbone.feature_info, num_outputs=2).eval()
    assert head.conv.in_channels == 16 + 32 + 64 + 128
    with torch.no_grad():
        assert tuple(head(backbone(torch.randn(1, 3, 64, 64))).shape) == (1, 2, 16, 16)


@pytest.mark.parametrize(
    ("feature_info", "match"),
    [
        (
            [{"num_chs": 32, "reduction": 4}],
            r"strides \[4\], channels \[32\]\): it needs at least 2 features, got 1",
        ),
        (
            [{"num_chs": 32, "reduction": 4}, {"num_chs": 64, "reduction": 4}],
            r"strides \[4, 4\], channels \[32, 64\].*strictly increase",
        ),
        (
            [{"num_chs": 32, "reduction": 4}, {"num_chs": 64, "reduction": 12}],
            r"strides \[4, 12\].*power of two",
        ),
        (list(reversed(HRNET_W32_INFO)), r"strides \[32, 16, 8, 4\].*highest resolution first"),
        ([], r"strides \[\], channels \[\]\): feature_info is empty"),
    ],
)
def test_hrnetv2_head_misfit_names_head_and_features(feature_info, match):
    with pytest.raises(ValueError, match=match) as err:
        HRNetV2Head(feature_info, num_outputs=3)
    assert str(err.value).startswith("HRNetV2Head does not fit the backbone's features")


def test_head_rejects_features_it_was_not_built_for():
    head = HRNetV2Head(HRNET_W32_INFO, num_outputs=3)
    feats = [torch.randn(1, c, 4, 4) for c in (32, 64, 128)]  # one branch missing
    with pytest.raises(ValueError, match=r"HRNetV2Head was built for 4 features.*got 3"):
        head(feats)


# --------------------------------------------------------------------------- DeconvHead


@pytest.fixture(scope="module")
def resnet50():
    return TimmBackbone("resnet50").eval()


def test_deconv_head_on_resnet50(resnet50):
    assert [f["reduction"] for f in resnet50.feature_info] == [4, 8, 16, 32]
    head = DeconvHead(resnet50.feature_info, num_outputs=6).eval()
    deconvs = [m for m in head.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(deconvs) == 3
    assert deconvs[0].in_channels == 2048  # SimpleBaseline reads ResNet's last stage
    assert all(d.out_channels == 256 and d.kernel_size == (4, 4) for d in deconvs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in head.modules()) == 3
    assert head.final.kernel_size == (1, 1)
    assert head.stride == 4  # 32 / 2**3
    with torch.no_grad():
        out = head(resnet50(torch.randn(2, 3, 64, 96)))
    assert tuple(out.shape) == (2, 6, 16, 24)


@pytest.mark.parametrize(("layers", "kernel", "stride"), [(2, 4, 8), (1, 3, 16), (3, 2, 4), (0, 4, 32)])
def test_deconv_head_stride_follows_layers(resnet50, layers, kernel, stride):
    head = DeconvHead(
        resnet50.feature_info, 2, num_deconv_layers=layers, deconv_channels=16,
        kernel_size=kernel, final_kernel=3,
    ).eval()
    assert head.stride == stride
    feats = [torch.randn(1, f["num_chs"], 64 // f["reduction"], 64 // f["reduction"])
             for f in resnet50.feature_info]
    with torch.no_grad():
        assert tuple(head(feats).shape) == (1, 2, 64 // stride, 64 // stride)


def test_deconv_head_refuses_output_stride_below_one():
    backbone = UNet(base_width=4, depth=2)  # features at strides 1, 2, 4
    with pytest.raises(ValueError) as err:
        DeconvHead(backbone.feature_info, num_outputs=3, num_deconv_layers=3)
    message = str(err.value)
    assert message.startswith("DeconvHead")
    assert "strides [1, 2, 4], channels [4, 8, 16]" in message
    assert "4 / 2**3 = 0.5" in message and "at most 2 deconv layers" in message
    # Two layers fit: back to full resolution.
    head = DeconvHead(backbone.feature_info, num_outputs=3, num_deconv_layers=2, deconv_channels=8)
    assert head.stride == 1
    with torch.no_grad():
        assert tuple(head.eval()(backbone.eval()(torch.randn(1, 3, 16, 16))).shape) == (1, 3, 16, 16)


def test_deconv_head_refuses_fractional_stride():
    with pytest.raises(ValueError, match=r"DeconvHead.*strides \[4, 12\].*12 / 2\*\*3 = 1\.5"):
        DeconvHead([{"num_chs": 8, "reduction": 4}, {"num_chs": 8, "reduction": 12}], 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel_size": 5}, "kernel_size must be one of"),
        ({"final_kernel": 2}, "final_kernel must be a positive odd number"),
        ({"num_deconv_layers": -1}, "num_deconv_layers must be >= 0"),
        ({"num_outputs": 0}, "num_outputs must be positive"),
    ],
)
def test_deconv_head_rejects_bad_arguments(kwargs, match):
    kwargs = {"num_outputs": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        DeconvHead(HRNET_W32_INFO, **kwargs)


# --------------------------------------------------------------------------- HeatmapHead, shared


@pytest.mark.parametrize(
    ("feature_info", "match"),
    [
        ([], r"strides \[\], channels \[\]\): feature_info is empty"),
        ([{"num_chs": 64, "reduction": 8}, {"num_chs": 32, "reduction": 4}],
         r"strides \[8, 4\], channels \[64, 32\]\): .*highest resolution first"),
        ([{"num_chs": 32}], r"feature_info \[\{'num_chs': 32\}\]\): feature_info\[0\]\['reduction'\]"),
    ],
)
def test_heatmap_head_misfit_names_head_and_features(feature_info, match):
    with pytest.raises(ValueError, match=match) as err:
        HeatmapHead(feature_info, num_outputs=3)
    assert str(err.value).startswith("HeatmapHead does not fit the backbone's features")


def test_check_head_fits_returns_plain_dicts_from_a_config():
    info = OmegaConf.create(HRNET_W32_INFO)  # what a Hydra-built task would pass
    fitted = check_head_fits("MyHead", info, min_features=4, strictly_increasing=True,
                             power_of_two_strides=True)
    assert fitted == HRNET_W32_INFO and all(type(f) is dict for f in fitted)
    with pytest.raises(ValueError, match=r"^MyHead does not fit .*at least 5 features, got 4"):
        check_head_fits("MyHead", info, min_features=5)


@pytest.mark.parametrize(
    "head_cfg",
    [
        {"_target_": "hrexp.models.heads.HeatmapHead"},
        {"_target_": "hrexp.models.heads.HRNetV2Head", "hidden_channels": 16},
        {"_target_": "hrexp.models.heads.DeconvHead", "num_deconv_layers": 2, "deconv_channels": 16},
    ],
    ids=lambda c: c["_target_"].rsplit(".", 1)[-1],
)
def test_heads_build_from_a_hydra_partial_like_the_task(head_cfg):
    # LandmarkTask calls head(feature_info=backbone.feature_info, num_outputs=K).
    partial = hydra.utils.instantiate(OmegaConf.create({**head_cfg, "_partial_": True}))
    backbone = UNet(base_width=4, depth=3, min_stride=2).eval()
    head = partial(feature_info=backbone.feature_info, num_outputs=5).eval()
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        out = head(backbone(x))
    assert tuple(out.shape) == (1, 5, 32 // head.stride, 48 // head.stride)


@pytest.mark.parametrize("head_cls", [HeatmapHead, HRNetV2Head, DeconvHead])
def test_under_bf16_autocast_the_output_conv_runs_in_float32_unless_switched_off(head_cls):
    """speed.float32_output: the output conv in float32 on the (bf16) hidden activations, by hand; off: all bf16."""
    from hrexp.training.speed import SpeedOptions

    torch.manual_seed(0)
    head = head_cls(HRNET_W32_INFO, num_outputs=5).eval()
    features = [torch.randn(1, info["num_chs"], 32 // info["reduction"] * 4, 32 // info["reduction"] * 4)
                for info in HRNET_W32_INFO]
    hidden = {}
    head.final.register_forward_pre_hook(lambda module, args: hidden.update(x=args[0]))
    SpeedOptions().apply(nn.Identity(), head)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(features)
    assert out.dtype == torch.float32 and hidden["x"].dtype == torch.float32
    expected = F.conv2d(hidden["x"], head.final.weight, head.final.bias, padding=head.final.padding)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    SpeedOptions(float32_output=False).apply(nn.Identity(), head)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(features).dtype == torch.bfloat16
