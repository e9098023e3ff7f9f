"""AdaptiveWingLoss: the paper's formula by hand, continuity, the weighted map, the weights contract, the config."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from hrexp.losses.adaptive_wing import AdaptiveWingLoss
from hrexp.losses.heatmap_mse import WeightedHeatmapMSE

ALPHA, OMEGA, EPS, THETA = 2.1, 14.0, 1.0, 0.5


def _awing_by_hand(y: float, y_hat: float) -> float:
    """The paper's per-element formula, written out with math (default parameters)."""
    d = abs(y - y_hat)
    if d < THETA:
        return OMEGA * math.log(1 + (d / EPS) ** (ALPHA - y))
    r = THETA / EPS
    a = OMEGA * (1 / (1 + r ** (ALPHA - y))) * (ALPHA - y) * r ** (ALPHA - y - 1) / EPS
    c = THETA * a - OMEGA * math.log(1 + r ** (ALPHA - y))
    return a * d - c


def test_by_hand_values_of_both_branches_for_both_targets():
    target = torch.tensor([[[[0.0, 1.0]]]], dtype=torch.float64)
    weights = torch.ones(1, 1, dtype=torch.float64)
    plain = AdaptiveWingLoss(use_weighted_map=False)
    mapped = AdaptiveWingLoss()
    # y=0, error 0.3 (log branch) and y=1, error 0.8 (linear branch); then the other way round.
    for preds in ([0.3, 0.2], [0.9, 0.6]):
        pred = torch.tensor([[[preds]]], dtype=torch.float64)
        # Spelled out fully for the first case: d=0.3 < theta for y=0 -> 14 ln(1 + 0.3^2.1);
        # d=0.8 >= theta for y=1 -> A*0.8 - C with exponent 1.1.
        e0, e1 = _awing_by_hand(0.0, preds[0]), _awing_by_hand(1.0, preds[1])
        if preds == [0.3, 0.2]:
            assert e0 == pytest.approx(14 * math.log(1 + 0.3**2.1), abs=1e-12)
            a1 = 14 * (1 / (1 + 0.5**1.1)) * 1.1 * 0.5**0.1
            assert e1 == pytest.approx(a1 * 0.8 - (0.5 * a1 - 14 * math.log(1 + 0.5**1.1)), abs=1e-12)
        expected = (e0 + e1) / 2  # mean over B*K*h*w = 2 elements
        assert plain(pred, target, weights).item() == pytest.approx(expected, abs=1e-6)
        # the 1x2 map: the dilated y=1 pixel covers both pixels, so M = 10 + 1 everywhere
        assert mapped(pred, target, weights).item() == pytest.approx(11 * expected, abs=1e-6)
        # float32 inputs give the same to float32 precision
        assert plain(pred.float(), target.float(), weights.float()).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("y", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_branches_meet_at_theta(y):
    loss = AdaptiveWingLoss(use_weighted_map=False)
    target = torch.full((1, 1, 1, 1), y, dtype=torch.float64)
    below = torch.tensor(THETA - 1e-9, dtype=torch.float64)
    at = torch.tensor(THETA, dtype=torch.float64)
    # the log branch's value just below theta equals the linear branch's at theta (exactly where it switches)
    log_value = loss.elementwise(target + below, target).item()
    lin_value = loss.elementwise(target + at, target).item()
    assert log_value == pytest.approx(lin_value, abs=1e-7)
    assert log_value == pytest.approx(OMEGA * math.log(1 + (THETA / EPS) ** (ALPHA - y)), abs=1e-7)
    # same slope on both sides (A is the log branch's derivative at theta)
    h = 1e-6
    slope_log = (loss.elementwise(target + at - h, target) - loss.elementwise(target + at - 2 * h, target)).item() / h
    slope_lin = (loss.elementwise(target + at + 2 * h, target) - loss.elementwise(target + at + h, target)).item() / h
    assert slope_log == pytest.approx(slope_lin, rel=1e-4)


def test_weighted_map_is_the_dilated_3x3_neighbourhood_of_a_hot_pixel():
    target = torch.zeros(2, 3, 7, 6)
    target[1, 2, 3, 4] = 1.0
    target[0, 0, 0, 0] = 0.2   # exactly the threshold counts (>= 0.2), clipped at the corner
    target[0, 1, 5, 1] = 0.19  # below it: no foreground
    m = AdaptiveWingLoss(map_weight=10.0).weight_map(target)
    expected = torch.ones_like(target)
    expected[1, 2, 2:5, 3:6] = 11.0
    expected[0, 0, 0:2, 0:2] = 11.0
    assert torch.equal(m, expected)
    # only this heatmap is touched: the neighbouring landmark / sample stays 1
    assert m[1, 1].eq(1).all() and m[0, 2].eq(1).all()
    # dilation=1: no dilation, dilation=5: a 5x5 square
    assert AdaptiveWingLoss(dilation=1).weight_map(target)[1, 2].ne(1).nonzero().tolist() == [[3, 4]]
    five = AdaptiveWingLoss(dilation=5).weight_map(target)[1, 2]
    assert five[1:6, 2:6].eq(11).all() and five.eq(11).sum() == 5 * 4  # 5 rows x 4 columns (clipped at w=6)


def test_weight_zero_landmark_with_nan_prediction_is_free():
    torch.manual_seed(0)
    target = torch.rand(2, 3, 8, 8) ** 4
    pred = torch.rand(2, 3, 8, 8)
    weights = torch.tensor([[1.0, 0.0, 0.5], [1.0, 1.0, 0.0]])
    bad = pred.clone()
    bad[0, 1] = float("nan")
    bad[1, 2, 0, 0] = float("inf")
    bad.requires_grad_(True)
    loss_fn = AdaptiveWingLoss()
    loss = loss_fn(bad, target, weights)
    assert torch.isfinite(loss)
    # the same as the kept landmarks alone, each weighted, over all B*K*h*w = 2*3*64 elements
    kept = [(0, 0, 1.0), (0, 2, 0.5), (1, 0, 1.0), (1, 1, 1.0)]
    total = sum(w * (loss_fn.elementwise(pred[b, k], target[b, k]) * loss_fn.weight_map(target[b:b + 1, k:k + 1])[0, 0]).sum()
                for b, k, w in kept)
    assert loss.item() == pytest.approx(total.item() / (2 * 3 * 64), rel=1e-6)
    loss.backward()
    assert torch.isfinite(bad.grad).all()
    assert bad.grad[0, 1].eq(0).all() and bad.grad[1, 2].eq(0).all()


def test_gradient_is_finite_everywhere_including_zero_error():
    target = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    target[0, 0, 2, 2] = 1.0
    target[0, 1] = torch.linspace(0, 1, 25, dtype=torch.float64).reshape(5, 5)
    pred = target.clone()
    pred[0, 0, 0, 0] = 0.7  # over-prediction, linear branch
    pred[0, 1, 4, 4] = 0.8  # under-prediction of the 1.0 corner, log branch
    pred.requires_grad_(True)
    for alpha in (2.1, 1.5):  # 1.5: exponent alpha - y < 1 near the peaks, an infinite slope at zero error
        pred.grad = None
        loss = AdaptiveWingLoss(alpha=alpha)(pred, target, torch.ones(1, 2, dtype=torch.float64))
        loss.backward()
        assert torch.isfinite(pred.grad).all()
        exact = pred.detach() == target
        assert pred.grad[exact].eq(0).all()   # zero error: gradient 0
        # elsewhere the gradient pushes the prediction towards the target
        assert torch.equal(pred.grad[~exact].sign(), (pred - target).detach()[~exact].sign())
    # float32 inputs too
    p32 = target.float().clone().requires_grad_(True)
    AdaptiveWingLoss()(p32, target.float(), torch.ones(1, 2)).backward()
    assert torch.isfinite(p32.grad).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [({"alpha": 1.0}, "alpha"), ({"omega": 0}, "omega"), ({"epsilon": -1.0}, "epsilon"), ({"theta": 0.0}, "theta"),
     ({"map_weight": -1.0}, "map_weight"), ({"dilation": 2}, "dilation"), ({"dilation": 0}, "dilation"),
     ({"theta": float("nan")}, "theta"), ({"use_weighted_map": "yes"}, "use_weighted_map")],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=rf"task\.loss\.{name}"):
        AdaptiveWingLoss(**kwargs)


