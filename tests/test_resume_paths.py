"""Which checkpoint ckpt_path=last / auto resumes from, the appended CSV log, the continued W&B run."""

from __future__ import annotations

import csv
import os
import time

import pytest
from omegaconf import OmegaConf

from hrexp.errors import ConfigError
from hrexp.training.loggers import CSVLogger, previous_wandb_run_id
from hrexp.jobs.resume import continue_wandb_run, resolve_ckpt_path


def _cfg(run, ckpt_path, wandb=None):
    return OmegaConf.create({"ckpt_path": ckpt_path, "paths": {"output_dir": str(run)},
                             "logger": {"wandb": wandb} if wandb is not None else {}})


def test_last_picks_the_newest_resumable_checkpoint_and_never_a_best_or_temp_file(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for i, name in enumerate(["last.ckpt", "last-steps.ckpt", "best-val_mre-epoch001.ckpt", ".last.ckpt.tmp-1"]):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (time.time() + i, time.time() + i))
    assert resolve_ckpt_path(_cfg(tmp_path, "last")) == str(folder / "last-steps.ckpt")
    assert resolve_ckpt_path(_cfg(tmp_path, "auto")) == str(folder / "last-steps.ckpt")
    assert resolve_ckpt_path(_cfg(tmp_path, "/some/file.ckpt")) == "/some/file.ckpt"
    assert resolve_ckpt_path(_cfg(tmp_path, None)) is None


def test_last_without_a_checkpoint_says_how_to_resume_and_auto_starts_fresh(tmp_path):
    with pytest.raises(ConfigError, match=r"ckpt_path=last: no last\*\.ckpt in .*hydra.run.dir=<run folder>"):
        resolve_ckpt_path(_cfg(tmp_path, "last"))
    assert resolve_ckpt_path(_cfg(tmp_path, "auto")) is None


def test_the_csv_log_of_a_reused_run_folder_is_continued_not_deleted(tmp_path):
    first = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    first.log_metrics({"val/mre": 3.0}, step=5)
    first.save()
    second = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    second.log_metrics({"val/mre": 2.0, "val/loss": 0.5}, step=10)  # a new column too
    second.save()
    with open(tmp_path / "csv" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["step"], r["val/mre"], r["val/loss"]) for r in rows] == [("5", "3.0", ""), ("10", "2.0", "0.5")]


def test_a_resumed_run_continues_the_wandb_run_recorded_in_its_folder(tmp_path):
    (tmp_path / "wandb" / "offline-run-20261201_100000-abc123").mkdir(parents=True)
    time.sleep(0.01)
    (tmp_path / "wandb" / "offline-run-20261201_110000-def456").mkdir()
    assert previous_wandb_run_id(tmp_path) == "def456"
    cfg = _cfg(tmp_path, "last", wandb={"save_dir": str(tmp_path), "id": None})
    continue_wandb_run(cfg)
    assert cfg.logger.wandb.id == "def456" and cfg.logger.wandb.resume == "allow"
    fresh = _cfg(tmp_path / "new", "last", wandb={"save_dir": str(tmp_path / "new"), "id": None})
    continue_wandb_run(fresh)
    assert fresh.logger.wandb.id is None
