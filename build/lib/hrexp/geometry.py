"""Affine geometry shared by the data pipeline and the decoders (homogeneous 3x3 matrices)."""

from __future__ import annotations

import torch


def apply_affine(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Map points through affine matrices.

    Args:
        points: ``[B, K, 2]`` (x, y).
        matrix: ``[B, 3, 3]`` homogeneous affine matrices (or ``[B, 2, 3]``).

    Returns:
        ``[B, K, 2]``: ``A[:2, :2] @ p + A[:2, 2]`` for every point.
    """
    lin = matrix[..., :2, :2]
    shift = matrix[..., :2, 2]
    return torch.einsum("bij,bkj->bki", lin, points) + shift.unsqueeze(1)


def invert_affine(matrix: torch.Tensor) -> torch.Tensor:
    """Invert ``[B, 3, 3]`` homogeneous affine matrices (in float64 for accuracy)."""
    return torch.linalg.inv(matrix.double()).to(matrix.dtype)
