"""Landmark localisation error: mean radial error (px and mm) and success detection rates."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


def _radius_key(radius: float) -> str:
    """``4.0 -> "sdr_4"``, ``2.5 -> "sdr_2.5"``."""
    return f"sdr_{int(radius)}" if float(radius).is_integer() else f"sdr_{radius:g}"


class LandmarkError(Metric):
    """Mean radial error (MRE) and success detection rate (SDR) of 2-D landmarks.

    All inputs are in ORIGINAL image pixels. Only visible landmarks count. The radial error of a
    landmark is the Euclidean distance ``||pred - target||`` in pixels; its error in mm is that
    times the sample's ``spacing`` (mm per pixel), for samples whose spacing is finite (NaN means
    unknown).

    :meth:`compute` returns a dict:

    * ``"mre"``: mean radial error in px over all visible landmarks seen since the last reset;
    * ``"mre_mm"``: mean radial error in mm over the visible landmarks of samples with a finite
      spacing (NaN when there were none);
    * ``"sdr_<r>"`` for each radius ``r``: the fraction (0..1) of visible landmarks whose error
      is ``<= r`` px (inclusive).

    ``higher_is_better`` (False) is the direction of the errors; the SDR keys go the other way and
    say so in ``higher_is_better_by_key`` (see :mod:`hrexp.metrics.direction`).

    Every value is NaN when no visible landmark was seen. Per-landmark means come from
    :meth:`per_landmark`. All states are sums reduced with ``"sum"``, so they sync under DDP and
    merge with :meth:`merge_state`.

    Args:
        num_keypoints: Number of landmarks ``K``.
        radii: SDR radii in px.
        **kwargs: Passed to :class:`torchmetrics.Metric`.

    Example:
        >>> metric = LandmarkError(num_keypoints=19)
        >>> metric.update(pred, target, visible, spacing)  # doctest: +SKIP
        >>> metric.compute()["mre"]  # doctest: +SKIP
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(
        self,
        num_keypoints: int,
        radii: Sequence[float] = (4, 8, 12, 16, 20, 24),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if int(num_keypoints) != num_keypoints or num_keypoints < 1:
            raise ValueError(f"num_keypoints must be a positive integer, got {num_keypoints!r}")
        radii = tuple(float(r) for r in radii)
        if any(not r >= 0 for r in radii):
            raise ValueError(f"radii must be non-negative, got {radii!r}")
        keys = [_radius_key(r) for r in radii]
        if len(set(keys)) != len(keys):
            raise ValueError(f"radii must be distinct, got {radii!r}")
        self.num_keypoints = int(num_keypoints)
        self.radii = radii
        self._radius_keys = keys
        self.higher_is_better_by_key = {"mre": False, "mre_mm": False, **{key: True for key in keys}}
        k, n_r = self.num_keypoints, len(radii)

        # Error sums are float, counts integer (exact however long the epoch).
        self.add_state("err_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("err_sum_mm", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count_mm", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("hits", torch.zeros(n_r, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("lm_err_sum", torch.zeros(k), dist_reduce_fx="sum")
        self.add_state("lm_count", torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("lm_err_sum_mm", torch.zeros(k), dist_reduce_fx="sum")
        self.add_state("lm_count_mm", torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: Tensor, target: Tensor, visible: Tensor, spacing: Tensor) -> None:
        """Accumulate one batch.

        Args:
            pred: ``[B, K, 2]`` predicted ``(x, y)`` in original pixels.
            target: ``[B, K, 2]`` ground truth ``(x, y)`` in original pixels (ignored where not
                visible).
            visible: ``[B, K]``; nonzero / True where the landmark is annotated.
            spacing: ``[B]`` mm per pixel, NaN where unknown.

        Raises:
            ValueError: On shapes that do not match ``[B, K, 2]`` / ``[B, K]`` / ``[B]`` with
                ``K == num_keypoints``.
        """
        if pred.shape != target.shape or pred.dim() != 3 or pred.shape[-1] != 2:
            raise ValueError(
                f"pred and target must both be [B, K, 2], got pred {tuple(pred.shape)} "
                f"and target {tuple(target.shape)}"
            )
        b, k, _ = pred.shape
        if k != self.num_keypoints:
            raise ValueError(
                f"expected K = {self.num_keypoints} landmarks, got pred {tuple(pred.shape)}"
            )
        if visible.shape != (b, k):
            raise ValueError(f"visible must be [B, K] = {(b, k)}, got {tuple(visible.shape)}")
        spacing = torch.as_tensor(spacing, device=pred.device)
        if spacing.shape != (b,):
            raise ValueError(f"spacing must be [B] = ({b},), got {tuple(spacing.shape)}")

        # Distances in float64 so that an error equal to a radius is not pushed over it by
        # float32 rounding of large coordinates (MPS has no float64).
        work = torch.float32 if pred.device.type == "mps" else torch.float64
        diff = pred.to(work) - target.to(work)
        err = torch.sqrt((diff**2).sum(dim=-1))  # [B, K]
        vis = visible.to(pred.device) != 0
        # Masked rather than multiplied: the target of a missing landmark may be anything.
        err_px = torch.where(vis, err, torch.zeros_like(err))

        spacing = spacing.to(work)
        has_mm = torch.isfinite(spacing)[:, None] & vis  # [B, K]
        err_mm = err * torch.nan_to_num(spacing)[:, None]
        err_mm = torch.where(has_mm, err_mm, torch.zeros_like(err))

        radii = torch.tensor(self.radii, dtype=work, device=err.device)
        hits = ((err[..., None] <= radii) & vis[..., None]).sum(dim=(0, 1))  # [R]

        dt = self.err_sum.dtype
        self.err_sum += err_px.sum().to(dt)
        self.count += vis.sum()
        self.err_sum_mm += err_mm.sum().to(dt)
        self.count_mm += has_mm.sum()
        self.hits += hits
        self.lm_err_sum += err_px.sum(dim=0).to(dt)
        self.lm_count += vis.sum(dim=0)
        self.lm_err_sum_mm += err_mm.sum(dim=0).to(dt)
        self.lm_count_mm += has_mm.sum(dim=0)

    def compute(self) -> dict[str, Tensor]:
        """Return ``{"mre", "mre_mm", "sdr_<r>", ...}`` as scalar tensors (see the class doc)."""
        count = self.count.to(self.err_sum.dtype)
        # 0 / 0 is NaN, which is the wanted "no data" value.
        out = {
            "mre": self.err_sum / count,
            "mre_mm": self.err_sum_mm / self.count_mm.to(self.err_sum_mm.dtype),
        }
        for key, hits in zip(self._radius_keys, self.hits):
            out[key] = hits.to(count.dtype) / count
        return out

    def per_landmark(self) -> dict[str, Tensor]:
        """Per-landmark mean radial errors.

        Synced across processes like :meth:`compute` when running distributed.

        Returns:
            ``{"mre": [K] px, "mre_mm": [K] mm}``; NaN for a landmark with no (mm) observation.
        """
        if self._is_synced:  # synced by the caller: use it as is, and leave the unsync to them
            return self._per_landmark_means()
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self._to_sync,
            should_unsync=self._should_unsync,
        ):
            return self._per_landmark_means()

    def _per_landmark_means(self) -> dict[str, Tensor]:
        return {
            "mre": self.lm_err_sum / self.lm_count.to(self.lm_err_sum.dtype),
            "mre_mm": self.lm_err_sum_mm / self.lm_count_mm.to(self.lm_err_sum_mm.dtype),
        }
