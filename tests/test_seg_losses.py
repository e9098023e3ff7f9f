"""SegmentationLoss (cross-entropy, OHEM, Dice) against independent NumPy computations and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hrexp.losses.segmentation import SegmentationLoss

IGNORE = 255


# --- NumPy references ------------------------------------------------------------------------------


def np_log_softmax(logits: np.ndarray) -> np.ndarray:
    """``[B, C, H, W]`` -> log-probabilities along C."""
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_pixel_ce(logits: np.ndarray, target: np.ndarray, weights=None):
    """Per valid pixel: (weighted CE, weight, probability of the true class), in scan order."""
    logp = np_log_softmax(logits.astype(np.float64))
    losses, ws, probs = [], [], []
    b, _, h, w = logits.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                t = int(target[i, y, x])
                if t == IGNORE:
                    continue
                wt = 1.0 if weights is None else float(weights[t])
                losses.append(-wt * logp[i, t, y, x])
                ws.append(wt)
                probs.append(math.exp(logp[i, t, y, x]))
    return np.array(losses), np.array(ws), np.array(probs)


# --- loss: cross-entropy ----------------------------------------------------------------------------


def loss_data(seed: int = 0, b: int = 2, c: int = 4, h: int = 5, w: int = 6):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, size=(b, c, h, w))
    target = rng.integers(0, c, size=(b, h, w))
    target[rng.uniform(size=target.shape) < 0.2] = IGNORE
    return logits, target


def test_ce_matches_hand_and_torch_cross_entropy_with_ignore_and_class_weights():
    logits, target = loss_data()
    lt, tt = torch.from_numpy(logits), torch.from_numpy(target)
    weights = [0.5, 2.0, 1.0, 3.0]
    for cw in (None, weights):
        losses, ws, _ = np_pixel_ce(logits, target, cw)
        expected = losses.sum() / ws.sum()
        out = SegmentationLoss("ce", class_weights=cw)(lt, tt)
        assert out.dim() == 0 and out.dtype == torch.float64
        assert out.item() == pytest.approx(expected, rel=1e-12)
        ref = F.cross_entropy(lt, tt, weight=None if cw is None else torch.tensor(cw, dtype=torch.float64),
                              ignore_index=IGNORE)
        assert out.item() == pytest.approx(ref.item(), rel=1e-12)
        # float32 logits: float32 result, same value to float32 precision.
        out32 = SegmentationLoss("ce", class_weights=cw)(lt.float(), tt)
        assert out32.dtype == torch.float32 and out32.item() == pytest.approx(expected, rel=1e-5)


def test_ce_without_valid_pixels_is_zero_with_a_graph():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.full((1, 2, 2), IGNORE)
    for ce in ("ce", "ohem"):
        out = SegmentationLoss(ce, dice_weight=1.0)(logits, target)
        out.backward()
        assert out.item() == 0.0 and torch.all(logits.grad == 0)
        logits.grad = None


def test_half_precision_logits_are_computed_in_float32():
    logits, target = loss_data(1)
    expected = SegmentationLoss("ohem", dice_weight=0.3, ohem_min_kept=5)(
        torch.from_numpy(logits).half().float(), torch.from_numpy(target)
    )
    for dtype in (torch.float16, torch.bfloat16):
        lt = torch.from_numpy(logits).to(dtype)
        out = SegmentationLoss("ohem", dice_weight=0.3, ohem_min_kept=5)(lt, torch.from_numpy(target))
        assert out.dtype == torch.float32
        if dtype == torch.float16:  # same inputs after the cast: same float32 computation
            assert out.item() == pytest.approx(expected.item(), rel=1e-6)


# --- loss: OHEM -------------------------------------------------------------------------------------


def test_ohem_keeping_every_valid_pixel_is_plain_mean_ce():
    logits, target = loss_data(2)
    lt, tt = torch.from_numpy(logits), torch.from_numpy(target)
    n_valid = int((target != IGNORE).sum())
    losses, _, _ = np_pixel_ce(logits, target)
    for min_kept in (n_valid, n_valid + 1, 10**6):
        # threshold 0: nothing is "hard" by probability, min_kept alone keeps them all.
        out = SegmentationLoss("ohem", ohem_threshold=0.0, ohem_min_kept=min_kept)(lt, tt)
        assert out.item() == pytest.approx(losses.mean(), rel=1e-12)
    # threshold above every probability: everything kept too, whatever min_kept.
    out = SegmentationLoss("ohem", ohem_threshold=1.01, ohem_min_kept=0)(lt, tt)
    assert out.item() == pytest.approx(losses.mean(), rel=1e-12)
    # With class weights: the plain mean of the weighted losses (HRNet's OhemCrossEntropy).
    cw = [0.5, 2.0, 1.0, 3.0]
    wlosses, _, _ = np_pixel_ce(logits, target, cw)
    out = SegmentationLoss("ohem", class_weights=cw, ohem_threshold=0.0, ohem_min_kept=10**6)(lt, tt)
    assert out.item() == pytest.approx(wlosses.mean(), rel=1e-12)


def two_class_logits(probs_of_class1) -> torch.Tensor:
    """``[1, 2, 1, N]`` logits whose softmax gives class 1 exactly the given probabilities."""
    p = torch.tensor(probs_of_class1, dtype=torch.float64)
    return torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))])[None, :, None, :]


def test_ohem_hand_case_keeps_exactly_the_hard_pixels():
    # Four valid pixels of class 1 with true-class probabilities 0.8, 0.2, 0.95, 0.5 (scrambled),
    # plus an ignored pixel that would be the hardest of all.
    probs = [0.8, 0.2, 0.95, 0.5, 0.01]
    logits = two_class_logits(probs)
    target = torch.tensor([[[1, 1, 1, 1, IGNORE]]])

    def ohem(threshold, min_kept):
        return SegmentationLoss("ohem", ohem_threshold=threshold, ohem_min_kept=min_kept)(logits, target).item()

    nll = {p: -math.log(p) for p in probs}
    # threshold 0.7: 0.2 and 0.5 are hard; min_kept 1 adds nothing.
    assert ohem(0.7, 1) == pytest.approx((nll[0.2] + nll[0.5]) / 2, rel=1e-12)
    # min_kept 3 raises the bar to the 3rd hardest (0.8).
    assert ohem(0.7, 3) == pytest.approx((nll[0.2] + nll[0.5] + nll[0.8]) / 3, rel=1e-12)
    # threshold below every probability: exactly the min_kept hardest.
    assert ohem(0.1, 2) == pytest.approx((nll[0.2] + nll[0.5]) / 2, rel=1e-12)
    assert ohem(0.1, 1) == pytest.approx(nll[0.2], rel=1e-12)
    # threshold 0.9: all but the easiest (0.95).
    assert ohem(0.9, 0) == pytest.approx((nll[0.2] + nll[0.5] + nll[0.8]) / 3, rel=1e-12)
    # Nothing hard and min_kept 0: 0 with a graph, not NaN.
    zero = SegmentationLoss("ohem", ohem_threshold=0.1, ohem_min_kept=0)(logits.requires_grad_(), target)
    assert zero.item() == 0.0
    zero.backward()


def test_ohem_gradient_reaches_only_the_kept_pixels():
    logits = two_class_logits([0.8, 0.2, 0.95, 0.5, 0.01]).requires_grad_()
    target = torch.tensor([[[1, 1, 1, 1, IGNORE]]])
    SegmentationLoss("ohem", ohem_threshold=0.7, ohem_min_kept=1)(logits, target).backward()
    touched = (logits.grad[0].abs().sum(0)[0] > 0).tolist()
    assert touched == [False, True, False, True, False]


# --- loss: Dice -------------------------------------------------------------------------------------


def test_dice_of_a_confident_correct_prediction_is_zero():
    rng = np.random.default_rng(3)
    target = torch.from_numpy(rng.integers(0, 3, size=(2, 8, 8)))
    target[0, 0, :4] = IGNORE
    logits = 50.0 * F.one_hot(target % IGNORE, 3).permute(0, 3, 1, 2).double()
    # The ignored pixels are predicted wrong on purpose: they must not count.
    logits[0, :, 0, :4] = torch.tensor([0.0, 0.0, 50.0], dtype=torch.float64)[:, None]
    out = SegmentationLoss(None, dice_weight=1.0)(logits, target)
    assert out.item() == pytest.approx(0.0, abs=1e-12)
    # A wrong confident prediction is penalised.
    assert SegmentationLoss(None, dice_weight=1.0)(logits.roll(1, dims=1), target).item() > 0.5


def test_dice_hand_case_two_pixels():
    # Pixel 1: p = (0.7, 0.3), class 0; pixel 2: p = (0.4, 0.6), class 1; pixel 3 ignored.
    p = torch.tensor([[0.7, 0.4, 0.1], [0.3, 0.6, 0.9]], dtype=torch.float64)
    logits = torch.log(p)[None, :, None, :]  # [1, 2, 1, 3]
    target = torch.tensor([[[0, 1, IGNORE]]])
    # class 0: 2 * 0.7 + 1 over (0.7 + 0.4) + 1 + 1; class 1: 2 * 0.6 + 1 over (0.3 + 0.6) + 1 + 1.
    expected = 1 - (2.4 / 3.1 + 2.2 / 2.9) / 2
    out = SegmentationLoss(None, dice_weight=1.0)(logits, target)
    assert out.item() == pytest.approx(expected, rel=1e-12)
    # The dice weight scales the term.
    assert SegmentationLoss(None, dice_weight=0.25)(logits, target).item() == pytest.approx(0.25 * expected, rel=1e-12)


def test_combined_is_weighted_sum_of_terms_and_gradients_are_finite():
    logits, target = loss_data(4)
    lt, tt = torch.from_numpy(logits), torch.from_numpy(target)
    cw = [1.0, 2.0, 0.5, 1.0]
    for ce in ("ce", "ohem"):
        ce_only = SegmentationLoss(ce, class_weights=cw, ohem_min_kept=7)(lt, tt)
        dice_only = SegmentationLoss(None, dice_weight=1.0)(lt, tt)
        both = SegmentationLoss(ce, dice_weight=0.5, ce_weight=2.0, class_weights=cw, ohem_min_kept=7)
        x = lt.clone().requires_grad_()
        out = both(x, tt)
        assert out.item() == pytest.approx(2.0 * ce_only.item() + 0.5 * dice_only.item(), rel=1e-12)
        out.backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        # Ignored pixels get no gradient from any term.
        ignored = torch.from_numpy(target == IGNORE)[:, None].expand_as(x.grad)
        assert torch.all(x.grad[ignored] == 0)


def test_class_weights_move_with_the_module_and_are_not_saved():
    loss = SegmentationLoss(class_weights=[1.0, 2.0])
    assert "class_weights" not in loss.state_dict()
    loss = loss.to(torch.float64)
    assert loss.class_weights.tolist() == [1.0, 2.0]


def test_loss_errors():
    with pytest.raises(ValueError, match=r"ce must be one of \('ce', 'ohem', None\)"):
        SegmentationLoss("focal")
    with pytest.raises(ValueError, match=r"ce=None.*dice_weight=0"):
        SegmentationLoss(None)
    with pytest.raises(ValueError, match=r"ce='ce'.*dice_weight"):
        SegmentationLoss("ce", ce_weight=0.0)
    with pytest.raises(ValueError, match=">= 0"):
        SegmentationLoss("ce", dice_weight=-1.0)
    with pytest.raises(ValueError, match="ohem_min_kept"):
        SegmentationLoss("ohem", ohem_min_kept=-1)
    with pytest.raises(ValueError, match="class_weights"):
        SegmentationLoss(class_weights=[1.0, -1.0])
    loss = SegmentationLoss()
    with pytest.raises(ValueError, match=r"logits \(2, 3, 8, 8\) and target \(2, 4, 4\)"):
        loss(torch.randn(2, 3, 8, 8), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits \(2, 3, 8, 8\) and target \(2, 1, 8, 8\)"):
        loss(torch.randn(2, 3, 8, 8), torch.zeros(2, 1, 8, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="class_weights has 2 entries but the logits have 3 classes"):
        SegmentationLoss(class_weights=[1.0, 2.0])(torch.randn(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
