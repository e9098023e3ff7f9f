"""The comparison report ``python -m hrexp.compare``: hand-written run folders, hand-computed tables.

Every run folder here is written by hand (tests/compare_helpers.py: a schema-2 results.json with the
monitor and metric_modes, and a Lightning-style csv/metrics.csv with train rows, empty cells and
best/* rows without an epoch), with numbers chosen so that the expected best values, best epochs and
SDR at the best epoch can be read off the fixtures. Which way is better for a metric, and records of
schema 1 and killed runs: tests/test_compare_direction.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hrexp.reports.comparison import CompareError, compare, write_report
from hrexp.reports.formats import log_wandb_table
from hrexp.utils import wandb_env
from hrexp.utils.wandb_env import wandb_offline
from hrexp.reports.runs import find_runs, read_metrics_csv
from hrexp.run_record import Best, read_record, write_record
from tests.compare_helpers import (
    LANDMARK_MODES,
    PNG_MAGIC,
    UNET_VAL,
    W32_VAL,
    read_csv_rows,
    read_md_rows,
    write_metrics_csv,
    write_run,
)

ROOT = Path(__file__).resolve().parents[1]
MRE, LOSS, MM = "best val MRE (px)", "best val loss", "val MRE (mm)"
SDR4, SDR8 = "val SDR@4px", "val SDR@8px"


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A Hydra multirun folder: job 0 (hrnet_w32), job 1 (unet, no mm), job 2 failed with a partial log."""
    root = tmp_path / "multiruns" / "2025-01-01_12-00-00"
    write_run(root / "0", val_rows=W32_VAL, modes=LANDMARK_MODES, macs_g=7.654, input_size=[256, 192],
              pretrained="/w/hrnet_w32.pth")
    write_run(root / "1", model="unet", val_rows=UNET_VAL, modes=LANDMARK_MODES, total=7_217_456, macs_g=12.5,
              pretrained=False)
    failed = write_run(root / "2", model="resnet50", status="failed", modes=LANDMARK_MODES,
                       error="RuntimeError: CUDA out of memory")
    write_metrics_csv(failed, W32_VAL[:1])  # it validated once before failing: still no metric cells
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / ".hydra").mkdir()
    return root


def test_sweep_table_equals_the_hand_computed_values(sweep):
    result = compare([sweep], console=False)
    files = result.files
    assert all(files[k].parent == sweep for k in ("md", "csv", "png"))  # --out defaults to the sweep
    rows = {r["run"]: r for r in read_csv_rows(files["csv"])}
    assert list(rows) == ["1", "0", "2"]  # by best MRE ascending (5.0 < 6.0), the failed run last

    w32 = rows["0"]
    assert (w32["status"], w32["model"], w32["task"]) == ("finished", "hrnet_w32", "landmarks")
    assert float(w32[MRE]) == 6.0 and w32["best epoch"] == "1"
    assert float(w32[LOSS]) == 0.2  # the loss column's own minimum, at epoch 2
    assert float(w32[MM]) == 3.0 and float(w32[SDR4]) == 0.4 and float(w32[SDR8]) == 0.7  # epoch 1's row
    assert float(w32["params (M)"]) == 28.5 and float(w32["G multiply-adds"]) == 7.654
    assert w32["pretrained"] == "/w/hrnet_w32.pth" and float(w32["train time (s)"]) == 123.4
    assert w32["best checkpoint"] == str(sweep / "0" / "checkpoints" / "best-metric.ckpt")

    unet = rows["1"]
    assert float(unet[MRE]) == 5.0 and unet["best epoch"] == "1"  # a tie at epoch 2: the first one
    assert float(unet[SDR4]) == 0.5 and float(unet[SDR8]) == 0.75 and float(unet[LOSS]) == 0.4
    assert unet[MM] == "" and unet["pretrained"] == "no"

    failed = rows["2"]
    assert failed["status"] == "failed" and "CUDA out of memory" in failed["note"]
    assert all(failed[c] == "" for c in (MRE, LOSS, MM, SDR4, SDR8, "best epoch"))

    # markdown: the same rows and order, numbers to 4 significant digits, paths relative to the sweep
    md = read_md_rows(files["md"])
    assert [r["run"] for r in md] == ["1", "0", "2"]
    assert md[1][MRE] == "6" and md[1][LOSS] == "0.2" and md[1][SDR4] == "0.4" and md[1][MM] == "3"
    assert md[1]["params (M)"] == "28.50" and md[1]["G multiply-adds"] == "7.65"
    assert md[1]["pretrained"] == "hrnet_w32.pth" and md[1]["best checkpoint"] == "0/checkpoints/best-metric.ckpt"
    assert md[0][MM] == "" and md[2]["status"] == "failed" and md[2][MRE] == ""
    assert "CUDA out of memory" in md[2]["note"]


