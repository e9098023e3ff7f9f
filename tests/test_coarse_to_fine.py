"""Coarse-to-fine refinement: the patch geometry round trip (a perfect refiner recovers the truth from any
stage-1 error inside its patch), a training step through both stages, stage 1 started from a checkpoint
and frozen, the jitter read from the first stage's run, and eval rebuilding a refined checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hrexp.errors import ConfigError
from hrexp.training.build import build_datamodule, build_module
from hrexp.training.checkpoint_config import rebuild_config
from tests.fit_helpers import TINY_W18

# Patches of 32 px of the original (128x64) at native scale; 8 landmarks refined per training image.
REFINE = [*TINY_W18, "refine=native", "task.refine.patch_size=32", "task.refine.train_patches=8",
          "task.refine.jitter_px=4"]


def numpy_patch(image: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """``image[:, y0:y0 + size, x0:x0 + size]`` (``[C, H, W]``), zeros where the window leaves the image."""
    out = np.zeros((image.shape[0], size, size), image.dtype)
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y0 + size, image.shape[1]), min(x0 + size, image.shape[2])
    if top < bottom and left < right:
        out[:, top - y0:bottom - y0, left - x0:right - x0] = image[:, top:bottom, left:right]
    return out


def built(compose_cfg, overrides=()):
    cfg = compose_cfg([*REFINE, *overrides])
    datamodule = build_datamodule(cfg.data)
    return cfg, datamodule, build_module(cfg, datamodule)


def test_a_perfect_refiner_recovers_the_truth_from_any_coarse_error_inside_its_patch(compose_cfg, monkeypatch):
    # 64-px patches (16x16 maps) and a narrow Gaussian: the truth's heatmap is not cut by the patch border
    _, datamodule, module = built(compose_cfg, ["task.refine.scale=0.5", "task.refine.patch_size=64",
                                                "task.refine.codec.sigma=1.0"])
    task = module.task
    batch = next(iter(datamodule.val_dataloader()))
    truth = batch["keypoints_orig"].float()
    b, k, _ = truth.shape
    shift = torch.tensor([9.0, -7.0])  # stage 1 off by (9, -7) original px: inside a 32-px patch at scale 0.5
    coarse_input = torch.einsum("bij,bkj->bki", batch["matrix"].float()[:, :2, :2], truth + shift) \
        + batch["matrix"].float()[:, None, :2, 2]
    h, w = (s // 4 for s in batch["image"].shape[-2:])
    stage1, _ = task.codec.encode(coarse_input, torch.ones(b, k), heatmap_size=(h, w), stride=4.0)

    cut = {}
    patches_of = task._patches

    def recording(batch, centres):  # the patches and origins predict uses (around stage 1's decoded points)
        patches, origin = patches_of(batch, centres)
        cut["patches"], cut["origin"] = patches, origin
        return patches, origin

    def perfect(patches, landmark):
        # the heatmap of the truth inside each patch, measured from that patch's own origin
        s = batch["original_scale"].float()[:, None, None]
        target = ((truth + 0.5) * s - 0.5 - cut["origin"]).reshape(-1, 2)
        maps, _ = task.refiner.codec.encode(target[:, None], torch.ones(len(target), 1), heatmap_size=(16, 16),
                                            stride=4.0)
        return maps

    monkeypatch.setattr(task, "_patches", recording)
    monkeypatch.setattr(task.refiner, "forward", perfect)
    preds = task.predict(stage1, batch)
    coarse_error = (preds["keypoints_coarse"] - truth).norm(dim=-1)
    assert float(coarse_error.mean()) > 9  # stage 1 was off ...
    inside = (truth[..., 0] > 20) & (truth[..., 0] < 64 - 20) & (truth[..., 1] > 20) & (truth[..., 1] < 128 - 20)
    assert int(inside.sum()) > 10
    error = (preds["keypoints"] - truth).norm(dim=-1)[inside]
    assert float(error.max()) < 0.1  # ... the refined points are the truth (original px), through scale 0.5

    # The origins are stage 1's points (in the reduced original) less half a patch, on whole pixels ...
    origin = cut["origin"].numpy().astype(np.float64)
    scale = batch["original_scale"].numpy().astype(np.float64)[:, None, None]
    coarse = (preds["keypoints_coarse"].numpy().astype(np.float64) + 0.5) * scale - 0.5
    assert np.array_equal(origin, np.round(origin))
    off_centre = float(np.abs(origin + (64 - 1) / 2 - coarse).max())
    assert off_centre <= 0.5 + 1e-5, f"a patch centre is {off_centre:.3f} px from stage 1's point"
    # ... and each patch holds the original image's pixels from its origin on (zeros outside), normalised with
    # ImageNet's mean and std: a NumPy crop, not the grid_sample under test
    images = batch["original"].numpy().astype(np.float64)  # [B, 3, H, W], reduced by original_scale
    assert images.shape[-2:] == (64, 32)
    mean = np.array([0.485, 0.456, 0.406])[:, None, None] * 255
    std = np.array([0.229, 0.224, 0.225])[:, None, None] * 255
    patches = cut["patches"].numpy()
    assert patches.shape == (b, k, 3, 64, 64)

    def crops(dx: int = 0, dy: int = 0) -> np.ndarray:
        return np.stack([np.stack([numpy_patch((images[i] - mean) / std, int(x) + dx, int(y) + dy, 64)
                                   for x, y in origin[i]]) for i in range(b)])

    difference = float(np.abs(patches - crops()).max())
    assert difference < 1e-4, f"the patches differ from the image's pixels at their origins by up to {difference}"
    # (the images have texture enough that a crop one pixel off would differ)
    assert min(float(np.abs(patches - crops(dx=1)).max()), float(np.abs(patches - crops(dy=1)).max())) > 0.1


def test_a_training_step_moves_both_stages(compose_cfg):
    _, datamodule, module = built(compose_cfg)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["original"].dtype == torch.uint8 and batch["original"].shape[-2:] == (128, 64)
    module.train()
    loss = module.task.loss(module(batch["image"]), batch)
    loss.backward()
    assert torch.isfinite(loss)
    for part in (module.backbone, module.task.head, module.task.refiner):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    # validation patches are the same every time (val/loss compares checkpoints, not draws)
    module.eval()
    val = next(iter(datamodule.val_dataloader()))
    with torch.no_grad():
        assert float(module.task.loss(module(val["image"]), val)) == float(module.task.loss(module(val["image"]), val))


def test_stage_two_alone_starts_from_a_first_stage_checkpoint_and_keeps_it(compose_cfg, tmp_path):
    cfg1 = compose_cfg(TINY_W18)
    first = build_module(cfg1, build_datamodule(cfg1.data))
    # a first-stage run folder: checkpoints/ and its results.json (the best val/mre sizes the jitter)
    (tmp_path / "stage1" / "checkpoints").mkdir(parents=True)
    ckpt = tmp_path / "stage1" / "checkpoints" / "best.ckpt"
    torch.save({"state_dict": first.state_dict(), "hrexp": {"config": {}}}, ckpt)
    (tmp_path / "stage1" / "results.json").write_text(json.dumps({"best": {"val/mre": {"value": 7.5}}}))
    _, datamodule, module = built(compose_cfg, [f"task.refine.stage1_ckpt={ckpt}", "task.refine.train_stage1=false",
                                                "task.refine.jitter_px=auto"])
    # the per-axis sigma whose mean radial offset is the first stage's best val/mre (7.5 / 1.2533)
    assert module.task.jitter_px == pytest.approx(7.5 / np.sqrt(np.pi / 2))
    rng = np.random.default_rng(0)
    assert np.hypot(*rng.normal(0, module.task.jitter_px, (2, 200_000))).mean() == pytest.approx(7.5, rel=0.01)
    before = {k: v.clone() for k, v in module.state_dict().items() if k.startswith(("backbone.", "task.head."))}
    assert all(torch.equal(before[k], v) for k, v in first.state_dict().items() if k in before)
    optimizer = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    module.train()
    batch = next(iter(datamodule.train_dataloader()))
    module.task.loss(module(batch["image"]), batch).backward()
    optimizer.step()
    after = module.state_dict()
    # (num_batches_tracked still counts: with momentum 0 it weighs nothing)
    changed = [k for k in before if not torch.equal(before[k], after[k]) and not k.endswith("num_batches_tracked")]
    assert changed == [], changed[:5]  # weights and BatchNorm statistics kept
    assert not any(p.requires_grad for p in module.backbone.parameters())
    # the frozen stage 1 does not run in a training step: its outputs would only be multiplied by 0
    calls = []
    module.backbone.register_forward_hook(lambda *args: calls.append(1))
    module.log = lambda *args, **kwargs: None  # (no Trainer here)
    module._nonfinite = lambda loss: False
    assert module.task.trains_on_outputs is False
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and calls == []
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.task.refiner.parameters())


def test_bad_refine_options_are_refused_by_name(compose_cfg):
    with pytest.raises(ConfigError, match="task.refine.train_stage1=false needs task.refine.stage1_ckpt"):
        built(compose_cfg, ["task.refine.train_stage1=false"])
    with pytest.raises(ConfigError, match="task.refine.jitter_px=auto needs task.refine.stage1_ckpt"):
        built(compose_cfg, ["task.refine.jitter_px=auto"])
    with pytest.raises(ConfigError, match="task.refine.patch_size=30: expected >= 8 and a multiple of"):
        built(compose_cfg, ["task.refine.patch_size=30"])


def test_a_refined_checkpoint_is_rebuilt_without_its_first_stage_file(compose_cfg):
    """A refiner trained from a frozen first stage (whose file is gone) is rebuilt for eval / export / predict."""
    _, datamodule, module = built(compose_cfg)
    refine = {**module.run_config["task"]["refine"], "stage1_ckpt": "/gone.ckpt", "jitter_px": "auto",
              "train_stage1": False}
    stored = {"hrexp": {"config": {**module.run_config, "task": {**module.run_config["task"], "refine": refine}}}}
    rebuilt = rebuild_config(stored)
    assert rebuilt.task.refine.stage1_ckpt is None and rebuilt.task.refine.jitter_px == 0.0
    again = build_module(rebuilt, datamodule)
    again.load_state_dict(module.state_dict())  # the same model: every weight fits


def test_a_flipped_samples_patches_are_mirrored_with_their_targets(compose_cfg, monkeypatch):
    """Under a flip the labels follow the mirror image: the patch cut from the unflipped original is mirrored,
    and the truth's x inside it too (the same draws: validation's fixed generator)."""
    _, datamodule, module = built(compose_cfg)
    task = module.task.eval()
    batch = next(iter(datamodule.val_dataloader()))
    seen = []
    monkeypatch.setattr(task.refiner, "forward", lambda patches, landmark: seen.append(patches) or
                        torch.zeros(len(patches), 1, 8, 8, requires_grad=True))
    encoded = []
    encode = task.refiner.codec.encode
    monkeypatch.setattr(task.refiner.codec, "encode", lambda kp, *a, **kw: encoded.append(kp) or encode(kp, *a, **kw))
    outputs = torch.zeros(batch["image"].shape[0], 40, 16, 8)
    task.loss(outputs, batch)
    flip = torch.tensor([[-1.0, 0, 31], [0, 1, 0], [0, 0, 1]])  # the augmentation's flip of the 32-px-wide input
    task.loss(outputs, {**batch, "matrix": flip @ batch["matrix"]})
    assert torch.equal(seen[1], seen[0].flip(-1))
    # inside a 32-px patch the mirrored x is 31 - x
    assert torch.allclose(encoded[1][..., 0], 31 - encoded[0][..., 0]) and torch.equal(encoded[1][..., 1], encoded[0][..., 1])


def test_training_patches_always_hold_their_landmark(compose_cfg, monkeypatch):
    """However wide the jitter, the truth stays inside its training patch, a heatmap sigma from the edge: the
    offsets are clipped at max_offset_px (patch 32, stride 4, sigma 2: (31 / 2 - 8 - 0.5) = 7 px)."""
    _, datamodule, module = built(compose_cfg, ["task.refine.jitter_px=1000"])
    task = module.task.train()
    assert task.max_offset_px == pytest.approx(7.0)
    encoded = []
    encode = task.refiner.codec.encode
    monkeypatch.setattr(task.refiner.codec, "encode", lambda kp, *a, **kw: encoded.append(kp) or encode(kp, *a, **kw))
    batch = next(iter(datamodule.train_dataloader()))
    task.loss(None, batch)
    target = torch.cat(encoded).reshape(-1, 2)  # the truth in patch px
    assert float(target.min()) >= 8 - 1e-4 and float(target.max()) <= 23 + 1e-4
    # ... and the clipping bites: with a 1000 px jitter nearly every offset sits at the limit
    assert float(((target - 15.5).abs() > 6.4).float().mean()) > 0.9  # (7 px, less the centre's rounding)


def _export_cfg(compose_cfg, tmp_path):
    from omegaconf import OmegaConf

    _, _, module = built(compose_cfg)
    ckpt = {"state_dict": module.state_dict(), "hrexp": {}}
    module.on_save_checkpoint(ckpt)
    path = tmp_path / "refined.ckpt"
    torch.save(ckpt, path)
    return OmegaConf.create({"ckpt_path": str(path), "format": "onnx", "output": None, "batch": "fixed",
                             "batch_size": 1, "decode": False, "coarse_only": False, "opset": 18, "check": False,
                             "paths": {"output_dir": str(tmp_path / "out")}})


def test_export_refuses_a_refined_checkpoint(compose_cfg, tmp_path):
    """One ONNX graph on the down-sized input cannot hold the refiner: export says so instead of silently writing
    stage 1's points."""
    from hrexp.jobs.export_run import export

    cfg = _export_cfg(compose_cfg, tmp_path)
    with pytest.raises(ConfigError, match="coarse-to-fine checkpoint .* coarse_only=true"):
        export(cfg)
    assert not (tmp_path / "out" / "model.onnx").exists()


@pytest.mark.slow  # an ONNX export of HRNet-W18 (~50 s on 2 cores)
def test_coarse_only_exports_stage_one_and_says_so(compose_cfg, tmp_path):
    pytest.importorskip("onnxruntime")
    from hrexp.jobs.export_run import export

    cfg = _export_cfg(compose_cfg, tmp_path)
    cfg.coarse_only = True
    export(cfg)
    summary = json.loads((tmp_path / "out" / "export.json").read_text())
    assert summary["stages"] == ["coarse"] and (tmp_path / "out" / "model.onnx").exists()
