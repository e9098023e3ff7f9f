"""ONNX export of a trained network, optionally with the keypoint decoding in the graph, checked with
onnxruntime against PyTorch on the same inputs.

``DeployModel`` is what a deployment runs: images (normalised as in training, ``[B, 3, H, W]`` at the
training input size) in; out, what the task's export hooks say (``export_output_names``,
``export_outputs``): the network's raw outputs (``maps``: heatmaps or class logits; SimCC's
``simcc_x``, ``simcc_y``) and, with ``decode=True`` for a keypoint task, the codec's decoding too:
keypoints ``[B, K, 2]`` in input-image pixels and their scores ``[B, K]``. The codec's decode is plain
tensor code, so the exporter traces it as it is: one implementation for Python and for the graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hrexp.errors import UserError

log = logging.getLogger(__name__)

# The tolerances: raw maps within 1e-4, decoded points within 0.05 px.
MAP_TOLERANCE = 1e-4
POINT_TOLERANCE_PX = 0.05


class ExportError(UserError, RuntimeError):
    """The export cannot be made or its check against PyTorch failed (the message says which output)."""


class DeployModel(nn.Module):
    """Backbone and task of a trained :class:`~hrexp.training.module.HRExpModule`, in eval mode, giving the
    outputs the task's export hooks name.

    Args:
        module: the trained module.
        decode: also output the task's decoding (keypoint tasks: keypoints and scores from their codec).

    Raises:
        ExportError: ``decode=True`` for a task that decodes nothing in the graph (segmentation).
    """

    # Decoded outputs: compared with the point tolerance (keypoints) or not at all (scores follow the maps).
    DECODED = ("keypoints", "scores")

    def __init__(self, module: nn.Module, decode: bool = False):
        super().__init__()
        self.backbone, self.task = module.backbone, module.task
        self.decode = bool(decode)
        try:
            self.output_names = list(module.task.export_output_names(self.decode))
        except ValueError as err:
            raise ExportError(str(err)) from err

    def reference(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """PyTorch's outputs for ``images`` and the decoded points that are ties at :data:`MAP_TOLERANCE`."""
        with torch.no_grad():
            outputs = self.task(self.backbone(images))
            tensors = list(self.task.export_outputs(outputs, self.decode))
            tied = self.task.tied_points(outputs, MAP_TOLERANCE) if "keypoints" in self.output_names else None
        return tensors, tied

    def forward(self, images: torch.Tensor) -> Any:
        tensors = self.task.export_outputs(self.task(self.backbone(images)), self.decode)
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

    @property
    def ok(self) -> bool:
        points_ok = self.max_point_difference_px is None or self.max_point_difference_px <= POINT_TOLERANCE_PX
        return self.max_map_difference <= MAP_TOLERANCE and points_ok


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
    point_difference, tied_count = None, 0
    if "keypoints" in names:
        i = names.index("keypoints")
        clear = np.ones(got[i].shape[:2], bool) if tied is None else ~tied.cpu().numpy()  # [B, K]
        tied_count = int((~clear).sum())
        points = np.abs(got[i] - expected[i].numpy()).max(axis=-1)  # [B, K]
        point_difference = float(points[clear].max()) if clear.any() else 0.0
    return ExportCheck(max_map_difference=map_difference, max_point_difference_px=point_difference,
                       batch_sizes=[int(images.shape[0])], tied_points=tied_count)
