"""Semantic segmentation loss: cross-entropy (plain or OHEM) plus an optional soft Dice term."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CE_OPTIONS = ("ce", "ohem", None)


class SegmentationLoss(nn.Module):
    """``ce_weight * CE + dice_weight * Dice`` over per-pixel class logits.

    Cross-entropy terms (``ce``):

    * ``"ce"``: :func:`torch.nn.functional.cross_entropy` with ``ignore_index`` and the optional
      ``class_weights``: the weighted mean ``sum_i w[t_i] * l_i / sum_i w[t_i]`` over the pixels
      that are not ignored. With no such pixel it is 0 (not PyTorch's 0 / 0 = NaN).
    * ``"ohem"``: online hard example mining as in HRNet-Semantic-Segmentation's
      ``OhemCrossEntropy``. The per-pixel losses are the (class-weighted) cross-entropies; the
      valid pixels are sorted by the softmax probability of their true class (hardest first);
      a pixel is kept when that probability is ``< ohem_threshold`` or it is among the
      ``ohem_min_kept`` hardest (``min_kept`` clipped to the number of valid pixels); the term is
      the plain (unweighted) mean of the kept losses. This is HRNet's rule
      ``threshold = max(ohem_threshold, prob of the min_kept-th hardest)`` written with ranks, so
      that ties and ``min_kept >= #valid`` keep exactly the ``min_kept`` hardest (HRNet's strict
      ``<`` would then drop the easiest pixel). With nothing kept the term is 0.
    * ``None``: no cross-entropy term.

    Dice term (``dice_weight > 0``): soft Dice between the softmax probabilities ``p`` and the
    one-hot target ``t``, ignored pixels excluded, each class summed over the whole batch:
    ``dice_c = (2 * sum(p_c * t_c) + 1) / (sum(p_c) + sum(t_c) + 1)`` and
    ``dice = 1 - mean_c dice_c`` over ALL ``C`` classes, background included. The smoothing of 1
    makes a class that is absent from the target and (nearly) not predicted score ~1, so it
    neither pulls the mean down nor divides by zero; a class predicted where it is absent scores
    low. ``class_weights`` do not enter the Dice term.

    Every term is computed in at least float32, whatever the dtype of the logits (AMP), and a term
    that is 0 for lack of pixels still carries a graph (``logits.sum() * 0``), so ``backward()``
    works on every rank under DDP.

    Args:
        ce: ``"ce"``, ``"ohem"`` or ``None``.
        dice_weight: Weight of the Dice term (0 = off).
        ce_weight: Weight of the cross-entropy term.
        class_weights: Optional per-class weights of the cross-entropy, length ``C``.
        ignore_index: Target value of pixels that count nowhere.
        ohem_threshold: OHEM keeps pixels whose true-class probability is below this ...
        ohem_min_kept: ... and at least this many of the hardest valid pixels.

    Raises:
        ValueError: On an unknown ``ce``, negative weights, no term switched on (``ce`` is None or
            ``ce_weight`` is 0, and ``dice_weight`` is 0), bad ``class_weights`` or a negative
            ``ohem_min_kept``.

    Example:
        >>> loss = SegmentationLoss("ohem", dice_weight=0.5)(logits, target)  # doctest: +SKIP
    """

    def __init__(
        self,
        ce: str | None = "ce",
        dice_weight: float = 0.0,
        ce_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
        ignore_index: int = 255,
        ohem_threshold: float = 0.7,
        ohem_min_kept: int = 100000,
    ) -> None:
        super().__init__()
        if ce not in CE_OPTIONS:
            raise ValueError(f"ce must be one of {CE_OPTIONS!r}, got {ce!r}")
        if not (dice_weight >= 0 and ce_weight >= 0):
            raise ValueError(
                f"dice_weight and ce_weight must be >= 0, got dice_weight={dice_weight!r}, "
                f"ce_weight={ce_weight!r}"
            )
        if (ce is None or ce_weight == 0) and dice_weight == 0:
            raise ValueError(
                f"no loss term is on: ce={ce!r} (ce_weight={ce_weight!r}) and dice_weight={dice_weight!r}; "
                "set ce to 'ce' or 'ohem' or give a positive dice_weight"
            )
        if int(ohem_min_kept) != ohem_min_kept or ohem_min_kept < 0:
            raise ValueError(f"ohem_min_kept must be a non-negative integer, got {ohem_min_kept!r}")
        self.ce = ce
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)
        self.ignore_index = int(ignore_index)
        self.ohem_threshold = float(ohem_threshold)
        self.ohem_min_kept = int(ohem_min_kept)
        if class_weights is None:
            self.class_weights: Tensor | None = None
        else:
            w = torch.as_tensor(class_weights, dtype=torch.float32)
            if w.dim() != 1 or w.numel() < 1 or not bool(torch.all(torch.isfinite(w) & (w >= 0))):
                raise ValueError(
                    f"class_weights must be a 1-D sequence of finite non-negative numbers, got {class_weights!r}"
                )
            # A buffer so that it follows .to(device); not persistent: it is configuration, and a
            # checkpoint should not pin it (nor fail to load when it changes).
            self.register_buffer("class_weights", w, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Compute the loss.

        Args:
            logits: ``[B, C, H, W]`` class logits, already at the target's resolution.
            target: ``[B, H, W]`` integer class ids in ``0..C-1`` or ``ignore_index``.

        Returns:
            Scalar tensor, float32 (float64 for float64 logits).

        Raises:
            ValueError: If the shapes do not match or ``class_weights`` does not have ``C`` entries.
        """
        if logits.dim() != 4 or target.dim() != 3 or logits.shape[:1] + logits.shape[2:] != target.shape:
            raise ValueError(
                "logits must be [B, C, H, W] and target [B, H, W] with the same B, H, W (upsample the "
                f"logits first), got logits {tuple(logits.shape)} and target {tuple(target.shape)}"
            )
        num_classes = logits.shape[1]
        if self.class_weights is not None and self.class_weights.numel() != num_classes:
            raise ValueError(
                f"class_weights has {self.class_weights.numel()} entries but the logits have "
                f"{num_classes} classes"
            )
        # At least float32: half-precision softmax / log-sum-exp over many pixels loses too much.
        dtype = torch.promote_types(logits.dtype, torch.float32)
        logits = logits.to(dtype)
        target = target.long()
        valid = target != self.ignore_index
        # Ignored pixels get class 0 where a class is needed (gather, one-hot); masked out after.
        safe_target = torch.where(valid, target, torch.zeros_like(target))

        total = logits.new_zeros(())
        if self.ce is not None and self.ce_weight > 0:
            weight = None if self.class_weights is None else self.class_weights.to(dtype)
            # Weighted per-pixel losses, 0 at ignored pixels.
            pixel = F.cross_entropy(
                logits, target, weight=weight, ignore_index=self.ignore_index, reduction="none"
            )
            if self.ce == "ce":
                term = self._weighted_mean(pixel, safe_target, valid, weight)
            else:
                term = self._ohem(logits, pixel, safe_target, valid)
            total = total + self.ce_weight * term
        if self.dice_weight > 0:
            total = total + self.dice_weight * self._dice(logits, safe_target, valid)
        return total

    @staticmethod
    def _weighted_mean(pixel: Tensor, safe_target: Tensor, valid: Tensor, weight: Tensor | None) -> Tensor:
        """``sum(w[t] * l) / sum(w[t])`` over valid pixels; 0 (with a graph) when that sum is 0."""
        den = valid.to(pixel.dtype)
        if weight is not None:
            den = den * weight[safe_target]
        den = den.sum()
        # No host sync and no NaN: a zero denominator comes with a zero numerator.
        return pixel.sum() / torch.where(den > 0, den, torch.ones_like(den))

    def _ohem(self, logits: Tensor, pixel: Tensor, safe_target: Tensor, valid: Tensor) -> Tensor:
        """Mean loss of the hard valid pixels (see the class doc)."""
        with torch.no_grad():  # the selection is not differentiated, only the kept losses are
            prob = F.softmax(logits, dim=1).gather(1, safe_target[:, None])[:, 0]
        mask = valid.flatten()
        prob = prob.flatten()[mask]
        losses = pixel.flatten()[mask]
        if prob.numel() == 0:
            return logits.sum() * 0
        order = torch.argsort(prob, stable=True)  # hardest (lowest true-class probability) first
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel(), device=order.device)
        keep = (prob < self.ohem_threshold) | (rank < min(self.ohem_min_kept, prob.numel()))
        kept = losses[keep]
        if kept.numel() == 0:
            return logits.sum() * 0
        return kept.mean()

    @staticmethod
    def _dice(logits: Tensor, safe_target: Tensor, valid: Tensor) -> Tensor:
        """``1 - mean_c dice_c`` with smoothing 1, over all classes (see the class doc)."""
        num_classes = logits.shape[1]
        prob = F.softmax(logits, dim=1)
        m = valid[:, None].to(prob.dtype)  # [B, 1, H, W]
        classes = torch.arange(num_classes, device=logits.device)[None, :, None, None]
        # One-hot by comparison: elementwise, hence deterministic on GPU (no scatter).
        onehot = (safe_target[:, None] == classes).to(prob.dtype) * m
        prob = prob * m
        dims = (0, 2, 3)
        inter = (prob * onehot).sum(dims)
        dice = (2 * inter + 1) / (prob.sum(dims) + onehot.sum(dims) + 1)
        return 1 - dice.mean()
