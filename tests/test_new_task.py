"""Acceptance of the task contract: a fourth task written only in tests/blobs/ (its Task, codec, loss,
metric with higher_is_better=True, datamodule on hrexp's base class, and configs found through Hydra's
--config-dir) trains, checkpoints on its own monitor, is evaluated by eval.py and is ranked by the
comparison in its metric's direction. Nothing outside the tests folder knows it exists."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.blobs.codec import CentreHeatmapCodec
from tests.blobs.metric import CentreDetection
from tests.helpers import ROOT, run_script

BLOBS = [
    "--config-dir", str(ROOT / "tests" / "blobs" / "conf"),
    "task=blob_centres", "data=blobs", "data.num_train=96",
    "model=unet", "model.base_width=8",
    "trainer.max_epochs=5", "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null",
    "scheduler.warmup_epochs=0", "seed=0",
]
LRS = ("3e-3", "3e-4")


def test_codec_round_trip_recovers_sub_pixel_centres():
    codec = CentreHeatmapCodec(sigma=1.0, threshold=0.3)
    points = torch.tensor([[[10.3, 20.8], [40.6, 9.1], [0, 0]], [[30.0, 30.0], [0, 0], [0, 0]]])
    valid = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    heatmaps = codec.encode(points, valid, (16, 16), stride=4.0)
    assert heatmaps.shape == (2, 1, 16, 16) and float(heatmaps.max()) <= 1.0
    decoded = codec.decode(heatmaps, stride=4.0)
    assert [len(d) for d in decoded] == [2, 1]  # padding points are not encoded
    for found, truth in zip(decoded, [points[0, :2], points[1, :1]]):
        order = torch.cdist(found, truth).argmin(dim=1)
        # the 3x3 centroid of a sampled Gaussian is biased towards the pixel centre: within 0.35 px here
        torch.testing.assert_close(found, truth[order], atol=0.35 * 4, rtol=0)
        assert torch.cdist(found, truth[order]).diagonal().max() < 1.0


def test_detection_metric_matches_one_to_one_within_the_radius():
    metric = CentreDetection(radius=3.0)
    truth = [torch.tensor([[10.0, 10.0], [20.0, 20.0]]), torch.tensor([[5.0, 5.0]])]
    # image 0: one hit (2 px), one prediction too far (5 px); a second prediction near the same truth
    # point cannot match it again. image 1: nothing predicted.
    preds = [torch.tensor([[12.0, 10.0], [11.0, 11.0], [25.0, 20.0]]), torch.zeros(0, 2)]
    metric.update(preds, truth)
    values = metric.compute()
    assert values["recall"] == pytest.approx(1 / 3) and values["precision"] == pytest.approx(1 / 3)
    assert values["f1"] == pytest.approx(2 * 1 / (3 + 3))
    assert CentreDetection.higher_is_better is True


def _val_rows(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "csv" / "metrics.csv") as fh:
        return [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(fh) if r.get("val/recall")]


@pytest.fixture(scope="module")
def blob_sweep(module_tmp, cache_dir):
    """Two learning rates of the blob task as one Hydra multirun (the sweep report compares them)."""
    sweep = module_tmp / "sweep"
    run_script("train.py", ["-m", *BLOBS, f"optimizer.lr={','.join(LRS)}", f"hydra.sweep.dir={sweep}"], cache_dir)
    return sweep


def test_the_new_task_trains_and_checkpoints_on_its_own_monitor(blob_sweep):
    for job in ("0", "1"):
        run = blob_sweep / job
        record = json.loads((run / "results.json").read_text())
        assert record["status"] == "finished" and record["choices"]["task"] == "blob_centres"
        assert record["monitor"] == {"metric": "val/recall", "mode": "max"}
        # directions from the metric's higher_is_better, not from the names
        assert record["metric_modes"]["val/precision"] == "max" and record["metric_modes"]["val/loss"] == "min"
        rows = _val_rows(run)
        assert len(rows) == 5
        best = max(rows, key=lambda r: r["val/recall"])  # max() keeps the first of equal values, as BestMetrics
        assert record["best"]["val/recall"]["value"] == pytest.approx(best["val/recall"])
        assert record["best"]["val/recall"]["epoch"] == int(best["epoch"])
        ckpt = Path(record["checkpoints"]["checkpoint_best_metric"]["path"])
        assert ckpt.name.startswith(f"best-val_recall-epoch{int(best['epoch']):03d}-")
        assert record["test"]["checkpoint"] == str(ckpt)
    learned = _val_rows(blob_sweep / "0")
    assert max(r["val/recall"] for r in learned) > min(r["val/recall"] for r in learned), \
        "recall must change over the epochs for the direction to matter"


def test_the_sweep_comparison_ranks_the_new_task_in_its_metrics_direction(blob_sweep):
    with open(blob_sweep / "comparison.csv") as fh:
        table = list(csv.DictReader(fh))
    (column,) = [c for c in table[0] if "recall" in c and c.startswith("best")]
    best = {job: max(r["val/recall"] for r in _val_rows(blob_sweep / job)) for job in ("0", "1")}
    assert [float(r[column]) for r in table] == pytest.approx([best[r["run"]] for r in table])
    assert [r["run"] for r in table] == sorted(best, key=best.get, reverse=True)
    assert best["0"] != best["1"], "the two learning rates must differ for the order to mean something"


def test_compare_cli_sorts_another_higher_is_better_column_descending(blob_sweep, tmp_path, cache_dir):
    out = tmp_path / "report"
    run_script("-m hrexp.compare", [str(blob_sweep), "--out", str(out), "--sort", "val/f1"], cache_dir)
    with open(out / "comparison.csv") as fh:
        table = list(csv.DictReader(fh))
    (column,) = [c for c in table[0] if c.endswith("f1")]
    values = [float(r[column]) for r in table]
    assert values == sorted(values, reverse=True)


def test_eval_scores_the_new_tasks_checkpoint_like_the_run_did(blob_sweep, tmp_path, cache_dir):
    record = json.loads((blob_sweep / "0" / "results.json").read_text())
    best = record["best"]["val/recall"]
    out = tmp_path / "eval"
    # The checkpoint's stored config names the task's classes: eval needs no config folder.
    run_script("eval.py", [f"ckpt_path={record['checkpoints']['checkpoint_best_metric']['path']}", "split=val",
                           f"hydra.run.dir={out}"], cache_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["choices"]["task"] == "blob_centres"
    assert summary["metrics"]["val/recall"] == pytest.approx(best["value"], abs=1e-12)
    logged = [r for r in _val_rows(blob_sweep / "0") if int(r["epoch"]) == best["epoch"]][0]
    assert summary["metrics"]["val/f1"] == pytest.approx(logged["val/f1"], abs=1e-9)
    assert summary["metric_modes"]["val/recall"] == "max"
