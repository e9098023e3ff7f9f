"""torchmetrics ``Metric`` classes: landmark error, COCO keypoint AP, segmentation IoU / Dice."""
