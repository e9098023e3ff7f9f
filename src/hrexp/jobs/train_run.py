"""``train(cfg)``: the body of ``train.py``, importable so tests and sweeps call the same code."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import lightning.pytorch as pl
import rich
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from hrexp.callbacks.best_metrics import BestMetrics
from hrexp.callbacks.time_budget import TimeBudget
from hrexp.errors import ConfigError, user_error
from hrexp.jobs.resume import check_resumable, continue_wandb_run, resolve_ckpt_path
from hrexp.models.complexity import count_macs, count_parameters, parameter_counts
from hrexp.run_record import Best, CheckpointInfo, Monitor, RunRecord, TestResult, write_record
from hrexp.training.build import Callbacks, build_callbacks, build_datamodule, build_loggers, build_module, choices
from hrexp.training.module import HRExpModule
from hrexp.training.precision import (MixedPrecisionFloat32Validation, fit_precision_plugin, precision_plugin,
                                     resolve_precision)
from hrexp.utils.config_tree import print_and_save_config
from hrexp.utils.hydra_runtime import in_multirun

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


def _record_header(cfg: DictConfig, status: str) -> RunRecord:
    """The fields that open every run record, finished or failed: what ran, where, and what it follows."""
    monitor = (cfg.get("task") or {}).get("monitor") or {}
    return RunRecord(
        status=status,
        choices=choices(cfg),
        seed=cfg.get("seed"),
        tags=list(cfg.get("tags") or []),
        output_dir=str(_output_dir(cfg)),
        # A failing config may hold a bad mode: the record then says nothing rather than fail too.
        monitor=Monitor(str(monitor["metric"]), str(monitor["mode"])) if monitor.get("mode") in ("min", "max") else None,
    )


def finish_wandb(exit_code: int) -> None:
    """Close the process's W&B run, if any, so the next job of a sweep opens its own and a crash shows."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=exit_code)


def open_failed_wandb_run(cfg: DictConfig, error: str) -> None:
    """A job that failed before its W&B run started (bad config or data) still gets one, in the sweep's
    group, with the error in its summary, so W&B shows every job of a sweep; :func:`finish_wandb`
    then closes it as failed."""
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    module = sys.modules.get("wandb")
    if wandb_cfg is None or (module is not None and getattr(module, "run", None) is not None):
        return
    try:
        logger = instantiate(wandb_cfg, log_model=False)
        logger.experiment.summary["error"] = error
        logger.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True)})
    except Exception as exc:  # the job already failed: say why W&B could not record it, do not mask the error
        log.warning("could not open a W&B run for the failed job: %s", exc)


class RunFolderInUse(ConfigError):
    """The run folder holds another run's checkpoints and this run would overwrite them."""


def check_run_folder(out_dir: Path, resuming: bool) -> None:
    """A new run never writes over another run's checkpoints (``hydra.run.dir`` reused): refuse, saying so.

    Raises:
        RunFolderInUse: ``out_dir/checkpoints`` holds checkpoint files and this run does not resume them.
    """
    folder = out_dir / "checkpoints"
    existing = sorted(p.name for p in folder.glob("*.ckpt")) if folder.is_dir() else []
    if existing and not resuming:
        raise RunFolderInUse(
            f"hydra.run.dir={out_dir} already holds the checkpoints of another run ({', '.join(existing[:3])}"
            f"{', ...' if len(existing) > 3 else ''}): a new run there would overwrite them; continue that run with "
            "ckpt_path=last, or choose another folder"
        )


def describe_error(err: BaseException, cfg: DictConfig) -> str:
    """The record's one-line account of why a run stopped."""
    if isinstance(err, SIGTERMException):
        return (f"SIGTERM: the run was told to stop (pre-emption or a scheduler's kill); a resumable checkpoint was "
                f"written: continue with hydra.run.dir={_output_dir(cfg)} ckpt_path=last")
    return f"{type(err).__name__}: {err}"


def run_job(cfg: DictConfig) -> float | None:
    """The body of ``train.py``: train and return the value a sweeper optimises.

    Returns the best value of the task's monitored metric (``val/mre`` for landmarks). A job that
    fails writes ``results.json`` with ``status: failed`` and the error. In a multirun it then
    returns NaN, so the sweep goes on (Hydra's sweepers stop at the first exception; Optuna marks a
    NaN trial as failed); a single run re-raises.
    """
    try:
        record = train(cfg)
    except (Exception, SIGTERMException) as err:  # SIGTERMException is a SystemExit: named here
        # Bad input: its message alone (the traceback is in results.json, and on screen with HYDRA_FULL_ERROR=1).
        show_traceback = user_error(err) is None or os.environ.get("HYDRA_FULL_ERROR") == "1"
        log.error("run failed: %s", describe_error(err, cfg), exc_info=show_traceback)
        if rank_zero_only.rank == 0 and not isinstance(err, RunFolderInUse):  # that folder's record is not ours
            record = _record_header(cfg, "failed")
            record.error, record.traceback = describe_error(err, cfg), traceback.format_exc()
            write_record(_output_dir(cfg), record)
            open_failed_wandb_run(cfg, record.error)
        finish_wandb(exit_code=1)
        if isinstance(err, SIGTERMException):
            # A pre-empted job (a sweep too) stops, resumable, with the shell's code for SIGTERM: Lightning's
            # exception is a SystemExit without a code, which would exit 0.
            raise SIGTERMException(128 + 15) from err
        if in_multirun():
            return math.nan
        raise
    finish_wandb(exit_code=0)
    best = record.best.get(record.headline or "")
    return None if best is None else best.value


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
    precision, why = resolve_precision(cfg.trainer.get("precision", 32), cfg.trainer.get("accelerator", "auto"),
                                       input_size=datamodule.input_size)
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=[*callbacks.by_name.values(), *extra_callbacks], logger=loggers or False,
        precision=precision,
    )
    # Validation in float32 by default (val_precision), as the end-of-run test and eval.py score.
    fit_plugin = fit_precision_plugin(trainer.precision, trainer.strategy.root_device.type,
                                      cfg.get("val_precision", "32"))
    if fit_plugin is not None:
        trainer.strategy.precision_plugin = fit_plugin
    if rank_zero_only.rank == 0:
        validation = "32" if fit_plugin is not None else f"{trainer.precision}, the fit's"
        rich.print(f"[bold]Precision[/bold] {trainer.precision} ({why}); validation in {validation}")
    return RunParts(datamodule, module, callbacks, loggers, trainer)


