"""Checkpoint files: written whole or not at all (disk full, killed mid-write), and weights-only best files."""

from __future__ import annotations

import errno
import json

import pytest
import torch

from hrexp.training.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError, weights_only
from tests.fit_helpers import TINY_W18, FailingCheckpointIO
from tests.helpers import run_script


def _state(value: float) -> dict:
    return {"state_dict": {"w": torch.full((4,), value)}, "optimizer_states": [{"m": torch.zeros(4)}],
            "lr_schedulers": [{}], "callbacks": {"X": {"big": torch.zeros(4)}}, "hrexp": {"config": {"a": 1}},
            "epoch": 3, "current_model_state": {"w": torch.zeros(4)}}


def test_a_failed_write_leaves_the_previous_file_and_no_partial_one(tmp_path):
    target = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(_state(1.0), target)
    failing = FailingCheckpointIO(fail_at=1)
    with pytest.raises(CheckpointWriteError) as err:
        failing.save_checkpoint(_state(2.0), target)
    message = str(err.value)
    assert str(target) in message and "No space left on device" in message and "previous last.ckpt is unchanged" in message
    assert isinstance(err.value.__cause__, OSError) and err.value.__cause__.errno == errno.ENOSPC
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.full((4,), 1.0))
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]  # the temp file is gone


def test_a_stale_temp_file_of_a_killed_write_is_removed_by_the_next_save(tmp_path):
    target = tmp_path / "last.ckpt"
    (tmp_path / ".last.ckpt.tmp-99999").write_bytes(b"half")
    AtomicCheckpointIO().save_checkpoint(_state(1.0), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_weights_only_keeps_weights_config_and_ema_raw_weights_and_drops_resume_state():
    slim = weights_only(_state(1.0))
    assert set(slim) == {"state_dict", "hrexp", "epoch", "current_model_state"}
    assert slim["hrexp"] == {"config": {"a": 1}, "contents": "weights"}


def test_a_full_disk_mid_run_stops_it_saying_so_and_keeps_the_earlier_checkpoints(compose_cfg, tmp_path):
    from hrexp.jobs.train_run import run_job

    # Epoch 0 writes 3 files (best loss, best metric, last); the 4th write (epoch 1) hits the full disk.
    cfg = compose_cfg([*TINY_W18, "trainer.max_epochs=2",
                       "trainer.plugins=[{_target_:tests.fit_helpers.FailingCheckpointIO,fail_at:4}]"])
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        run_job(cfg)
    run = tmp_path / "run"
    files = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert len(files) == 3 and "last.ckpt" in files, files
    for name in files:
        assert torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)["epoch"] == 0
    record = json.loads((run / "results.json").read_text())
    assert record["status"] == "failed" and "could not write checkpoint" in record["error"]


@pytest.mark.slow  # ~20 s: two script runs
def test_a_kill_mid_write_leaves_loadable_checkpoints_and_the_run_resumes(tmp_path, cache_dir):
    from tests.helpers import TINY

    run = tmp_path / "run"
    args = [*TINY, "model=hrnet_w18", "callbacks.progress_bar=null", f"hydra.run.dir={run}"]
    killed = run_script("train.py", [*args, "trainer.plugins=[{_target_:tests.fit_helpers.FailingCheckpointIO,"
                                            "fail_at:4,how:kill}]"], cache_dir, check=False)
    assert killed.returncode == -9
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in ckpts.glob("*.ckpt"))
    assert [p.name for p in ckpts.glob(".*.tmp-*")], "the killed write's temp file is left (hidden), not a target"
    for path in ckpts.glob("*.ckpt"):
        assert torch.load(path, map_location="cpu", weights_only=True)["epoch"] == 0
    run_script("train.py", [*args, f"ckpt_path={ckpts / 'last.ckpt'}"], cache_dir)
    assert not list(ckpts.glob(".*.tmp-*"))
    assert torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 1
