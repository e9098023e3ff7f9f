"""Weights & Biases: multirun group, the resolved config, best metrics in the summary, validation
images and checkpoint artifacts, all checked in an offline run read back from its ``.wandb`` file."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from omegaconf import OmegaConf, open_dict

from hrexp.startup import CONFIG_DIR
from hrexp.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hrexp.training.loggers import WandbLogger, read_offline_run
from hrexp.callbacks.wandb_images import WandbValImages
from hrexp.reports.drawing import GT_COLOR, PRED_COLOR, denormalise, draw_keypoints
from tests.helpers import TINY, run_script

NUM_IMAGES = 2
EPOCHS = 2


# --- the multirun group ------------------------------------------------------------------------
def _compose(overrides: list[str], mode: RunMode | None = None, sweep_dir: str | None = None):
    """Compose conf/train.yaml and set HydraConfig as a Hydra app would (run or multirun job)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = "/tmp/unused"
        cfg.hydra.mode = mode
        if sweep_dir is not None:
            cfg.hydra.sweep.dir = sweep_dir
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def hydra_state():
    saved = HydraConfig.instance().cfg
    yield
    HydraConfig.instance().cfg = saved
    GlobalHydra.instance().clear()


def test_run_group_is_the_sweep_in_a_multirun_and_null_otherwise(hydra_state):
    sweep = "/x/logs/train/multiruns/2026-11-23_03-10-00"
    cfg = _compose(["logger=wandb"], RunMode.MULTIRUN, sweep)
    assert cfg.logger.wandb.group == "train-2026-11-23_03-10-00"
    cfg = _compose(["logger=wandb", "task_name=bench"], RunMode.MULTIRUN, sweep.replace("train", "bench"))
    assert cfg.logger.wandb.group == "bench-2026-11-23_03-10-00"
    # The default sweep dir (with ${now:}) gives <task_name>-<its time stamp>.
    cfg = _compose(["logger=wandb"], RunMode.MULTIRUN)
    assert re.fullmatch(r"train-\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", cfg.logger.wandb.group), cfg.logger.wandb.group
    # A single run: no group; job_type is the task, tags come from the config.
    cfg = _compose(["logger=wandb", "tags=[a,b]"], RunMode.RUN, sweep)
    assert cfg.logger.wandb.group is None
    assert cfg.logger.wandb.job_type == "landmarks" and list(cfg.logger.wandb.tags) == ["a", "b"]
    # Outside any Hydra app (no HydraConfig): no group either.
    HydraConfig.instance().cfg = None
    assert OmegaConf.create({"task_name": "train", "group": "${hrexp_run_group:}"}).group is None


def test_log_model_is_accepted_offline(monkeypatch, tmp_path):
    # Lightning's own WandbLogger refuses offline + log_model; an offline run records artifacts.
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), project="hrexp-test", log_model=True)
    assert logger._offline is True and logger._log_model is True


# --- drawing -----------------------------------------------------------------------------------
def test_draw_keypoints_marks_ground_truth_green_and_predictions_red():
    image = np.full((40, 30, 3), 100, np.uint8)
    gt = np.array([[10.0, 5.0], [25.0, 8.0]])
    pred = np.array([[25.0, 30.0], [3.0, 35.0]])
    out = draw_keypoints(image, gt, pred, gt_visible=np.array([True, False]), radius=2)
    assert out.shape == image.shape and (image == 100).all(), "the input must not change"
    assert tuple(out[5, 10]) == GT_COLOR and tuple(out[30, 25]) == PRED_COLOR and tuple(out[35, 3]) == PRED_COLOR
    assert tuple(out[8, 25]) == (100, 100, 100), "an invisible ground truth is not drawn"
    assert tuple(out[0, 29]) == (100, 100, 100)
    # Enlarged 3x: pixel centres map as (x + 0.5) * 3 - 0.5.
    big = draw_keypoints(image, gt, pred, scale=3, radius=2)
    assert big.shape == (120, 90, 3)
    assert tuple(big[16, 31]) == GT_COLOR and tuple(big[91, 76]) == PRED_COLOR


