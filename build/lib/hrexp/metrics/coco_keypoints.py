"""COCO keypoint AP/AR (object keypoint similarity) of top-down pose predictions, via pycocotools."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    sigmas: Sequence[float],
    threshold: float,
) -> np.ndarray:
    """Greedy non-maximum suppression by object keypoint similarity (OKS).

    Predictions are visited by score, highest first (ties in input order); each one still standing
    is kept and suppresses every remaining one whose OKS with it is ``> threshold``. The OKS of a
    prediction against a kept one treats the kept one as ground truth: all ``K`` keypoints count,
    ``area`` is the kept one's, and ``oks = mean_k exp(-d_k^2 / (2 * area * (2 * sigma_k)^2))``.
    (mmpose's ``oks_nms`` uses the mean of both areas instead.)

    Args:
        keypoints: ``[N, K, 2]`` ``(x, y)`` of the predictions of ONE image.
        scores: ``[N]`` instance scores.
        areas: ``[N]`` areas in px^2 (e.g. the keypoint-extent box area).
        sigmas: ``K`` per-keypoint OKS sigmas.
        threshold: Suppress above this OKS.

    Returns:
        Indices of the kept predictions, ``int64``, in descending score order.
    """
    kpts = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    variances = (2 * np.asarray(sigmas, dtype=np.float64)) ** 2
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        d2 = ((kpts[rest] - kpts[i]) ** 2).sum(-1)  # [M, K]
        # np.spacing(1) as in pycocotools: a zero-area (single-point) prediction does not divide by 0.
        oks = np.exp(-d2 / (2 * (areas[i] + np.spacing(1)) * variances)).mean(-1)
        order = rest[oks <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _gt_num_keypoints(coco_gt: dict) -> int | None:
    """Keypoint count of a COCO ground-truth dict (None when it has neither annotations nor names)."""
    counts = {len(a["keypoints"]) for a in coco_gt["annotations"]}
    if any(c % 3 for c in counts) or len(counts) > 1:
        raise ValueError(f"annotation keypoints must all be flat [x, y, v] * K, got lengths {sorted(counts)}")
    k = counts.pop() // 3 if counts else None
    names = coco_gt["categories"][0].get("keypoints")
    if names is not None and k is not None and len(names) != k:
        raise ValueError(f"the category names {len(names)} keypoints but annotations have {k}")
    return len(names) if k is None and names is not None else k


class CocoKeypointAP(Metric):
    """COCO keypoint AP/AR of top-down pose predictions, scored by pycocotools' ``COCOeval``.

    Each predicted person (one crop of a top-down model) is fed with its keypoints in ORIGINAL image
    pixels, its per-keypoint heatmap maxima, its image id, its box score and its dataset index.
    :meth:`compute` then, as HRNet / mmpose do:

    1. drops repeated ``index`` values (a padded ``DistributedSampler`` hands some samples to two
       ranks; after the gather they would count twice) and orders the rest by index, so the result
       does not depend on the number of ranks;
    2. rescores each person: ``bbox_score * mean(keypoint scores > score_threshold)`` (0 when no
       keypoint score passes);
    3. optionally applies :func:`oks_nms` per image (areas: the keypoint-extent box);
    4. evaluates with ``COCOeval(..., "keypoints")`` using ``sigmas``, on the ground-truth images.

    It returns ``{"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}``
    (``COCOeval.stats`` in order) as 0-dim tensors. pycocotools' conventions are kept as they are:
    a value that is undefined (e.g. ``APm`` without any medium-sized ground truth) is ``-1``; crowd
    and ``num_keypoints == 0`` ground truths are ignored (a prediction matching them is neither a
    true nor a false positive); at most 20 predictions per image (the highest-scored) count.
    Without any prediction every value is 0. A prediction on an image absent from the ground truth
    is an error (predictions and ground truth of different splits).

    The ground truth is given once with :meth:`set_ground_truth`; it is not a metric state (every
    rank holds the same), so it survives :meth:`reset`.

    Args:
        sigmas: Per-keypoint OKS sigmas, length ``K`` (e.g. COCO's 17 values / 10).
        score_threshold: Keypoint scores above it count in the rescoring mean.
        oks_nms_threshold: OKS above which a lower-scored prediction of the same image is
            suppressed; None disables the NMS.
        **kwargs: Passed to :class:`torchmetrics.Metric`.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        sigmas: Sequence[float],
        score_threshold: float = 0.2,
        oks_nms_threshold: float | None = 0.9,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        sig = np.asarray(sigmas, dtype=np.float64)
        if sig.ndim != 1 or sig.size < 1 or not np.all(sig > 0):
            raise ValueError(f"sigmas must be a non-empty sequence of positive numbers, got {sigmas!r}")
        self.sigmas = sig
        self.score_threshold = float(score_threshold)
        self.oks_nms_threshold = None if oks_nms_threshold is None else float(oks_nms_threshold)
        self._coco_gt: dict | None = None
        for name in ("keypoints", "keypoint_scores", "image_id", "bbox_score", "index"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def set_ground_truth(self, coco_gt: dict) -> None:
        """Set the COCO-format ground truth (``images``, ``annotations``, one ``categories`` entry).

        Raises:
            ValueError: When there is not exactly one category, or the keypoint count of the
                ground truth differs from ``len(sigmas)``.
        """
        if len(coco_gt.get("categories", [])) != 1:
            raise ValueError(
                f"coco_gt must have exactly one category, got {coco_gt.get('categories')!r}"
            )
        k = _gt_num_keypoints(coco_gt)
        if k is not None and k != len(self.sigmas):
            raise ValueError(
                f"the ground truth has {k} keypoints but {len(self.sigmas)} sigmas were given"
            )
        self._coco_gt = coco_gt

    def update(
        self,
        keypoints: Tensor,
        keypoint_scores: Tensor,
        image_id: Tensor,
        bbox_score: Tensor,
        index: Tensor,
    ) -> None:
        """Accumulate one batch of predicted people.

        Args:
            keypoints: ``[B, K, 2]`` ``(x, y)`` in original image pixels.
            keypoint_scores: ``[B, K]`` heatmap maxima.
            image_id: ``[B]`` COCO image ids.
            bbox_score: ``[B]`` 1.0 for ground-truth boxes, the detector's score otherwise.
            index: ``[B]`` index of the sample in its dataset (for de-duplication under DDP).
        """
        b, k = keypoints.shape[0], len(self.sigmas)
        if keypoints.shape != (b, k, 2) or keypoint_scores.shape != (b, k):
            raise ValueError(
                f"keypoints must be [B, {k}, 2] and keypoint_scores [B, {k}], got "
                f"{tuple(keypoints.shape)} and {tuple(keypoint_scores.shape)}"
            )
        for name, t in (("image_id", image_id), ("bbox_score", bbox_score), ("index", index)):
            if t.shape != (b,):
                raise ValueError(f"{name} must be [B] = ({b},), got {tuple(t.shape)}")
        self.keypoints.append(keypoints.detach().float())
        self.keypoint_scores.append(keypoint_scores.detach().float())
        self.image_id.append(image_id.detach().long())
        self.bbox_score.append(bbox_score.detach().float())
        self.index.append(index.detach().long())

    def compute(self) -> dict[str, Tensor]:
        """Return the 10 COCO keypoint numbers as 0-dim tensors (see the class doc)."""
        if self._coco_gt is None:
            raise RuntimeError("CocoKeypointAP: set_ground_truth must be called before compute()")
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        stats = self._stats()
        return {
            name: torch.tensor(v, dtype=dtype, device=self.device) for name, v in zip(STAT_NAMES, stats)
        }

    def _stats(self) -> list[float]:
        if len(self.index) == 0:
            return [0.0] * len(STAT_NAMES)
        index = dim_zero_cat(self.index).cpu().numpy()
        # One row per sample, ordered by index: drops DDP padding, rank-order independent.
        _, rows = np.unique(index, return_index=True)
        k = len(self.sigmas)
        kpts = dim_zero_cat(self.keypoints).cpu().double().numpy().reshape(-1, k, 2)[rows]
        kpt_scores = dim_zero_cat(self.keypoint_scores).cpu().double().numpy().reshape(-1, k)[rows]
        image_ids = dim_zero_cat(self.image_id).cpu().numpy()[rows]
        bbox_scores = dim_zero_cat(self.bbox_score).cpu().double().numpy()[rows]

        gt = self._coco_gt
        gt_image_ids = sorted({img["id"] for img in gt["images"]})
        unknown = sorted(set(image_ids.tolist()) - set(gt_image_ids))
        if unknown:
            # The predictions and the ground truth come from different splits or files.
            raise ValueError(f"predictions for image ids {unknown[:10]} that are not in the ground truth's images")

        valid = kpt_scores > self.score_threshold
        n_valid = valid.sum(-1)
        mean = np.where(n_valid > 0, (kpt_scores * valid).sum(-1) / np.maximum(n_valid, 1), 0.0)
        scores = bbox_scores * mean

        keep = np.arange(len(scores))
        if self.oks_nms_threshold is not None and len(scores):
            extent = kpts.max(1) - kpts.min(1)  # [N, 2]
            areas = extent[:, 0] * extent[:, 1]
            kept = []
            for img in np.unique(image_ids):
                rows_img = np.flatnonzero(image_ids == img)
                sel = oks_nms(
                    kpts[rows_img], scores[rows_img], areas[rows_img], self.sigmas, self.oks_nms_threshold
                )
                kept.append(rows_img[sel])
            keep = np.sort(np.concatenate(kept))
        if keep.size == 0:  # pycocotools' loadRes fails on an empty result list
            return [0.0] * len(STAT_NAMES)

        category_id = gt["categories"][0]["id"]
        results = [
            {
                "image_id": int(image_ids[i]),
                "category_id": category_id,
                "keypoints": np.concatenate([kpts[i], kpt_scores[i][:, None]], axis=1).ravel().tolist(),
                "score": float(scores[i]),
            }
            for i in keep
        ]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
            coco_gt = COCO()
            # Shallow copies: COCOeval writes "ignore" flags into the annotation dicts.
            coco_gt.dataset = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval(coco_gt, coco_dt, "keypoints")
            evaluator.params.kpt_oks_sigmas = self.sigmas
            evaluator.params.imgIds = gt_image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        return [float(v) for v in evaluator.stats]
