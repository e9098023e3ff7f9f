"""``evaluate(cfg)``: the body of ``eval.py``. Scores a checkpoint on a split of its data, or of new data.

Works for every task: the model and task come from the checkpoint's stored config, the metrics and
the per-item tables (``per_landmark.csv``, ``per_class.csv``, ...) from the task's own hooks.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning.pytorch as pl
import rich
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from hrexp.run_record import write_json
from hrexp.training.build import ConfigError, build_datamodule, build_loggers, build_module
from hrexp.training.checkpoint_config import upgrade_targets
from hrexp.training.checkpoint_io import read_checkpoint, weight_mismatch
from hrexp.training.train_run import seed_run
from hrexp.utils.config_tree import print_and_save_config
from hrexp.utils.hydra_runtime import runtime_choices

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an hrexp checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "hrexp" not in ckpt or "config" not in ckpt["hrexp"]:
        raise ConfigError(f"ckpt_path={str(path)!r}: not an hrexp checkpoint (no stored run config)")
    return ckpt


def run_config_for_eval(ckpt: dict[str, Any], cfg: DictConfig) -> DictConfig:
    """The training run's config, with this command's ``data`` when one was given, and its ``speed``.

    How the network runs (channels_last, torch.compile) is this command's choice, not the training
    run's: a checkpoint trained with ``trainer=gpu_fast`` is evaluated uncompiled by default. Class paths of checkpoints written by earlier hrexp versions are mapped to today's.
    """
    run_cfg = OmegaConf.create(upgrade_targets(ckpt["hrexp"]["config"]))
    if "pretrained" in run_cfg.model:
        # The checkpoint holds the trained weights: the initial ones need not (and may no longer) exist.
        run_cfg.model.pretrained = False
    run_cfg.speed = OmegaConf.to_container(cfg.speed) if cfg.get("speed") is not None else None
    if cfg.get("data") is not None:
        # Resolve in this command's context (its paths), then hand it to the run's config.
        run_cfg.data = OmegaConf.to_container(cfg.data, resolve=True)
        run_cfg.choices.data = runtime_choices().get("data") or run_cfg.choices.data
    return run_cfg


def _describe_meta(meta: Mapping[str, Any]) -> str:
    """The counts of a dataset_meta (``num_keypoints=40``, ``num_classes=2``): what a head's size follows."""
    counts = [f"{k}={v}" for k, v in meta.items() if k.startswith("num_") and isinstance(v, int)]
    return ", ".join(counts) or "no counts recorded"


def load_weights(module: torch.nn.Module, ckpt: dict[str, Any], run_cfg: DictConfig, ckpt_path: str,
                 dataset_meta: Mapping[str, Any]) -> None:
    """Load the checkpoint's weights strictly; a mismatch says what the checkpoint was trained for.

    Raises:
        ConfigError: The weights do not fit the model built for this data (e.g. 40 landmarks in the
            checkpoint, 68 in the data; 2 classes against 3), naming both and the first mismatches.
    """
    state = ckpt["state_dict"]
    problems = weight_mismatch(state, module.state_dict())
    if not problems:
        module.load_state_dict(state, strict=True)
        return
    stored = ckpt["hrexp"]["config"].get("choices", {})
    trained_on = ckpt["hrexp"].get("dataset_meta")
    trained = f" ({_describe_meta(trained_on)})" if trained_on else ""
    raise ConfigError(
        f"ckpt_path={ckpt_path}: its weights do not fit the model built for this data. The checkpoint is "
        f"model={stored.get('model')} task={stored.get('task')} trained on data={stored.get('data')}{trained}; "
        f"the data now is data={run_cfg.choices.data} ({_describe_meta(dataset_meta)}). Differences: "
        + "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
    )


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


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path``; write the task's tables and ``summary.json`` to the run folder."""
    out_dir = Path(cfg.paths.output_dir)
    # Under DDP (trainer=ddp_cpu / ddp) every rank runs this; only rank 0 writes the run folder.
    if rank_zero_only.rank == 0:
        print_and_save_config(cfg, out_dir)
    seed_run(cfg.get("seed"))
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r}: expected 'test' or 'val'")
    ckpt = load_checkpoint(cfg.ckpt_path)
    run_cfg = run_config_for_eval(ckpt, cfg)

    datamodule = build_datamodule(run_cfg.data)
    module = build_module(run_cfg, datamodule)
    load_weights(module, ckpt, run_cfg, str(cfg.ckpt_path), datamodule.dataset_meta)

    trainer = instantiate(cfg.trainer, logger=build_loggers(cfg.get("logger")) or False, callbacks=[RichProgressBar()])
    split = datamodule.test_split_name if cfg.split == "test" else "val"
    # Which weights the checkpoint's state_dict holds (EMA-trained runs store the average there).
    weights = dict(ckpt["hrexp"].get("weights") or {"kind": "raw"})
    rich.print(f"[bold]Evaluating checkpoint[/bold] {cfg.ckpt_path} ({weights['kind']} weights) on the {split} split")
    results = trainer.test(module, datamodule=SplitAsTest(datamodule, cfg.split), verbose=True)
    metrics = {k.replace("test/", f"{split}/", 1): float(v) for k, v in (results[0] if results else {}).items()}

    tables = {name: str(out_dir / f"{name}.csv") for name in module.eval_tables}
    summary = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "split": split,
        "choices": OmegaConf.to_container(run_cfg.choices),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "weights": weights,
        "metrics": metrics,
        "metric_modes": {name: mode for name in metrics
                         if (mode := module.task.metric_mode(name.replace(f"{split}/", "test/", 1))) is not None},
        "tables": tables,
    }
    if trainer.is_global_zero:
        for name, rows in module.eval_tables.items():
            write_table_csv(Path(tables[name]), rows)
        write_json(out_dir / "summary.json", summary)
    return summary


def write_table_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One CSV row per item; the columns of the first row in order; None and NaN as empty cells."""
    columns = list(rows[0]) if rows else []
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else repr(value)  # full precision: the file is data, not a display
    return str(value)
