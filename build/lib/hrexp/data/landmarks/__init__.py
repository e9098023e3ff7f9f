"""Landmark data: records, one reader per annotation format, validation, the dataset and the datamodules."""
