"""What the running Hydra app says about this job, or nothing outside one (tests, notebooks, eval)."""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


def hydra_config() -> DictConfig | None:
    """The job's ``hydra`` config node, or None when not inside a Hydra app."""
    try:
        return HydraConfig.get()
    except ValueError:  # HydraConfig not set
        return None


def runtime_choices() -> dict[str, Any]:
    """The config-group options Hydra composed (``{"model": "hrnet_w32", ...}``); ``{}`` outside Hydra."""
    hydra_cfg = hydra_config()
    return {} if hydra_cfg is None else hydra_cfg.runtime.choices


def in_multirun() -> bool:
    """Whether this job is one of a Hydra multirun (a sweep), not a single run."""
    hydra_cfg = hydra_config()
    return hydra_cfg is not None and hydra_cfg.get("mode") == RunMode.MULTIRUN
