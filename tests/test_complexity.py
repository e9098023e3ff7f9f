"""Parameter and multiply-add counts: hand-computed layers, the HRNet paper's figures, the table script."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hrexp.models.complexity import count_macs, count_parameters
from hrexp.models.hrnet import HighResolutionNet


def test_macs_of_one_conv_match_hand_computation():
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    # every output element: 3 * 3 * 3 multiply-adds; 8 x 16 x 12 outputs
    assert count_macs(conv, (1, 3, 16, 12)) == 3 * 3 * 3 * 8 * 16 * 12
    linear = nn.Linear(10, 4)
    assert count_macs(linear, (2, 10)) == 2 * 10 * 4


def test_meta_device_count_equals_a_real_forward_and_leaves_the_module_as_it_was():
    from hrexp.models.complexity import _count, _meta_copy

    model = _PoseHRNet(18).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = _count(model, torch.zeros(1, 3, 64, 48))
    copy = _meta_copy(model)
    assert {t.device.type for t in [*copy.parameters(), *copy.buffers()]} == {"meta"}
    assert _count(copy, torch.zeros(1, 3, 64, 48, device="meta")) == real
    assert count_macs(model, (1, 3, 64, 48)) == real
    assert model.training
    after = model.state_dict()
    assert all(after[k].device.type == "cpu" and torch.equal(after[k], v) for k, v in before.items())


class _DataDependent(nn.Module):
    """A forward that reads a value (no meta kernel can): the count falls back to a real forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1, bias=False)

    def forward(self, x):
        y = self.conv(x)
        return y * float(y.abs().sum().item() >= 0)


def test_a_module_that_cannot_run_on_meta_is_counted_by_a_real_forward():
    assert count_macs(_DataDependent(), (1, 3, 8, 8)) == 3 * 4 * 8 * 8


class _PoseHRNet(nn.Module):
    """The paper's pose network: the 1/4 branch only, then a 1x1 conv to 17 heatmaps."""

    def __init__(self, width: int):
        super().__init__()
        self.backbone = HighResolutionNet(width=width, multi_scale_output=False)
        self.final_layer = nn.Conv2d(width, 17, 1)

    def forward(self, x):
        return self.final_layer(self.backbone(x)[0])


def test_hrnet_w32_pose_compute_matches_paper():
    # Sun et al. 2019, Table 1: HRNet-W32, 256x192 input, 7.1 GFLOPs, 28.5M params. Those "GFLOPs"
    # are multiply-adds of conv/linear layers divided by 1024**3 (the official model summary's
    # unit; HRNet-Semantic-Segmentation issue #262): 7.645e9 multiply-adds = 7.12 "G".
    model = _PoseHRNet(32)
    macs = count_macs(model, (1, 3, 256, 192))
    assert macs / 1024**3 == pytest.approx(7.1, rel=0.05)
    assert macs / 1e9 == pytest.approx(7.645, rel=0.01)
    assert count_parameters(model) / 1e6 == pytest.approx(28.5, rel=0.01)


def test_model_table_lists_every_config_with_measured_numbers(tmp_path):
    from hrexp.reports.model_table import END, START, main

    table = main(["--models", "hrnet_w18", "timm_resnet50", "resnet50", "--size", "64", "64"])
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `")}
    assert set(rows) == {"hrnet_w18", "timm_resnet50", "resnet50"}
    from hrexp.models.heads import HeatmapHead

    w18 = HighResolutionNet(width=18)
    model = nn.Sequential()
    model.backbone, model.head = w18, HeatmapHead(w18.feature_info, num_outputs=17)
    model.forward = lambda x: model.head(model.backbone(x))
    expected = (f"| {count_parameters(w18) / 1e6:.2f} | {count_parameters(model) / 1e6:.2f} | "
                f"{count_macs(model, (1, 3, 64, 64)) / 1e9:.2f} |")
    assert expected in rows["hrnet_w18"]
    # a model config that picks its own head is measured with it
    assert "| resnet50 | DeconvHead |" in rows["resnet50"] and "| resnet50 | HeatmapHead |" in rows["timm_resnet50"]
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\nrest\n")
    main(["--models", "hrnet_w18", "--size", "64", "64", "--readme", str(readme)])
    text = readme.read_text()
    assert "old" not in text and "hrnet_w18" in text and text.startswith("intro") and text.endswith("rest\n")


def test_hrnetv2_w48_segmentation_parameters():
    # HRNetV2-W48 with the concatenating head and 19 classes (Cityscapes): 65.8M in Wang et al. 2020.
    from hrexp.models.heads import HRNetV2Head

    backbone = HighResolutionNet(width=48)
    head = HRNetV2Head(backbone.feature_info, num_outputs=19)
    total = count_parameters(backbone) + count_parameters(head)
    print(f"HRNetV2-W48 + 19-class head: {total / 1e6:.2f}M (published 65.8M)")
    assert total / 1e6 == pytest.approx(65.8, rel=0.01)
