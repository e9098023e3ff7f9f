"""``train(cfg)``: the body of ``train.py``, importable so tests and sweeps call the same code."""

from __future__ import annotations

import logging
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import lightning.pytorch as pl
import rich
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from hrexp.data.records import LandmarkSet
from hrexp.metrics.mean_shape import mean_shape_baseline
from hrexp.models.complexity import count_macs, count_parameters
from hrexp.callbacks.best_metrics import BestMetrics
from hrexp.training.build import (
    Callbacks,
    ConfigError,
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_module,
    choices,
)
from hrexp.training.module import HRExpModule
from hrexp.training.run_record import parameter_counts, write_json
from hrexp.utils.hydra_runtime import in_multirun
from hrexp.utils.config_tree import print_and_save_config

log = logging.getLogger(__name__)


def seed_run(seed: Any) -> None:
    """Seed everything when ``seed`` is any integer, 0 included (``if seed:`` would skip 0)."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r}: expected an integer or null")
    pl.seed_everything(seed, workers=True)


def _output_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.output_dir)


def _record_header(cfg: DictConfig, status: str) -> dict[str, Any]:
    """The fields that open every run record, finished or failed: what ran and where."""
    return {
        "status": status,
        "choices": choices(cfg),
        "seed": cfg.get("seed"),
        "tags": list(cfg.get("tags") or []),
        "output_dir": str(_output_dir(cfg)),
    }


def finish_wandb(exit_code: int) -> None:
    """Close the process's W&B run, if any, so the next job of a sweep opens its own and a crash shows."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def run_job(cfg: DictConfig) -> float | None:
    """The body of ``train.py``: train and return the value a sweeper optimises.

    Returns the best value of the task's monitored metric (``val/mre`` for landmarks). A job that
    fails writes ``results.json`` with ``status: failed`` and the error. In a multirun it then
    returns NaN, so the sweep goes on (Hydra's sweepers stop at the first exception; Optuna marks a
    NaN trial as failed); a single run re-raises.
    """
    try:
        record = train(cfg)
    except Exception as err:
        log.error("run failed: %s", err, exc_info=True)
        if rank_zero_only.rank == 0:
            write_json(_output_dir(cfg) / "results.json", {
                **_record_header(cfg, "failed"),
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc(),
            })
        finish_wandb(exit_code=1)
        if in_multirun():
            return math.nan
        raise
    finish_wandb(exit_code=0)
    best = record.get("best", {}).get(cfg.task.monitor.metric)
    return None if best is None else best["value"]


class RunParts(NamedTuple):
    """The objects of one run, built from its config."""

    datamodule: pl.LightningDataModule
    module: HRExpModule
    callbacks: Callbacks
    loggers: list[Any]
    trainer: pl.Trainer


def build_run(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> RunParts:
    """Seed, then build datamodule (data read and validated), module, callbacks, loggers and Trainer.

    Everything that can fail on config or data fails here, before the first step.
    ``extra_callbacks`` join the config's (tests use them to watch a run).
    """
    seed_run(cfg.get("seed"))
    datamodule = build_datamodule(cfg.data)
    module = build_module(cfg, datamodule)
    callbacks = build_callbacks(cfg.get("callbacks"))
    if cfg.get("test") and cfg.get("train"):
        callbacks.checkpoint(cfg.test_ckpt)
    loggers = build_loggers(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=[*callbacks.by_name.values(), *extra_callbacks], logger=loggers or False
    )
    return RunParts(datamodule, module, callbacks, loggers, trainer)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Validate, build, train, test and record one run. Returns the run record."""
    out_dir = _output_dir(cfg)
    if rank_zero_only.rank == 0:
        print_and_save_config(cfg, out_dir)
    datamodule, module, callbacks, loggers, trainer = build_run(cfg)

    params = parameter_counts(module)
    size = cfg.data.get("image_size") or cfg.data.get("crop_size")  # keypoint inputs / segmentation crops
    input_size = [int(v) for v in size] if size is not None else None
    record: dict[str, Any] = {
        **_record_header(cfg, "running"),
        "params": params,
        "params_backbone": count_parameters(module.backbone),
        # For comparison tables: the input the model sees and its cost there.
        "input_size": input_size,
        "macs_g": count_macs(module, (1, 3, *input_size)) / 1e9 if input_size else None,
        "pretrained": cfg.model.get("pretrained", False),
        "dataset_meta": dict(getattr(datamodule, "dataset_meta", {}) or {}),
    }
    for lg in loggers:
        lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), "params": params})

    t0 = time.time()
    if cfg.get("train"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    record["train_time_s"] = time.time() - t0
    record["param_groups"] = module.param_group_summary

    best = next((cb for cb in callbacks.by_name.values() if isinstance(cb, BestMetrics)), None)
    record["best"] = best.best if best else {}
    record["checkpoints"] = {
        name: {"path": cb.best_model_path or None, "monitor": cb.monitor, "score": cb.best_model_score}
        for name, cb in callbacks.checkpoints().items()
    }

    if isinstance(getattr(datamodule, "val_set", None), LandmarkSet):
        record["baseline_mean_shape_val"] = mean_shape_baseline(
            datamodule.train_set, datamodule.val_set, radii=list(module.task.sdr_radii)
        )

    if cfg.get("test"):
        ckpt = None
        if cfg.get("train"):
            cb = callbacks.checkpoint(cfg.test_ckpt)
            ckpt = cb.best_model_path or None
        if ckpt:
            log.info("Testing checkpoint %s (test_ckpt=%s)", ckpt, cfg.test_ckpt)
            rich.print(f"[bold]Testing checkpoint[/bold] {ckpt} (test_ckpt={cfg.test_ckpt})")
        else:
            log.warning("No checkpoint to test (test_ckpt=%s); testing the current weights", cfg.get("test_ckpt"))
        results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        record["test"] = {"checkpoint": ckpt, "split": getattr(datamodule, "test_split_name", "test"),
                          "metrics": results[0] if results else {}}

    record["status"] = "finished"
    if trainer.is_global_zero:
        write_json(out_dir / "results.json", record)
        _print_summary(record)
    return record


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_summary(record: dict[str, Any]) -> None:
    table = Table(title=f"Run summary: {record['choices'].get('model')} / {record['choices'].get('task')}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    best = record.get("best", {})
    for name, rec in best.items():
        table.add_row(f"best {name} (epoch {rec['epoch']})", _fmt(rec["value"]))
    baseline = record.get("baseline_mean_shape_val")
    if baseline is not None and "mre" in baseline:
        table.add_row("mean-shape baseline val/mre", _fmt(baseline["mre"]))
        if "val/mre" in best:
            ratio = best["val/mre"]["value"] / baseline["mre"]
            table.add_row("best val/mre / baseline", _fmt(ratio))
            log.info("best val/mre %.4f px vs mean-shape baseline %.4f px (ratio %.3f)",
                     best["val/mre"]["value"], baseline["mre"], ratio)
    for key, value in (record.get("test", {}).get("metrics") or {}).items():
        table.add_row(key, _fmt(float(value)))
    table.add_row("train time [s]", _fmt(record.get("train_time_s")))
    table.add_row("parameters", f"{record['params']['total']:,}")
    rich.print(table)
