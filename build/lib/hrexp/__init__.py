"""hrexp: an experiment framework for high-resolution dense prediction."""

__version__ = "0.1.0"