def test_metric_columns_default_to_all_logged_metrics_in_order(sweep):
    result = compare([sweep], console=False)
    metric_cols = result.columns[result.columns.index("pretrained") + 1:result.columns.index("best epoch")]
    assert metric_cols == [LOSS, MRE, MM, SDR4, SDR8]  # loss, headline, then sdr_4 before sdr_8 (natural)


def test_mm_column_only_when_some_run_knows_the_spacing(tmp_path):
    write_run(tmp_path / "a", model="unet", val_rows=UNET_VAL)
    no_mm = [{k: v for k, v in r.items() if k != "val/mre_mm"} for r in W32_VAL]  # column never logged
    write_run(tmp_path / "b", val_rows=no_mm)
    result = compare([tmp_path / "a", tmp_path / "b"], out=tmp_path / "report", console=False)
    assert MM not in result.columns and MRE in result.columns
    assert MM not in (tmp_path / "report" / "comparison.md").read_text()
    assert [r["run"] for r in result.rows] == ["a", "b"]  # named relative to their common parent


def test_sort_option_and_direction(sweep):
    by_params = compare([sweep], sort="params", console=False).rows
    assert [r["run"] for r in by_params] == ["1", "0", "2"]  # 7.2 M < 28.5 M; no params: last
    by_sdr = compare([sweep], sort="val/sdr_8", descending=True, console=False)
    assert by_sdr.sort_column == SDR8 and [r["run"] for r in by_sdr.rows] == ["1", "0", "2"]  # 0.75 > 0.7
    by_mre_desc = compare([sweep], sort=MRE, descending=True, console=False).rows
    assert [r["run"] for r in by_mre_desc] == ["0", "1", "2"]
    assert [r["run"] for r in read_csv_rows(sweep / "comparison.csv")] == ["0", "1", "2"]  # files follow
    with pytest.raises(CompareError, match="no column 'nope'"):
        compare([sweep], sort="nope", console=False)


def test_metrics_option_picks_the_columns(sweep):
    result = compare([sweep], metrics=["val/mre", "sdr_8"], console=False)
    assert [c for c in result.columns if c.startswith(("best val", "val "))] == [MRE, SDR8]
    header = read_md_rows(sweep / "comparison.md")[0].keys()
    assert LOSS not in header and SDR4 not in header and SDR8 in header
    assert {r["run"]: r[SDR8] for r in result.rows} == {"0": 0.7, "1": 0.75, "2": None}
    with pytest.raises(CompareError, match="val/nope"):
        compare([sweep], metrics=["val/nope"], console=False)


def test_pose_runs_follow_val_ap_with_max(tmp_path):
    ap_a = [{"epoch": e, "val/loss": l, "val/AP": ap, "val/AP50": ap50}
            for e, l, ap, ap50 in [(0, 0.9, 0.30, 0.5), (1, 0.5, 0.72, 0.9), (2, 0.4, 0.70, 0.95)]]
    ap_b = [{"epoch": e, "val/loss": l, "val/AP": ap, "val/AP50": ap50}
            for e, l, ap, ap50 in [(0, 0.8, 0.50, 0.6), (1, 0.7, 0.65, 0.8)]]
    write_run(tmp_path / "a", task="pose", val_rows=ap_a, monitor="val/AP", mode="max", modes={"val/AP50": "max"})
    write_run(tmp_path / "b", task="pose", val_rows=ap_b, monitor="val/AP", mode="max", modes={"val/AP50": "max"})
    result = compare([tmp_path], console=False)
    assert result.headline == "val/AP" and result.descending  # larger AP first by default
    rows = {r["run"]: r for r in read_csv_rows(tmp_path / "comparison.csv")}
    assert list(rows) == ["a", "b"]
    assert float(rows["a"]["best val AP"]) == 0.72 and rows["a"]["best epoch"] == "1"
    assert float(rows["a"]["val AP50"]) == 0.9  # at the best-AP epoch, not AP50's own best (0.95)
    assert float(rows["a"][LOSS]) == 0.4 and float(rows["b"]["best val AP"]) == 0.65


