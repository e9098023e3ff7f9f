"""Every logger writes its own record of a short run; wandb goes offline by itself without a key."""

from __future__ import annotations

import os


from hrexp.training.loggers import WandbLogger
from hrexp.utils.wandb_env import wandb_api_key_configured
from tests.helpers import TINY, run_script


def test_wandb_is_offline_without_api_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert not wandb_api_key_configured()
    logger = WandbLogger(save_dir=str(tmp_path), project="hrexp-test")
    assert logger._offline is True and os.environ["WANDB_MODE"] == "offline"


def test_wandb_key_in_netrc_counts(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_api_key_configured()


def test_many_loggers_write_csv_tensorboard_and_offline_wandb(tmp_path, cache_dir):
    out = tmp_path / "run"
    env_key = os.environ.pop("WANDB_API_KEY", None)
    try:
        run_script("train.py", [*TINY, "trainer.max_epochs=1", "test=false", "logger=many", f"hydra.run.dir={out}"], cache_dir)
    finally:
        if env_key is not None:
            os.environ["WANDB_API_KEY"] = env_key
    assert "val/mre" in (out / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert list((out / "tensorboard").rglob("events.out.tfevents.*")), "no TensorBoard event file"
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir()) if (out / "wandb").exists() else "no wandb folder"
    assert list(runs[0].glob("*.wandb")), "offline run has no .wandb data file"
