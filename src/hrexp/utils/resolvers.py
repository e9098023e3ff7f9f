"""OmegaConf resolvers used by the Hydra configs in ``conf/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hrexp.utils.hydra_runtime import hydra_config, in_multirun


def slug(name: str) -> str:
    """Turn a metric name into a file-name-safe tag: ``val/mre`` -> ``val_mre``."""
    return str(name).replace("/", "_")


def run_group(prefix: Any = None, *, _root_: Any = None) -> str | None:
    """The W&B group of a run: shared by all runs of one Hydra multirun, ``None`` otherwise.

    Inside a multirun (``python train.py -m ...``) the group is ``<prefix>-<sweep folder name>``,
    e.g. ``train-2026-11-23_03-10-00`` for ``logs/train/multiruns/2026-11-23_03-10-00``: every job of
    the sweep resolves the same name (Hydra shares the ``${now:}`` of the sweep dir across its jobs).
    ``prefix`` defaults to the config's ``task_name`` (else Hydra's job name). A single run, or a
    config used outside a Hydra app, gets ``None``: no group.

    Used as ``group: ${hrexp_run_group:}`` in ``conf/logger/wandb.yaml``.
    """
    if not in_multirun():
        return None
    hydra_cfg = hydra_config()
    sweep_dir = OmegaConf.select(hydra_cfg, "sweep.dir", default=None)
    if not sweep_dir:
        return None
    if prefix in (None, ""):
        prefix = _root_.get("task_name") if _root_ is not None else None
        prefix = prefix or OmegaConf.select(hydra_cfg, "job.name", default=None)
    name = Path(str(sweep_dir)).name
    return f"{prefix}-{name}" if prefix else name


def refine_channels(condition: Any = None) -> int:
    """The refiner's input channels: 3 image channels + one per ``task.refine.condition`` entry.

    Used as ``in_chans: ${hrexp_refine_channels:${task.refine.condition}}`` in ``conf/refine/native.yaml``.
    """
    return 3 + len(list(condition or []))


def register_resolvers() -> None:
    """Register hrexp's resolvers once (safe to call repeatedly)."""
    if not OmegaConf.has_resolver("slug"):
        OmegaConf.register_new_resolver("slug", slug)
    if not OmegaConf.has_resolver("hrexp_run_group"):
        OmegaConf.register_new_resolver("hrexp_run_group", run_group)
    if not OmegaConf.has_resolver("hrexp_refine_channels"):
        OmegaConf.register_new_resolver("hrexp_refine_channels", refine_channels)
