"""Top-down pose data: keypoint metadata, the person-box reader, the crop transform, the dataset and the datamodules."""
