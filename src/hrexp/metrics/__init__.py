"""torchmetrics ``Metric`` classes."""

from hrexp.metrics.landmark_error import LandmarkError

__all__ = ["LandmarkError"]
