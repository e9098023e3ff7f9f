"""The pose task's own path (crop, encode, decode, un-crop, evaluate), the flip test and config checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrexp.codecs.heatmap import GaussianHeatmapCodec
from hrexp.data.images import load_image
from hrexp.data.pose.datamodule import CocoPoseDataModule
from hrexp.data.pose.topdown import TopDownParams
from hrexp.losses.heatmap_mse import WeightedHeatmapMSE
from hrexp.models.heads import HeatmapHead
from hrexp.tasks.pose import PoseTask
from hrexp.errors import ConfigError
from hrexp.training.build import build_datamodule, build_module
from tests.helpers import shared_path

FEATURES = [{"num_chs": 8, "reduction": 4}]
STRIDE = 4.0


@pytest.fixture(scope="module")
def coco_dm() -> CocoPoseDataModule:
    root = shared_path("pose_coco_samples", "coco")
    dm = CocoPoseDataModule(train_json=root / "test_coco.json", val_json=root / "test_coco.json", metadata="coco_person",
                        image_size=(256, 192), batch_size=12)
    dm.setup()
    return dm


def _task(meta, **kw) -> PoseTask:
    return PoseTask(lambda **k: HeatmapHead(**k), GaussianHeatmapCodec(2.0, refine="dark"), WeightedHeatmapMSE(),
                    FEATURES, meta, **kw)


def _flipped_batch(dm: CocoPoseDataModule) -> dict[str, torch.Tensor]:
    """The same crops, each horizontally flipped by the transform (as the flip test sees them)."""
    ds = dm.datasets["val"]
    items = []
    for inst in ds.split.instances:
        items.append(ds.transform(load_image(inst.image_path), inst.keypoints, inst.visible, inst.bbox,
                                  params=TopDownParams(flip=True)))
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def _ground_truth_heatmaps(task: PoseTask, batch) -> torch.Tensor:
    heatmaps, _ = task.codec.encode(batch["keypoints"], batch["visible"], (64, 48), stride=STRIDE)
    return heatmaps


def test_ground_truth_through_the_projects_path_gives_ap_one(coco_dm):
    """Crop (dataset) -> encode (codec) -> decode + un-crop (task.predict) -> OKS AP (metric) == 1."""
    task = _task(coco_dm.dataset_meta, flip_test=False)
    batch = next(iter(coco_dm.val_dataloader()))
    task.on_eval_epoch_start("val", coco_dm.datasets["val"])
    preds = task.predict(_ground_truth_heatmaps(task, batch), batch)
    # un-cropped predictions land on the annotations: to float precision, except within ~3 sigma of
    # the heatmap border, where DARK's blur is biased (test_codec.py), still under a pixel
    vis = batch["visible_orig"].bool()
    err = (preds["keypoints"] - batch["keypoints_orig"]).norm(dim=-1)[vis]
    assert err.median() < 1e-3 and err.max() < 1.0
    task.update_metrics("val", preds, batch)
    metrics = task.compute_metrics("val")
    assert metrics["val/AP"] == 1.0 and metrics["val/AR"] == 1.0
    assert metrics["val/AP50"] == 1.0 and metrics["val/AP75"] == 1.0


def test_flip_back_is_exact_in_the_pixel_centre_convention_and_the_classic_shift_is_not(coco_dm):
    batch = next(iter(coco_dm.val_dataloader()))
    flipped = _flipped_batch(coco_dm)
    task = _task(coco_dm.dataset_meta, flip_test=True)
    plain_maps = _ground_truth_heatmaps(task, batch)
    flipped_maps = _ground_truth_heatmaps(task, flipped)
    # Heatmaps of the flipped crop, flipped back with the pairs swapped, ARE the plain heatmaps.
    torch.testing.assert_close(task.flip_back(flipped_maps), plain_maps, atol=1e-5, rtol=0)
    plain = task.predict(plain_maps, batch)
    averaged = task.predict(plain_maps, batch, flipped_outputs=flipped_maps)
    vis = batch["visible"].bool()
    assert (averaged["keypoints"] - plain["keypoints"]).norm(dim=-1)[vis].max() < 0.01

    # The classic one-pixel shift moves the average half a heatmap pixel (2 input px) to the right.
    shifted = _task(coco_dm.dataset_meta, flip_test=True, flip_shift=True)
    moved = shifted.predict(plain_maps, batch, flipped_outputs=flipped_maps)["keypoints_input"]
    dx = (moved - plain["keypoints_input"])[..., 0][vis]
    assert dx.median() == pytest.approx(0.5 * STRIDE, abs=0.25)

    # ... and through the whole path the unshifted flip test keeps AP at 1.
    task.on_eval_epoch_start("val", coco_dm.datasets["val"])
    task.update_metrics("val", averaged, batch)
    assert task.compute_metrics("val")["val/AP"] == 1.0


def test_pose_task_checks_the_metadata(coco_dm):
    meta = coco_dm.dataset_meta
    with pytest.raises(ValueError, match="2 sigmas for 17 keypoints"):
        _task({**meta, "sigmas": [0.1, 0.1]})
    with pytest.raises(ValueError, match="task.num_keypoints=5: the head would have 5 outputs, but the data defines 17"):
        _task(meta, num_keypoints=5)
    with pytest.raises(ValueError, match="task.flip_test=true but the data defines no flip pairs"):
        _task({**meta, "flip_pairs": []}, flip_test=True)
    task = _task(meta)
    assert task.head.final.out_channels == 17
    with pytest.raises(RuntimeError, match="has no 'ground_truth'"):
        task.on_eval_epoch_start("val", object())


def test_config_errors_surface_before_training(compose_cfg):
    root = shared_path("pose_coco_samples", "coco")
    base = ["task=pose", "data=coco_pose_samples", f"paths.shared_data={root.parent.parent}", "model=hrnet_w18"]
    cfg = compose_cfg([*base, "task.num_keypoints=5"])
    dm = build_datamodule(cfg.data)
    with pytest.raises(ConfigError, match="task.num_keypoints=5"):
        build_module(cfg, dm)
    # no metadata file: the sample file's category has names but no OKS sigmas
    cfg = compose_cfg([*base, "data.metadata=null", "task.flip_test=false"])
    with pytest.raises(ConfigError, match="needs one OKS sigma per keypoint"):
        build_module(cfg, build_datamodule(cfg.data))


def test_dark_beats_the_quarter_rule_on_the_pose_heatmap_grid():
    """Sub-pixel peaks on the 64 x 48 grid with sigma 2 (the pose setting): DARK is far closer."""
    rng = np.random.default_rng(0)
    n = 200
    kpts = torch.tensor(np.stack([rng.uniform(40, 150, n), rng.uniform(40, 210, n)], -1), dtype=torch.float64)[None]
    errors = {}
    for refine in ("dark", "quarter"):
        codec = GaussianHeatmapCodec(2.0, refine=refine)
        maps, _ = codec.encode(kpts, torch.ones(1, n), (64, 48), stride=STRIDE)
        decoded, _ = codec.decode(maps, stride=STRIDE)
        errors[refine] = (decoded - kpts).norm(dim=-1).mean().item()
    assert errors["dark"] < 0.05 < 0.5 < errors["quarter"]
