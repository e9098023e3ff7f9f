"""``evaluate(cfg)``: the body of ``eval.py``. Scores a checkpoint on a split of its data, or of new data.

Works for every task: the model and task come from the checkpoint's stored config, the metrics and
the per-item tables (``per_landmark.csv``, ``per_class.csv``, ...) from the task's own hooks.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
import rich
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from hrexp.conformal.calibration import Calibration, calibration_path, fit
from hrexp.conformal.regions import SHAPES
from hrexp.errors import ConfigError
from hrexp.evaluation.context import ReportContext, ReportOptions
from hrexp.evaluation.regions import RELIABILITY_LEVELS, assess, spacing_of
from hrexp.evaluation.tables import write_table_csv
from hrexp.jobs.eval_data import EvalData, command_data_keys, eval_data, show
from hrexp.jobs.train_run import seed_run
from hrexp.reports.html_report import Section, TableBlock, write_html
from hrexp.reports.markdown_report import write_markdown
from hrexp.run_record import write_json
from hrexp.tasks.base import Task
from hrexp.training.build import build_datamodule, build_loggers
from hrexp.training.checkpoint_config import rebuild_config
from hrexp.training.checkpoint_model import describe_meta, load_checkpoint, module_from_checkpoint
from hrexp.training.precision import resolve_precision
from hrexp.utils.config_tree import print_and_save_config
from hrexp.utils.hydra_runtime import runtime_choices

log = logging.getLogger(__name__)


def run_config_for_eval(ckpt: dict[str, Any], cfg: DictConfig, ckpt_path: str = "ckpt_path") -> DictConfig:
    """The training run's config, with this command's ``data`` when one was given, and its ``speed``.

    How the network runs (channels_last, torch.compile) is this command's choice, not the training
    run's: a checkpoint trained with ``trainer=gpu_fast`` is evaluated uncompiled by default. Class paths of
    checkpoints written by earlier hrexp versions are mapped to today's. The data: see :func:`eval_config`.
    """
    return eval_config(ckpt, cfg, ckpt_path)[0]


def eval_config(ckpt: dict[str, Any], cfg: DictConfig, ckpt_path: str) -> tuple[DictConfig, EvalData | None]:
    """:func:`run_config_for_eval` and how its data came about (None: the checkpoint's own data, untouched).

    ``data.<key>=...`` alone changes those keys of the checkpoint's stored data config; a data group given whole
    takes what the network depends on from the checkpoint (:mod:`hrexp.jobs.eval_data`).

    Raises:
        ConfigError: A data key the checkpoint's datamodule does not have, or one the network depends on given
            with another value than the checkpoint's (naming both).
    """
    run_cfg = rebuild_config(ckpt)
    run_cfg.speed = OmegaConf.to_container(cfg.speed) if cfg.get("speed") is not None else None
    data = eval_data(run_cfg.data, cfg.get("data"), ckpt_path=ckpt_path,
                     stored_choice=run_cfg.get("choices", {}).get("data"),
                     choice=runtime_choices().get("data"), command_keys=command_data_keys())
    if data is not None:
        run_cfg.data = data.config
        if data.choice is not None:
            run_cfg.choices.data = data.choice
    return run_cfg, data


class SplitAsTest(pl.LightningDataModule):
    """One split of a set-up datamodule served as the test split.

    The loader is asked for inside ``trainer.test``, after the DDP processes are up, so that under
    ``trainer=ddp_cpu`` / ``ddp`` each sample is scored on exactly one process.
    """

    def __init__(self, datamodule: Any, split: str):
        super().__init__()
        self.datamodule, self.split = datamodule, split

    def test_dataloader(self) -> Any:
        return self.datamodule.dataloader(self.split)


def checkpoint_paths(value: Any) -> list[str]:
    """``ckpt_path``: one file, a list of files, or a glob (a seed ensemble's members), in a stable order.

    Raises:
        ConfigError: A glob that matches no file, or an empty list.
    """
    items = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    paths: list[str] = []
    for item in items:
        text = str(item)
        if any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text))
            if not matches:
                raise ConfigError(f"ckpt_path={text!r}: the pattern matches no file")
            paths.extend(matches)
        else:
            paths.append(text)
    if not paths:
        raise ConfigError("ckpt_path=[]: expected a checkpoint file, a list of them or a glob")
    return paths


@dataclass
class Member:
    """One evaluated checkpoint: its path, stored weights kind, metrics and per-sample results."""

    path: str
    ckpt: dict[str, Any]
    metrics: dict[str, float]
    samples: list[dict[str, Any]]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` (one checkpoint or a seed ensemble); write the task's tables, the report
    (``report.html`` with its CSVs and PNGs, ``report.json``) and ``summary.json`` to the run folder."""
    out_dir = Path(cfg.paths.output_dir)
    # Under DDP (trainer=ddp_cpu / ddp) every rank runs this; only rank 0 writes the run folder.
    if rank_zero_only.rank == 0:
        print_and_save_config(cfg, out_dir)
    seed_run(cfg.get("seed"))
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r}: expected 'test' or 'val'")
    options = report_options(cfg.get("report"))
    paths = checkpoint_paths(cfg.ckpt_path)
    checkpoints = [load_checkpoint(path) for path in paths]  # every member readable before any work
    check_members(paths, checkpoints)
    run_cfg, data = eval_config(checkpoints[0], cfg, paths[0])
    if data is not None and data.from_checkpoint:
        rich.print(f"[bold]Data[/bold] data={run_cfg.choices.get('data')} with the checkpoint's "
                   + " ".join(f"data.{k}={show(v)}" for k, v in data.from_checkpoint.items()))

    datamodule = build_datamodule(run_cfg.data)
    conformal = conformal_options(cfg.get("conformal"))
    calibration, calibration_file = None, None
    if conformal.calibrate:
        datamodule.setup("test")
        scored = datamodule.test_split_name if cfg.split == "test" else "val"
        if scored == "val":
            raise ConfigError(f"conformal.calibrate=val with split={cfg.split}: the scored split is the val split "
                              f"itself ({'the data has no test split' if cfg.split == 'test' else 'split=val'}); "
                              "regions must be scored on other images than they were calibrated on (carve a test "
                              "split, e.g. data.test_fraction=0.15 when training)")
        rich.print("[bold]Conformal calibration[/bold] on the val split")
        cal_members, cal_module, _ = score_members(paths, checkpoints, cfg, datamodule, "val", collect=True)
        cal_task = cal_module.task
        check_conformal_task(cal_task, cal_members[0].samples)
        cal_samples = (cal_members[0].samples if len(cal_members) == 1 else
                       cal_task.combine_members([m.samples for m in cal_members]))
        source = {"split": "val", "checkpoint": [str(Path(p).resolve()) for p in paths],
                  "date": datetime.now().isoformat(timespec="seconds")}
        calibration = fit(cal_samples, cal_task.keypoint_names, calibration_levels(conformal.levels), conformal.shapes,
                          conformal.per_landmark, source=source)
        if rank_zero_only.rank == 0:
            calibration.save(out_dir / "conformal.json")
            calibration_file = calibration_path(paths[0]) if len(paths) == 1 else out_dir / "conformal.json"
            calibration.save(calibration_file)
            rich.print(f"[bold]Conformal calibration[/bold] written to {calibration_file}")
    elif len(paths) == 1 and calibration_path(paths[0]).is_file():
        calibration_file = calibration_path(paths[0])
        calibration = Calibration.load(calibration_file)
    members, module, trainer = score_members(paths, checkpoints, cfg, datamodule, cfg.split,
                                             collect=options is not None or len(paths) > 1 or calibration is not None)
    task = module.task
    split = datamodule.test_split_name if cfg.split == "test" else "val"
    if len(members) == 1:
        metrics, samples = members[0].metrics, members[0].samples
    else:
        samples = task.combine_members([m.samples for m in members])
        metrics = {f"{split}/{k}": v for k, v in task.score_samples(samples).items()}

    tables = {name: str(out_dir / f"{name}.csv") for name in module.eval_tables} if len(members) == 1 else {}
    ckpt = members[0].ckpt
    summary: dict[str, Any] = {
        "checkpoint": str(Path(members[0].path).resolve()) if len(members) == 1 else
        [str(Path(m.path).resolve()) for m in members],
        "split": split,
        "precision": str(trainer.precision),
        "choices": OmegaConf.to_container(run_cfg.choices),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "weights": dict(ckpt["hrexp"].get("weights") or {"kind": "raw"}),
        "metrics": metrics,
        "metric_modes": {name: mode for name in metrics
                         if (mode := task.metric_mode(name.replace(f"{split}/", "test/", 1))) is not None},
        "tables": tables,
        # what was scored: the split's samples at this input size; this command's data.<key> values, and what a
        # data group given whole took from the checkpoint
        "data": {"samples": len(datamodule.datasets["test" if cfg.split == "test" else "val"]),
                 "input_size": input_size(datamodule), "given": {} if data is None else data.given,
                 "from_checkpoint": {} if data is None else data.from_checkpoint},
    }
    if len(members) > 1:
        summary["ensemble"] = {"members": [{"checkpoint": str(Path(m.path).resolve()), "metrics": m.metrics}
                                           for m in members],
                               "combined": "mean of the members' predictions (task.combine_members)"}
    if calibration is not None:
        check_conformal_task(task, samples)
        spacing = spacing_of(samples)
        summary["conformal"] = {"calibration": str(calibration_file), "calibrated_on": calibration.source,
                                "levels": list(conformal.levels),
                                "regions": assess(samples, calibration, conformal.levels, spacing)}
    if trainer.is_global_zero:
        if len(members) == 1:
            for name, rows in module.eval_tables.items():
                write_table_csv(Path(tables[name]), rows)
        if options is not None:
            context = ReportContext(out_dir, module, datamodule, cfg.split, options, metrics, calibration=calibration,
                                    calibration_levels=conformal.levels)
            summary["report"] = str(write_report(task, samples, context, summary, members))
        write_json(out_dir / "summary.json", summary)
    return summary


def score_members(paths: Sequence[str], checkpoints: Sequence[dict[str, Any]], cfg: DictConfig, datamodule: Any,
                  which: str, collect: bool) -> tuple[list[Member], Any, Any]:
    """Score every checkpoint of ``paths`` on split ``which`` (test or val) of ``datamodule``: the members, the
    last member's module (it draws the report's heatmaps and features) and its trainer. ``collect``: keep each
    member's per-sample results."""
    members: list[Member] = []
    module = trainer = None
    for path, ckpt in zip(paths, checkpoints):
        member_cfg = run_config_for_eval(ckpt, cfg, path)
        module = module_from_checkpoint(path, ckpt=ckpt, run_cfg=member_cfg, data=datamodule).module
        if len(paths) > 1 and type(module.task).score_samples is Task.score_samples:
            raise ConfigError(f"ckpt_path: {len(paths)} checkpoints (a seed ensemble), but task="
                              f"{member_cfg.choices.get('task')} cannot score a combined prediction; give one checkpoint")
        module.collect_samples = collect
        precision, why = resolve_precision(cfg.get("precision", "32"), cfg.trainer.get("accelerator", "auto"),
                                           stored=OmegaConf.select(member_cfg, "trainer.precision"), option="precision",
                                           input_size=datamodule.input_size)
        rich.print(f"[bold]Precision[/bold] {precision} ({why})")
        trainer = instantiate(cfg.trainer, logger=build_loggers(cfg.get("logger")) or False,
                              callbacks=[RichProgressBar()], precision=precision)
        split = datamodule.test_split_name if which == "test" else "val"
        weights = dict(ckpt["hrexp"].get("weights") or {"kind": "raw"})
        rich.print(f"[bold]Evaluating checkpoint[/bold] {path} ({weights['kind']} weights) on the {split} split")
        results = trainer.test(module, datamodule=SplitAsTest(datamodule, which), verbose=True)
        metrics = {k.replace("test/", f"{split}/", 1): float(v) for k, v in (results[0] if results else {}).items()}
        members.append(Member(path, ckpt, metrics, module.eval_samples))
        if len(paths) > 1 and path != paths[-1]:
            module.eval_samples = []
    assert module is not None and trainer is not None
    return members, module, trainer


@dataclass
class ConformalOptions:
    """eval.yaml's ``conformal`` (see there)."""

    calibrate: str | None = None
    levels: tuple[float, ...] = (0.9, 0.95)
    shapes: tuple[str, ...] = SHAPES
    per_landmark: bool = True


def conformal_options(value: Any) -> ConformalOptions:
    """``conformal`` of eval.yaml, checked.

    Raises:
        ConfigError: an unknown key, a level outside (0, 1), an unknown shape or calibration source, naming it.
    """
    given = {} if value is None else (OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig)
                                      else dict(value))
    known = {f.name for f in dataclasses.fields(ConformalOptions)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"conformal.{unknown[0]}: unknown option; expected one of {', '.join(sorted(known))}")
    levels = given.get("levels", ConformalOptions.levels)
    if not isinstance(levels, (list, tuple)) or not levels or not all(
            isinstance(l, (int, float)) and not isinstance(l, bool) and 0 < l < 1 for l in levels):
        raise ConfigError(f"conformal.levels={levels!r}: expected a list of coverages between 0 and 1, e.g. [0.9, 0.95]")
    shapes = given.get("shapes", list(SHAPES))
    if not isinstance(shapes, (list, tuple)) or not shapes or any(s not in SHAPES for s in shapes):
        raise ConfigError(f"conformal.shapes={shapes!r}: expected some of {list(SHAPES)}")
    calibrate = given.get("calibrate")
    if calibrate not in (None, "val"):
        raise ConfigError(f"conformal.calibrate={calibrate!r}: expected val (calibrate on the val split) or null")
    return ConformalOptions(calibrate, tuple(float(l) for l in levels), tuple(shapes), bool(given.get("per_landmark", True)))


