"""What the refiner is told besides its patch's pixels: extra input channels drawn from stage 1's points.

A patch is centred on stage 1's point for its landmark, so that point itself says nothing the patch does not.
What a lone patch cannot tell is which of several look-alike structures is its landmark (a vertebra corner
sits a median 38 px from the next one across the disc, and a 192-px patch holds 5 to 8 of them):

* ``neighbours``: one channel with a Gaussian (``sigma`` patch px) at each of the ``num_neighbours`` nearest
  OTHER landmarks, where stage 1 put them (evaluation) or where the same jitter put them (training: the truth
  moved as a stage-1 error would). A corner already claimed by a neighbour is not this landmark's.
* ``centre``: one channel with a Gaussian of the jitter's width at the patch centre: the prior of where the
  landmark is, which a fully convolutional network cannot otherwise locate.

Both need only points, so training never runs stage 1 for them (a stage-1 heatmap crop would).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

CHANNELS = ("centre", "neighbours")


def check_channels(names: Sequence[str]) -> list[str]:
    """The configured channel names, each known and once; raises ValueError naming the option otherwise."""
    names = [str(n) for n in names]
    unknown = [n for n in names if n not in CHANNELS]
    if unknown or len(set(names)) != len(names):
        raise ValueError(f"task.refine.condition={names}: expected distinct names among {list(CHANNELS)}")
    return names


def gaussian_maps(points: Tensor, size: int, sigma: float) -> Tensor:
    """``[N, 1, P, P]``: the maximum over ``M`` of unit Gaussians at ``points [N, M, 2]`` (patch px: pixel
    ``(i, j)`` is the point ``(x=j, y=i)``); non-finite points draw nothing."""
    n, m, _ = points.shape
    if m == 0:
        return points.new_zeros(n, 1, size, size)
    grid = torch.arange(size, dtype=points.dtype, device=points.device)
    finite = torch.isfinite(points).all(-1)  # [N, M]
    safe = torch.where(finite[..., None], points, torch.full_like(points, -1e6))
    gx = torch.exp(-((grid - safe[..., 0, None]) ** 2) / (2 * sigma ** 2))  # [N, M, P]
    gy = torch.exp(-((grid - safe[..., 1, None]) ** 2) / (2 * sigma ** 2))
    maps = gy[..., :, None] * gx[..., None, :]  # [N, M, P, P]
    return maps.amax(dim=1, keepdim=True)


def nearest_others(centres: Tensor, landmarks: Tensor, everyone: Tensor, present: Tensor, count: int) -> Tensor:
    """``[B, M, count, 2]``: for each patch's landmark, the ``count`` nearest other landmarks' points (NaN where
    fewer are ``present``).

    Args:
        centres: ``[B, M, 2]`` the patches' own points.
        landmarks: ``[B, M]`` which landmark each patch is.
        everyone: ``[B, K, 2]`` every landmark's point (same frame as ``centres``).
        present: ``[B, K]`` whether a landmark's point is known.
        count: neighbours kept per patch.
    """
    b, m, _ = centres.shape
    k = everyone.shape[1]
    distance = torch.linalg.vector_norm(everyone[:, None] - centres[:, :, None], dim=-1)  # [B, M, K]
    itself = torch.nn.functional.one_hot(landmarks, k).bool()
    distance = torch.where(itself | ~present[:, None, :], torch.full_like(distance, float("inf")), distance)
    count = min(int(count), k)
    nearest = distance.topk(count, dim=-1, largest=False)
    points = torch.gather(everyone[:, None].expand(b, m, k, 2), 2, nearest.indices[..., None].expand(-1, -1, -1, 2))
    return torch.where(torch.isfinite(nearest.values)[..., None], points, torch.full_like(points, float("nan")))
