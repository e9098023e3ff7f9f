"""Which way is better for a metric comes from each run's record, never from the metric's name.

Records of schema 2 say it (``monitor``, ``metric_modes``); records of schema 1 (hrexp before the
run-record module) and killed runs without a record take it from the run's ``config.yaml``; with
neither, the run's best cells stay empty and its note says why. Also the run record's round trip.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hrexp.reports.comparison import compare
from hrexp.reports.runs import load_run
from hrexp.run_record import (
    Best,
    CheckpointInfo,
    Monitor,
    RunRecord,
    TestResult as FinalTest,
    monitor_and_modes_from_config,
    read_record,
    write_record,
)
from tests.compare_helpers import PNG_MAGIC, best_of, checkpoints, write_config, write_metrics_csv, write_run

DETECTION_MODES = {"val/recall": "max", "val/precision": "max"}


def _rows(epochs: list[tuple]) -> list[dict]:
    """Validation rows ``(loss, mAP, recall, precision)`` per epoch."""
    return [{"epoch": e, "val/loss": loss, "val/mAP": m, "val/recall": r, "val/precision": p}
            for e, (loss, m, r, p) in enumerate(epochs)]


# "a": mAP best at epoch 1 (0.6), recall there 0.7; "b": mAP best at epoch 2 (0.45), recall there 0.8.
# Lower-is-better would pick epoch 0 of each (mAP 0.2 and 0.1) and rank b first.
MAP_A = _rows([(0.9, 0.2, 0.3, 0.5), (0.5, 0.6, 0.7, 0.4), (0.6, 0.5, 0.9, 0.8)])
MAP_B = _rows([(0.8, 0.1, 0.2, 0.3), (0.7, 0.4, 0.95, 0.6), (0.75, 0.45, 0.8, 0.55)])
MAP, RECALL, PRECISION, LOSS = "best val mAP", "val recall", "val precision", "best val loss"


def _detection_run(folder: Path, rows: list[dict]) -> Path:
    return write_run(folder, task="detection", val_rows=rows, monitor="val/mAP", mode="max", modes=DETECTION_MODES)


def test_map_recall_and_precision_are_higher_is_better_as_the_records_say(tmp_path):
    _detection_run(tmp_path / "a", MAP_A)
    _detection_run(tmp_path / "b", MAP_B)
    result = compare([tmp_path], console=False)
    assert result.headline == "val/mAP" and result.sort_column == MAP and result.descending
    rows = {r["run"]: r for r in result.rows}
    assert [r["run"] for r in result.rows] == ["a", "b"]  # 0.6 > 0.45
    assert (rows["a"][MAP], rows["a"]["best epoch"]) == (0.6, 1)  # the max of the column, not epoch 0's 0.2
    assert (rows["b"][MAP], rows["b"]["best epoch"]) == (0.45, 2)
    assert (rows["a"][RECALL], rows["a"][PRECISION]) == (0.7, 0.4)  # read at the best-mAP epoch
    assert (rows["b"][RECALL], rows["b"][PRECISION]) == (0.8, 0.55)
    assert rows["a"][LOSS] == 0.5 and rows["b"][LOSS] == 0.7  # val/loss: its own minimum
    assert "note" not in result.columns  # nothing to say: every direction is known, the record agrees

    by_recall = compare([tmp_path], sort="val/recall", console=False)
    assert by_recall.sort_column == RECALL and by_recall.descending
    assert [r["run"] for r in by_recall.rows] == ["b", "a"]  # 0.8 > 0.7
    png = result.files["png"].read_bytes()
    assert png.startswith(PNG_MAGIC) and b"best val/mAP per run (higher is better)" in png
    assert b"lower is better" not in png


@pytest.mark.parametrize("metric, mode", [("val/error_rate_inverse", "max"), ("val/AP_miss_rate", "min")])
def test_the_metric_name_plays_no_part(tmp_path, metric, mode):
    """A loss-like name marked max and an AP-like name marked min are ranked as their records say."""
    values = {"x": [0.3, 0.9, 0.5], "y": [0.4, 0.6, 0.2]}
    for run, column in values.items():
        rows = [{"epoch": e, "val/loss": 1.0 - 0.1 * e, metric: v, "val/other": 10 * e} for e, v in enumerate(column)]
        write_run(tmp_path / run, val_rows=rows, monitor=metric, mode=mode, modes={"val/other": "max"})
    result = compare([tmp_path], console=False)
    header = next(c for c in result.columns if c.startswith("best val ") and c != LOSS)
    pick = max if mode == "max" else min
    expected = {run: pick(column) for run, column in values.items()}
    assert {r["run"]: r[header] for r in result.rows} == expected
    assert {r["run"]: r["best epoch"] for r in result.rows} == {run: values[run].index(expected[run]) for run in values}
    assert result.descending is (mode == "max")
    assert [r["run"] for r in result.rows] == sorted(expected, key=expected.get, reverse=mode == "max")


def _schema1_record(folder: Path, rows: list[dict]) -> dict:
    """A ``results.json`` as hrexp wrote it before schema 2: no schema_version, monitor or metric_modes."""
    return {
        "status": "finished",
        "choices": {"model": "hrnet_w32", "head": "heatmap", "task": "detection", "data": "synthetic_spine"},
        "seed": 0,
        "tags": [],
        "output_dir": str(folder),
        "params": {"total": 28_500_000, "trainable": 28_500_000},
        "params_backbone": 28_499_000,
        "input_size": [256, 192],
        "macs_g": 7.654,
        "pretrained": False,
        "dataset_meta": {},
        "train_time_s": 123.4,
        "param_groups": [{"name": "all", "tensors": 10, "params": 28_500_000, "lr": 0.001, "weight_decay": 0.0}],
        "best": {"val/loss": best_of(rows, "val/loss"), "val/mAP": best_of(rows, "val/mAP", "max")},
        "checkpoints": {k: {**v, "score": None} for k, v in checkpoints(folder, "val/mAP").items()},
        "baseline_mean_shape_val": {"mre": 12.0, "sdr_4": 0.05},
    }


def _write_schema1_run(folder: Path, rows: list[dict], config: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(_schema1_record(folder, rows), indent=2))
    write_metrics_csv(folder, rows, monitor="val/mAP", mode="max")
    if config:
        write_config(folder, "val/mAP", "max")
    return folder


def test_a_schema1_record_takes_the_monitor_and_modes_from_its_config(tmp_path):
    old = _write_schema1_run(tmp_path / "old" / "run", MAP_A, config=True)
    record = read_record(old)
    assert "schema_version" not in json.loads((old / "results.json").read_text())
    assert record.monitor == Monitor("val/mAP", "max") and record.headline == "val/mAP"
    assert record.metric_modes == {"val/loss": "min", "val/mAP": "max"}
    assert record.baselines == {"mean_shape_val": {"mre": 12.0, "sdr_4": 0.05}}
    assert record.best["val/mAP"] == Best(value=0.6, epoch=1, step=19)

    # the same run written today: the same table, but for the columns schema 1 could not know
    new = write_run(tmp_path / "new" / "run", task="detection", val_rows=MAP_A, monitor="val/mAP", mode="max",
                    macs_g=7.654, pretrained=False)
    old_table = compare([old], console=False)
    new_table = compare([new], console=False)
    assert old_table.columns == new_table.columns and old_table.headline == new_table.headline == "val/mAP"
    checkpoint = "best checkpoint"
    assert old_table.rows[0].pop(checkpoint).startswith(str(old)) and new_table.rows[0].pop(checkpoint)
    assert old_table.rows == new_table.rows
    assert (old_table.rows[0][MAP], old_table.rows[0]["best epoch"], old_table.rows[0][RECALL]) == (0.6, 1, 0.7)
    assert old_table.descending


def test_a_schema1_record_without_config_leaves_the_best_cells_empty(tmp_path):
    lost = _write_schema1_run(tmp_path / "sweep" / "lost", MAP_A, config=False)
    _detection_run(tmp_path / "sweep" / "today", MAP_B)  # found after "lost"
    result = compare([tmp_path / "sweep"], console=False)
    rows = {r["run"]: r for r in result.rows}
    assert [r["run"] for r in result.rows] == ["today", "lost"]  # the empty cell last
    assert result.descending  # the direction of the run that knows it
    assert all(rows["lost"][c] is None for c in (MAP, LOSS, RECALL, PRECISION, "best epoch"))
    note = rows["lost"]["note"]
    assert "direction of val/mAP, val/loss unknown" in note and "no config.yaml" in note
    assert rows["lost"]["status"] == "finished" and rows["lost"]["model"] == "hrnet_w32"
    assert rows["today"][MAP] == 0.45 and rows["today"]["note"] is None
    # alone, no run knows a direction: nothing is guessed, the sort is plain ascending
    alone = compare([lost], out=tmp_path / "alone", console=False)
    assert not alone.descending and alone.rows[0][MAP] is None
    assert b"direction unknown" in alone.files["png"].read_bytes()


def test_a_killed_run_is_ranked_in_its_configs_direction(tmp_path):
    killed = write_config(tmp_path / "sweep" / "killed", "val/mAP", "max")
    write_metrics_csv(killed, MAP_A[:2] + [{**MAP_A[2], "val/mAP": 0.65}], monitor="val/mAP", mode="max")
    _detection_run(tmp_path / "sweep" / "done", MAP_B)
    bare = tmp_path / "sweep" / "bare"  # killed too, without even its config
    write_metrics_csv(bare, MAP_A, monitor="val/mAP", mode="max")
    result = compare([tmp_path / "sweep"], console=False)
    rows = {r["run"]: r for r in result.rows}
    assert [r["run"] for r in result.rows] == ["killed", "done", "bare"]  # 0.65 > 0.45 > nothing
    assert result.descending and rows["killed"]["status"] == "unknown"
    assert (rows["killed"][MAP], rows["killed"]["best epoch"], rows["killed"][RECALL]) == (0.65, 2, 0.9)
    assert rows["killed"][LOSS] == 0.5  # val/loss: min, from the config's best_metrics
    assert "no results.json (still running, or stopped before the end)" in rows["killed"]["note"]
    assert load_run(killed, "killed").headline == "val/mAP"
    assert rows["bare"][MAP] is None and "no config.yaml" in rows["bare"]["note"]


def test_monitor_and_modes_from_config_never_guess():
    config = {"task": {"monitor": {"metric": "val/mAP", "mode": "max"}},
              "callbacks": {"best_metrics": {"monitors": [{"metric": "val/loss", "mode": "min"},
                                                          {"metric": "val/odd", "mode": "sideways"}]}}}
    assert monitor_and_modes_from_config(config) == (Monitor("val/mAP", "max"), {"val/loss": "min", "val/mAP": "max"})
    # Today's configs: best_metrics gives no modes (the metrics do); the checkpoint callbacks do.
    current = {"task": {"monitor": {"metric": "val/mre", "mode": "min"}},
               "callbacks": {"checkpoint_best_loss": {"monitor": "val/loss", "mode": "min"},
                             "checkpoint_last": {"monitor": None},
                             "best_metrics": {"monitors": [{"metric": "val/loss"}, {"metric": "val/mre"}]}}}
    assert monitor_and_modes_from_config(current) == (Monitor("val/mre", "min"), {"val/loss": "min", "val/mre": "min"})
    assert monitor_and_modes_from_config({"task": {"monitor": {"metric": "val/AP"}}}) == (None, {})
    assert monitor_and_modes_from_config({"task": None, "callbacks": []}) == (None, {})


def _full_record(folder: Path) -> RunRecord:
    return RunRecord(
        status="finished", choices={"model": "unet", "task": "landmarks"}, seed=3, tags=["a", "b"],
        output_dir=str(folder), monitor=Monitor("val/mre", "min"),
        metric_modes={"val/mre": "min", "val/sdr_4": "max", "val/loss": "min"},
        params={"total": 10, "trainable": 8}, params_backbone=7, input_size=[64, 32], macs_g=0.5,
        pretrained="/w/unet.pth", dataset_meta={"num_keypoints": 17}, train_time_s=1.5,
        param_groups=[{"name": "head", "lr": 0.01}], best={"val/mre": Best(4.0, 2, 29)},
        checkpoints={"checkpoint_best_metric": CheckpointInfo("/x/best.ckpt", "val/mre", 4.0)},
        baselines={"mean_shape_val": {"mre": 9.0}}, test=FinalTest("/x/best.ckpt", "val", {"test/mre": 4.2}),
    )


def test_run_record_round_trip_and_unknown_keys(tmp_path):
    record = _full_record(tmp_path / "run")
    data = json.loads(json.dumps(record.to_dict()))
    write_record(tmp_path / "run", record)
    assert read_record(tmp_path / "run") == record and RunRecord.from_dict(data) == record
    assert data["schema_version"] == 2

    # a key a later hrexp added survives a read-write round trip
    data["future_field"] = {"nested": [1, 2]}
    (tmp_path / "run" / "results.json").write_text(json.dumps(data))
    again = read_record(tmp_path / "run")
    assert again.extra == {"future_field": {"nested": [1, 2]}}
    write_record(tmp_path / "copy", again)
    assert json.loads((tmp_path / "copy" / "results.json").read_text()) == data
    assert read_record(tmp_path / "copy") == again


def test_a_schema2_record_ignores_the_config_beside_it(tmp_path):
    """A record that states its directions is not overridden by a config.yaml saying otherwise."""
    run = _detection_run(tmp_path / "run", MAP_A)
    write_config(run, "val/mAP", "min")
    assert read_record(run).mode("val/mAP") == "max"
    assert compare([run], console=False).rows[0][MAP] == 0.6
    shutil.rmtree(run / "csv")  # values from the record itself
    assert compare([run], console=False).rows[0][MAP] == 0.6
