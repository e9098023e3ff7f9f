"""The run record, ``results.json``: its schema, how it is written and how it is read back.

Every run folder holds one. ``train.py`` writes it (``status: running`` fields first, the rest at
the end; a failed run writes ``status: failed`` with the error); the comparison report, the sweep
report and anything else that compares runs read it here, never from the loggers.

The record names the metric the run was selected on and its direction (``monitor``), and the
direction of every validation metric it logged (``metric_modes``), taken from each metric's own
``higher_is_better``: readers never guess a direction from a metric's name.

Schema versions:

* 1 (no ``schema_version`` key; hrexp before the run-record module): no ``monitor`` or
  ``metric_modes``, the landmark baseline under ``baseline_mean_shape_val``. Read back with the
  monitor and modes of the run's own ``config.yaml`` (``task.monitor``, ``callbacks.best_metrics``)
  when the folder has one.
* 2: this module.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

SCHEMA_VERSION = 2
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.yaml"  # the resolved run config, beside the record
MODES = ("min", "max")
STATUSES = ("running", "finished", "failed")


class RecordError(ValueError):
    """A run record that cannot be read: the message names the file and the field."""


def _mode(value: Any, where: str) -> str:
    if value not in MODES:
        raise RecordError(f"{where}: mode must be 'min' or 'max', got {value!r}")
    return str(value)


@dataclass
class Monitor:
    """The metric a run is selected on (best checkpoint, sweeps, the comparison) and its direction."""

    metric: str
    mode: str

    def __post_init__(self) -> None:
        self.mode = _mode(self.mode, f"monitor {self.metric!r}")

    def better(self, value: float, than: float) -> bool:
        """Whether ``value`` beats ``than`` in this monitor's direction (ties do not)."""
        return value > than if self.mode == "max" else value < than


@dataclass
class Best:
    """The best value of one metric during training and where it was reached."""

    value: float | None
    epoch: int | None = None
    step: int | None = None


@dataclass
class CheckpointInfo:
    """What one checkpoint callback kept: its best file, the metric it follows and the score there."""

    path: str | None
    monitor: str | None = None
    score: float | None = None


