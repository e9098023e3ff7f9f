"""Seeded splits of ``range(n)`` into train/val(/test) when a data set gives fewer files than splits.

Each uses its own generator, so a split depends only on its seed (not on the global seed that varies
between runs) and the validation and test images stay the same across experiments.
"""

from __future__ import annotations

import numpy as np


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded train/val split of ``range(n)``, each part in index order.

    At least one item goes to each part when ``n >= 2``.

    Raises:
        ValueError: ``val_fraction`` outside ``(0, 1)``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = int(round(n * val_fraction))
    n_val = min(max(n_val, 1), n - 1) if n >= 2 else 0
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def split_three(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[list[int], list[int], list[int]]:
    """Seeded train/val/test split of ``range(n)``, each part in index order.

    The test part is taken first from the permutation, so it depends only on ``seed`` and
    ``test_fraction`` (changing ``val_fraction`` does not move test images). A fraction of 0 gives
    an empty part; a positive one at least one item.

    Raises:
        ValueError: A fraction outside ``[0, 1)``, or no item left for training.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {fraction}")

    def count(fraction: float) -> int:
        return 0 if fraction == 0.0 else max(1, int(round(n * fraction)))

    n_test, n_val = count(test_fraction), count(val_fraction)
    if n - n_test - n_val < 1:
        raise ValueError(
            f"cannot split {n} images into {n_val} val and {n_test} test images and keep at least one for "
            f"training (val_fraction={val_fraction}, test_fraction={test_fraction})"
        )
    order = np.random.default_rng(seed).permutation(n)
    test = sorted(order[:n_test].tolist())
    val = sorted(order[n_test : n_test + n_val].tolist())
    train = sorted(order[n_test + n_val :].tolist())
    return train, val, test
