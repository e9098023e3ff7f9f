"""Hand-made run folders for the comparison tests: a schema-2 ``results.json``, a Lightning-style
``csv/metrics.csv`` (train rows, empty cells, best/* rows without an epoch) and, where asked, the
run's ``config.yaml``; and readers of the report's CSV and markdown tables."""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from hrexp.run_record import Best, CheckpointInfo, Monitor, RunRecord, write_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The directions a landmark run records for its validation metrics.
LANDMARK_MODES = {"val/loss": "min", "val/mre": "min", "val/mre_mm": "min", "val/sdr_4": "max", "val/sdr_8": "max"}

# Landmark run "w32": MRE is lowest at epoch 1 (6.0); the loss keeps falling to epoch 2 (0.2), so
# the best loss and the best-MRE epoch differ; SDR and mm are those of epoch 1.
W32_VAL = [
    {"epoch": 0, "val/loss": 0.5, "val/mre": 10.0, "val/mre_mm": 5.0, "val/sdr_4": 0.1, "val/sdr_8": 0.3},
    {"epoch": 1, "val/loss": 0.3, "val/mre": 6.0, "val/mre_mm": 3.0, "val/sdr_4": 0.4, "val/sdr_8": 0.7},
    {"epoch": 2, "val/loss": 0.2, "val/mre": 7.0, "val/mre_mm": 3.5, "val/sdr_4": 0.35, "val/sdr_8": 0.8},
]
# Landmark run "unet": no pixel spacing (mm is NaN), MRE 5.0 reached at epochs 1 and 2: the first counts.
UNET_VAL = [
    {"epoch": 0, "val/loss": 0.9, "val/mre": 8.0, "val/mre_mm": "nan", "val/sdr_4": 0.2, "val/sdr_8": 0.4},
    {"epoch": 1, "val/loss": 0.4, "val/mre": 5.0, "val/mre_mm": "nan", "val/sdr_4": 0.5, "val/sdr_8": 0.75},
    {"epoch": 2, "val/loss": 0.45, "val/mre": 5.0, "val/mre_mm": "nan", "val/sdr_4": 0.6, "val/sdr_8": 0.9},
]


def write_metrics_csv(folder: Path, val_rows: list[dict], steps_per_epoch: int = 10, monitor: str | None = None,
                      mode: str = "min") -> None:
    """A CSVLogger file as Lightning writes it: sorted columns, one metric group per row, '' elsewhere."""
    headline = monitor or next(k for k in val_rows[0] if k not in ("epoch", "val/loss") and not k.endswith("_mm"))
    rows, best = [], None
    for v in val_rows:
        epoch, step = v["epoch"], (v["epoch"] + 1) * steps_per_epoch - 1
        rows.append({"epoch": epoch, "step": step - 5, "train/loss_step": 1.0 / (step + 1), "lr-AdamW": 1e-3})
        rows.append({"epoch": epoch, "step": step, **{k: x for k, x in v.items() if k != "epoch"}})
        value = float(v[headline])
        if best is None or (value > best[0] if mode == "max" else value < best[0]):
            best = (value, epoch)
        # BestMetrics' rows carry no epoch: they must not be taken for validation rows
        rows.append({"step": step + 1, "best/" + headline.replace("/", "_"): best[0],
                     "best/" + headline.replace("/", "_") + "_epoch": float(best[1])})
        rows.append({"epoch": epoch, "step": step, "train/loss_epoch": 0.5})
    columns = sorted({k for r in rows for k in r})
    (folder / "csv").mkdir(parents=True, exist_ok=True)
    with open(folder / "csv" / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def best_of(val_rows: list[dict], metric: str, mode: str = "min") -> dict:
    """The record's ``best`` entry as BestMetrics writes it (first epoch on ties)."""
    pick = min if mode == "min" else max
    value = pick(float(r[metric]) for r in val_rows)
    epoch = next(r["epoch"] for r in val_rows if float(r[metric]) == value)
    return {"value": value, "epoch": epoch, "step": (epoch + 1) * 10 - 1}


def checkpoints(folder: Path, monitor: str) -> dict[str, dict]:
    """The record's ``checkpoints`` as the default callbacks leave them."""
    return {
        "checkpoint_best_loss": {"path": str(folder / "checkpoints" / "best-loss.ckpt"), "monitor": "val/loss"},
        "checkpoint_best_metric": {"path": str(folder / "checkpoints" / "best-metric.ckpt"), "monitor": monitor},
        "checkpoint_last": {"path": str(folder / "checkpoints" / "last.ckpt"), "monitor": None},
    }


def write_run(folder: Path, *, model: str = "hrnet_w32", task: str = "landmarks", val_rows: list[dict] | None = None,
              status: str = "finished", total: int = 28_500_000, monitor: str = "val/mre", mode: str = "min",
              modes: dict[str, str] | None = None, csv_log: bool = True, **fields) -> Path:
    """A run folder with a schema-2 record (``RunRecord`` + ``write_record``) and its CSV log.

    ``modes`` are the record's ``metric_modes`` besides ``val/loss`` (min) and the monitor;
    ``fields`` set other record fields (``macs_g``, ``pretrained``, ``error``, ...).
    """
    folder.mkdir(parents=True, exist_ok=True)
    record = RunRecord(
        status=status, choices={"model": model, "head": "heatmap", "task": task, "data": "synthetic_spine"}, seed=0,
        output_dir=str(folder), monitor=Monitor(monitor, mode),
        metric_modes={"val/loss": "min", monitor: mode, **(modes or {})},
    )
    if status != "failed":
        record.params = {"total": total, "trainable": total}
        record.params_backbone = total - 1000
        record.train_time_s = 123.4
        record.best = {"val/loss": Best(**best_of(val_rows, "val/loss")),
                       monitor: Best(**best_of(val_rows, monitor, mode))}
        record.checkpoints = {k: CheckpointInfo(**v) for k, v in checkpoints(folder, monitor).items()}
    for name, value in fields.items():
        setattr(record, name, value)
    write_record(folder, record)
    if csv_log and val_rows is not None:
        write_metrics_csv(folder, val_rows, monitor=monitor, mode=mode)
    return folder


def write_config(folder: Path, monitor: str, mode: str, loss_mode: str = "min") -> Path:
    """The run's resolved ``config.yaml``, the parts that say what it followed and in which direction."""
    config = {
        "task": {"_target_": "hrexp.tasks.pose.PoseTask", "monitor": {"metric": monitor, "mode": mode}},
        "callbacks": {"best_metrics": {"_target_": "hrexp.callbacks.best_metrics.BestMetrics", "monitors": [
            {"metric": "val/loss", "mode": loss_mode}, {"metric": monitor, "mode": mode}]}},
        "seed": 0,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def read_md_rows(path: Path) -> list[dict[str, str]]:
    """The markdown table of ``comparison.md`` as dicts of cell text."""
    lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip().strip("|").split(" | ")] for ln in lines]
    header, rule, body = cells[0], lines[1], cells[2:]
    assert set(rule.replace("|", "").replace(":", "")) == {"-"}
    return [dict(zip(header, row, strict=True)) for row in body]