def test_denormalise_inverts_the_input_normalisation():
    rgb = np.random.default_rng(0).integers(0, 256, (8, 6, 3)).astype(np.uint8)
    normalised = (rgb / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    back = denormalise(torch.from_numpy(normalised.transpose(2, 0, 1).astype(np.float32)))
    assert back.dtype == np.uint8 and np.array_equal(back, rgb)


def test_callback_is_a_no_op_without_wandb_and_stops_asking_a_task_that_does_not_draw():
    cb = WandbValImages(num_images=2)
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=0, max_epochs=1,
                              loggers=[mock.create_autospec(CSVLogger, instance=True)])
    cb.on_validation_batch_end(trainer, None, None, None, 0)  # the module is never touched

    from hrexp.tasks.base import Task

    class Silent(Task):  # the base task's draw_predictions: not implemented
        def predict(self, outputs, batch, flipped_outputs=None):
            return {"labels": outputs.argmax(1)}

    task = Silent(lambda feature_info, num_outputs: torch.nn.Identity(), [{"num_chs": 3, "reduction": 1}], 3,
                  {"metric": "val/loss", "mode": "min"})
    module = torch.nn.Module()
    module.task = task
    module.forward = lambda image: image  # the "network": its outputs are the inputs
    calls = []
    module.device = torch.device("cpu")
    task.eval_outputs = lambda model, batch: calls.append(1) or model(batch["image"])
    wandb_logger = mock.create_autospec(LightningWandbLogger, instance=True)
    loader = SimpleNamespace(dataset=[{"image": torch.zeros(3, 8, 8)}] * 3, collate_fn=None)
    trainer = SimpleNamespace(**{**vars(trainer), "loggers": [wandb_logger], "val_dataloaders": loader,
                                 "precision_plugin": SimpleNamespace(forward_context=torch.no_grad)})
    for epoch in range(2):
        trainer.current_epoch = epoch
        cb.on_validation_batch_end(trainer, module, None, None, 0)
    assert "does not draw its predictions" in (cb._skip_reason or "")
    assert calls == [1], "after the first refusal the task is not run again"
    wandb_logger.log_image.assert_not_called()


# --- one offline training run --------------------------------------------------------------------
@pytest.fixture(scope="module")
def wandb_run(module_tmp, cache_dir):
    run_dir = module_tmp / "run"
    data_dir = run_dir.parent / "wandb-data"  # artifact staging, instead of ~/.local/share/wandb
    args = [*TINY, "model=hrnet_w18", f"trainer.max_epochs={EPOCHS}", "test=false", "tags=[wandb-test]",
            "logger=many", "logger.wandb.log_model=true", "callbacks=[default,wandb_images]",
            f"callbacks.wandb_images.num_images={NUM_IMAGES}", f"hydra.run.dir={run_dir}"]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_API_KEY", raising=False)
        mp.setenv("WANDB_DATA_DIR", str(data_dir))
        run_script("train.py", args, cache_dir)
    folders = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 1, folders
    return run_dir, folders[0], read_offline_run(folders[0]), data_dir


def _val_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as fh:
        return [r for r in csv.DictReader(fh) if r.get("val/mre")]


def test_offline_run_has_name_job_type_tags_and_no_group(wandb_run):
    _, _, run, _ = wandb_run
    assert run.exit_code == 0
    assert run.name == "hrnet_w18-landmarks" and run.job_type == "landmarks" and run.tags == ["wandb-test"]
    assert run.group == ""  # a single run: no group