def test_bad_shapes_are_refused():
    loss = AdaptiveWingLoss()
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 3), torch.ones(1, 2))
    with pytest.raises(ValueError, match=r"weights must be \[B, K\]"):
        loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.ones(2))


FEATURES = [{"num_chs": 8, "reduction": 4}]
META = {"num_keypoints": 2, "keypoint_names": ["l", "r"], "flip_pairs": [[0, 1]], "sigmas": [0.1, 0.1]}


@pytest.mark.parametrize("task", ["landmarks", "pose"])
def test_config_chooses_the_loss(compose_cfg, task):
    default = compose_cfg([f"task={task}"])
    assert default.task.loss._target_ == "hrexp.losses.heatmap_mse.WeightedHeatmapMSE"
    assert type(instantiate(default.task, feature_info=FEATURES, dataset_meta=META).loss_fn) is WeightedHeatmapMSE

    cfg = compose_cfg([f"task={task}", "task/loss=adaptive_wing", "task.loss.theta=0.4", "task.loss.dilation=5"])
    built = instantiate(cfg.task, feature_info=FEATURES, dataset_meta=META)
    assert isinstance(built.loss_fn, AdaptiveWingLoss)
    assert built.loss_fn.theta == 0.4 and built.loss_fn.dilation == 5 and built.loss_fn.alpha == 2.1
    # the task's loss() runs through it
    batch = {"image": torch.zeros(1, 3, 64, 64),  # the targets' grid: the input over the stride, 16 x 16
             "keypoints": torch.tensor([[[10.0, 12.0], [20.0, 30.0]]]), "visible": torch.tensor([[1.0, 0.0]])}
    out = torch.zeros(1, 2, 16, 16)
    out[0, 1] = float("nan")  # the invisible landmark's prediction is free
    assert torch.isfinite(built.loss(out, batch)) and built.loss(out, batch) > 0


def test_a_loss_set_with_a_dot_is_refused_by_name(compose_cfg):
    """`task.loss=adaptive_wing` replaces the loss with a string; the task says how to choose the group."""
    from hrexp.training.build import build_datamodule, build_module
    from tests.fit_helpers import TINY_W18

    cfg = compose_cfg([*TINY_W18, "task.loss=adaptive_wing"])
    with pytest.raises(ValueError, match=r"task.loss='adaptive_wing': expected a loss module; choose one with task/loss="):
        build_module(cfg, build_datamodule(cfg.data))
