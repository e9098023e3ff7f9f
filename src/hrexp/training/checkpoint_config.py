"""Run configs stored in checkpoints by earlier hrexp versions, brought to today's class paths and arguments.

A checkpoint carries its resolved run config (``checkpoint["hrexp"]["config"]``) so that ``eval.py``
rebuilds the model and data from it alone. Classes that moved since keep working through
:data:`MOVED_TARGETS` (old ``_target_`` -> new: add a line whenever a class in a config moves), and
constructor arguments added since through :data:`ADDED_ARGUMENTS` (add a line whenever a class gains a
required argument that older configs lack).
"""

from __future__ import annotations

from typing import Any

MOVED_TARGETS = {
    # hrexp.data split into a shared core and one folder per family
    "hrexp.data.datamodule.LandmarkDataModule": "hrexp.data.landmarks.datamodule.LandmarkDataModule",
    "hrexp.data.datamodule.CsvLandmarkDataModule": "hrexp.data.landmarks.datamodule.CsvLandmarkDataModule",
    "hrexp.data.datamodule.CocoLandmarkDataModule": "hrexp.data.landmarks.datamodule.CocoLandmarkDataModule",
    "hrexp.data.datamodule.AasceDataModule": "hrexp.data.landmarks.datamodule.AasceDataModule",
    "hrexp.data.datamodule.SyntheticSpineDataModule": "hrexp.data.landmarks.datamodule.SyntheticSpineDataModule",
    "hrexp.data.pose_datamodule.PoseDataModule": "hrexp.data.pose.datamodule.CocoPoseDataModule",
    "hrexp.data.seg_datamodule.SegFolderDataModule": "hrexp.data.segmentation.datamodule.SegFolderDataModule",
    # callbacks in their own folder
    "hrexp.training.best_metrics.BestMetrics": "hrexp.callbacks.best_metrics.BestMetrics",
    "hrexp.training.ema.EMA": "hrexp.callbacks.ema.EMA",
    "hrexp.training.phases.BackboneFreeze": "hrexp.callbacks.freeze_backbone.BackboneFreeze",
    "hrexp.training.wandb_images.WandbValImages": "hrexp.callbacks.wandb_images.WandbValImages",
}


# class -> {argument: config paths to fill it from, first found}: arguments a class gained since, which configs
# stored before lack. The paths are absolute (from the run config's root); the value is copied as stored.
ADDED_ARGUMENTS = {
    # SimCC's input size moved from an encode() argument to the constructor: the head was built for the same one
    "hrexp.codecs.simcc.SimCCCodec": {"input_size": ("task.head.input_size", "data.image_size")},
}


def _select(config: dict[str, Any], path: str) -> Any:
    node: Any = config
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def fill_added_arguments(config: Any, root: dict[str, Any] | None = None) -> Any:
    """A copy of ``config`` (plain dicts and lists) with every :data:`ADDED_ARGUMENTS` argument a node lacks filled
    from the first of its paths that the run config holds (left out when none does: the class then names it)."""
    root = config if root is None else root
    if isinstance(config, dict):
        out = {k: fill_added_arguments(v, root) for k, v in config.items()}
        for argument, paths in ADDED_ARGUMENTS.get(out.get("_target_"), {}).items():
            if argument not in out:
                found = next((value for value in (_select(root, p) for p in paths) if value is not None), None)
                if found is not None:
                    out[argument] = found
        return out
    if isinstance(config, list):
        return [fill_added_arguments(v, root) for v in config]
    return config


def upgrade_targets(config: Any) -> Any:
    """A copy of ``config`` (plain dicts and lists) with every moved ``_target_`` replaced."""
    if isinstance(config, dict):
        out = {k: upgrade_targets(v) for k, v in config.items()}
        target = out.get("_target_")
        if isinstance(target, str) and target in MOVED_TARGETS:
            out["_target_"] = MOVED_TARGETS[target]
        return out
    if isinstance(config, list):
        return [upgrade_targets(v) for v in config]
    return config


def rebuild_config(checkpoint: dict[str, Any]) -> Any:
    """The run config stored in ``checkpoint``, ready to rebuild its model for eval / export / predict.

    Today's class paths and constructor arguments; and no initial weights to load, since the checkpoint holds the
    trained ones and the files they came from need not exist any more: ``model.pretrained`` and a refiner's
    ``task.refine.stage1_ckpt`` are cleared (with the training-only ``train_stage1`` / ``jitter_px=auto``).
    """
    from omegaconf import OmegaConf

    run_cfg = OmegaConf.create(fill_added_arguments(upgrade_targets(checkpoint["hrexp"]["config"])))
    if "pretrained" in run_cfg.model:
        run_cfg.model.pretrained = False
    refine = run_cfg.task.get("refine") if "task" in run_cfg else None
    if refine is not None:
        refine.stage1_ckpt = None
        refine.train_stage1 = True  # freezing stage 1 is a training choice; its check would need the file
        if refine.get("jitter_px") == "auto":
            refine.jitter_px = 0.0  # a training-time quantity, read from stage1_ckpt's run: not needed to rebuild
        if "pretrained" in (refine.get("backbone") or {}):
            refine.backbone.pretrained = False
    return run_cfg