def test_offline_run_config_is_the_resolved_run_config(wandb_run):
    run_dir, _, run, _ = wandb_run
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    config = run.config["config"]
    assert config["model"]["_target_"] == "hrexp.models.hrnet.HighResolutionNet" and config["model"]["width"] == 18
    assert config["optimizer"]["lr"] == saved["optimizer"]["lr"] and config["seed"] == 0
    assert config["paths"]["output_dir"] == str(run_dir)  # interpolations resolved
    assert "${" not in str(config)
    assert run.config["params"]["total"] > 0


def test_offline_run_summary_holds_the_best_metrics(wandb_run):
    run_dir, _, run, _ = wandb_run
    rows = _val_rows(run_dir)
    assert len(rows) == EPOCHS
    best = min(rows, key=lambda r: float(r["val/mre"]))
    assert run.summary["best/val_mre"] == pytest.approx(float(best["val/mre"]), rel=1e-6)
    assert run.summary["best/val_mre_epoch"] == int(best["epoch"])
    assert run.summary["best/val_loss"] == pytest.approx(min(float(r["val/loss"]) for r in rows), rel=1e-6)
    # The history has the running best after every validation, the summary its last (best) value.
    assert run.column("val/mre") == pytest.approx([float(r["val/mre"]) for r in rows], rel=1e-6)
    running = np.minimum.accumulate([float(r["val/mre"]) for r in rows])
    assert run.column("best/val_mre") == pytest.approx(list(running), rel=1e-6)


def test_offline_run_has_validation_images_every_epoch(wandb_run):
    _, folder, run, _ = wandb_run
    files = sorted((folder / "files" / "media" / "images").rglob("*.png"))
    assert len(files) == NUM_IMAGES * EPOCHS, files
    panels = [row["val/examples"] for row in run.history if "val/examples" in row]
    assert len(panels) == EPOCHS and all(p["count"] == NUM_IMAGES for p in panels)
    # 64x32 inputs are enlarged 4x (min_size 256); captions give each image's error.
    assert (panels[-1]["height"], panels[-1]["width"]) == (256, 128)
    assert all(re.fullmatch(r"val #\d+: mean error \d+\.\d+ px", c) for c in panels[-1]["captions"])
    assert run.summary["val/examples"]["filenames"] == panels[-1]["filenames"]
    from PIL import Image

    pixels = np.asarray(Image.open(files[-1]).convert("RGB")).reshape(-1, 3)
    assert (pixels == GT_COLOR).all(axis=1).any() and (pixels == PRED_COLOR).all(axis=1).any()


def test_offline_run_records_one_checkpoint_artifact_per_checkpoint_callback(wandb_run):
    run_dir, _, run, data_dir = wandb_run
    by_name = {a["name"]: a for a in run.artifacts}
    assert set(by_name) == {f"model-{run.run_id}-{s}" for s in ("val_mre", "val_loss", "last")}, list(by_name)
    best = by_name[f"model-{run.run_id}-val_mre"]
    assert "best" in best["aliases"] and best["type"] == "model" and best["files"] == ["model.ckpt"]
    assert best["metadata"]["score"] == pytest.approx(run.summary["best/val_mre"], rel=1e-6)
    assert (run_dir / "checkpoints" / best["metadata"]["original_filename"]).is_file()
    assert len(list((data_dir / "artifacts" / "staging").iterdir())) == 3  # staged for `wandb sync`


def test_offline_reader_joins_records_split_across_blocks(tmp_path):
    import wandb

    big = "x" * 100_000  # > one 32 KiB block: written as first/middle/last chunks
    run = wandb.init(mode="offline", dir=str(tmp_path), project="hrexp-test", config={"big": big, "n": 1})
    for step, value in enumerate([3.0, 1.0, 2.0]):
        run.log({"m": value}, step=step)
    run.summary["m_min"] = 1.0
    run.finish()
    (folder,) = (tmp_path / "wandb").glob("offline-run-*")
    record = read_offline_run(folder)
    assert record.config["big"] == big and record.config["n"] == 1
    assert record.column("m") == [3.0, 1.0, 2.0]
    assert record.summary["m"] == 2.0 and record.summary["m_min"] == 1.0