def calibration_levels(levels: Sequence[float]) -> list[float]:
    """The configured levels and those of the report's reliability plot, sorted."""
    return sorted({*(float(l) for l in levels), *RELIABILITY_LEVELS})


def check_conformal_task(task: Any, samples: Sequence[Mapping[str, Any]]) -> None:
    """Conformal regions are for landmark tasks (one point per landmark and image, with its truth).

    Raises:
        ConfigError: another task, naming it.
    """
    if not hasattr(task, "keypoint_names") or (samples and "keypoints_orig" not in samples[0]):
        raise ConfigError(f"conformal.calibrate: prediction regions are for landmark tasks; this checkpoint's task is "
                          f"{getattr(task, 'task_name', type(task).__name__)!r}")


def input_size(datamodule: Any) -> list[int] | None:
    """The network input ``[height, width]`` the datamodule serves (None when its family does not say)."""
    try:
        return [int(s) for s in datamodule.input_size]
    except (AttributeError, NotImplementedError, TypeError):
        return None


def report_options(value: Any) -> ReportOptions | None:
    """``report`` of eval.yaml as :class:`ReportOptions`; None when ``report.enabled=false``.

    Raises:
        ConfigError: an unknown key or a bad value, naming it.
    """
    if value is None:
        return None
    given = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else dict(value)
    if not given.pop("enabled", True):
        return None
    known = {f.name for f in dataclasses.fields(ReportOptions)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"report.{unknown[0]}: unknown report option; expected one of enabled, {', '.join(sorted(known))}")
    if not isinstance(given.get("gallery", 0), int) or given.get("gallery", 0) < 0:
        raise ConfigError(f"report.gallery={given['gallery']!r}: expected a number of images >= 0")
    for key in ("heatmaps",):
        if not isinstance(given.get(key, []), list):
            raise ConfigError(f"report.{key}={given[key]!r}: expected a list of sample indices or image file names")
    features = given.get("features", False)
    if not isinstance(features, (bool, list)):
        raise ConfigError(f"report.features={features!r}: expected true (the worst image), false, or a list of "
                          "sample indices or image file names")
    return ReportOptions(**given)


