"""Turn a composed config into the objects of a run: datamodule, model, callbacks, loggers.

Everything is built with ``hydra.utils.instantiate`` from ``_target_``; there is no branching on
model or task names. Data is read and validated here, before any training starts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import lightning.pytorch as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from hrexp.errors import ConfigError
from hrexp.training.module import HRExpModule
from hrexp.training.speed import SpeedOptions
from hrexp.utils.hydra_runtime import runtime_choices

log = logging.getLogger(__name__)


def build_datamodule(data_cfg: DictConfig) -> pl.LightningDataModule:
    """Instantiate the datamodule, build any cached data and read + validate every split."""
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def check_input_size(image_size: Any, backbone: Any, model_name: str, option: str = "data.image_size") -> None:
    """The input must be divisible by the backbone's coarsest stride, or multi-scale fusion misaligns."""
    stride = max(int(f["reduction"]) for f in backbone.feature_info)
    size = list(image_size)
    if any(int(s) % stride for s in size):
        raise ConfigError(
            f"{option}={size}: each side must be a multiple of {stride}, the coarsest feature stride of "
            f"model={model_name}"
        )


def build_module(cfg: DictConfig, datamodule: Any) -> HRExpModule:
    """Backbone + task (head fitted to the backbone's features and to the data) + optimizer.

    Raises:
        ConfigError: The datamodule's input size does not fit the backbone, the task cannot be built
            for this data and model (the message names the task, data, model and head options), or
            the param-group options are invalid.
    """
    backbone = instantiate(cfg.model)
    picked = choices(cfg)
    check_input_size(datamodule.input_size, backbone, picked["model"], option=datamodule.input_size_option)
    try:
        task = instantiate(cfg.task, feature_info=backbone.feature_info, dataset_meta=datamodule.dataset_meta)
    except InstantiationException as err:
        # Hydra wraps the task's (or head's) own message, which names the problem; surface it.
        cause = err.__cause__ if err.__cause__ is not None else err
        raise ConfigError(
            f"task={picked['task']} data={picked['data']} model={picked['model']} head={picked['head']}: {cause}"
        ) from err
    scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    try:
        # Configs stored by runs before param groups existed have none: the defaults apply.
        param_groups = instantiate(cfg.param_groups) if cfg.get("param_groups") else None
    except InstantiationException as err:
        raise ConfigError(str(err.__cause__ or err)) from err
    module = HRExpModule(
        backbone=backbone,
        task=task,
        optimizer=instantiate(cfg.optimizer),
        scheduler=scheduler,
        param_groups=param_groups,
        run_config={**OmegaConf.to_container(cfg, resolve=True), "choices": picked},
        dataset_meta=datamodule.dataset_meta,
        # Configs stored by earlier runs have no such key: they stopped on a non-finite loss too.
        nonfinite_loss=cfg.get("nonfinite_loss", "stop"),
        speed=build_speed(cfg.get("speed"), datamodule.input_size),
    )
    try:
        task.on_module_built(module)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    return module


def build_speed(speed_cfg: DictConfig | None, input_size: Sequence[int] | None = None) -> SpeedOptions:
    """The ``speed`` options (channels_last, compile), ``auto`` resolved for the network's ``input_size``;
    configs of earlier runs have none: both off."""
    if not speed_cfg:
        return SpeedOptions()
    try:
        options = instantiate(speed_cfg, _convert_="all")
    except InstantiationException as err:
        raise ConfigError(str(err.__cause__ or err)) from err
    return options.resolve(input_size)


@dataclass
class Callbacks:
    """The run's callbacks by config key, so a checkpoint callback can be found by name."""

    by_name: dict[str, pl.Callback] = field(default_factory=dict)

    def checkpoint(self, name: str) -> ModelCheckpoint:
        cb = self.by_name.get(name)
        if not isinstance(cb, ModelCheckpoint):
            names = [k for k, v in self.by_name.items() if isinstance(v, ModelCheckpoint)]
            raise ConfigError(f"test_ckpt={name!r} is not a checkpoint callback of this run; choose one of {names}")
        return cb

    def checkpoints(self) -> dict[str, ModelCheckpoint]:
        return {k: v for k, v in self.by_name.items() if isinstance(v, ModelCheckpoint)}


def build_callbacks(cfg: DictConfig | None) -> Callbacks:
    out = Callbacks()
    for name, cb_cfg in (cfg or {}).items():
        if cb_cfg is not None and "_target_" in cb_cfg:
            out.by_name[name] = instantiate(cb_cfg)
    return out


def build_loggers(cfg: DictConfig | None) -> list[Any]:
    return [instantiate(lg) for lg in (cfg or {}).values() if lg is not None and "_target_" in lg]


GROUPS = ("model", "head", "task", "data", "optimizer", "scheduler", "trainer")


def choices(cfg: DictConfig) -> dict[str, str]:
    """The config-group options of this run (e.g. ``model: hrnet_w32``).

    A config rebuilt from a checkpoint carries them under ``choices``; otherwise Hydra knows them;
    a config composed outside Hydra's app falls back to each group's ``_target_``.
    """
    stored = cfg.get("choices") or {}
    runtime = runtime_choices()
    out = {}
    for group in GROUPS:
        value = stored.get(group) or runtime.get(group)
        if value is None:
            node = cfg.get(group) or {}
            value = node.get("_target_", "none") if hasattr(node, "get") else "none"
        out[group] = str(value)
    return out
