"""The refiner's conditioning channels (hrexp.refine.conditioning): Gaussians drawn where hand-computed, the
nearest other landmarks picked by hand, and the coarse-to-fine task handing them to the refiner in training
and at evaluation."""

from __future__ import annotations

import math

import pytest
import torch

from hrexp.errors import ConfigError
from hrexp.refine.conditioning import gaussian_maps, nearest_others
from tests.test_coarse_to_fine import built


def test_gaussian_maps_are_the_maximum_of_unit_gaussians_at_the_points():
    points = torch.tensor([[[2.0, 3.0], [6.0, 1.0]], [[float("nan"), 0.0], [4.0, 4.0]]])
    maps = gaussian_maps(points, 8, sigma=1.5)
    assert maps.shape == (2, 1, 8, 8)
    assert maps[0, 0, 3, 2] == pytest.approx(1.0) and maps[0, 0, 1, 6] == pytest.approx(1.0)  # (x, y) -> [y, x]
    # pixel (x=3, y=5): 1 px and 2 px from the first point, far from the second
    assert maps[0, 0, 5, 3] == pytest.approx(math.exp(-(1 + 4) / (2 * 1.5 ** 2)), rel=1e-5)
    # the NaN point draws nothing: the second map is the Gaussian at (4, 4) alone
    assert maps[1, 0, 4, 4] == pytest.approx(1.0) and maps[1, 0, 0, 0] == pytest.approx(math.exp(-32 / 4.5), rel=1e-4)
    assert gaussian_maps(torch.zeros(3, 0, 2), 4, 1.0).abs().sum() == 0


def test_nearest_others_leave_out_the_landmark_itself_and_the_unknown_ones():
    everyone = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [2.0, 0.0]]])  # landmarks 0..3 on a line
    present = torch.tensor([[True, True, True, False]])  # landmark 3 unknown
    centres = everyone[:, [0, 2]]  # patches of landmarks 0 and 2
    others = nearest_others(centres, torch.tensor([[0, 2]]), everyone, present, count=3)
    assert others.shape == (1, 2, 3, 2)
    assert others[0, 0, :2, 0].tolist() == [1.0, 5.0] and torch.isnan(others[0, 0, 2]).all()  # 3 is unknown
    assert others[0, 1, :2, 0].tolist() == [1.0, 0.0]


def test_the_refiner_sees_its_neighbours_where_stage_one_put_them(compose_cfg, monkeypatch):
    torch.manual_seed(0)  # the untrained stage 1's points depend on its initial weights
    cfg, datamodule, module = built(compose_cfg, ["task.refine.condition=[centre,neighbours]",
                                                  "task.refine.num_neighbours=2", "task.refine.neighbour_sigma=1.0"])
    assert cfg.task.refine.backbone.in_chans == 5  # 3 image channels + 2
    task = module.task.eval()
    batch = next(iter(datamodule.val_dataloader()))
    seen = {}

    def record(patches, landmark):
        seen["patches"], seen["landmark"] = patches, landmark
        return torch.zeros(len(patches), 1, 8, 8)

    cut = {}
    patches_of = task._patches

    def recording(batch, centres):
        cut["patches"], cut["origin"] = patches_of(batch, centres)
        return cut["patches"], cut["origin"]

    monkeypatch.setattr(task, "_patches", recording)
    monkeypatch.setattr(task.refiner, "forward", record)
    with torch.no_grad():
        preds = task.predict(module(batch["image"]), batch)
    patches = seen["patches"]
    b, k = preds["keypoints_coarse"].shape[:2]
    assert patches.shape == (b * k, 5, 32, 32)
    torch.testing.assert_close(patches[:, :3], cut["patches"].flatten(0, 1))  # the image channels untouched
    # the neighbours' channel peaks at the two nearest other landmarks' coarse points (patch px), where inside
    coarse = preds["keypoints_coarse"]
    s = batch["original_scale"].float()[:, None, None]
    in_patch = ((coarse + 0.5) * s - 0.5)[:, None] - cut["origin"][:, :, None]  # [B, K (patch), K (point), 2]
    distance = torch.cdist(coarse, coarse) + torch.eye(k) * 1e9
    checked = 0
    for i in range(b):
        for j in range(k):
            for other in distance[i, j].topk(2, largest=False).indices.tolist():
                x, y = in_patch[i, j, other].tolist()
                if 1 <= x <= 30 and 1 <= y <= 30:
                    value = patches[i * k + j, 4, round(y), round(x)]
                    assert value > math.exp(-1.0) - 1e-4, (i, j, other, float(value))
                    checked += 1
    assert checked > 20
    # the centre channel peaks at the patch's own stage-1 point
    own = in_patch[torch.arange(b)[:, None], torch.arange(k)[None, :], torch.arange(k)[None, :]].reshape(-1, 2)
    peaks = patches[:, 3].flatten(1).argmax(1)
    torch.testing.assert_close(torch.stack([peaks % 32, peaks // 32], 1).float(), own.round(), atol=1, rtol=0)
    # training draws the same channels from the jittered truth, and the refiner learns through them
    module.train()
    monkeypatch.undo()
    loss = module.task.loss(module(batch["image"]), batch)
    loss.backward()
    assert torch.isfinite(loss)
    first = next(m for m in module.task.refiner.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.weight.grad[:, 3:].abs().sum() > 0  # the conditioning channels reach the loss


def test_a_refiner_without_room_for_its_channels_is_refused_by_name(compose_cfg):
    with pytest.raises(ConfigError, match=r"condition=\['neighbours'\] gives the refiner 4 input channels .* "
                                          r"set task.refine.backbone.in_chans=4"):
        built(compose_cfg, ["task.refine.condition=[neighbours]", "task.refine.backbone.in_chans=3"])
    with pytest.raises(ConfigError, match=r"task.refine.condition=\['elbows'\]: expected distinct names"):
        built(compose_cfg, ["task.refine.condition=[elbows]"])
