"""The result scripts' runs compose to what their rows name, with the overrides each script passes. CI's smoke
runs train only the rows whose structure is special (ceph_table: gaussian, progressive, ensemble3; spine_table:
hrnet_w32, its refined row, the ceph recipe), so the other rows are checked here, without training: the
model, the codec and the loss (each instantiated) and the input size."""

from __future__ import annotations

import sys

import pytest
from hydra.utils import instantiate

from tests.helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import ceph_table  # noqa: E402  (scripts/ is not a package)
import spine_table  # noqa: E402

CEPH = {  # recipe -> (codec, loss, input) its row names
    "gaussian": ("GaussianHeatmapCodec", "WeightedHeatmapMSE", [384, 320]),
    "udp": ("UDPHeatmapCodec", "WeightedHeatmapMSE", [384, 320]),
    "adaptive": ("AdaptiveGaussianCodec", None, [384, 320]),
    "adaptive_wing": ("GaussianHeatmapCodec", "AdaptiveWingLoss", [384, 320]),
    "hires_w18": ("GaussianHeatmapCodec", "WeightedHeatmapMSE", [512, 416]),
    "progressive": ("GaussianHeatmapCodec", "WeightedHeatmapMSE", [512, 416]),
    "ensemble3": ("GaussianHeatmapCodec", "WeightedHeatmapMSE", [384, 320]),
}


@pytest.mark.parametrize("recipe", list(ceph_table.RECIPES))
def test_every_ceph_recipe_composes_to_its_codec_loss_and_input(compose_cfg, recipe):
    cfg = compose_cfg([f"experiment={ceph_table.EXPERIMENT}", *ceph_table.RECIPES[recipe], *ceph_table.CPU])
    codec, loss, size = CEPH[recipe]
    assert type(instantiate(cfg.task.codec)).__name__ == codec
    if loss is not None:
        assert type(instantiate(cfg.task.loss)).__name__ == loss
    assert list(cfg.data.image_size) == size and cfg.model.width == 18 and cfg.task.num_keypoints == 19
    assert cfg.trainer.precision == "auto" and cfg.data.num_workers == 0


SPINE = {"unet": "hrexp.models.unet.UNet", "resnet50": "resnet50", "hrnet_w32": "hrexp.models.hrnet.HighResolutionNet"}


@pytest.mark.parametrize("model", list(SPINE))
def test_every_spine_model_composes_to_its_network_in_fp32(compose_cfg, model):
    cfg = compose_cfg([f"experiment=spine_{model}", *spine_table.FP32, *spine_table.REDUCED])
    target = str(cfg.model.get("_target_", "")) + " " + str(cfg.model.get("model_name", cfg.model.get("name", "")))
    assert SPINE[model] in target, target
    assert list(cfg.data.image_size) == [512, 192] and cfg.trainer.precision == 32
    assert cfg.speed.channels_last is False and cfg.data.batch_size == 4
