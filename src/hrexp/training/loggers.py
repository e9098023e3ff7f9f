"""Logger classes that add hrexp's defaults to Lightning's, and a reader for offline W&B runs."""

from __future__ import annotations

import csv
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _LightningCSVWriter

from hrexp.utils.wandb_env import wandb_api_key_configured

log = logging.getLogger(__name__)


class _AppendingCSVWriter(_LightningCSVWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued, never deleted."""

    def _check_log_dir_exists(self) -> None:
        # Lightning deletes the file of a reused log folder. A run resumed into its own folder must
        # continue its log (and a reused folder must lose nothing): keep it, and its columns.
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                self.metrics_keys = list(next(csv.reader(fh), []))
            log.info("continuing %s", self.metrics_file_path)


class CSVLogger(_LightningCSVLogger):
    """Lightning's CSVLogger that appends to the run folder's ``metrics.csv`` when it exists.

    A resumed run (``hydra.run.dir=<run> ckpt_path=last``) so keeps one log. Steps logged by the
    interrupted run after its last checkpoint appear again; readers keep the later row of a step
    (:func:`hrexp.reports.runs.read_metrics_csv`).
    """

    @property
    def experiment(self) -> _AppendingCSVWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingCSVWriter(log_dir=self.log_dir)
        return self._experiment


def previous_wandb_run_id(save_dir: str | Path) -> str | None:
    """The id of the newest W&B run (online or offline) recorded under ``save_dir/wandb``, if any."""
    folder = Path(save_dir) / "wandb"
    runs = sorted((p for p in folder.glob("*run-*-*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger that goes offline by itself when no API key is configured.

    Without a key wandb would otherwise fail after a network attempt; offline it writes a local run
    folder under ``save_dir/wandb`` that ``wandb sync <folder>`` uploads later. ``WANDB_MODE`` set in
    the environment is respected.

    ``log_model`` (checkpoints as W&B artifacts) also works offline, unlike in Lightning's class,
    which refuses the combination: the offline run records the artifact (the file is staged in
    wandb's data dir, ``WANDB_DATA_DIR``, default ``~/.local/share/wandb``) and ``wandb sync``
    uploads it with the rest of the run.

    Args:
        offline: ``None`` (automatic), or force ``True``/``False``.
        log_model: ``False``; ``True``: the checkpoints of every ModelCheckpoint at the end of
            training; ``"all"``: each checkpoint as it is saved. One artifact per ModelCheckpoint,
            ``model-<run id>-<monitor>`` (``-val_mre``, ``-val_loss``; ``-last`` without a monitor),
            its best file aliased ``best``. ``checkpoint_name`` replaces ``model-<run id>``.
        **kwargs: passed to :class:`lightning.pytorch.loggers.WandbLogger` (and on to ``wandb.init``).
    """

    def __init__(self, offline: bool | None = None, log_model: bool | str = False, **kwargs: Any):
        if offline is None:
            mode = os.environ.get("WANDB_MODE", "").lower()
            offline = mode in ("offline", "dryrun") or (mode != "online" and not wandb_api_key_configured())
            if offline:
                log.info("wandb: no API key configured; logging offline (upload later with `wandb sync`)")
        if offline:
            os.environ.setdefault("WANDB_MODE", "offline")
        # Lightning raises on offline + log_model ("cannot be uploaded in offline mode"); wandb itself
        # keeps an offline run's artifacts for `wandb sync`, so the check is passed and offline restored.
        super().__init__(offline=False if log_model else offline, log_model=log_model, **kwargs)
        self._offline = bool(offline)
        self._artifact_base: str | None = self._checkpoint_name

    def _scan_and_log_checkpoints(self, checkpoint_callback: Any) -> None:
        # Lightning names every checkpoint artifact "model-<run id>" and aliases each callback's best
        # file "best": with several ModelCheckpoints (best val/loss, best val/mre, last) the alias would
        # end on whichever was logged last. One artifact per callback keeps "best" meaningful:
        # model-<run id>-val_mre, model-<run id>-val_loss, model-<run id>-last.
        base = self._artifact_base or f"model-{self.experiment.id}"
        monitor = getattr(checkpoint_callback, "monitor", None)
        self._checkpoint_name = f"{base}-{str(monitor).replace('/', '_') if monitor else 'last'}"
        super()._scan_and_log_checkpoints(checkpoint_callback)


# --- reading an offline run ----------------------------------------------------------------------
# wandb 0.31 (its Go core) writes no files/wandb-summary.json, config.yaml or wandb-metadata.json
# for an offline run: everything is in the run's ``run-<id>.wandb`` file, a LevelDB-style log of
# protobuf ``wandb.proto.wandb_internal_pb2.Record`` messages (what `wandb sync` uploads). The
# Python reader of that format left the wandb package with the Go core, hence this small one.
_BLOCK = 32768
_HEADER = 7  # checksum (uint32), length (uint16), chunk type (uint8)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def iter_wandb_records(path: str | Path) -> Iterator[Any]:
    """The ``Record`` protobufs of a ``.wandb`` file, in order.

    Raises:
        ValueError: not a W&B data file, or a corrupt chunk sequence.
    """
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:_HEADER]) if len(data) >= _HEADER else (b"", 0, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B data file")
    pos, pending = _HEADER, None
    while True:
        if _BLOCK - pos % _BLOCK < _HEADER:  # a block's tail too short for a header is zero padding
            pos += _BLOCK - pos % _BLOCK
        if pos + _HEADER > len(data):
            return
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if kind == 0 and length == 0:  # zeroed tail (pre-allocated or not yet written)
            return
        if pos + _HEADER + length > len(data):  # a chunk still being written: the file ends before it
            return
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == _FULL:
            payload = chunk
        elif kind == _FIRST:
            pending = chunk
            continue
        elif kind in (_MIDDLE, _LAST) and pending is not None:
            pending += chunk
            if kind == _MIDDLE:
                continue
            payload, pending = pending, None
        else:
            raise ValueError(f"{path}: corrupt record sequence at byte {pos}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def _item_path(item: Any) -> list[str]:
    return list(item.nested_key) or [item.key]


def _set(target: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def _remove(target: dict[str, Any], path: list[str]) -> None:
    for part in path[:-1]:
        target = target.get(part, {})
    target.pop(path[-1], None)


@dataclass
class OfflineRun:
    """What an offline W&B run recorded: run fields, config, final summary, history, artifacts."""

    path: Path
    run_id: str = ""
    project: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None

    def column(self, key: str) -> list[Any]:
        """The logged values of one history key, in order (rows without it skipped)."""
        return [row[key] for row in self.history if key in row]


def read_offline_run(run_dir: str | Path, wait_s: float = 30.0) -> OfflineRun:
    """Read an offline run folder (``.../wandb/offline-run-<time>-<id>``) without any network.

    The summary is what the W&B UI would show: the last logged value of every key, plus values set
    on ``run.summary``. Config values are the ones last set (``wandb.config`` updates applied in
    order). Values are JSON-decoded; nested keys give nested dicts.

    wandb's core process may still be writing the file after ``run.finish()`` returns (its last
    block reached the disk up to a second later, seen here). A finished run ends with an ``exit``
    record: the reader waits up to ``wait_s`` seconds for it, then reads what is there (a run still
    going, or killed, has none).
    """
    import time

    run_dir = Path(run_dir)
    deadline = time.monotonic() + wait_s
    while True:
        run = _read_offline_run_once(run_dir)
        if run.exit_code is not None or time.monotonic() >= deadline:
            return run
        time.sleep(0.2)


def _read_offline_run_once(run_dir: Path) -> OfflineRun:
    files = sorted(run_dir.glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no .wandb data file (not a W&B run folder?)")
    run = OfflineRun(path=run_dir)
    for record in iter_wandb_records(files[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.project, run.name = r.run_id, r.project, r.display_name
            run.group, run.job_type, run.tags = r.run_group, r.job_type, list(r.tags)
            for item in r.config.update:
                _set(run.config, _item_path(item), json.loads(item.value_json))
            for item in r.summary.update:
                _set(run.summary, _item_path(item), json.loads(item.value_json))
        elif kind == "config":
            for item in record.config.update:
                _set(run.config, _item_path(item), json.loads(item.value_json))
            for item in record.config.remove:
                _remove(run.config, _item_path(item))
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, _item_path(item), json.loads(item.value_json))
            for item in record.summary.remove:
                _remove(run.summary, _item_path(item))
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, _item_path(item), json.loads(item.value_json))
            run.history.append(row)
        elif kind == "artifact":
            a = record.artifact
            run.artifacts.append({"name": a.name, "type": a.type, "aliases": list(a.aliases),
                                  "metadata": json.loads(a.metadata) if a.metadata else {},
                                  "files": [c.path for c in a.manifest.contents]})
        elif kind == "exit":
            run.exit_code = int(record.exit.exit_code)
    return run