def _metric_modes(task: Any, names: Sequence[str]) -> dict[str, str]:
    """The direction of each logged validation/test value, as its metric declares it."""
    modes = {}
    for name in sorted(names):
        mode = task.metric_mode(name) if name.startswith(("val/", "test/")) else None
        if mode is not None:
            modes[name] = mode
    return modes


def train(cfg: DictConfig) -> RunRecord:
    """Validate, build, train, test and record one run. Returns the run record."""
    out_dir = _output_dir(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    check_run_folder(out_dir, resuming=ckpt_path is not None)
    if ckpt_path is not None and Path(ckpt_path).resolve().is_relative_to(out_dir.resolve()):
        continue_wandb_run(cfg)  # resuming in its own folder: the same W&B run
    if rank_zero_only.rank == 0:
        print_and_save_config(cfg, out_dir)
    datamodule, module, callbacks, loggers, trainer = build_run(cfg)

    record = _record_header(cfg, "running")
    record.monitor = Monitor(**module.task.monitor)
    record.params = parameter_counts(module)
    record.params_backbone = count_parameters(module.backbone)
    # For comparison tables: the input the model sees and its cost there.
    record.input_size = [int(v) for v in datamodule.input_size]
    record.macs_g = count_macs(module, (1, 3, *record.input_size)) / 1e9
    record.pretrained = cfg.model.get("pretrained", False)
    record.dataset_meta = dict(datamodule.dataset_meta)
    # data.batch_size is per process (Lightning's convention): what one optimizer step sees is more.
    record.precision = str(trainer.precision)
    validates_in_32 = isinstance(trainer.strategy.precision_plugin, MixedPrecisionFloat32Validation)
    record.val_precision = "32" if validates_in_32 else record.precision
    record.global_batch_size = datamodule.batch_size * trainer.world_size * trainer.accumulate_grad_batches
    log.info("batch: %d per process x %d processes x %d accumulated = %d samples per optimizer step",
             datamodule.batch_size, trainer.world_size, trainer.accumulate_grad_batches, record.global_batch_size)
    for lg in loggers:
        lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True), "params": record.params,
                            "global_batch_size": record.global_batch_size})

    if ckpt_path is not None and cfg.get("train"):
        check_resumable(ckpt_path, module)
    t0 = time.time()
    if cfg.get("train"):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    record.train_time_s = time.time() - t0
    record.trained_steps, record.trained_epochs = int(trainer.global_step), int(trainer.current_epoch)
    record.param_groups = module.param_group_summary
    record.skipped_batches = module.skipped_batches
    budget = next((cb for cb in callbacks.by_name.values() if isinstance(cb, TimeBudget)), None)
    record.time_budget = None if budget is None else budget.summary
    logged = set(trainer.callback_metrics)

    best = next((cb for cb in callbacks.by_name.values() if isinstance(cb, BestMetrics)), None)
    record.best = {metric: Best(**rec) for metric, rec in (best.best if best else {}).items()}
    record.checkpoints = {
        name: CheckpointInfo(path=cb.best_model_path or None, monitor=cb.monitor,
                             score=None if cb.best_model_score is None else float(cb.best_model_score))
        for name, cb in callbacks.checkpoints().items()
    }
    record.baselines = module.task.baselines(datamodule)

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
        # inference precision: test_precision (default 32, as eval.py's), not necessarily the fit's
        test_precision, why = resolve_precision(cfg.get("test_precision", "32"), cfg.trainer.get("accelerator", "auto"),
                                                stored=record.precision, option="test_precision",
                                                input_size=record.input_size)
        trainer.strategy.precision_plugin = precision_plugin(test_precision, trainer.strategy.root_device.type)
        record.test_precision = str(trainer.precision)
        if rank_zero_only.rank == 0:
            rich.print(f"[bold]Test precision[/bold] {record.test_precision} ({why}; test_precision)")
        results = trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
        record.test = TestResult(checkpoint=ckpt, split=datamodule.test_split_name, metrics=metrics)
        logged |= set(metrics)

    record.metric_modes = _metric_modes(module.task, [*logged, *record.best])
    record.status = "finished"
    if trainer.is_global_zero:
        write_record(out_dir, record)
        _print_summary(record, module.task.summary_rows(record))
    return record


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_summary(record: RunRecord, task_rows: Sequence[tuple[str, str]]) -> None:
    """The run's best values, the task's own lines (baselines), the test metrics, time and size."""
    table = Table(title=f"Run summary: {record.choices.get('model')} / {record.choices.get('task')}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for name, best in record.best.items():
        table.add_row(f"best {name} (epoch {best.epoch})", _fmt(best.value))
    for quantity, value in task_rows:
        table.add_row(quantity, value)
        log.info("%s: %s", quantity, value)
    for key, value in (record.test.metrics if record.test else {}).items():
        table.add_row(key, _fmt(float(value)))
    table.add_row("train time [s]", _fmt(record.train_time_s))
    table.add_row("parameters", f"{record.params['total']:,}" if record.params else "-")
    rich.print(table)
