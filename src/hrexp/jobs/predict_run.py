"""``predict(cfg)``: the body of ``predict.py`` / ``hrexp-predict``. A checkpoint run on new images.

``python predict.py ckpt_path=<file.ckpt> input=<image | folder | glob> [output=<folder>] [overlays=true]``

Needs only the checkpoint, as ``export.py``: model, task and the training input size are stored in
it. Each image goes through the evaluation-time preprocessing of the run's data family (the family's
``prediction_preparer``, found from the checkpoint's ``data._target_``: :mod:`hrexp.prediction.preprocess`)
and the task's own evaluation inference and decoding (``task.eval_outputs`` + ``task.predict``, with
the flip test when the task uses one), so a prediction equals what ``eval.py`` scores on the same
image. The task says what is written (its ``prediction_writer``); nothing here knows a particular
task or data family.

Written to ``output`` (default: the run folder ``logs/predict/runs/<time>/``):

* the task's files, e.g. keypoint tasks (landmarks, pose): ``predictions.csv`` (one row per image x
  [person x] keypoint: ``x, y, score``, ORIGINAL-image pixels) and ``predictions.json`` (COCO keypoint
  results; see :mod:`hrexp.prediction.writers`); segmentation: ``masks/<name>.png`` (class id per
  pixel, uint8, original size) and ``predictions.csv``;
* ``overlays/<name>.png|jpg`` with ``overlays=true``; ``skipped.csv`` (file, reason); ``predict.json``
  (summary); ``README.txt``.

Images are listed first, then decoded and predicted batch by batch (``num_workers`` loader workers),
so a folder of any size streams through; a file that cannot be read is named in ``skipped.csv`` and
the run goes on.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rich
import torch
from omegaconf import DictConfig, OmegaConf
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from hrexp.errors import ConfigError
from hrexp.prediction.boxes import PersonBox, read_boxes
from hrexp.prediction.image_source import (
    ImageBatch,
    ImageFiles,
    InputFiles,
    collate_images,
    expand_input,
    move_to,
    to_cpu,
)
from hrexp.prediction.preprocess import preparer_for
from hrexp.prediction.regions import PointRegions, point_regions
from hrexp.prediction.writers import (
    PredictedImage,
    PredictionWriter,
    unique_names,
    write_overlay,
    write_readme,
    write_skipped,
)
from hrexp.run_record import write_json
from hrexp.training.checkpoint_model import module_from_checkpoint
from hrexp.training.module import HRExpModule

log = logging.getLogger(__name__)

DEVICES = "auto, cpu, cuda, cuda:<index> or mps"


@dataclass
class PredictOptions:
    """The command's options, checked (see ``conf/predict.yaml``)."""

    ckpt_path: Path
    inputs: InputFiles
    output: Path
    overlays: bool
    batch_size: int
    num_workers: int
    device: torch.device
    boxes: dict[str, list[PersonBox]] | None
    regions: PointRegions | None = None


def _whole_number(cfg: DictConfig, name: str, minimum: int) -> int:
    value = cfg.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}={value!r}: expected a whole number >= {minimum}")
    return value


def resolve_device(value: Any) -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU; otherwise the device named, checked.

    Raises:
        ConfigError: an unknown device, or one this machine does not have.
    """
    if value in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(value))
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={value!r}: expected {DEVICES}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device={value!r}: expected {DEVICES}")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"device={value!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                          f"use device=auto or device=cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={value!r}: MPS is not available here; use device=auto or device=cpu")
    return device


def check_options(cfg: DictConfig) -> PredictOptions:
    """Every option checked before any image is read or the model is built.

    Raises:
        ConfigError: naming the option and what was expected (a missing checkpoint, an ``input``
            matching no image, ``overlays`` not true/false, a bad ``batch_size`` / ``num_workers`` /
            ``device``, an unreadable ``boxes`` file).
    """
    overlays = cfg.get("overlays")
    if not isinstance(overlays, bool):
        raise ConfigError(f"overlays={overlays!r}: expected true or false")
    batch_size = _whole_number(cfg, "batch_size", 1)
    num_workers = _whole_number(cfg, "num_workers", 0)
    device = resolve_device(cfg.get("device"))
    threshold = cfg.get("box_score_threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise ConfigError(f"box_score_threshold={threshold!r}: expected a number")
    ckpt_path = Path(str(cfg.ckpt_path)).expanduser()
    if not ckpt_path.is_file():
        raise ConfigError(f"ckpt_path={str(cfg.ckpt_path)!r}: no such checkpoint file (expected a .ckpt written by "
                          f"train.py)")
    spec = cfg.input
    inputs = expand_input(OmegaConf.to_object(spec) if OmegaConf.is_config(spec) else spec)
    boxes = read_boxes(cfg.boxes, float(threshold)) if cfg.get("boxes") else None
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir)
    conformal = cfg.get("conformal")
    regions = point_regions(OmegaConf.to_container(conformal) if OmegaConf.is_config(conformal) else conformal, ckpt_path)
    return PredictOptions(ckpt_path, inputs, output, overlays, batch_size, num_workers, device, boxes, regions)


@torch.no_grad()
def run_network(module: HRExpModule, inputs: dict[str, Any]) -> dict[str, Any]:
    """The task's evaluation inference and decoding of one batch, as the module's val/test step runs them."""
    task = module.task
    outputs = task.eval_outputs(module, inputs)
    flipped = module(inputs["image"].flip(-1)) if task.flip_test else None
    return to_cpu(task.predict(outputs, inputs, flipped_outputs=flipped))


class Outputs:
    """Hands each image of a batch, with its rows of the predictions, to the task's writer; writes the overlays."""

    def __init__(self, writer: PredictionWriter, options: PredictOptions, names: dict[str, str]):
        self.writer = writer
        self.out_dir = options.output
        self.names = names
        self.predicted = 0

    def add(self, batch: ImageBatch, preds: dict[str, Any] | None) -> None:
        rows_of: dict[int, list[int]] = {}
        for row, owner in enumerate(batch.owner):
            rows_of.setdefault(owner, []).append(row)
        for position, image in enumerate(batch.images):
            name = self.names[image["file"]]
            predicted = PredictedImage(image["file"], name, image["index"], image["picture"], rows_of.get(position, []))
            picture = self.writer.add(predicted, batch.inputs, preds)
            if picture is not None:
                write_overlay(self.out_dir / "overlays", name, image["file"], picture)
            self.predicted += 1

    def close(self) -> None:
        self.writer.close()


