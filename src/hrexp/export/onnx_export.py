"""ONNX export of a trained network, optionally with the keypoint decoding in the graph, checked with
onnxruntime against PyTorch on the same inputs.

``DeployModel`` is what a deployment runs: images (normalised as in training, ``[B, 3, H, W]`` at the
training input size) in; out, the network's raw maps (heatmaps or class logits) and, with
``decode=True`` for a keypoint task, the codec's decoding too: arg-max plus sub-pixel refinement
(DARK by default), keypoints ``[B, K, 2]`` in input-image pixels and their scores ``[B, K]``. The
codec's decode is plain tensor code, so the exporter traces it as it is: one implementation for
Python and for the graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

# The tolerances: raw maps within 1e-4, decoded points within 0.05 px.
MAP_TOLERANCE = 1e-4
POINT_TOLERANCE_PX = 0.05


class ExportError(RuntimeError):
    """The export cannot be made or its check against PyTorch failed (the message says which output)."""


class DeployModel(nn.Module):
    """Backbone and head of a trained :class:`~hrexp.training.module.HRExpModule`, in eval mode.

    Args:
        module: the trained module.
        decode: also output the decoded keypoints and scores (keypoint tasks: their ``codec``).

    Raises:
        ExportError: ``decode=True`` for a task without a keypoint codec (segmentation).
    """

    def __init__(self, module: nn.Module, decode: bool = False):
        super().__init__()
        self.backbone, self.task = module.backbone, module.task
        codec = getattr(module.task, "codec", None)
        if decode and codec is None:
            raise ExportError(f"decode=true needs a keypoint task (its codec decodes heatmaps); "
                              f"{type(module.task).__name__} has none: export without decode")
        if hasattr(codec, "vector_lengths"):  # SimCC: the head gives a dict of x / y vectors, not maps
            raise ExportError(f"{type(codec).__name__}: ONNX export of SimCC models (two vector outputs) is not "
                              "supported yet; export a heatmap codec's model (task/codec=gaussian|udp|offset|integral)")
        self.codec = codec if decode else None
        self.stride = float(module.task.stride) if decode else None

    @property
    def output_names(self) -> list[str]:
        return ["maps", "keypoints", "scores"] if self.codec is not None else ["maps"]

    def forward(self, images: torch.Tensor) -> Any:
        maps = self.task(self.backbone(images))
        if self.codec is None:
            return maps
        keypoints, scores = self.codec.decode(maps, stride=self.stride)
        return maps, keypoints, scores


@dataclass
class ExportCheck:
    """How far the ONNX outputs are from PyTorch's on the same inputs (largest absolute differences)."""

    max_map_difference: float
    max_point_difference_px: float | None
    batch_sizes: list[int]
    # Maps whose two highest values lie within MAP_TOLERANCE of each other: their arg-max is a tie at
    # the precision the maps are checked to, so their points are not compared.
    tied_maps: int = 0

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
                          f"(decode={model.codec is not None}) failed: {type(err).__name__}: {err}") from err
    return path


def check_onnx(model: DeployModel, path: str | Path, images: torch.Tensor) -> ExportCheck:
    """Run ``path`` with onnxruntime (CPU) on ``images`` and compare with ``model`` in PyTorch."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model.eval()(images)
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    got = session.run(None, {"images": images.numpy()})
    names = [o.name for o in session.get_outputs()]
    if names != model.output_names:
        raise ExportError(f"{path}: outputs {names}, expected {model.output_names}")
    maps = expected[0].numpy()
    map_difference = float(np.abs(got[0] - maps).max())
    point_difference, tied = None, 0
    if len(got) > 1:
        top2 = np.sort(maps.reshape(*maps.shape[:2], -1), axis=-1)[..., -2:]
        clear = (top2[..., 1] - top2[..., 0]) > MAP_TOLERANCE  # [B, K]
        tied = int((~clear).sum())
        points = np.abs(got[1] - expected[1].numpy()).max(axis=-1)  # [B, K]
        point_difference = float(points[clear].max()) if clear.any() else 0.0
    return ExportCheck(max_map_difference=map_difference, max_point_difference_px=point_difference,
                       batch_sizes=[int(images.shape[0])], tied_maps=tied)
