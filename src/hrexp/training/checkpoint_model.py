"""A model from a checkpoint: the one path by which eval, predict and export rebuild a trained module.

The checkpoint carries its resolved run config and what the data told the task (``dataset_meta``), so
the module is rebuilt from it alone (:func:`checkpoint_data` stands in for a datamodule), or on a
datamodule that eval sets up for the split it scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from hrexp.errors import ConfigError
from hrexp.training.build import build_module
from hrexp.training.checkpoint_config import rebuild_config
from hrexp.training.checkpoint_io import read_checkpoint, weight_mismatch


@dataclass
class CheckpointModel:
    """A trained module (eval mode), the run config it was built from and the data it was built for."""

    module: Any
    run_cfg: DictConfig
    data: Any
    ckpt: dict[str, Any]


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an hrexp checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or "hrexp" not in ckpt or "config" not in ckpt["hrexp"]:
        raise ConfigError(f"ckpt_path={str(path)!r}: not an hrexp checkpoint (no stored run config)")
    return ckpt


def describe_meta(meta: Mapping[str, Any]) -> str:
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
    trained = f" ({describe_meta(trained_on)})" if trained_on else ""
    raise ConfigError(
        f"ckpt_path={ckpt_path}: its weights do not fit the model built for this data. The checkpoint is "
        f"model={stored.get('model')} task={stored.get('task')} trained on data={stored.get('data')}{trained}; "
        f"the data now is data={run_cfg.choices.data} ({describe_meta(dataset_meta)}). Differences: "
        + "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
    )


def checkpoint_data(run_cfg: DictConfig, dataset_meta: dict[str, Any]) -> SimpleNamespace:
    """What :func:`~hrexp.training.build.build_module` needs of a datamodule, read from the checkpoint's
    config: the training input size (under the family's own option, e.g. ``data.crop_size``) and meta."""
    option = getattr(get_class(run_cfg.data._target_), "input_size_option", "data.image_size")
    size = OmegaConf.select(run_cfg, option)
    if size is None:
        raise ConfigError(f"the checkpoint's config has no {option}: cannot tell the network's input size")
    return SimpleNamespace(input_size=tuple(int(s) for s in size), input_size_option=option,
                           dataset_meta=dataset_meta)


def module_from_checkpoint(ckpt_path: str | Path, *, ckpt: dict[str, Any] | None = None,
                           run_cfg: DictConfig | None = None, data: Any = None) -> CheckpointModel:
    """The trained module of ``ckpt_path`` in eval mode, its weights loaded strictly.

    Args:
        ckpt_path: The checkpoint file (named in errors).
        ckpt: The checkpoint already read (eval reads every ensemble member first); read when None.
        run_cfg: The config to build from; default: the checkpoint's own (:func:`rebuild_config`), run
            plain eager (``speed`` cleared: no compile, no channels_last).
        data: A set-up datamodule to build for (eval on a split); default: :func:`checkpoint_data`, what
            the checkpoint knew of its data, so export and predict need no training data.

    Raises:
        ConfigError: Not an hrexp checkpoint, or its weights do not fit the model built for ``data``.
    """
    if ckpt is None:
        ckpt = load_checkpoint(ckpt_path)
    if run_cfg is None:
        run_cfg = rebuild_config(ckpt)
        run_cfg.speed = None
    meta = dict(ckpt["hrexp"].get("dataset_meta") or {})
    if data is None:
        data = checkpoint_data(run_cfg, meta)
    module = build_module(run_cfg, data)
    load_weights(module, ckpt, run_cfg, str(ckpt_path), data.dataset_meta)
    return CheckpointModel(module.eval(), run_cfg, data, ckpt)
