"""Semantic segmentation data: image/mask pairs, mask decoding, transforms, the dataset and the datamodules."""
