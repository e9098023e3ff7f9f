"""Data: the datamodule base and what every family shares, and one folder per family."""
