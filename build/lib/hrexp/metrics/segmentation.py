"""Semantic segmentation metrics from a confusion matrix: mIoU, foreground Dice, pixel accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class SegmentationMetrics(Metric):
    """Dataset-level IoU / Dice / pixel accuracy of predicted class maps.

    Each :meth:`update` stores one ``C x C`` confusion matrix per SAMPLE (rows = target class,
    columns = predicted class, ignored pixels excluded) next to the sample's dataset ``index``, in
    list states gathered with ``"cat"`` under DDP. :meth:`compute` drops repeated ``index`` values
    (a padded ``DistributedSampler`` hands some samples to two ranks; the first copy is kept) and
    sums the rest into the dataset confusion matrix, from which, with ``TP``, ``FP``, ``FN`` per
    class:

    * ``"mIoU"``: mean over classes of ``TP / (TP + FP + FN)``; a class with ``TP + FP + FN == 0``
      (neither in the targets nor predicted) is undefined and left out of the mean;
    * ``"dice"``: mean over the FOREGROUND classes ``1..C-1`` of ``2TP / (2TP + FP + FN)``, same
      rule (for ``C == 1``: the Dice of class 0);
    * ``"pixel_acc"``: correctly classified pixels / all counted pixels;
    * ``"iou_<name>"`` for every class: its IoU (NaN when undefined).

    Every value is a 0-dim float64 tensor (float32 on MPS), NaN when undefined, all NaN before
    any update. Per-class IoU and Dice (all ``C`` classes) come from :meth:`per_class`. Per-sample
    matrices are cheap for the small ``C`` of segmentation tasks (2 for polyps, 19 for
    Cityscapes: ~3 kB a sample).

    Args:
        num_classes: Number of classes ``C``.
        ignore_index: Target value of pixels that count nowhere; must not be a class id.
        class_names: ``C`` names for the ``iou_<name>`` keys; default ``"0"``, ``"1"``, ...
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Example:
        >>> metric = SegmentationMetrics(num_classes=2, class_names=["background", "polyp"])
        >>> metric.update(logits.argmax(1), target, batch["index"])  # doctest: +SKIP
        >>> metric.compute()["mIoU"]  # doctest: +SKIP
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if int(num_classes) != num_classes or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
        num_classes = int(num_classes)
        if int(ignore_index) != ignore_index or 0 <= ignore_index < num_classes:
            # An ignored class id would still count as a (false) prediction: ambiguous, refused.
            raise ValueError(
                f"ignore_index must be an integer outside the class ids 0..{num_classes - 1}, got {ignore_index!r}"
            )
        names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
        if len(names) != num_classes or len(set(names)) != num_classes:
            raise ValueError(f"class_names must be {num_classes} distinct names, got {class_names!r}")
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.class_names = names
        self.add_state("confmat", default=[], dist_reduce_fx="cat")
        self.add_state("index", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, index: Tensor) -> None:
        """Accumulate one batch.

        Args:
            preds: ``[B, H, W]`` predicted class ids (e.g. ``logits.argmax(1)``).
            target: ``[B, H, W]`` class ids ``0..C-1`` or ``ignore_index``.
            index: ``[B]`` index of each sample in its dataset (for de-duplication under DDP).

        Raises:
            ValueError: On mismatched shapes, a target value that is neither a class id nor
                ``ignore_index``, or a prediction outside ``0..C-1`` at a pixel that is not ignored.
        """
        if preds.shape != target.shape or preds.dim() != 3:
            raise ValueError(
                f"preds and target must both be [B, H, W], got preds {tuple(preds.shape)} "
                f"and target {tuple(target.shape)}"
            )
        b, c = preds.shape[0], self.num_classes
        if index.shape != (b,):
            raise ValueError(f"index must be [B] = ({b},), got {tuple(index.shape)}")
        if preds.is_floating_point() or target.is_floating_point():
            raise ValueError(f"preds and target must hold integer class ids, got {preds.dtype} and {target.dtype}")
        preds = preds.long()
        target = target.long().to(preds.device)
        valid = target != self.ignore_index
        in_range = (target >= 0) & (target < c)
        if bool((valid & ~in_range).any()):
            bad = torch.unique(target[valid & ~in_range])[:10].tolist()
            raise ValueError(f"target values {bad} are neither a class id 0..{c - 1} nor ignore_index {self.ignore_index}")
        pred_ok = (preds >= 0) & (preds < c)
        if bool((valid & ~pred_ok).any()):
            bad = torch.unique(preds[valid & ~pred_ok])[:10].tolist()
            raise ValueError(f"preds values {bad} are not class ids 0..{c - 1}")
        # One bincount for the whole batch: key = sample * C^2 + target * C + pred; ignored pixels
        # go to an extra last bin that is dropped.
        sample = torch.arange(b, device=preds.device)[:, None, None]
        key = sample * (c * c) + target * c + preds
        key = torch.where(valid, key, torch.full_like(key, b * c * c))
        counts = torch.bincount(key.flatten(), minlength=b * c * c + 1)[: b * c * c]
        self.confmat.append(counts.reshape(b, c, c))
        self.index.append(index.detach().long().to(preds.device))

    def confusion_matrix(self) -> Tensor:
        """The dataset confusion matrix, ``[C, C]`` int64 (rows = target, columns = prediction).

        Repeated sample indices counted once. Reads the states as they are (call it from
        :meth:`compute` / :meth:`per_class`, which sync them under DDP).
        """
        if len(self.index) == 0:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=self.device)
        index = dim_zero_cat(self.index)
        confmat = dim_zero_cat(self.confmat).reshape(-1, self.num_classes, self.num_classes)
        if index.numel() == 0:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.long, device=confmat.device)
        # First occurrence of each index: drops DDP padding, whatever the rank order.
        _, rows = np.unique(index.cpu().numpy(), return_index=True)
        rows = torch.as_tensor(rows, dtype=torch.long, device=confmat.device)
        return confmat[rows].sum(0)

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"mIoU", "dice", "pixel_acc", "iou_<name>"...}`` (see the class doc)."""
        stats = self._class_stats()
        iou, dice = stats["iou"], stats["dice"]
        fg_dice = dice if self.num_classes == 1 else dice[1:]
        out = {
            "mIoU": torch.nanmean(iou),
            "dice": torch.nanmean(fg_dice),
            "pixel_acc": stats["correct"] / stats["total"],  # 0 / 0 = NaN before any pixel
        }
        for name, value in zip(self.class_names, iou):
            out[f"iou_{name}"] = value
        return out

    def per_class(self) -> dict[str, Tensor]:
        """Per-class IoU and Dice of every class (background included), NaN where undefined.

        Synced across processes like :meth:`compute` when running distributed.

        Returns:
            ``{"iou": [C], "dice": [C]}``.
        """
        if self._is_synced:  # synced by the caller: use it as is, and leave the unsync to them
            stats = self._class_stats()
        else:
            with self.sync_context(
                dist_sync_fn=self.dist_sync_fn,
                should_sync=self._to_sync,
                should_unsync=self._should_unsync,
            ):
                stats = self._class_stats()
        return {"iou": stats["iou"], "dice": stats["dice"]}

    def _class_stats(self) -> dict[str, Tensor]:
        dtype = torch.float32 if self.device.type == "mps" else torch.float64
        cm = self.confusion_matrix().to(dtype)
        tp = torch.diagonal(cm)
        fp = cm.sum(0) - tp  # predicted as c, target another class
        fn = cm.sum(1) - tp  # target c, predicted another class
        # x / 0 for an undefined class: its denominator is 0 exactly when TP = FP = FN = 0, so NaN.
        return {
            "iou": tp / (tp + fp + fn),
            "dice": 2 * tp / (2 * tp + fp + fn),
            "correct": tp.sum(),
            "total": cm.sum(),
        }
