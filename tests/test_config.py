"""Config composition: the groups exist, user overrides land, seed=0 seeds."""

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from hrexp.startup import CONFIG_DIR
from hrexp.errors import ConfigError
from hrexp.training.build import check_input_size
from hrexp.jobs.train_run import seed_run

ROOT = Path(__file__).resolve().parents[1]


def test_train_config_composes_every_group(compose_cfg):
    cfg = compose_cfg([])
    for group in ("model", "task", "data", "optimizer", "param_groups", "scheduler", "trainer", "callbacks", "logger", "paths"):
        assert group in cfg, group
    assert cfg.model._target_ == "hrexp.models.hrnet.HighResolutionNet"
    assert cfg.model.width == 32
    assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.optimizer.lr == pytest.approx(1e-4)
    assert cfg.optimizer.weight_decay == pytest.approx(0.01)
    assert cfg.scheduler.warmup_epochs == 5 and cfg.scheduler.min_lr == pytest.approx(1e-6)
    assert cfg.task.sdr_radii == [4, 8, 12, 16, 20, 24]
    # every output of the run lives under the run dir
    out = cfg.paths.output_dir
    for name in ("checkpoint_best_loss", "checkpoint_best_metric", "checkpoint_last"):
        assert cfg.callbacks[name].dirpath.startswith(out)
    assert cfg.logger.csv.save_dir == out


def test_user_overrides_land(compose_cfg):
    cfg = compose_cfg(
        ["trainer.max_epochs=3", "trainer.limit_train_batches=2", "data.batch_size=4", "data.image_size=[256,256]", "seed=0"]
    )
    assert cfg.trainer.max_epochs == 3
    assert cfg.trainer.limit_train_batches == 2
    assert cfg.data.batch_size == 4
    assert list(cfg.data.image_size) == [256, 256]
    assert cfg.seed == 0


def test_best_metric_checkpoint_follows_task_monitor(compose_cfg):
    cfg = compose_cfg([])
    cb = instantiate(cfg.callbacks.checkpoint_best_metric)
    assert cb.monitor == "val/mre" and cb.mode == "min"
    assert cfg.callbacks.checkpoint_best_metric.filename.startswith("best-val_mre-")
    loss_cb = instantiate(cfg.callbacks.checkpoint_best_loss)
    assert loss_cb.monitor == "val/loss"


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml") if not p.stem.startswith("_")))
def test_every_model_option_composes(compose_cfg, model):
    cfg = compose_cfg([f"model={model}"])
    assert "_target_" in cfg.model


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "wandb", "many"])
def test_every_logger_option_composes(compose_cfg, logger):
    cfg = compose_cfg([f"logger={logger}"])
    assert all("_target_" in lg for lg in cfg.logger.values())


@pytest.mark.parametrize("debug", ["fast_dev_run", "overfit"])
def test_debug_configs_compose(compose_cfg, debug):
    cfg = compose_cfg([f"debug={debug}"])
    assert cfg.task_name == "debug"


def test_seed_zero_seeds():
    seed_run(0)
    a = torch.rand(3)
    torch.manual_seed(0)
    b = torch.rand(3)
    assert torch.equal(a, b)
    seed_run(0)
    assert torch.equal(torch.rand(3), b)


def test_seed_rejects_non_integers():
    with pytest.raises(ConfigError, match="seed="):
        seed_run("abc")


class _FakeBackbone:
    feature_info = [{"num_chs": 32, "reduction": 4}, {"num_chs": 256, "reduction": 32}]


def test_input_size_must_fit_backbone_stride():
    check_input_size([256, 128], _FakeBackbone(), "hrnet_w32")
    with pytest.raises(ConfigError, match=r"data.image_size=\[250, 128\].*multiple of 32.*model=hrnet_w32"):
        check_input_size([250, 128], _FakeBackbone(), "hrnet_w32")


def test_model_config_can_choose_its_head(compose_cfg):
    assert compose_cfg([]).task.head._target_.endswith("HeatmapHead")
    assert compose_cfg(["model=resnet50"]).task.head._target_.endswith("DeconvHead")
    # the command line still wins over the model's choice
    assert compose_cfg(["model=resnet50", "head=heatmap"]).task.head._target_.endswith("HeatmapHead")
    assert compose_cfg(["head=hrnetv2"]).task.head._target_.endswith("HRNetV2Head")


