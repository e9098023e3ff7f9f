"""ONNX export of a trained network, optionally with the keypoint decoding in the graph, checked with
onnxruntime against PyTorch on the same inputs.

``DeployModel`` is what a deployment runs: images (normalised as in training, ``[B, 3, H, W]`` at the
training input size) in; out, what the task's export hooks say (``export_output_names``,
``export_outputs``): the network's raw outputs (``maps``: heatmaps or class logits; SimCC's
``simcc_x``, ``simcc_y``) and, with ``decode=True`` for a keypoint task, the codec's decoding too:
keypoints ``[B, K, 2]`` in input-image pixels and their scores ``[B, K]``. The codec's decode is plain
tensor code, so the exporter traces it as it is: one implementation for Python and for the graph.

With ``region_thresholds`` (a conformal calibration's heatmap thresholds, one per landmark) the graph also
outputs each point's calibrated ellipse in input px: ``region_major``, ``region_minor`` (semi-axes) and
``region_angle`` (degrees), from the codec's covariance of each peak and
:func:`hrexp.conformal.regions.ellipse_axes`, the code eval and predict use. The Mahalanobis threshold does
not change under the resize to the input, so the ellipse in input px maps onto predict.py's in original px.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hrexp.conformal.regions import ellipse_axes
from hrexp.errors import UserError

log = logging.getLogger(__name__)

# The tolerances: raw maps within 1e-4, decoded points within 0.05 px.
MAP_TOLERANCE = 1e-4
POINT_TOLERANCE_PX = 0.05
# Region semi-axes: relative; an axis angle only where the ellipse is clearly not a disc (minor < 0.95 major).
REGION_TOLERANCE = 1e-3
ANGLE_TOLERANCE_DEG = 0.5
REGIONS = ("region_major", "region_minor", "region_angle")


class ExportError(UserError, RuntimeError):
    """The export cannot be made or its check against PyTorch failed (the message says which output)."""


class DeployModel(nn.Module):
    """Backbone and task of a trained :class:`~hrexp.training.module.HRExpModule`, in eval mode, giving the
    outputs the task's export hooks name.

    Args:
        module: the trained module.
        decode: also output the task's decoding (keypoint tasks: keypoints and scores from their codec).
        region_thresholds: ``[K]`` conformal thresholds of the heatmap shape (needs ``decode``): also output
            each point's ellipse (:data:`REGIONS`).

    Raises:
        ExportError: ``decode=True`` for a task that decodes nothing in the graph (segmentation); regions
            without ``decode``.
    """

    # Decoded outputs: compared with the point tolerance (keypoints), the region tolerances, or not at all
    # (scores follow the maps).
    DECODED = ("keypoints", "scores", *REGIONS)

    def __init__(self, module: nn.Module, decode: bool = False, region_thresholds: Any = None):
        super().__init__()
        self.backbone, self.task = module.backbone, module.task
        self.decode = bool(decode)
        try:
            self.output_names = list(module.task.export_output_names(self.decode))
        except ValueError as err:
            raise ExportError(str(err)) from err
        if region_thresholds is None:
            self.region_thresholds = None
        else:
            if not self.decode:
                raise ExportError("prediction regions in the graph need the decoded points: export with decode=true "
                                  "(or conformal.calibration=null)")
            self.register_buffer("region_thresholds", torch.as_tensor(np.asarray(region_thresholds, np.float32)))
            self.output_names += list(REGIONS)

    def _outputs(self, images: torch.Tensor) -> tuple[list[torch.Tensor], Any]:
        outputs = self.task(self.backbone(images))
        tensors = list(self.task.export_outputs(outputs, self.decode))
        if self.region_thresholds is not None:
            covariance = self.task.export_covariance(outputs)
            if covariance is None:
                raise ExportError(f"{type(self.task).__name__}: its codec measures no covariance per point, so the "
                                  "graph cannot draw heatmap ellipses; export with conformal.shape=radius")
            tensors += list(ellipse_axes(self.region_thresholds, covariance.float()))
        return tensors, outputs

    def reference(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """PyTorch's outputs for ``images`` and the decoded points that are ties at :data:`MAP_TOLERANCE`."""
        with torch.no_grad():
            tensors, outputs = self._outputs(images)
            tied = self.task.tied_points(outputs, MAP_TOLERANCE) if "keypoints" in self.output_names else None
        return tensors, tied

    def forward(self, images: torch.Tensor) -> Any:
        tensors, _ = self._outputs(images)
        return tensors[0] if len(tensors) == 1 else tuple(tensors)


