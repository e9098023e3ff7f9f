"""The refinement gate: per landmark, whether stage 2's point replaces stage 1's, fitted on validation.

Stage 2 is kept for landmark ``k`` only where it moved the point at most ``max_move[k]`` original px and its
heatmap peak is at least ``min_score[k]``; elsewhere stage 1's point stands. :func:`fit_gate` picks both
thresholds per landmark to minimise that landmark's summed radial error on the fitting data, among
candidates that include "never" (stage 1 everywhere) and "always" (stage 2 everywhere). So on the data it
was fitted on, the gated error is never above stage 1's nor stage 2's, landmark by landmark, by construction.
The thresholds are buffers of :class:`RefinementGate`: saved in the checkpoint with the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

# At most this many candidate thresholds per landmark and per criterion (quantiles of the observed values):
# the search is (moves x scores) per landmark, small even for thousands of validation images.
MAX_CANDIDATES = 64


class RefinementGate(nn.Module):
    """Per-landmark thresholds: ``use`` (False: stage 1 always), ``max_move`` (original px), ``min_score``.

    Unfitted (``fitted`` False: a new model, or a checkpoint written before gates existed) it passes every
    refined point, as refinement did before.
    """

    def __init__(self, num_keypoints: int):
        super().__init__()
        k = int(num_keypoints)
        self.register_buffer("use", torch.ones(k, dtype=torch.bool))
        self.register_buffer("max_move", torch.full((k,), float("inf")))
        self.register_buffer("min_score", torch.full((k,), float("-inf")))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def accepted(self, coarse: Tensor, refined: Tensor, scores: Tensor) -> Tensor:
        """``[B, K]`` True where the refined point is kept (``coarse`` / ``refined`` ``[B, K, 2]`` original px,
        ``scores [B, K]`` the refined heatmaps' peaks)."""
        if not bool(self.fitted):
            return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
        moved = torch.linalg.vector_norm(refined.double() - coarse.double(), dim=-1)
        return self.use & (moved <= self.max_move.double()) & (scores.double() >= self.min_score.double())

    def forward(self, coarse: Tensor, refined: Tensor, scores: Tensor) -> tuple[Tensor, Tensor]:
        """``(points [B, K, 2], accepted [B, K])``: the refined point where accepted, else the coarse one."""
        accepted = self.accepted(coarse, refined, scores)
        return torch.where(accepted[..., None], refined, coarse), accepted

    def set(self, use: Tensor, max_move: Tensor, min_score: Tensor) -> None:
        """Store fitted thresholds (in place: the buffers stay the module's, on its device), rounded outwards to
        float32 so that the points they were fitted to accept are still accepted."""
        self.use.copy_(use)
        self.max_move.copy_(_rounded(max_move, up=True))
        self.min_score.copy_(_rounded(min_score, up=False))
        self.fitted.fill_(True)

    def summary(self) -> dict[str, Any]:
        """The thresholds as plain lists (``None`` for an unbounded one), for records and reports."""
        def plain(values: Tensor) -> list[float | None]:
            return [float(v) if torch.isfinite(v) else None for v in values.detach().cpu()]

        return {"fitted": bool(self.fitted), "use": [bool(u) for u in self.use.cpu()],
                "max_move_px": plain(self.max_move), "min_score": plain(self.min_score)}

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: Any, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        # A checkpoint written before the gate existed has none of its buffers: an unfitted gate (all refined).
        names = [prefix + name for name in ("use", "max_move", "min_score", "fitted")]
        if not any(name in state_dict for name in names):
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def _rounded(values: Tensor, up: bool) -> Tensor:
    """``values`` as float32, each at least (``up``) or at most its exact value."""
    single = values.float()
    direction = torch.full_like(single, float("inf") if up else float("-inf"))
    short = single.double() < values.double() if up else single.double() > values.double()
    return torch.where(short, torch.nextafter(single, direction), single)


def _candidates(values: Tensor, unbounded: float) -> Tensor:
    """Threshold candidates from observed ``values``: their quantiles (all of them when few) and ``unbounded``."""
    finite = values[torch.isfinite(values)].unique()
    if finite.numel() > MAX_CANDIDATES:
        finite = torch.quantile(finite, torch.linspace(0, 1, MAX_CANDIDATES, dtype=finite.dtype))
    return torch.cat([finite, finite.new_tensor([unbounded])])


def fit_gate(coarse: Tensor, refined: Tensor, scores: Tensor, truth: Tensor, visible: Tensor
             ) -> tuple[Tensor, Tensor, Tensor]:
    """``(use [K], max_move [K], min_score [K])`` (float64) that minimise each landmark's summed radial error.

    Args:
        coarse, refined, truth: ``[N, K, 2]`` original px (stage 1, stage 2, ground truth).
        scores: ``[N, K]`` the refined heatmaps' peaks.
        visible: ``[N, K]`` which landmarks count.

    Stage 2 is used for a landmark only if some thresholds make its summed error strictly lower than stage 1's
    alone; a landmark never seen keeps stage 1.
    """
    coarse, refined, truth, scores = coarse.double(), refined.double(), truth.double(), scores.double()
    k = coarse.shape[1]
    use = torch.zeros(k, dtype=torch.bool)
    max_move = torch.full((k,), float("inf"), dtype=torch.float64)
    min_score = torch.full((k,), float("-inf"), dtype=torch.float64)
    error_coarse = torch.linalg.vector_norm(coarse - truth, dim=-1)
    error_refined = torch.linalg.vector_norm(refined - truth, dim=-1)
    moved = torch.linalg.vector_norm(refined - coarse, dim=-1)
    for j in range(k):
        seen = visible[:, j].bool()
        if not bool(seen.any()):
            continue
        e_c, e_r, m, s = error_coarse[seen, j], error_refined[seen, j], moved[seen, j], scores[seen, j]
        moves, mins = _candidates(m, float("inf")), _candidates(s, float("-inf"))
        # accept[d, t, i]: sample i refined under max_move moves[d] and min_score mins[t]
        accept = (m[None, None, :] <= moves[:, None, None]) & (s[None, None, :] >= mins[None, :, None])
        total = torch.where(accept, e_r, e_c).sum(-1)  # [D, T]
        best = int(torch.argmin(total))
        if float(total.flatten()[best]) < float(e_c.sum()):  # strictly better than stage 1 alone
            use[j] = True
            max_move[j] = moves[best // total.shape[1]]
            min_score[j] = mins[best % total.shape[1]]
    return use, max_move, min_score


class GateData(Metric):
    """What fitting the gate needs from one validation epoch, gathered across DDP ranks (``cat`` states):
    each sample's coarse and refined points, refined scores, truth, visibility and pixel spacing."""

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        for name in ("coarse", "refined", "scores", "truth", "visible", "spacing"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, coarse: Tensor, refined: Tensor, scores: Tensor, truth: Tensor, visible: Tensor,
               spacing: Tensor) -> None:
        self.coarse.append(coarse.detach().double())
        self.refined.append(refined.detach().double())
        self.scores.append(scores.detach().double())
        self.truth.append(truth.detach().double())
        self.visible.append(visible.detach().bool())
        self.spacing.append(spacing.detach().double().reshape(-1))

    def compute(self) -> dict[str, Tensor]:
        return {name: dim_zero_cat(getattr(self, name)) for name in
                ("coarse", "refined", "scores", "truth", "visible", "spacing")}

    @staticmethod
    def shaped(data: dict[str, Tensor], num_keypoints: int) -> dict[str, Tensor]:
        """:meth:`compute`'s tensors in their shapes again (torchmetrics squeezes a one-element result)."""
        k = int(num_keypoints)
        shapes = {"coarse": (-1, k, 2), "refined": (-1, k, 2), "truth": (-1, k, 2), "scores": (-1, k),
                  "visible": (-1, k), "spacing": (-1,)}
        return {name: data[name].reshape(shape) for name, shape in shapes.items()}
