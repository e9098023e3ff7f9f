"""Metrics: torchmetrics ``Metric`` classes (landmark error, COCO keypoint AP, segmentation IoU / Dice) and
Cobb angles from vertebra corners (``cobb``)."""