def test_results_json_disagreeing_with_the_csv_is_warned(tmp_path, caplog):
    run = write_run(tmp_path / "run", val_rows=W32_VAL)
    record = read_record(run)
    record.best["val/mre"] = Best(value=5.5, epoch=2, step=29)
    write_record(run, record)
    with caplog.at_level(logging.WARNING, logger="hrexp.reports.runs"):
        result = compare([run], out=tmp_path / "out", console=False)
    (row,) = result.rows
    assert row["best val MRE (px)"] == 6.0  # the table keeps the CSV's value
    assert "val/mre" in row["note"] and "5.5" in row["note"]
    assert any("5.5" in r.getMessage() for r in caplog.records)
    assert "val/loss" not in row["note"]  # the loss agrees: no warning for it


def test_run_without_metrics_csv_is_reported(tmp_path):
    write_run(tmp_path / "with_log", val_rows=W32_VAL)
    write_run(tmp_path / "no_log", model="unet", val_rows=UNET_VAL, csv_log=False)
    result = compare([tmp_path], console=False)
    rows = {r["run"]: r for r in result.rows}
    assert "no csv/metrics.csv" in rows["no_log"]["note"]
    assert rows["no_log"]["best val MRE (px)"] == 5.0  # the record's best, said so in the note
    assert rows["no_log"][SDR4] is None and rows["with_log"]["note"] in (None, "")


def test_validation_rows_merge_a_step_logged_twice_and_skip_best_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text(
        "best/val_mre,epoch,step,train/loss_step,val/loss,val/mre\n"
        ",0,4,0.9,,\n"
        ",0,9,,0.5,10.0\n"
        "10.0,,10,,,\n"
        ",1,19,,0.4,9.0\n"
        ",1,19,,0.3,\n"  # a resumed run logging step 19 again: the later loss wins, mre kept
    )
    columns, history = read_metrics_csv(path)
    assert "best/val_mre" in columns
    assert history == [{"epoch": 0, "step": 9, "val/loss": 0.5, "val/mre": 10.0},
                       {"epoch": 1, "step": 19, "val/loss": 0.3, "val/mre": 9.0}]


def test_sweep_search_recurses_in_natural_order(tmp_path):
    for job in ("10", "2", "1"):
        write_run(tmp_path / "logs" / "multiruns" / "x" / job, val_rows=W32_VAL)
    (tmp_path / "logs" / "multiruns" / "x" / "2" / "nested").mkdir()  # inside a run: never searched
    write_run(tmp_path / "logs" / "multiruns" / "x" / "2" / "nested" / "r", val_rows=W32_VAL)
    found = find_runs([tmp_path / "logs"])
    assert [p.name for p in found] == ["1", "2", "10"]
    result = compare([tmp_path / "logs"], console=False)
    assert sorted(r["run"] for r in result.rows) == ["1", "10", "2"]  # relative to their common parent x/
    assert (tmp_path / "logs" / "comparison.md").is_file()