def test_head_that_does_not_fit_the_backbone_fails_at_build_time(compose_cfg):
    from hrexp.training.build import build_module

    class _Data:
        dataset_meta = {"num_keypoints": 4, "keypoint_names": list("abcd"), "flip_pairs": []}
        input_size, input_size_option = (256, 128), "data.image_size"

    cfg = compose_cfg(["model=hrnet_w18", "head=deconv", "task.head.num_deconv_layers=6"])
    with pytest.raises(ValueError, match=r"DeconvHead.*strides \[4, 8, 16, 32\]"):
        build_module(cfg, _Data())


@pytest.mark.parametrize("model,head,stride", [("resnet50", "deconv", 4), ("hrnet_w18", "hrnetv2", 4), ("unet", "heatmap", 4)])
def test_models_and_heads_build_into_one_module(compose_cfg, model, head, stride):
    from hrexp.training.build import build_module

    class _Data:
        dataset_meta = {"num_keypoints": 5, "keypoint_names": list("abcde"), "flip_pairs": []}
        input_size, input_size_option = (64, 64), "data.image_size"

    cfg = compose_cfg([f"model={model}", f"head={head}", "data.image_size=[64,64]"])
    module = build_module(cfg, _Data()).eval()
    out = module(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 5, 64 // stride, 64 // stride)
    assert module.task.stride == stride


def test_experiment_config_overrides_groups_and_values(compose_cfg):
    cfg = compose_cfg(["experiment=aasce_hrnet_w32"])
    assert cfg.data._target_.endswith("AasceDataModule") and cfg.data.num_keypoints == 68
    assert list(cfg.data.image_size) == [512, 256] and cfg.trainer.max_epochs == 100
    assert cfg.task_name == "aasce_hrnet_w32" and cfg.model.width == 32


def test_pose_config_keeps_the_best_ap_checkpoint_and_resolves_paths_against_root(compose_cfg):
    cfg = compose_cfg(["task=pose", "data=coco_pose", "data.root=/data/coco"])
    cb = instantiate(cfg.callbacks.checkpoint_best_metric)
    assert cb.monitor == "val/AP" and cb.mode == "max"
    assert cfg.callbacks.checkpoint_best_metric.filename.startswith("best-val_AP-")
    assert instantiate(cfg.callbacks.checkpoint_best_loss).monitor == "val/loss"
    assert list(cfg.data.image_size) == [256, 192] and cfg.task.flip_test is True
    assert [m["metric"] for m in cfg.callbacks.best_metrics.monitors] == ["val/loss", "val/AP"]
    dm = instantiate(cfg.data)  # nothing is read before setup()
    assert dm.paths["train_json"] == Path("/data/coco/annotations/person_keypoints_train2017.json")
    assert dm.paths["val_images"] == Path("/data/coco/val2017")
    assert dm.paths["test_json"] is None and dm.paths["train_images"] == Path("/data/coco/train2017")


@pytest.mark.parametrize("scheduler", sorted(p.stem for p in (CONFIG_DIR / "scheduler").glob("*.yaml")))
def test_every_scheduler_option_builds_a_per_step_schedule(compose_cfg, scheduler):
    import torch
    from hydra.utils import instantiate

    cfg = compose_cfg([f"scheduler={scheduler}"])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = instantiate(cfg.scheduler)(optimizer, total_steps=2100, steps_per_epoch=10)
    for _ in range(2100):
        optimizer.step()
        schedule.step()
    assert 0 <= optimizer.param_groups[0]["lr"] <= 0.1


def test_optional_callbacks_compose_beside_the_defaults(compose_cfg):
    from hrexp.training.build import build_callbacks
    from hrexp.callbacks.ema import EMA
    from hrexp.callbacks.freeze_backbone import BackboneFreeze

    cfg = compose_cfg(["callbacks=[default,freeze_backbone,ema]", "callbacks.freeze_backbone.epochs=3"])
    built = build_callbacks(cfg.callbacks).by_name
    assert isinstance(built["freeze_backbone"], BackboneFreeze) and built["freeze_backbone"].epochs == 3
    assert isinstance(built["ema"], EMA) and built["ema"].decay == pytest.approx(0.999)
    assert {"checkpoint_best_loss", "checkpoint_best_metric", "checkpoint_last", "lr_monitor"} <= set(built)
