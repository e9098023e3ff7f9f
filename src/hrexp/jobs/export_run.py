"""``export(cfg)``: the body of ``export.py``. A checkpoint to an ONNX file, checked with onnxruntime.

Needs only the checkpoint: the model, task, input size and what the data told the task (keypoint
count, classes) are all stored in it, so no training data has to be at hand. What the graph outputs is
the task's to say (its ``export_output_names`` / ``export_outputs`` hooks, through
:class:`~hrexp.export.onnx_export.DeployModel`); nothing here knows a particular task. A conformal
calibration beside the checkpoint adds each point's region (:func:`export_regions`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import rich
import torch
from omegaconf import DictConfig, OmegaConf

from hrexp.errors import ConfigError
from hrexp.export.onnx_export import (
    ANGLE_TOLERANCE_DEG,
    MAP_TOLERANCE,
    POINT_TOLERANCE_PX,
    REGION_TOLERANCE,
    REGIONS,
    DeployModel,
    ExportError,
    check_onnx,
    export_onnx,
)
from hrexp.prediction.regions import point_regions
from hrexp.run_record import write_json
from hrexp.training.checkpoint_model import module_from_checkpoint

log = logging.getLogger(__name__)

FORMATS = ("onnx",)
BATCH_MODES = ("dynamic", "fixed")


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path``; write ``export.json`` (file, options, check) to the run folder.

    Raises:
        ConfigError: an unknown ``format`` or ``batch``, or a bad ``batch_size``.
        ExportError: the export failed, or (``check=true``) its outputs are further from PyTorch's than
            1e-4 (maps) or 0.05 px (decoded points).
    """
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format!r}: expected one of {list(FORMATS)}")
    if cfg.batch not in BATCH_MODES:
        raise ConfigError(f"batch={cfg.batch!r}: expected one of {list(BATCH_MODES)}")
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size!r}: expected a positive integer")
    out_dir = Path(cfg.paths.output_dir)
    loaded = module_from_checkpoint(cfg.ckpt_path)
    module, data = loaded.module, loaded.data
    refined = getattr(module.task, "refiner", None) is not None
    if refined and not cfg.get("coarse_only", False):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path}: a coarse-to-fine checkpoint (refine=native). Its second stage "
                          "refines patches of the original image cut around stage 1's points, which this one-graph "
                          "export on the down-sized input cannot hold: the file would give stage 1's points "
                          "unrefined. Run both stages with predict.py, or export stage 1 alone with coarse_only=true")
    regions, region_record = export_regions(cfg, module, refined)
    model = DeployModel(module, decode=bool(cfg.decode), region_thresholds=regions).eval()

    path = Path(cfg.output) if cfg.get("output") else out_dir / "model.onnx"
    export_onnx(model, path, data.input_size, dynamic_batch=cfg.batch == "dynamic", batch_size=cfg.batch_size,
                opset=int(cfg.opset))
    summary: dict[str, Any] = {"checkpoint": str(Path(cfg.ckpt_path).resolve()), "file": str(path.resolve()),
                               "format": cfg.format, "input": {"name": "images", "size": list(data.input_size)},
                               "batch": cfg.batch if cfg.batch == "dynamic" else cfg.batch_size,
                               "outputs": model.output_names, "decode": bool(cfg.decode),
                               # what the graph holds of a coarse-to-fine checkpoint: stage 1 alone
                               "stages": ["coarse"] if refined else ["network"], "regions": region_record}
    if cfg.check:
        generator = torch.Generator().manual_seed(0)
        sizes = [1, 3] if cfg.batch == "dynamic" else [cfg.batch_size]
        checks = [check_onnx(model, path, torch.randn(n, 3, *data.input_size, generator=generator)) for n in sizes]
        worst_maps = max(c.max_map_difference for c in checks)
        points = [c.max_point_difference_px for c in checks if c.max_point_difference_px is not None]
        summary["check"] = {"onnxruntime": True, "batch_sizes": sizes, "max_map_difference": worst_maps,
                            "max_point_difference_px": max(points) if points else None,
                            **({"max_region_difference": max(c.max_region_difference for c in checks),
                                "max_angle_difference_deg": max(c.max_angle_difference_deg for c in checks)}
                               if regions is not None else {}),
                            "tolerances": {"maps": MAP_TOLERANCE, "points_px": POINT_TOLERANCE_PX,
                                           "regions_relative": REGION_TOLERANCE, "angle_deg": ANGLE_TOLERANCE_DEG}}
        if not all(c.ok for c in checks):
            write_json(out_dir / "export.json", summary)
            raise ExportError(f"{path}: onnxruntime's outputs differ from PyTorch's beyond the tolerances: "
                              f"maps {worst_maps:.3g} (at most {MAP_TOLERANCE}), points "
                              f"{summary['check']['max_point_difference_px']} px (at most {POINT_TOLERANCE_PX})"
                              + (f", regions {summary['check']['max_region_difference']:.3g} relative (at most "
                                 f"{REGION_TOLERANCE}) and {summary['check']['max_angle_difference_deg']:.3g} degrees "
                                 f"(at most {ANGLE_TOLERANCE_DEG})" if regions is not None else ""))
    write_json(out_dir / "export.json", summary)
    if region_record.get("skipped"):
        rich.print(f"[yellow]No prediction regions in the file:[/yellow] {region_record['skipped']}")
    rich.print(f"[bold]Exported[/bold] {cfg.ckpt_path} -> {path} ({', '.join(model.output_names)})"
               + (f"; onnxruntime matches PyTorch: maps {summary['check']['max_map_difference']:.2g}, points "
                  f"{summary['check']['max_point_difference_px']} px" if cfg.check else ""))
    return summary


