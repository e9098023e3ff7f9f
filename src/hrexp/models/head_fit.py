"""Checks that a head fits a backbone's ``feature_info`` (see :mod:`hrexp.models.heads`).

``feature_info`` is a list of ``{"num_chs": int, "reduction": int}``, highest resolution first.
:func:`check_head_fits` runs when a head is built and raises a ValueError naming the head and the
backbone's feature strides and channels; :func:`check_features` runs in ``forward`` and fails
clearly when a head gets other features than those it was built for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def _validate_feature_info(feature_info: Any) -> list[dict[str, int]]:
    """Checks ``feature_info`` and returns it as plain dicts.

    Raises:
        ValueError: It is empty, not a sequence of mappings, lacks positive integer ``num_chs``
            / ``reduction``, or is not ordered highest resolution first.
    """
    if isinstance(feature_info, (str, bytes)) or not isinstance(feature_info, Sequence):
        # OmegaConf's ListConfig is a Sequence, so configs pass this check.
        raise ValueError(
            f"feature_info must be a list of dicts, got {type(feature_info).__name__}"
        )
    if len(feature_info) == 0:
        raise ValueError("feature_info is empty: the backbone describes no features")
    infos = []
    for index, info in enumerate(feature_info):
        if not isinstance(info, Mapping):
            raise ValueError(
                f"feature_info[{index}] must be a dict with num_chs and reduction, "
                f"got {type(info).__name__}"
            )
        for key in ("num_chs", "reduction"):
            value = info.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"feature_info[{index}][{key!r}] must be a positive int, got {value!r}"
                )
        infos.append({"num_chs": info["num_chs"], "reduction": info["reduction"]})
    reductions = [info["reduction"] for info in infos]
    if reductions != sorted(reductions):
        raise ValueError(
            f"feature_info must be ordered highest resolution first, got reductions {reductions}"
        )
    return infos


def describe_features(feature_info: Any) -> str:
    """``"strides [4, 8], channels [32, 64]"`` for error messages (the raw value if malformed)."""
    try:
        strides = [info["reduction"] for info in feature_info]
        channels = [info["num_chs"] for info in feature_info]
    except (TypeError, KeyError, IndexError):
        text = repr(feature_info)
        return f"feature_info {text if len(text) <= 200 else text[:200] + '...'}"
    return f"strides {strides}, channels {channels}"


def check_head_fits(
    head_name: str,
    feature_info: Any,
    *,
    min_features: int = 1,
    strictly_increasing: bool = False,
    power_of_two_strides: bool = False,
) -> list[dict[str, int]]:
    """Checks that a head can read a backbone's features; returns them as plain dicts.

    Args:
        head_name: The head's name, for the error message.
        feature_info: The backbone's ``feature_info``.
        min_features: Fewest features the head needs.
        strictly_increasing: Strides must strictly increase (no two features at one stride).
        power_of_two_strides: Every stride must be a power of two, so that each feature's
            resolution is an exact integer multiple of every coarser one.

    Returns:
        ``[{"num_chs": int, "reduction": int}, ...]``, highest resolution first.

    Raises:
        ValueError: ``feature_info`` is malformed or does not meet the requirements; the message
            names the head and the backbone's feature strides and channels.
    """
    prefix = f"{head_name} does not fit the backbone's features ({describe_features(feature_info)})"
    try:
        infos = _validate_feature_info(feature_info)
    except ValueError as err:
        raise ValueError(f"{prefix}: {err}") from None
    strides = [info["reduction"] for info in infos]
    if len(infos) < min_features:
        raise ValueError(f"{prefix}: it needs at least {min_features} features, got {len(infos)}")
    if strictly_increasing and any(a >= b for a, b in zip(strides, strides[1:])):
        raise ValueError(f"{prefix}: the strides must strictly increase, got {strides}")
    if power_of_two_strides and any(s & (s - 1) for s in strides):
        raise ValueError(f"{prefix}: every stride must be a power of two, got {strides}")
    return infos


def check_features(
    head_name: str, features: Sequence[torch.Tensor], infos: list[dict[str, int]]
) -> None:
    """Fails clearly when a head gets other features than the ``feature_info`` it was built for."""
    channels = [info["num_chs"] for info in infos]
    got = [int(f.shape[1]) for f in features]
    if got != channels:
        raise ValueError(
            f"{head_name} was built for {len(channels)} features with channels {channels} "
            f"(strides {[info['reduction'] for info in infos]}), got {len(got)} with channels {got}"
        )
