"""Loss modules."""

from hrexp.losses.heatmap_mse import WeightedHeatmapMSE

__all__ = ["WeightedHeatmapMSE"]