def check_members(paths: Sequence[str], checkpoints: Sequence[dict[str, Any]]) -> None:
    """An ensemble's members must be one task on one data (the same keypoints or classes).

    Raises:
        ConfigError: A member trained for another task or data, naming both checkpoints.
    """
    first = checkpoints[0]["hrexp"]
    for path, ckpt in zip(paths[1:], checkpoints[1:]):
        info = ckpt["hrexp"]
        for key in ("task", "data"):
            a, b = first["config"].get("choices", {}).get(key), info["config"].get("choices", {}).get(key)
            if a != b:
                raise ConfigError(f"ckpt_path: ensemble members differ: {paths[0]} is {key}={a}, {path} is {key}={b}")
        if (first.get("dataset_meta") or {}) != (info.get("dataset_meta") or {}):
            raise ConfigError(f"ckpt_path: ensemble members differ: {path} was trained on other keypoints or classes "
                              f"than {paths[0]} ({describe_meta(info.get('dataset_meta') or {})} against "
                              f"{describe_meta(first.get('dataset_meta') or {})})")


def write_report(task: Any, samples: list[dict[str, Any]], context: ReportContext, summary: Mapping[str, Any],
                 members: Sequence[Member]) -> Path:
    """The task's report sections after a summary section, as ``report.html`` and ``report.md``; what it chose
    in ``report.json``."""
    out_dir = context.out_dir
    metric_rows = [{"metric": name, "value": value, "better": summary["metric_modes"].get(name, "")}
                   for name, value in summary["metrics"].items()]
    sections = [Section("Summary", tables=[TableBlock("Metrics", metric_rows, max_rows=None)])]
    if len(members) > 1:
        rows = [{"member": Path(m.path).name, **{k: v for k, v in m.metrics.items()}} for m in members]
        sections[0].tables.append(TableBlock("Ensemble members (each alone)", rows, max_rows=None))
        sections[0].text = (f"A seed ensemble of {len(members)} checkpoints: the report scores the mean of their "
                            "predictions; their spread is an uncertainty (below).")
    if samples:
        sections.extend(task.report(samples, context))
    checkpoint = summary["checkpoint"]
    meta = {"checkpoint": checkpoint if isinstance(checkpoint, str) else f"{len(checkpoint)} checkpoints (ensemble)",
            "split": summary["split"], "samples": str(len(samples)),
            "model": str(summary["choices"].get("model")), "task": str(summary["choices"].get("task")),
            "data": str(summary["choices"].get("data")), "written": datetime.now().isoformat(timespec="seconds")}
    title = f"Evaluation: {meta['model']} on {meta['data']} ({meta['split']})"
    path = write_html(out_dir / "report.html", title, sections, meta)
    write_markdown(out_dir / "report.md", title, sections, meta)
    write_json(out_dir / "report.json", {"html": path.name, "samples": len(samples), **context.facts})
    rich.print(f"[bold]Report[/bold] {path}")
    return path