@dataclass
class TestResult:
    """The final test: which checkpoint, on which split (``val`` when the data has no test split)."""

    checkpoint: str | None
    split: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class RunRecord:
    """One run: what ran (choices, seed, model size), how it went (best values, checkpoints, test).

    Attributes:
        status: ``running``, ``finished`` or ``failed``.
        choices: The config-group options (``{"model": "hrnet_w32", "task": "landmarks", ...}``).
        monitor: The selection metric and its direction (``None`` only in old records).
        metric_modes: ``{"val/mre": "min", "val/sdr_4": "max", ...}``: the direction of every
            validation metric, from the metric's ``higher_is_better``.
        baselines: Task-owned reference scores that need no training, by name (landmarks:
            ``mean_shape_val``, the training set's mean shape scored on the validation split).
        extra: Keys this version does not know, kept so a read-write round trip loses nothing.
    """

    status: str = "running"
    choices: dict[str, str] = field(default_factory=dict)
    seed: int | None = None
    tags: list[str] = field(default_factory=list)
    output_dir: str | None = None
    monitor: Monitor | None = None
    metric_modes: dict[str, str] = field(default_factory=dict)
    params: dict[str, int] | None = None
    params_backbone: int | None = None
    input_size: list[int] | None = None
    macs_g: float | None = None
    # None: unknown (records older than the field); False: random init; True or a name/path otherwise.
    pretrained: Any = None
    dataset_meta: dict[str, Any] = field(default_factory=dict)
    # data.batch_size is per process: this is batch_size x processes x accumulate_grad_batches.
    global_batch_size: int | None = None
    train_time_s: float | None = None
    # The precision training computed in (trainer.precision resolved: auto -> 32 | bf16-mixed).
    precision: str | None = None
    # The precision validation computed in during the fit (val_precision: 32 by default, or the fit's).
    val_precision: str | None = None
    # The precision of the end-of-run test (test_precision resolved; default 32, as eval.py's).
    test_precision: str | None = None
    # Optimizer steps and epochs trained by the end of fit (a resumed run's earlier parts included).
    trained_steps: int | None = None
    trained_epochs: int | None = None
    # A time-limited run (trainer.max_time): budget_s, the training time used_s (last validation
    # included, a resumed run's earlier parts too), reserve_s kept for the last validation, the
    # optimizer steps and epochs trained, and whether the time budget stopped it (callbacks.time_budget).
    time_budget: dict[str, Any] | None = None
    # Optimizer steps skipped for a NaN/inf training loss (nonfinite_loss=skip).
    skipped_batches: int = 0
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Best] = field(default_factory=dict)
    checkpoints: dict[str, CheckpointInfo] = field(default_factory=dict)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    test: TestResult | None = None
    error: str | None = None
    traceback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise RecordError(f"status must be one of {STATUSES}, got {self.status!r}")
        for metric, mode in self.metric_modes.items():
            _mode(mode, f"metric_modes[{metric!r}]")

    # ------------------------------------------------------------------ reading what it says
    @property
    def headline(self) -> str | None:
        """The metric the run was selected on (``val/mre`` for landmarks, ``val/AP`` for pose)."""
        return None if self.monitor is None else self.monitor.metric

    def mode(self, metric: str) -> str | None:
        """``"min"``/``"max"`` for a metric the record knows the direction of, else None."""
        if metric in self.metric_modes:
            return self.metric_modes[metric]
        if self.monitor is not None and metric == self.monitor.metric:
            return self.monitor.mode
        return None

    # ------------------------------------------------------------------ (de)serialising
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data; unknown keys of a read record come back at the top level."""
        out = {"schema_version": self.schema_version}
        for f in fields(self):
            if f.name in ("extra", "schema_version"):
                continue
            value = getattr(self, f.name)
            out[f.name] = asdict(value) if hasattr(value, "__dataclass_fields__") else value
        out["best"] = {k: asdict(v) for k, v in self.best.items()}
        out["checkpoints"] = {k: asdict(v) for k, v in self.checkpoints.items()}
        out.update(self.extra)
        return _plain(out)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> "RunRecord":
        """A record from its JSON data, any schema version.

        Args:
            data: The parsed ``results.json``.
            config: The run's resolved config (its ``config.yaml``), used for records of schema 1,
                which did not store the monitor's direction.

        Raises:
            RecordError: A newer schema than this version reads, or a malformed field.
        """
        data = dict(data)
        try:
            version = int(data.pop("schema_version", 1))
        except (TypeError, ValueError):
            raise RecordError("schema_version must be an integer") from None
        if version > SCHEMA_VERSION:
            raise RecordError(f"schema_version {version} is newer than this hrexp reads ({SCHEMA_VERSION}); "
                              "upgrade hrexp")
        if version == 1:
            data = _upgrade_v1(data, config or {})
        known = {f.name for f in fields(cls)} - {"extra", "schema_version"}
        extra = {k: v for k, v in data.items() if k not in known}
        kw = {k: v for k, v in data.items() if k in known}
        try:
            if kw.get("monitor") is not None:
                kw["monitor"] = Monitor(**kw["monitor"])
            kw["best"] = {k: Best(**v) for k, v in (kw.get("best") or {}).items()}
            kw["checkpoints"] = {k: CheckpointInfo(**v) for k, v in (kw.get("checkpoints") or {}).items()}
            if kw.get("test") is not None:
                kw["test"] = TestResult(**kw["test"])
            for key in ("choices", "metric_modes", "dataset_meta", "baselines"):
                kw[key] = dict(kw.get(key) or {})
            for key in ("tags", "param_groups"):
                kw[key] = list(kw.get(key) or [])
            return cls(**kw, extra=extra)
        except (TypeError, AttributeError) as exc:  # a field of the wrong shape: name it
            raise RecordError(f"malformed field: {exc}") from None


def monitor_and_modes_from_config(config: Mapping[str, Any]) -> tuple[Monitor | None, dict[str, str]]:
    """The monitor and metric directions a run's resolved config gives (its ``config.yaml``).

    ``task.monitor`` is the selection metric; every callback with a ``monitor`` and a ``mode`` (the
    checkpoint callbacks: ``val/loss`` min, the task's metric) and ``callbacks.best_metrics.monitors``
    entries that give a mode add their metric. Entries without a valid mode are left out: a
    direction is never guessed.

    Returns:
        ``(monitor, modes)``: the monitor (``None`` when the config names none) and
        ``{metric: "min" | "max"}``, the monitor included.
    """
    def section(parent: Any, key: str) -> Mapping[str, Any]:
        value = parent.get(key) if isinstance(parent, Mapping) else None
        return value if isinstance(value, Mapping) else {}

    modes: dict[str, str] = {}
    for callback in section(config, "callbacks").values():
        if isinstance(callback, Mapping) and callback.get("monitor") and callback.get("mode") in MODES:
            modes[str(callback["monitor"])] = str(callback["mode"])
    monitors = section(section(config, "callbacks"), "best_metrics").get("monitors")
    for item in monitors if isinstance(monitors, Sequence) and not isinstance(monitors, str) else []:
        if isinstance(item, Mapping) and item.get("metric") and item.get("mode") in MODES:
            modes[str(item["metric"])] = str(item["mode"])
    task_monitor = section(section(config, "task"), "monitor")
    monitor = None
    if task_monitor.get("metric") and task_monitor.get("mode") in MODES:
        monitor = Monitor(metric=str(task_monitor["metric"]), mode=str(task_monitor["mode"]))
        modes[monitor.metric] = monitor.mode
    return monitor, modes


def _upgrade_v1(data: dict[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """Schema 1 -> 2: the baseline moves under ``baselines``; monitor and modes come from the config."""
    baseline = data.pop("baseline_mean_shape_val", None)
    if baseline is not None:
        data.setdefault("baselines", {})["mean_shape_val"] = baseline
    monitor, modes = monitor_and_modes_from_config(config)
    if monitor is not None:
        data["monitor"] = asdict(monitor)
    data["metric_modes"] = modes
    return data


def _plain(value: Any) -> Any:
    """JSON-ready: tensors to numbers or lists, NaN to null, paths to strings."""
    if hasattr(value, "detach") and hasattr(value, "numel"):  # a torch tensor, without importing torch
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp-{os.getpid()}")  # two writers never share a temp file
    tmp.write_text(json.dumps(_plain(data), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def write_record(run_dir: str | Path, record: RunRecord) -> Path:
    """Write ``<run_dir>/results.json`` atomically."""
    return write_json(Path(run_dir) / RESULTS_FILE, record.to_dict())


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's resolved ``config.yaml`` as plain data, or ``{}`` when absent or unreadable."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_record(run_dir: str | Path) -> RunRecord:
    """Read ``<run_dir>/results.json`` of any schema version.

    Raises:
        FileNotFoundError: No record (the run is still going, or died before writing one).
        RecordError: The file is not valid JSON (e.g. cut off) or a field is malformed; the message
            names the file.
    """
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RecordError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, Mapping):
        raise RecordError(f"{path}: expected a JSON object, got {type(data).__name__}")
    config = read_run_config(run_dir) if "schema_version" not in data else {}
    try:
        return RunRecord.from_dict(data, config=config)
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from None
