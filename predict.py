"""Predict new images: `python predict.py ckpt_path=<file.ckpt> input=<image | folder | glob> [output=<folder>]`.

Writes predictions.csv / predictions.json (keypoints in original pixels, with scores) or masks/*.png
(segmentation), skipped.csv and predict.json into the run folder (or `output`), and with
`overlays=true` the predictions drawn on the images. See conf/predict.yaml for the options.
"""

from pathlib import Path

from hrexp.cli import predict

if __name__ == "__main__":
    predict(Path(__file__).resolve().parent)
