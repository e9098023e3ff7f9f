"""Landmark data: records, one reader per annotation format, validation, transforms, datasets,
datamodules and the synthetic default data set."""

from hrexp.data.aasce_reader import AASCE_LANDMARK_NAMES, read_aasce
from hrexp.data.coco_reader import read_coco_keypoints
from hrexp.data.csv_reader import read_landmarks_csv, write_landmarks_csv
from hrexp.data.dataset import LandmarkDataset, load_image
from hrexp.data.records import DataError, LandmarkRecord, LandmarkSet
from hrexp.data.synthetic_spine import build_synthetic_spine, synthetic_landmark_names
from hrexp.data.transforms import LandmarkTransform
from hrexp.data.validation import validate_landmark_set

# The datamodules import Lightning (seconds to import); load them only when asked for, so that
# `from hrexp.data.records import ...` stays cheap.
_LAZY = {
    "AasceDataModule",
    "CocoLandmarkDataModule",
    "CsvLandmarkDataModule",
    "LandmarkDataModule",
    "SyntheticSpineDataModule",
}


def __getattr__(name: str):
    if name in _LAZY:
        from hrexp.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module 'hrexp.data' has no attribute {name!r}")


__all__ = [
    "AASCE_LANDMARK_NAMES",
    "AasceDataModule",
    "CocoLandmarkDataModule",
    "CsvLandmarkDataModule",
    "DataError",
    "LandmarkDataModule",
    "LandmarkDataset",
    "LandmarkRecord",
    "LandmarkSet",
    "LandmarkTransform",
    "SyntheticSpineDataModule",
    "build_synthetic_spine",
    "load_image",
    "read_aasce",
    "read_coco_keypoints",
    "read_landmarks_csv",
    "synthetic_landmark_names",
    "validate_landmark_set",
    "write_landmarks_csv",
]
