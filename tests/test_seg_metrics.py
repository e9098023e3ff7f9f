"""SegmentationMetrics (mIoU, Dice, pixel accuracy) against independent NumPy computations and hand values,
on one process and on two DDP ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hrexp.metrics.segmentation import SegmentationMetrics
from tests.ddp_helpers import run_on_two_ranks

IGNORE = 255


# --- NumPy references ------------------------------------------------------------------------------


def np_confmat(preds: np.ndarray, target: np.ndarray, c: int) -> np.ndarray:
    valid = target != IGNORE
    t, p = target[valid].astype(np.int64), preds[valid].astype(np.int64)
    return np.bincount(c * t + p, minlength=c * c).reshape(c, c)


def np_scores(cm: np.ndarray) -> dict[str, np.ndarray | float]:
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (2 * tp + fp + fn)
        acc = tp.sum() / cm.sum()
    fg = dice[1:] if len(dice) > 1 else dice
    return {"iou": iou, "dice_c": dice, "mIoU": np.nanmean(iou), "dice": np.nanmean(fg), "pixel_acc": acc}


def random_seg(seed: int, n: int, c: int, h: int = 6, w: int = 7, p_ignore: float = 0.15):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, c, size=(n, h, w))
    target[rng.uniform(size=target.shape) < p_ignore] = IGNORE
    # Predictions right ~60 % of the time, so the scores are far from 0 and 1.
    preds = np.where(rng.uniform(size=target.shape) < 0.6, target % IGNORE, rng.integers(0, c, size=target.shape))
    preds[target == IGNORE] = rng.integers(0, c, size=int((target == IGNORE).sum()))
    return torch.from_numpy(preds), torch.from_numpy(target)


def to_floats(out: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: float(value) for key, value in out.items()}


# --- metric -----------------------------------------------------------------------------------------


def test_metric_matches_numpy_confusion_matrix_over_several_updates():
    c = 4
    preds, target = random_seg(0, n=9, c=c)
    metric = SegmentationMetrics(c, class_names=["bg", "a", "b", "c"])
    for lo, hi in ((0, 3), (3, 4), (4, 9)):
        metric.update(preds[lo:hi], target[lo:hi], torch.arange(lo, hi))
    out = to_floats(metric.compute())
    ref = np_scores(np_confmat(preds.numpy(), target.numpy(), c))
    assert set(out) == {"mIoU", "dice", "pixel_acc", "iou_bg", "iou_a", "iou_b", "iou_c"}
    for key in ("mIoU", "dice", "pixel_acc"):
        assert out[key] == pytest.approx(ref[key], rel=1e-12), key
    for name, value in zip(["bg", "a", "b", "c"], ref["iou"]):
        assert out[f"iou_{name}"] == pytest.approx(value, rel=1e-12)
    assert 0.2 < out["mIoU"] < 0.9  # not a trivial case
    per = metric.per_class()
    np.testing.assert_allclose(per["iou"].numpy(), ref["iou"], rtol=1e-12)
    np.testing.assert_allclose(per["dice"].numpy(), ref["dice_c"], rtol=1e-12)
    np.testing.assert_array_equal(metric.confusion_matrix().numpy(), np_confmat(preds.numpy(), target.numpy(), c))


def test_metric_hand_case():
    # Sample 0: target [[0, 0], [1, 1]], preds [[0, 1], [1, 1]]; sample 1 fully ignored but a
    # prediction of class 0 there must not count.
    preds = torch.tensor([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
    target = torch.tensor([[[0, 0], [1, 1]], [[IGNORE] * 2] * 2])
    metric = SegmentationMetrics(2, class_names=["background", "polyp"])
    metric.update(preds, target, torch.tensor([0, 1]))
    out = to_floats(metric.compute())
    # Confusion [[1, 1], [0, 2]]: IoU_0 = 1 / 2, IoU_1 = 2 / 3, Dice_1 = 4 / 5, accuracy 3 / 4.
    assert out == pytest.approx(
        {"mIoU": (1 / 2 + 2 / 3) / 2, "dice": 4 / 5, "pixel_acc": 3 / 4, "iou_background": 1 / 2, "iou_polyp": 2 / 3}
    )
    assert metric.per_class()["dice"].tolist() == pytest.approx([2 / 3, 4 / 5])


def test_duplicate_index_is_counted_once():
    preds, target = random_seg(1, n=5, c=3)
    once = SegmentationMetrics(3)
    once.update(preds, target, torch.arange(5))
    twice = SegmentationMetrics(3)
    twice.update(preds, target, torch.arange(5))
    twice.update(preds[[0, 3]], target[[0, 3]], torch.tensor([0, 3]))  # as a padded sampler does
    assert to_floats(twice.compute()) == to_floats(once.compute())
    # The same samples under NEW indices are new samples and change the numbers.
    other = SegmentationMetrics(3)
    other.update(preds, target, torch.arange(5))
    other.update(preds[[0, 3]], target[[0, 3]], torch.tensor([10, 13]))
    assert to_floats(other.compute()) != to_floats(once.compute())
    # The first copy is the one kept.
    first = SegmentationMetrics(3)
    first.update(preds[:1], target[:1], torch.tensor([0]))
    first.update(preds[1:2], target[1:2], torch.tensor([0]))
    ref = np_scores(np_confmat(preds[:1].numpy(), target[:1].numpy(), 3))
    assert float(first.compute()["pixel_acc"]) == pytest.approx(ref["pixel_acc"], rel=1e-12)


def test_absent_class_is_left_out_of_the_means():
    preds, target = random_seg(2, n=4, c=2)
    metric = SegmentationMetrics(3, class_names=["bg", "fg", "never"])  # class 2 nowhere
    metric.update(preds, target, torch.arange(4))
    out = to_floats(metric.compute())
    ref = np_scores(np_confmat(preds.numpy(), target.numpy(), 2))
    assert math.isnan(out["iou_never"])
    assert out["mIoU"] == pytest.approx(ref["mIoU"], rel=1e-12)  # the mean over the 2 real classes
    assert out["dice"] == pytest.approx(ref["dice"], rel=1e-12)
    # A class predicted but absent from the targets is defined (IoU 0) and does count.
    wrong = preds.clone()
    b, y, x = map(int, (target != IGNORE).nonzero()[0])
    wrong[b, y, x] = 2
    metric = SegmentationMetrics(3)
    metric.update(wrong, target, torch.arange(4))
    out = to_floats(metric.compute())
    ref = np_scores(np_confmat(wrong.numpy(), target.numpy(), 3))
    assert out["iou_2"] == 0.0
    assert out["mIoU"] == pytest.approx(ref["mIoU"], rel=1e-12)
    assert out["mIoU"] < to_floats(SegmentationMetrics(3).forward(preds, target, torch.arange(4)))["mIoU"]


def test_single_class_dice_and_empty_and_reset():
    metric = SegmentationMetrics(1)
    metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 0], [0, IGNORE]]]), torch.tensor([0]))
    assert to_floats(metric.compute()) == {"mIoU": 1.0, "dice": 1.0, "pixel_acc": 1.0, "iou_0": 1.0}
    metric.reset()
    with pytest.warns(UserWarning, match="compute"):
        out = to_floats(metric.compute())
    assert set(out) == {"mIoU", "dice", "pixel_acc", "iou_0"} and all(math.isnan(v) for v in out.values())
    assert all(torch.isnan(v).all() for v in SegmentationMetrics(2).per_class().values())


def test_metric_errors():
    metric = SegmentationMetrics(3)
    with pytest.raises(ValueError, match=r"preds \(2, 4, 4\) and target \(2, 4, 5\)"):
        metric.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long), torch.arange(2))
    bad = torch.zeros(1, 2, 2, dtype=torch.long)
    bad[0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"target values \[3\]"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), bad, torch.arange(1))
    with pytest.raises(ValueError, match=r"target values \[-1\]"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), bad * 0 - 1, torch.arange(1))
    with pytest.raises(ValueError, match=r"preds values \[3\]"):
        metric.update(bad, torch.zeros(1, 2, 2, dtype=torch.long), torch.arange(1))
    with pytest.raises(ValueError, match=r"index must be \[B\]"):
        metric.update(bad * 0, bad * 0, torch.arange(2))
    with pytest.raises(ValueError, match="class_names"):
        SegmentationMetrics(3, class_names=["a", "b"])
    with pytest.raises(ValueError, match="ignore_index"):
        SegmentationMetrics(3, ignore_index=1)
    # A prediction outside the classes where the target is ignored does not matter.
    metric.update(torch.full((1, 2, 2), IGNORE), torch.full((1, 2, 2), IGNORE), torch.arange(1))


def _ddp_worker(rank: int, world_size: int, preds, target) -> dict:
    sampler = torch.utils.data.DistributedSampler(range(len(preds)), num_replicas=world_size, rank=rank, shuffle=False)
    rows = list(sampler)
    metric = SegmentationMetrics(3)
    for part in (rows[:2], rows[2:]):
        metric.update(preds[part], target[part], torch.tensor(part))
    out = to_floats(metric.compute())
    per = {key: value.tolist() for key, value in metric.per_class().items()}
    return {"rows": rows, "metrics": out, "per": per}


def test_ddp_two_processes_equal_single_process(tmp_path):
    preds, target = random_seg(5, n=7, c=3)  # 7 samples on 2 ranks: 4 each, one padded in twice
    ranks = run_on_two_ranks(_ddp_worker, (preds, target), tmp_path)
    all_rows = ranks[0]["rows"] + ranks[1]["rows"]
    assert len(all_rows) == 8 and len(set(all_rows)) == 7  # the padding really duplicated a sample
    single = SegmentationMetrics(3)
    single.update(preds, target, torch.arange(7))
    expected = to_floats(single.compute())
    ref = np_scores(np_confmat(preds.numpy(), target.numpy(), 3))
    assert expected["mIoU"] == pytest.approx(ref["mIoU"], rel=1e-12)
    for r in ranks:
        assert r["metrics"] == expected
        np.testing.assert_allclose(r["per"]["iou"], ref["iou"], rtol=1e-12)
        np.testing.assert_allclose(r["per"]["dice"], ref["dice_c"], rtol=1e-12)
