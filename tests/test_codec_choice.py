"""Choosing the codec (`task/codec=...`): each option composes its codec with the loss (and head) it needs,
builds a model whose head has the codec's channels, trains a step, and decodes to original pixels; the
default is today's Gaussian heatmaps; a flip test is refused for codecs that cannot flip."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import get_class

from hrexp.errors import ConfigError
from hrexp.training.build import build_datamodule, build_module
from tests.fit_helpers import TINY_W18

CHOICES = {  # codec -> (codec class, loss class, head class)
    "gaussian": ("hrexp.codecs.heatmap.GaussianHeatmapCodec", "hrexp.losses.heatmap_mse.WeightedHeatmapMSE",
                 "hrexp.models.heads.HeatmapHead"),
    "udp": ("hrexp.codecs.udp.UDPHeatmapCodec", "hrexp.losses.heatmap_mse.WeightedHeatmapMSE",
            "hrexp.models.heads.HeatmapHead"),
    "offset": ("hrexp.codecs.offset.OffsetHeatmapCodec", "hrexp.losses.offset.OffsetHeatmapLoss",
               "hrexp.models.heads.HeatmapHead"),
    "integral": ("hrexp.codecs.integral.IntegralRegressionCodec", "hrexp.losses.integral.IntegralRegressionLoss",
                 "hrexp.models.heads.HeatmapHead"),
    "simcc": ("hrexp.codecs.simcc.SimCCCodec", "hrexp.losses.simcc.SimCCLoss", "hrexp.models.simcc_head.SimCCHead"),
}


def test_the_default_is_gaussian_heatmaps_with_the_heatmap_mse(compose_cfg):
    for task in ("landmarks", "pose"):
        cfg = compose_cfg([f"task={task}"])
        assert cfg.task.codec._target_ == CHOICES["gaussian"][0] and cfg.task.codec.sigma == 2.0
        assert cfg.task.codec.refine == "dark" and cfg.task.loss._target_ == CHOICES["gaussian"][1]


@pytest.mark.parametrize("codec", list(CHOICES))
def test_each_codec_builds_trains_a_step_and_decodes_to_original_pixels(compose_cfg, codec):
    cfg = compose_cfg([*TINY_W18, f"task/codec={codec}"])
    codec_class, loss_class, head_class = CHOICES[codec]
    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, datamodule)
    task = module.task
    assert isinstance(task.codec, get_class(codec_class)) and isinstance(task.loss_fn, get_class(loss_class))
    assert isinstance(task.head, get_class(head_class))
    batch = next(iter(datamodule.train_dataloader()))
    outputs = module(batch["image"])
    k = datamodule.num_keypoints
    if codec == "simcc":
        assert outputs["x"].shape == (4, k, 32 * 2) and outputs["y"].shape == (4, k, 64 * 2)
    else:
        assert outputs.shape[1] == (3 * k if codec == "offset" else k)
    loss = task.loss(outputs, batch)
    loss.backward()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.head.parameters())
    preds = task.predict(outputs, batch)
    # keypoints in input pixels map to original pixels through the batch's own affine
    assert preds["keypoints"].shape == (4, k, 2)
    back = torch.einsum("bij,bkj->bki", batch["matrix"].float()[:, :2, :2], preds["keypoints"]) + batch["matrix"].float()[:, None, :2, 2]
    assert torch.allclose(back, preds["keypoints_input"], atol=1e-3)


@pytest.mark.parametrize("codec", ["gaussian", "udp", "offset"])
def test_the_codecs_own_targets_as_outputs_give_zero_loss_and_the_truth_back(compose_cfg, codec):
    """A network that outputs exactly the encoded targets is perfect: loss 0 and keypoints within 0.1 px."""
    # a heatmap large enough that the Gaussians are not cut by its border (which biases any decoding)
    cfg = compose_cfg([*TINY_W18, f"task/codec={codec}", "data.image_size=[256,128]", "data.original_size=[256,128]"])
    datamodule = build_datamodule(cfg.data)
    task = build_module(cfg, datamodule).task
    batch = next(iter(datamodule.train_dataloader()))
    h, w = (s // 4 for s in batch["image"].shape[-2:])
    targets, _ = task.codec.encode(batch["keypoints"], batch["visible"], heatmap_size=(h, w), stride=4.0)
    if isinstance(targets, dict):
        targets = torch.cat([targets["heatmaps"], *([targets["offsets"]] if "offsets" in targets else [])], dim=1)
    assert float(task.loss(targets, batch)) == pytest.approx(0.0, abs=1e-9)
    preds = task.predict(targets, batch)
    # keypoints whose Gaussian (3 sigma = 24 px) lies inside the input: a cut one biases any decoding
    x, y = batch["keypoints"][..., 0], batch["keypoints"][..., 1]
    inside = (batch["visible"] > 0) & (x >= 24) & (x <= 128 - 25) & (y >= 24) & (y <= 256 - 25)
    assert int(inside.sum()) > 50
    error = (preds["keypoints_input"] - batch["keypoints"]).norm(dim=-1)[inside]
    assert float(error.max()) < 0.1


def test_head_override_on_the_command_line_still_wins(compose_cfg):
    cfg = compose_cfg([*TINY_W18, "task/codec=offset", "head=hrnetv2"])
    module = build_module(cfg, build_datamodule(cfg.data))
    assert type(module.task.head).__name__ == "HRNetV2Head"
    assert module(torch.zeros(1, 3, 64, 32)).shape == (1, 3 * 40, 16, 8)


def test_a_flip_test_is_refused_for_a_codec_that_cannot_flip(compose_cfg):
    cfg = compose_cfg([*TINY_W18, "task/codec=offset", "task.flip_test=true"])
    with pytest.raises(ConfigError, match="task.flip_test=true but the codec OffsetHeatmapCodec has no flip test"):
        build_module(cfg, build_datamodule(cfg.data))
