"""Resuming a run in its own folder: which checkpoint it continues from, and which W&B run.

``python train.py hydra.run.dir=<run folder> ckpt_path=last`` continues a stopped run (killed,
pre-empted, crashed) from the newest resumable checkpoint in ``<run folder>/checkpoints``
(``last.ckpt`` of the last epoch, ``last-steps.ckpt`` of ``callbacks.checkpoint_steps``, or the one
written on SIGTERM), into the same folder: the same CSV log (appended) and, with W&B, the same run
id. ``ckpt_path=auto`` does the same when there is such a checkpoint and starts from scratch when
there is none, so one command serves a job that a scheduler may requeue.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from hrexp.errors import ConfigError
from hrexp.training.checkpoint_io import read_checkpoint, weight_mismatch
from hrexp.training.loggers import previous_wandb_run_id

log = logging.getLogger(__name__)

RESUMABLE = "last*.ckpt"  # keep=all files; the best-* ones hold weights only


def newest_resumable(folder: Path) -> Path | None:
    """The most recently written ``last*.ckpt`` of a checkpoint folder (hidden temp files excluded)."""
    candidates = [p for p in folder.glob(RESUMABLE) if p.is_file()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """``cfg.ckpt_path`` with ``last`` / ``auto`` resolved to a file of this run's folder.

    Raises:
        ConfigError: ``ckpt_path=last`` and the run folder holds no resumable checkpoint.
    """
    value = cfg.get("ckpt_path")
    if value not in ("last", "auto"):
        return value
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    newest = newest_resumable(folder)
    if newest is None:
        if value == "auto":
            log.info("ckpt_path=auto: no resumable checkpoint in %s; starting from scratch", folder)
            return None
        raise ConfigError(
            f"ckpt_path=last: no {RESUMABLE} in {folder}; to resume a run, point hydra.run.dir at its folder: "
            "python train.py hydra.run.dir=<run folder> ckpt_path=last"
        )
    log.info("resuming from %s", newest)
    return str(newest)


def continue_wandb_run(cfg: DictConfig) -> None:
    """A run resumed into its own folder logs to the W&B run recorded there (same id), if any."""
    wandb = (cfg.get("logger") or {}).get("wandb")
    if wandb is None or wandb.get("id"):
        return
    run_id = previous_wandb_run_id(wandb.save_dir)
    if run_id is not None:
        with open_dict(cfg):
            wandb.id = run_id
            wandb.resume = "allow"
        log.info("continuing W&B run %s", run_id)


def check_resumable(path: str, module: Any) -> None:
    """Refuse, before training, a checkpoint this run cannot continue from.

    Raises:
        CheckpointReadError: Not a checkpoint, truncated, or refused (see :func:`read_checkpoint`).
        ConfigError: A weights-only file (a best-* checkpoint), or one of another model or task.
    """
    ckpt = read_checkpoint(path, mmap=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"ckpt_path={path!r}: not a Lightning checkpoint (no state_dict)")
    if "optimizer_states" not in ckpt:
        raise ConfigError(f"ckpt_path={path!r}: it holds weights only (a best-* checkpoint, keep=weights): nothing to "
                          "resume from; resume from the run's last checkpoint (hydra.run.dir=<run> ckpt_path=last)")
    problems = weight_mismatch(ckpt["state_dict"], module.state_dict())
    if problems:
        stored = (ckpt.get("hrexp") or {}).get("config", {}).get("choices", {})
        now = module.run_config.get("choices", {})
        raise ConfigError(
            f"ckpt_path={path!r}: it is not a checkpoint of this run's model: it was trained as model="
            f"{stored.get('model')} task={stored.get('task')} data={stored.get('data')}, this run is model="
            f"{now.get('model')} task={now.get('task')} data={now.get('data')}. Differences: " + "; ".join(problems[:5])
        )

