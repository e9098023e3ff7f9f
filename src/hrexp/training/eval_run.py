"""``evaluate(cfg)``: the body of ``eval.py``. Scores a checkpoint on a split of its data, or of new data."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import rich
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig, OmegaConf

from hrexp.training.build import ConfigError, build_datamodule, build_loggers, build_module
from hrexp.training.run_record import write_json
from hrexp.training.train_run import seed_run
from hrexp.utils.config_tree import print_and_save_config
from hrexp.utils.hydra_runtime import runtime_choices

log = logging.getLogger(__name__)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an hrexp checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(path)!r}: no such checkpoint file")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "hrexp" not in ckpt or "config" not in ckpt["hrexp"]:
        raise ConfigError(f"ckpt_path={str(path)!r}: not an hrexp checkpoint (no stored run config)")
    return ckpt


def run_config_for_eval(ckpt: dict[str, Any], cfg: DictConfig) -> DictConfig:
    """The training run's config, with this command's ``data`` when one was given."""
    run_cfg = OmegaConf.create(ckpt["hrexp"]["config"])
    if "pretrained" in run_cfg.model:
        # The checkpoint holds the trained weights: the initial ones need not (and may no longer) exist.
        run_cfg.model.pretrained = False
    if cfg.get("data") is not None:
        # Resolve in this command's context (its paths), then hand it to the run's config.
        run_cfg.data = OmegaConf.to_container(cfg.data, resolve=True)
        run_cfg.choices.data = runtime_choices().get("data") or run_cfg.choices.data
    return run_cfg


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path``; write ``per_landmark.csv`` and ``summary.json`` to the run folder."""
    out_dir = Path(cfg.paths.output_dir)
    print_and_save_config(cfg, out_dir)
    seed_run(cfg.get("seed"))
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split!r}: expected 'test' or 'val'")
    ckpt = load_checkpoint(cfg.ckpt_path)
    run_cfg = run_config_for_eval(ckpt, cfg)

    datamodule = build_datamodule(run_cfg.data)
    module = build_module(run_cfg, datamodule)
    try:
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path}: its weights do not fit the model built for this data "
            f"(trained with {run_cfg.choices.model} on {ckpt['hrexp']['config']['choices']['data']}, "
            f"landmarks now: {module.task.num_keypoints}): {err}"
        ) from err

    trainer = instantiate(cfg.trainer, logger=build_loggers(cfg.get("logger")) or False, callbacks=[RichProgressBar()])
    split = cfg.split
    if split == "test":
        loader = datamodule.test_dataloader()
        split = getattr(datamodule, "test_split_name", "test")
    else:
        loader = datamodule.val_dataloader()
    # Which weights the checkpoint's state_dict holds (EMA-trained runs store the average there).
    weights = dict(ckpt["hrexp"].get("weights") or {"kind": "raw"})
    rich.print(f"[bold]Evaluating checkpoint[/bold] {cfg.ckpt_path} ({weights['kind']} weights) on the {split} split")
    results = trainer.test(module, dataloaders=loader, verbose=True)
    metrics = {k.replace("test/", f"{split}/"): float(v) for k, v in (results[0] if results else {}).items()}

    per_landmark = getattr(module, "test_per_landmark", {})
    names = list(getattr(module.task, "keypoint_names", []))
    if per_landmark and names:
        write_per_landmark_csv(out_dir / "per_landmark.csv", names, per_landmark)
    summary = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "split": split,
        "choices": OmegaConf.to_container(run_cfg.choices),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "weights": weights,
        "metrics": metrics,
    }
    write_json(out_dir / "summary.json", summary)
    return summary


def write_per_landmark_csv(path: Path, names: list[str], per_landmark: dict[str, torch.Tensor]) -> Path:
    """One row per landmark, one column per per-landmark quantity (e.g. ``mre``, ``mre_mm``)."""
    columns = list(per_landmark)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["landmark", *columns])
        for i, name in enumerate(names):
            writer.writerow([name, *(_cell(per_landmark[c][i]) for c in columns)])
    return path


def _cell(value: torch.Tensor) -> str:
    v = float(value)
    return "" if v != v else f"{v:.6g}"
