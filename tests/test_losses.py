"""WeightedHeatmapMSE against a NumPy hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hrexp.losses.heatmap_mse import WeightedHeatmapMSE


def _numpy_loss(pred: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    b, k, h, w = pred.shape
    total = 0.0
    for i in range(b):
        for j in range(k):
            total += weights[i, j] * np.sum((pred[i, j] - target[i, j]) ** 2)
    return total / (b * k * h * w)


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    pred = rng.standard_normal((3, 5, 6, 7))
    target = rng.uniform(0, 1, size=(3, 5, 6, 7))
    weights = np.array(
        [[1.0, 0.0, 1.0, 0.5, 1.0], [0.0, 0.0, 1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0, 0.0]]
    )
    return pred, target, weights


def test_matches_numpy_with_mixed_weights():
    pred, target, weights = _data()
    p, t, w = torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(weights)
    loss = WeightedHeatmapMSE()(p, t, w)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(_numpy_loss(pred, target, weights), rel=1e-12)
    # float32 inputs give the same value to float32 precision.
    loss32 = WeightedHeatmapMSE()(p.float(), t.float(), w.float())
    assert loss32.item() == pytest.approx(_numpy_loss(pred, target, weights), rel=1e-5)


def test_all_ones_weights_is_plain_mse():
    pred, target, _ = _data(1)
    p, t = torch.from_numpy(pred), torch.from_numpy(target)
    loss = WeightedHeatmapMSE()(p, t, torch.ones(3, 5, dtype=torch.float64))
    assert loss.item() == pytest.approx(torch.nn.functional.mse_loss(p, t).item(), rel=1e-12)


def test_weight_zero_landmark_prediction_is_free():
    pred, target, weights = _data(2)
    loss_fn = WeightedHeatmapMSE()
    p = torch.from_numpy(pred)
    t, w = torch.from_numpy(target), torch.from_numpy(weights)
    base = loss_fn(p, t, w).item()
    zero = weights == 0
    for fill in (1e6, -3.0, float("inf"), float("nan")):
        changed = p.clone()
        changed[torch.from_numpy(zero)] = fill
        assert loss_fn(changed, t, w).item() == base, fill
    # ... and it gets no gradient.
    p_req = p.clone().requires_grad_(True)
    loss_fn(p_req, t, w).backward()
    grad = p_req.grad.abs().sum(dim=(2, 3))
    assert (grad[torch.from_numpy(zero)] == 0).all()
    assert (grad[torch.from_numpy(~zero)] > 0).all()


def test_shape_mismatch_names_both_shapes():
    loss_fn = WeightedHeatmapMSE()
    with pytest.raises(ValueError) as info:
        loss_fn(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 9), torch.ones(2, 3))
    assert "(2, 3, 8, 8)" in str(info.value) and "(2, 3, 8, 9)" in str(info.value)
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        loss_fn(torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), torch.ones(2, 4))


def test_half_precision_inputs_are_reduced_in_float32():
    pred, target, weights = _data(3)
    p, t, w = (torch.from_numpy(x) for x in (pred, target, weights))
    loss = WeightedHeatmapMSE()(p.bfloat16(), t.bfloat16(), w.bfloat16())
    assert loss.dtype == torch.float32
    ref = _numpy_loss(
        p.bfloat16().double().numpy(), t.bfloat16().double().numpy(), w.bfloat16().double().numpy()
    )
    assert loss.item() == pytest.approx(ref, rel=1e-5)