@dataclass
class ExportCheck:
    """How far the ONNX outputs are from PyTorch's on the same inputs (largest absolute differences)."""

    max_map_difference: float
    max_point_difference_px: float | None
    batch_sizes: list[int]
    # Points whose decoding is a tie at the precision the raw outputs are checked to (e.g. a map's two highest
    # values within MAP_TOLERANCE: the task's tied_points): they are not compared.
    tied_points: int = 0
    # the region outputs: semi-axes' largest relative difference, angles' largest (degrees); None: no regions
    max_region_difference: float | None = None
    max_angle_difference_deg: float | None = None

    @property
    def ok(self) -> bool:
        points_ok = self.max_point_difference_px is None or self.max_point_difference_px <= POINT_TOLERANCE_PX
        regions_ok = self.max_region_difference is None or (
            self.max_region_difference <= REGION_TOLERANCE and self.max_angle_difference_deg <= ANGLE_TOLERANCE_DEG)
        return self.max_map_difference <= MAP_TOLERANCE and points_ok and regions_ok


def export_onnx(model: DeployModel, path: str | Path, input_size: tuple[int, int], *, dynamic_batch: bool = True,
                batch_size: int = 1, opset: int = 18) -> Path:
    """Write ``model`` as ONNX (torch.onnx's dynamo exporter) with input ``images``.

    Args:
        dynamic_batch: any batch size (axis 0 named ``batch``); else fixed at ``batch_size``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    h, w = (int(s) for s in input_size)
    # A dynamic axis needs an example of size >= 2: torch.export specialises sizes 0 and 1.
    example = torch.randn(max(2, batch_size) if dynamic_batch else batch_size, 3, h, w)
    dynamic_shapes = ({"images": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None)
    try:
        with torch.no_grad():
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["images"],
                                        output_names=model.output_names, dynamic_shapes=dynamic_shapes,
                                        opset_version=opset)
        program.save(str(path))
    except Exception as err:  # noqa: BLE001 -- the exporter's errors are many; name what was exported
        raise ExportError(f"ONNX export of {type(model.backbone).__name__} + {type(model.task).__name__} "
                          f"(decode={model.decode}) failed: {type(err).__name__}: {err}") from err
    return path


def check_onnx(model: DeployModel, path: str | Path, images: torch.Tensor) -> ExportCheck:
    """Run ``path`` with onnxruntime (CPU) on ``images`` and compare with ``model`` in PyTorch: every raw output
    (maps, vectors) within :data:`MAP_TOLERANCE`, the decoded ``keypoints`` within :data:`POINT_TOLERANCE_PX`
    except the tied ones."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected, tied = model.eval().reference(images)
    got = session.run(None, {"images": images.numpy()})
    names = [o.name for o in session.get_outputs()]
    if names != model.output_names:
        raise ExportError(f"{path}: outputs {names}, expected {model.output_names}")
    raw = [i for i, name in enumerate(names) if name not in DeployModel.DECODED]
    map_difference = max((float(np.abs(got[i] - expected[i].numpy()).max()) for i in raw), default=0.0)
    point_difference, tied_count, region_difference, angle_difference = None, 0, None, None
    if "keypoints" in names:
        i = names.index("keypoints")
        clear = np.ones(got[i].shape[:2], bool) if tied is None else ~tied.cpu().numpy()  # [B, K]
        tied_count = int((~clear).sum())
        points = np.abs(got[i] - expected[i].numpy()).max(axis=-1)  # [B, K]
        point_difference = float(points[clear].max()) if clear.any() else 0.0
        if "region_major" in names:
            region_difference, angle_difference = _region_differences(
                *(got[names.index(n)] for n in REGIONS), *(expected[names.index(n)].numpy() for n in REGIONS), clear)
    return ExportCheck(max_map_difference=map_difference, max_point_difference_px=point_difference,
                       batch_sizes=[int(images.shape[0])], tied_points=tied_count,
                       max_region_difference=region_difference, max_angle_difference_deg=angle_difference)


def _region_differences(major, minor, angle, want_major, want_minor, want_angle, clear) -> tuple[float, float]:
    """The semi-axes' largest relative difference and the angles' largest (degrees, modulo 180; where the
    ellipse is not nearly a disc) over the ``clear`` points. A region is NaN (a flat map: no covariance) in
    both, or the other is degenerate (a minor axis below 1e-3 of the major: a determinant at float precision
    of 0, which rounding can put on either side); else the difference is infinite."""
    with np.errstate(invalid="ignore"):
        degenerate = (np.nan_to_num(minor, nan=0.0) <= 1e-3 * np.nan_to_num(major, nan=0.0)) | \
            (np.nan_to_num(want_minor, nan=0.0) <= 1e-3 * np.nan_to_num(want_major, nan=0.0))
    mismatch = clear & (np.isnan(major) != np.isnan(want_major)) & ~degenerate
    relative = np.inf if mismatch.any() else 0.0
    both = clear & np.isfinite(want_major) & np.isfinite(major)
    for value, want in ((major, want_major), (minor, want_minor)):
        diff = np.abs(value[both] - want[both]) / np.maximum(np.abs(want_major[both]), 1e-6)
        relative = max(relative, float(diff.max()) if diff.size else 0.0)
    oriented = both & (want_minor < 0.95 * want_major)
    turn = np.abs((angle - want_angle + 90.0) % 180.0 - 90.0)
    return relative, float(turn[oriented].max()) if oriented.any() else 0.0