def test_png_is_written(sweep):
    png = compare([sweep], console=False).files["png"]
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_missing_or_empty_folders_are_errors(tmp_path):
    with pytest.raises(CompareError, match="no such folder"):
        compare([tmp_path / "missing"], console=False)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CompareError, match="no run folder"):
        compare([tmp_path / "empty"], console=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "hrexp.compare", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_exit_code_2_names_the_missing_folder(tmp_path):
    missing = tmp_path / "no_such_sweep"
    proc = _cli(str(missing))
    assert proc.returncode == 2
    assert f"{missing}: no such folder" in proc.stderr and "usage:" in proc.stderr


def test_cli_writes_the_report_with_options(sweep, tmp_path):
    out = tmp_path / "report"
    proc = _cli(str(sweep), "--out", str(out), "--sort", "params (M)", "--descending", "--metrics", "val/mre,val/loss")
    assert proc.returncode == 0, proc.stderr
    rows = read_csv_rows(out / "comparison.csv")
    assert [r["run"] for r in rows] == ["0", "1", "2"]  # 28.5 M, 7.2 M, failed
    assert [c for c in rows[0] if "val" in c] == [MRE, LOSS]
    assert (out / "comparison.png").read_bytes().startswith(PNG_MAGIC)
    assert "hrnet_w32" in proc.stdout  # the console table


def test_log_wandb_table_logs_the_rows(sweep):
    wandb = pytest.importorskip("wandb")
    result = compare([sweep], console=False)

    class FakeRun:
        logged: dict = {}

        def log(self, data):
            self.logged = data

    run = FakeRun()
    table = log_wandb_table(result.rows, result.columns, run=run)
    assert isinstance(run.logged["comparison"], wandb.Table) and run.logged["comparison"] is table
    assert table.columns == result.columns
    by_run = {row[0]: dict(zip(table.columns, row)) for row in table.data}
    assert by_run["0"][MRE] == 6.0 and by_run["2"][MRE] is None and by_run["1"]["pretrained"] == "no"


def test_wandb_goes_offline_without_a_key(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline()
    monkeypatch.setenv("WANDB_MODE", "online")
    assert not wandb_offline()
    monkeypatch.delenv("WANDB_MODE")
    for configured in (False, True):  # a stand-in for the key check
        monkeypatch.setattr(wandb_env, "wandb_api_key_configured", lambda c=configured: c)
        assert wandb_offline() is (not configured)


def test_write_report_for_the_sweep_callback(sweep, tmp_path):
    written = write_report([sweep], out_dir=tmp_path / "out")
    assert [p.name for p in written] == ["comparison.md", "comparison.csv", "comparison.png"]
    assert all(p.parent == tmp_path / "out" and p.stat().st_size > 0 for p in written)


def test_overrides_column_shows_what_tells_the_runs_apart(tmp_path):
    """Hydra jobs differing only in hyper-parameters (an Optuna sweep) are told apart by their own overrides."""
    for job, lr in (("0", "0.001"), ("1", "0.0001")):
        folder = write_run(tmp_path / "sweep" / job, val_rows=W32_VAL)
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text(f"- model=hrnet_w32\n- optimizer.lr={lr}\n- seed=0\n")
    write_run(tmp_path / "sweep" / "2", val_rows=W32_VAL)  # no overrides file: an empty cell
    result = compare([tmp_path / "sweep"], console=False)
    assert result.columns[1] == "overrides"
    assert {r["run"]: r["overrides"] for r in result.rows} == {"0": "optimizer.lr=0.001", "1": "optimizer.lr=0.0001",
                                                              "2": None}
    md = {r["run"]: r for r in read_md_rows(tmp_path / "sweep" / "comparison.md")}
    assert md["1"]["overrides"] == "optimizer.lr=0.0001"


def test_no_overrides_column_without_hydra_overrides(sweep):
    assert "overrides" not in compare([sweep], console=False).columns


def test_sweep_report_lists_each_jobs_status_and_why_the_others_did_not_finish(sweep):
    from omegaconf import OmegaConf

    from hrexp.training.sweep_report import SweepReport

    overrides = [["model=hrnet_w32", "seed=0"], ["model=unet", "seed=0"], ["model=resnet50", "seed=0"],
                 ["model=hrnet_w18", "seed=0"], ["model=vit", "seed=0"]]
    (sweep / "3").mkdir()  # killed before it wrote anything but Hydra's files
    (sweep / "4").mkdir()
    (sweep / "4" / "results.json").write_text('{"status": "fin')  # cut off mid-write
    for job, own in enumerate(overrides):
        (sweep / str(job) / ".hydra").mkdir()
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in own))

    SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))

    status = json.loads((sweep / "sweep_status.json").read_text())
    assert [j["status"] for j in status["jobs"]] == ["finished", "finished", "failed", "no record", "no record"]
    assert status["failed"] == ["2", "3", "4"]
    assert [j["overrides"] for j in status["jobs"]] == overrides
    errors = [j["error"] for j in status["jobs"]]
    assert errors[:2] == [None, None] and errors[2].startswith("RuntimeError: CUDA out of memory")
    assert "no results.json" in errors[3] and "unreadable results.json" in errors[4]
    # the comparison of the sweep is written beside it, with the finished jobs' best MRE
    rows = {r["run"]: r for r in read_csv_rows(sweep / "comparison.csv")}
    assert float(rows["0"][MRE]) == 6.0 and float(rows["1"][MRE]) == 5.0


def test_the_plot_labels_runs_by_their_own_overrides_on_whole_epochs(tmp_path):
    from hrexp.reports.plot import figure
    from hrexp.reports.runs import find_runs, load_run, run_names

    for job, lr in (("0", "0.001"), ("1", "0.0001"), ("2", "0.0001")):
        folder = write_run(tmp_path / "sweep" / job, val_rows=W32_VAL)
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text(f"- model=hrnet_w32\n- optimizer.lr={lr}\n")
    write_run(tmp_path / "sweep" / "3", val_rows=W32_VAL)  # no overrides: its name
    paths = find_runs([tmp_path / "sweep"])
    runs = [load_run(p, n) for p, n in run_names(paths).items()]
    fig, _ = figure(runs, "val/mre", mode="min")
    curve, bars = fig.axes
    expected = ["optimizer.lr=0.001", "1: optimizer.lr=0.0001", "2: optimizer.lr=0.0001", "3"]
    assert [t.get_text() for t in curve.get_legend().get_texts()] == expected
    assert [t.get_text() for t in bars.get_xticklabels()] == expected
    fig.canvas.draw()
    ticks = [t for t in curve.get_xticks() if curve.get_xlim()[0] <= t <= curve.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
