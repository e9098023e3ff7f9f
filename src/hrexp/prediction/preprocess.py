"""Each data family's EVALUATION-time preprocessing, rebuilt from a checkpoint's stored config.

A prediction must equal what ``eval.py`` scores on the same image, so the network input and the
affine matrix (original px -> input px, which :meth:`HeatmapKeypointTask.predict` inverts) come from
the very transforms the datamodules build for their val/test datasets, with the options the run was
trained with (``data.image_size``, ``data.keep_aspect``, ``data.padding``, ``data.eval_max_size``,
...). No datamodule is instantiated: that would read the training data, which need not be at hand.

The family is told by the class of the checkpoint's ``data._target_``:

* landmarks (:class:`LandmarkDataModule`): the whole image fitted into the input (:class:`FitWholeImage`);
* top-down pose (:class:`PoseDataModule`): one crop per person box (:class:`TopDownCrops`);
* segmentation (:class:`SegDataModule`): the whole image at its own size (:class:`SegWholeImage`).

Each preparer is a picklable callable ``(image, path) -> [sample, ...]`` (run in DataLoader workers)
with a ``collate`` for its samples.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import default_collate

from hrexp.data.landmarks.datamodule import LandmarkDataModule
from hrexp.data.landmarks.originals import collate_originals, original_fields, reduce_original, refine_factor
from hrexp.data.pose.datamodule import PoseDataModule
from hrexp.data.pose.reader import clip_box
from hrexp.data.pose.topdown import TopDownTransform
from hrexp.data.segmentation.datamodule import SegDataModule
from hrexp.data.segmentation.transforms import SegEvalTransform, pad_collate
from hrexp.data.transforms import LandmarkTransform
from hrexp.errors import ConfigError
from hrexp.prediction.boxes import PersonBox

# New images carry no annotation: the transforms map an empty keypoint list.
_NO_KEYPOINTS = np.zeros((0, 2), np.float64)
_NO_VISIBLE = np.zeros((0,), bool)
UNKNOWN_IMAGE_ID = -1


class FitWholeImage:
    """Landmarks: the image fitted into ``image_size`` (aspect kept and padded, or stretched), no augmentation.

    Samples: ``image`` ``[3, h, w]`` normalised and ``matrix`` ``[3, 3]`` (original -> input px), as
    :class:`~hrexp.data.landmarks.dataset.LandmarkDataset` gives them for val/test. With
    ``refine_scale`` (the run's ``data.refine_scale``) also ``original`` and ``original_scale``, made
    from the image already decoded, and the batch is collated by
    :func:`~hrexp.data.landmarks.originals.collate_originals` (adds ``original_hw``).
    """

    per_instance = False

    def __init__(self, image_size: tuple[int, int], keep_aspect: bool, refine_scale: float | None = None):
        self.transform = LandmarkTransform(image_size=image_size, keep_aspect=keep_aspect, train=False)
        self.refine_factor = refine_factor(refine_scale)
        self.collate = default_collate if self.refine_factor is None else collate_originals

    def __call__(self, image: np.ndarray, path: Path) -> list[dict[str, Any]]:
        sample = self.transform(image, _NO_KEYPOINTS, _NO_VISIBLE)
        out = {"image": sample["image"], "matrix": sample["matrix"]}
        if self.refine_factor is not None:
            out.update(original_fields(reduce_original(image, self.refine_factor), self.refine_factor))
        return [out]


class TopDownCrops:
    """Top-down pose: one crop per person box of the image, no augmentation.

    Args:
        image_size: Network input ``(height, width)``.
        padding: Box enlargement (``data.padding``).
        boxes: Boxes by image file name (:func:`~hrexp.prediction.boxes.read_boxes`); None: the whole
            image is one box. Boxes are clipped to the image as the pose reader clips them.

    Samples: ``image``, ``matrix`` (as :class:`~hrexp.data.pose.dataset.PoseDataset`), ``bbox`` ``[4]``
    (the clipped box, COCO continuous coordinates), ``box_score`` and ``image_id`` (-1 when unknown).
    """

    per_instance = True

    def __init__(self, image_size: tuple[int, int], padding: float, boxes: Mapping[str, list[PersonBox]] | None):
        self.transform = TopDownTransform(image_size=image_size, padding=padding, train=False)
        self.boxes = None if boxes is None else dict(boxes)

    def person_boxes(self, path: Path, size_hw: tuple[int, int]) -> list[PersonBox]:
        """The image's boxes clipped to it (empty boxes dropped); the whole image without a boxes file."""
        if self.boxes is None:
            return [PersonBox((0.0, 0.0, float(size_hw[1]), float(size_hw[0])))]
        out = []
        for box in self.boxes.get(path.name, []):
            clipped = clip_box(list(box.bbox), size_hw)
            if clipped is not None:
                out.append(PersonBox(tuple(float(v) for v in clipped), box.score, box.image_id))
        return out

    def __call__(self, image: np.ndarray, path: Path) -> list[dict[str, Any]]:
        samples = []
        for box in self.person_boxes(path, image.shape[:2]):
            sample = self.transform(image, _NO_KEYPOINTS, _NO_VISIBLE, box.bbox)
            samples.append({
                "image": sample["image"], "matrix": sample["matrix"],
                "bbox": torch.tensor(box.bbox, dtype=torch.float64),
                "box_score": torch.tensor(box.score, dtype=torch.float64),
                "image_id": torch.tensor(UNKNOWN_IMAGE_ID if box.image_id is None else box.image_id, dtype=torch.int64),
            })
        return samples

    collate = staticmethod(default_collate)


class SegWholeImage:
    """Segmentation: the image at its own size (or shrunk to ``eval_max_size``), padded in the batch.

    A blank mask of the image's size stands in for the missing ground truth: the task reads only its
    size (``mask_hw``: the logits are resized back to the ORIGINAL image size before the argmax).
    """

    per_instance = False

    def __init__(self, max_size: int | None, size_divisor: int, ignore_index: int):
        self.transform = SegEvalTransform(max_size=max_size)
        self.collate = functools.partial(pad_collate, size_divisor=size_divisor, ignore_index=ignore_index)

    def __call__(self, image: np.ndarray, path: Path) -> list[dict[str, Any]]:
        return [self.transform(image, np.zeros(image.shape[:2], np.uint8))]


Preparer = FitWholeImage | TopDownCrops | SegWholeImage


def data_family(run_cfg: DictConfig) -> type:
    """The datamodule class of the checkpoint's run (``data._target_``)."""
    return get_class(run_cfg.data._target_)


def _option(run_cfg: DictConfig, family: type, name: str) -> Any:
    """``data.<name>`` of the run, or the family's default when the stored config lacks it (older runs)."""
    value = OmegaConf.select(run_cfg, f"data.{name}", default=inspect.Parameter.empty)
    if value is not inspect.Parameter.empty:
        return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
    for cls in family.__mro__:
        parameter = inspect.signature(cls.__init__).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    raise ConfigError(f"the checkpoint's config has no data.{name}, and {family.__name__} has no default for it")


def preparer_for(run_cfg: DictConfig, boxes: Mapping[str, list[PersonBox]] | None = None) -> Preparer:
    """The evaluation preprocessing of the checkpoint's data family (see the module docstring).

    Raises:
        ConfigError: a data family without one, or ``boxes`` for a family that crops no person boxes.
    """
    family = data_family(run_cfg)
    size = tuple(int(s) for s in _option(run_cfg, family, "image_size")) if not issubclass(family, SegDataModule) else None
    if boxes is not None and not issubclass(family, PoseDataModule):
        raise ConfigError(f"boxes=...: only top-down pose checkpoints crop person boxes; this one was trained on "
                          f"{family.__name__} data (task={run_cfg.choices.get('task')}); leave boxes unset")
    if issubclass(family, PoseDataModule):
        return TopDownCrops(size, float(_option(run_cfg, family, "padding")), boxes)
    if issubclass(family, LandmarkDataModule):
        return FitWholeImage(size, bool(_option(run_cfg, family, "keep_aspect")), run_cfg.data.get("refine_scale"))
    if issubclass(family, SegDataModule):
        max_size = _option(run_cfg, family, "eval_max_size")
        return SegWholeImage(None if max_size is None else int(max_size), int(_option(run_cfg, family, "size_divisor")),
                             int(_option(run_cfg, family, "ignore_index")))
    raise ConfigError(f"ckpt_path: the checkpoint's data family {family.__name__} ({run_cfg.data._target_}) has no "
                      f"prediction preprocessing; expected a landmark, pose or segmentation datamodule")
