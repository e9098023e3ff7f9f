"""End to end: the README's training command with small overrides, then eval from its checkpoint."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import TINY, run_script, write_image


def read_val_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as fh:
        return [r for r in csv.DictReader(fh) if r.get("val/mre")]


@pytest.fixture(scope="module")
def trained_run(module_tmp, cache_dir):
    run_dir = module_tmp / "run"
    proc = run_script("train.py", ["model=hrnet_w32", "task=landmarks", *TINY, f"hydra.run.dir={run_dir}"], cache_dir)
    return run_dir, proc


def test_training_writes_both_best_checkpoints_and_last(trained_run):
    run_dir, _ = trained_run
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    loss_ckpts = [n for n in ckpts if n.startswith("best-val_loss-")]
    mre_ckpts = [n for n in ckpts if n.startswith("best-val_mre-")]
    assert len(loss_ckpts) == 1 and len(mre_ckpts) == 1 and "last.ckpt" in ckpts, ckpts

    # The file names must agree with the validation log: the epoch and value at the minimum.
    rows = read_val_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for name, key in ((mre_ckpts[0], "val/mre"), (loss_ckpts[0], "val/loss")):
        best = min(rows, key=lambda r: float(r[key]))
        m = re.match(r"best-(val_\w+)-epoch(\d+)-val_\w+?(\d+\.\d+)\.ckpt", name)
        assert m, name
        assert int(m.group(2)) == int(best["epoch"])
        assert float(m.group(3)) == pytest.approx(float(best[key]), abs=10 ** -len(m.group(3).split(".")[1]))

    # Checkpoints load without unpickling arbitrary objects, and carry the run config.
    ckpt = torch.load(run_dir / "checkpoints" / mre_ckpts[0], map_location="cpu", weights_only=True)
    assert ckpt["hrexp"]["config"]["choices"]["model"] == "hrnet_w32"
    # The best files keep weights and config (a third of last.ckpt, which keeps AdamW's two moments).
    assert ckpt["hrexp"]["contents"] == "weights" and "optimizer_states" not in ckpt
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert len(last["optimizer_states"]) == 1 and "contents" not in last["hrexp"]
    sizes = {n: (run_dir / "checkpoints" / n).stat().st_size for n in ckpts}
    assert sizes[mre_ckpts[0]] < 0.36 * sizes["last.ckpt"], sizes


def test_run_record_and_config_are_saved(trained_run):
    run_dir, proc = trained_run
    assert (run_dir / "config.yaml").is_file() and (run_dir / "config_tree.log").is_file()
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    record = json.loads((run_dir / "results.json").read_text())
    rows = read_val_rows(run_dir)
    assert record["status"] == "finished"
    assert record["best"]["val/mre"]["value"] == pytest.approx(min(float(r["val/mre"]) for r in rows), rel=1e-6)
    # The final test names the checkpoint it used: the best-MRE one.
    tested = record["test"]["checkpoint"]
    assert Path(tested).name.startswith("best-val_mre-")
    assert "Testing checkpoint" in proc.stdout and Path(tested).name in proc.stdout.replace("\n", "")
    assert record["baselines"]["mean_shape_val"]["mre"] > 0 and record["schema_version"] == 2
    assert record["monitor"] == {"metric": "val/mre", "mode": "min"}
    assert record["metric_modes"]["val/mre"] == "min" and record["metric_modes"]["val/sdr_8"] == "max"
    assert record["params"]["total"] == pytest.approx(29.3e6, rel=0.02)


def test_eval_reproduces_the_final_test(trained_run, tmp_path, cache_dir):
    run_dir, _ = trained_run
    record = json.loads((run_dir / "results.json").read_text())
    out = tmp_path / "eval"
    run_script("eval.py", [f"ckpt_path={record['test']['checkpoint']}", f"hydra.run.dir={out}"], cache_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "test"
    assert summary["metrics"]["test/mre"] == pytest.approx(record["test"]["metrics"]["test/mre"], rel=1e-5)
    with open(out / "per_landmark.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 40 and rows[0]["landmark"] == "V01_tl"
    # Every synthetic landmark is visible, so the overall MRE is the mean of the per-landmark ones.
    mean = sum(float(r["mre"]) for r in rows) / len(rows)
    assert mean == pytest.approx(summary["metrics"]["test/mre"], rel=1e-4)
    assert float(rows[0]["mre_mm"]) == pytest.approx(float(rows[0]["mre"]) * 0.5, rel=1e-4)


def test_eval_with_a_data_override_scores_the_checkpoint_on_that_data(trained_run, tmp_path, cache_dir):
    """The run's test set, read through data=landmarks_csv instead of the synthetic module: same numbers."""
    run_dir, _ = trained_run
    record = json.loads((run_dir / "results.json").read_text())
    from hydra.utils import instantiate

    # The synthetic set's folder for this run's parameters (one folder per parameter set in the cache)
    test_csv = instantiate(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]).cache_dir / "test.csv"
    out = tmp_path / "eval"
    run_script("eval.py", [f"ckpt_path={record['test']['checkpoint']}", "data=landmarks_csv", f"data.csv={test_csv}",
                           f"data.test_csv={test_csv}", "data.image_size=[64,32]", f"hydra.run.dir={out}"], cache_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["choices"]["data"] == "landmarks_csv" and summary["split"] == "test"
    assert summary["metrics"]["test/mre"] == pytest.approx(record["test"]["metrics"]["test/mre"], rel=1e-5)


def test_eval_of_a_checkpoint_from_before_the_data_package_moved(trained_run, tmp_path, cache_dir):
    """A checkpoint whose stored config names the old class paths (hrexp.data.datamodule.*) still evaluates."""
    run_dir, _ = trained_run
    record = json.loads((run_dir / "results.json").read_text())
    ckpt = torch.load(record["test"]["checkpoint"], map_location="cpu", weights_only=True)
    config = ckpt["hrexp"]["config"]
    assert config["data"]["_target_"] == "hrexp.data.landmarks.datamodule.SyntheticSpineDataModule"
    config["data"]["_target_"] = "hrexp.data.datamodule.SyntheticSpineDataModule"
    config["callbacks"]["best_metrics"]["_target_"] = "hrexp.training.best_metrics.BestMetrics"
    del ckpt["hrexp"]["dataset_meta"]  # older checkpoints did not store it
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    out = tmp_path / "eval"
    run_script("eval.py", [f"ckpt_path={old}", f"hydra.run.dir={out}"], cache_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["test/mre"] == pytest.approx(record["test"]["metrics"]["test/mre"], rel=1e-5)


def test_eval_on_data_with_other_landmarks_names_both_counts(trained_run, tmp_path, cache_dir):
    run_dir, _ = trained_run
    record = json.loads((run_dir / "results.json").read_text())
    for i in range(4):
        write_image(tmp_path / f"a{i}.png", height=64, width=32)
    other = tmp_path / "three.csv"
    other.write_text("image,p1_x,p1_y,p2_x,p2_y,p3_x,p3_y\n" + "".join(f"a{i}.png,1,2,3,4,5,6\n" for i in range(4)))
    proc = run_script("eval.py", [f"ckpt_path={record['test']['checkpoint']}", "data=landmarks_csv", f"data.csv={other}",
                                  "data.image_size=[64,32]", f"hydra.run.dir={tmp_path / 'eval'}"], cache_dir, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "AttributeError" not in output
    assert "its weights do not fit the model built for this data" in output
    assert "trained on data=synthetic_spine (num_keypoints=40)" in output
    assert "data=landmarks_csv (num_keypoints=3)" in output and "task.head.final.weight: checkpoint [40" in output


def test_resume_continues_from_last_checkpoint(trained_run, tmp_path, cache_dir):
    run_dir, _ = trained_run
    out = tmp_path / "resumed"
    args = [*TINY, "trainer.max_epochs=3", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={out}"]
    run_script("train.py", [a for a in args if a != "trainer.max_epochs=2"], cache_dir)
    epochs = [int(r["epoch"]) for r in read_val_rows(out)]
    assert epochs == [2], epochs  # epochs 0-1 came from the checkpoint, only epoch 2 ran


def test_bad_input_size_fails_before_training(tmp_path, cache_dir):
    out = tmp_path / "bad"
    proc = run_script("train.py", [*TINY, "data.image_size=[100,64]", f"hydra.run.dir={out}"], cache_dir, check=False)
    assert proc.returncode != 0
    assert "data.image_size=[100, 64]" in proc.stderr + proc.stdout and "multiple of 32" in proc.stderr + proc.stdout
    assert not (out / "checkpoints").exists()


def test_bad_data_fails_before_training_naming_file_and_row(compose_cfg, tmp_path):
    from hrexp.data.errors import DataError
    from hrexp.jobs.train_run import train

    image = tmp_path / "a.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.zeros((64, 32), np.uint8))
    bad = tmp_path / "bad.csv"
    bad.write_text("image,p1_x,p1_y\na.png,1.0,2.0\na.png,abc,3.0\n")
    cfg = compose_cfg(["data=landmarks_csv", f"data.csv={bad}", "data.image_size=[64,32]"])
    with pytest.raises(DataError) as err:
        train(cfg)
    message = str(err.value)
    assert str(bad) in message and "row 2" in message and "abc" in message
    assert not (tmp_path / "run" / "checkpoints").exists()