def _progress() -> Progress:
    return Progress(TextColumn("[bold]predicting[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn())


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predict ``cfg.input`` with ``cfg.ckpt_path``; write the files listed in the module docstring.

    Returns:
        The summary written to ``predict.json``.

    Raises:
        ConfigError: a bad option (see :func:`check_options`), or a checkpoint whose task has no prediction
            writer or whose data family no prediction preparer, or ``boxes`` for a family that crops none.
    """
    options = check_options(cfg)
    loaded = module_from_checkpoint(options.ckpt_path)
    module, run_cfg = loaded.module, loaded.run_cfg
    # the data family (the class of the checkpoint's data._target_) prepares the images, the task writes the files
    preparer = preparer_for(run_cfg, options.boxes)
    module.to(options.device)
    files = options.inputs.files
    names = unique_names(files)
    options.output.mkdir(parents=True, exist_ok=True)
    writer = module.task.prediction_writer(options.output, bool(preparer.per_instance))
    if options.regions is not None:
        if not hasattr(writer, "set_regions"):
            raise ConfigError(f"conformal: prediction regions are for keypoint tasks; this checkpoint's task is "
                              f"{module.task.task_name!r} (set conformal.calibration=null)")
        mismatch = options.regions.landmark_mismatch(module.task.keypoint_names)
        if mismatch:
            raise ConfigError(f"conformal.calibration={options.regions.file}: {mismatch}")
        writer.set_regions(options.regions)
    outputs = Outputs(writer, options, names)

    loader = DataLoader(ImageFiles(files, preparer, keep_picture=options.overlays), batch_size=options.batch_size,
                        shuffle=False, num_workers=options.num_workers,
                        collate_fn=functools.partial(collate_images, collate_samples=preparer.collate))
    skipped = list(options.inputs.skipped)
    try:
        with _progress() as progress:
            bar = progress.add_task("predict", total=len(files))
            for batch in loader:
                preds = run_network(module, move_to(batch.inputs, options.device)) if batch.inputs else None
                outputs.add(batch, preds)
                skipped += batch.skipped
                progress.advance(bar, len(batch.images) + len(batch.skipped))
    finally:
        outputs.close()
        write_skipped(options.output / "skipped.csv", skipped)

    task = module.task
    summary: dict[str, Any] = {
        "checkpoint": str(options.ckpt_path.resolve()),
        "task": task.task_name,
        "choices": OmegaConf.to_container(run_cfg.choices) if "choices" in run_cfg else None,
        "input": OmegaConf.to_container(cfg.input) if OmegaConf.is_config(cfg.input) else cfg.input,
        "output": str(options.output.resolve()),
        "counts": {"files": len(files) + len(options.inputs.skipped), "predicted": outputs.predicted,
                   "skipped": len(skipped)},
        "options": {"overlays": options.overlays, "batch_size": options.batch_size,
                    "num_workers": options.num_workers, "device": str(options.device),
                    "boxes": cfg.get("boxes"), "box_score_threshold": cfg.get("box_score_threshold")},
        "files": {**writer.files, "skipped": "skipped.csv", **({"overlays": "overlays/"} if options.overlays else {})},
        "coordinates": writer.coordinates,
        "regions": None if options.regions is None else options.regions.describe(),
    }
    summary["counts"].update(writer.counts())
    write_json(options.output / "predict.json", summary)
    write_readme(options.output, str(options.ckpt_path), writer, options.overlays)
    message = f"[bold]Predicted[/bold] {outputs.predicted} image(s) with {options.ckpt_path} -> {options.output}"
    if skipped:
        message += f"; [bold yellow]skipped {len(skipped)}[/bold yellow] file(s) that could not be read (see skipped.csv)"
    else:
        message += "; no file skipped"
    rich.print(message)
    if options.regions is not None:
        counts = summary["counts"]
        rich.print(f"[bold]Regions[/bold] {options.regions.level:.0%} {options.regions.shape} regions from "
                   f"{options.regions.file}: {counts.get('points_to_review', 0)} point(s) to review, "
                   f"{counts.get('unusual_images', 0)} unusual image(s)")
    return summary
