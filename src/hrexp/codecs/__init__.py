"""Target encodings: ``encode(keypoints) -> targets``, ``decode(outputs) -> keypoints``."""

from hrexp.codecs.heatmap import GaussianHeatmapCodec

__all__ = ["GaussianHeatmapCodec"]
