"""A checkpoint's data family and its EVALUATION-time preprocessing of new images, from the stored config alone.

A prediction must equal what ``eval.py`` scores on the same image, so the network input and the affine
matrix (original px -> input px, which the keypoint tasks invert) come from the very transforms the
datamodules build for their val/test datasets, with the options the run was trained with. The family,
the class of the checkpoint's ``data._target_``, says how (its classmethod
:meth:`~hrexp.data.datamodule.HRExpDataModule.prediction_preparer`): landmarks fit the whole image
(:class:`~hrexp.data.landmarks.datamodule.FitWholeImage`), top-down pose crops person boxes
(:class:`~hrexp.data.pose.datamodule.TopDownCrops`), segmentation keeps the whole image
(:class:`~hrexp.data.segmentation.datamodule.SegWholeImage`); a family of one's own brings its own. No
datamodule is instantiated: that would read the training data, which need not be at hand.
"""

from __future__ import annotations

from typing import Any, Mapping

from hydra.utils import get_class
from omegaconf import DictConfig

from hrexp.data.datamodule import ImagePreparer


def data_family(run_cfg: DictConfig) -> type:
    """The datamodule class of the checkpoint's run (``data._target_``)."""
    return get_class(run_cfg.data._target_)


def preparer_for(run_cfg: DictConfig, boxes: Mapping[str, list[Any]] | None = None) -> ImagePreparer:
    """The evaluation preprocessing of the checkpoint's data family (see the module docstring).

    Raises:
        ConfigError: a data family without one, or ``boxes`` for a family that crops no person boxes.
    """
    return data_family(run_cfg).prediction_preparer(run_cfg, boxes)
