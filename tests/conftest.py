"""Shared test set-up: offline timm, project paths, the real-data location, and config composition."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from hrexp.startup import CONFIG_DIR, startup

ROOT = Path(__file__).resolve().parents[1]
# The entry points' start-up (offline hub before anything imports timm, project root, resolvers).
startup(ROOT)
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import open_dict  # noqa: E402

@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One cache folder for generated data across the session (the synthetic set is built once)."""
    path = tmp_path_factory.mktemp("hrexp_cache")
    os.environ["HREXP_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Iterator[Path]:
    """A folder for a test module's shared training run, removed when the module is done unless one of its
    tests failed. Each run writes hundreds of MB of checkpoints; kept for the whole session they filled the disk."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


def compose_for(overrides: list[str], out_dir: Path, name: str = "train"):
    """Compose ``hrexp/conf/<name>.yaml`` with overrides, as ``train.py`` would, with outputs in ``out_dir/run``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(out_dir) / "run")
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


@pytest.fixture
def compose_cfg(tmp_path, cache_dir):
    """``compose_for`` with outputs in the test's tmp_path."""

    def _compose(overrides: list[str] = (), name: str = "train"):
        return compose_for(overrides, tmp_path, name)

    yield _compose
    GlobalHydra.instance().clear()
