"""The pose task: top-down keypoint heatmaps scored by COCO OKS AP/AR (pycocotools)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from hrexp.metrics.coco_keypoints import CocoKeypointAP
from hrexp.tasks.heatmap_keypoints import HeatmapKeypointTask


class PoseTask(HeatmapKeypointTask):
    """Top-down pose estimation (see :class:`HeatmapKeypointTask` for the heatmap side).

    Each evaluation epoch scores the predictions of every person box, mapped back to original
    image pixels, against the split's COCO ground truth (``dataset.ground_truth``, handed over by
    the LightningModule at the start of the epoch) with the dataset's own OKS sigmas.

    Args:
        head, codec, loss, feature_info, dataset_meta: as :class:`HeatmapKeypointTask`;
            ``dataset_meta`` must also hold ``sigmas`` (one OKS sigma per keypoint).
        flip_test: Average with the flipped image's heatmaps (default on).
        score_threshold: Keypoint scores above this enter the instance rescoring.
        oks_nms_threshold: OKS non-maximum suppression per image (None: off).
        monitor: Default ``{"metric": "val/AP", "mode": "max"}``.
        **kwargs: Further :class:`HeatmapKeypointTask` options (flip_shift, num_keypoints).
    """

    task_name = "pose"
    sample_batch_keys = ("keypoints_orig", "visible_orig", "matrix", "image_id", "bbox_score")

    def __init__(self, head: Any, codec: Any, loss: nn.Module, feature_info: Sequence[Mapping[str, int]],
                 dataset_meta: Mapping[str, Any], flip_test: bool = True, score_threshold: float = 0.2,
                 oks_nms_threshold: float | None = 0.9, monitor: Mapping[str, str] | None = None, **kwargs: Any):
        super().__init__(head, codec, loss, feature_info, dataset_meta, flip_test=flip_test,
                         monitor=monitor or {"metric": "val/AP", "mode": "max"}, **kwargs)
        sigmas = list(dataset_meta.get("sigmas") or [])
        if len(sigmas) != self.num_keypoints:
            raise ValueError(
                f"task=pose needs one OKS sigma per keypoint: the data's metadata has {len(sigmas)} sigmas for "
                f"{self.num_keypoints} keypoints; set data.metadata to a file with a 'sigmas' list"
            )
        self.sigmas = sigmas
        self.init_metrics(lambda: CocoKeypointAP(sigmas, score_threshold=score_threshold,
                                                 oks_nms_threshold=oks_nms_threshold))

    def on_eval_epoch_start(self, stage: str, dataset: Any) -> None:
        """Give the stage's metric the ground truth of the dataset about to be evaluated."""
        ground_truth = getattr(dataset, "ground_truth", None)
        if ground_truth is None:
            raise RuntimeError(
                f"task=pose scores {stage} predictions against a COCO ground truth, but the {stage} dataset "
                f"({type(dataset).__name__}) has no 'ground_truth'; use a pose datamodule (data=coco_pose)"
            )
        self.metrics[stage].set_ground_truth(ground_truth)

    def update_metrics(self, stage: str, preds: Mapping[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> None:
        self.metrics[stage].update(preds["keypoints"], preds["scores"], batch["image_id"], batch["bbox_score"],
                                   batch["index"])

    def is_defined(self, value: torch.Tensor) -> bool:
        """pycocotools reports -1 for an undefined value (e.g. no medium-sized person): not logged."""
        return float(value) >= 0

    def report(self, samples: Sequence[Mapping[str, Any]], context: Any) -> list[Any]:
        """AP/AR, PCK per keypoint, galleries with skeletons, confidences (:mod:`hrexp.evaluation.pose_report`)."""
        from hrexp.evaluation.pose_report import pose_report

        return pose_report(self, samples, context)