def export_regions(cfg: DictConfig, module: torch.nn.Module, refined: bool) -> tuple[Any, dict[str, Any]]:
    """``conformal`` of export.yaml -> the heatmap thresholds the graph draws its ellipses with (or None), and
    export.json's ``regions`` record: the calibration, shape, level and per-landmark thresholds (the radius
    shape's radii are in original px: a disc there is no fixed shape in input px, so they stay in the record).

    Raises:
        ConfigError: a calibration named explicitly that cannot be used (a refined checkpoint's, whose points are
            the two stages' and not the exported stage 1's; other landmarks; heatmap ellipses without decode).
    """
    conformal = cfg.get("conformal")
    value = OmegaConf.to_container(conformal) if OmegaConf.is_config(conformal) else conformal
    source = (value or {}).get("calibration", "auto")
    regions = point_regions(value, Path(cfg.ckpt_path))
    if regions is None:
        return None, {"skipped": None if source is None else
                      "no calibration file beside the checkpoint (eval.py conformal.calibrate=val writes one)"}
    named = source != "auto"

    def refuse(reason: str) -> tuple[Any, dict[str, Any]]:
        if named:
            raise ConfigError(f"conformal.calibration={regions.file}: {reason}")
        return None, {"skipped": f"{regions.file}: {reason} (conformal.calibration=null says no regions)"}

    if refined:
        return refuse("calibrated on a coarse-to-fine checkpoint's final points, while the file holds stage 1 alone")
    names = list(getattr(module.task, "keypoint_names", []) or [])
    mismatch = regions.landmark_mismatch(names)
    if mismatch:
        return refuse(mismatch)
    thresholds = regions.calibration.threshold(regions.shape, regions.level)
    record = {"calibration": str(regions.file.resolve()), "shape": regions.shape, "level": regions.level,
              "landmarks": names, "thresholds": [None if math.isinf(t) else float(t) for t in thresholds]}
    if regions.shape == "radius":
        return None, {**record, "outputs": [], "units": "radius in original px (the file holds no region output)"}
    if not cfg.decode:
        return refuse("heatmap ellipses need the decoded points in the graph: export with decode=true")
    return thresholds, {**record, "outputs": list(REGIONS),
                        "units": "semi-axes in input px, angle in degrees from the x axis towards +y: the ellipse "
                                 "{e: sqrt(e^T S^-1 e) <= threshold}, S the peak's covariance; mapped to the "
                                 "original image by the resize, it is predict.py's region"}
