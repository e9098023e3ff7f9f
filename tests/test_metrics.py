"""LandmarkError against a NumPy hand computation, accumulation, reset and DDP-style merging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hrexp.metrics.landmark_error import LandmarkError

K = 5
RADII = (4, 8, 12, 16, 20, 24)


def _batches(seed: int = 0, n_batches: int = 4, b: int = 6):
    """Random batches with ~25 % invisible landmarks and ~half of the samples without spacing."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        target = rng.uniform(0, 500, size=(b, K, 2))
        pred = target + rng.normal(0, 12, size=(b, K, 2))
        visible = rng.uniform(size=(b, K)) > 0.25
        target[~visible] = 0.0  # missing landmarks are stored as 0
        spacing = np.where(rng.uniform(size=b) > 0.5, rng.uniform(0.1, 0.3, size=b), np.nan)
        out.append((pred, target, visible, spacing))
    return out


def _numpy_expected(batches):
    pred = np.concatenate([x[0] for x in batches])
    target = np.concatenate([x[1] for x in batches])
    vis = np.concatenate([x[2] for x in batches])
    spacing = np.concatenate([x[3] for x in batches])
    err = np.sqrt(((pred - target) ** 2).sum(-1))
    mm_mask = vis & np.isfinite(spacing)[:, None]
    err_mm = err * np.nan_to_num(spacing)[:, None]
    exp = {
        "mre": err[vis].mean(),
        "mre_mm": err_mm[mm_mask].mean() if mm_mask.any() else math.nan,
    }
    for r in RADII:
        exp[f"sdr_{r}"] = (err[vis] <= r).mean()
    lm = np.array([err[vis[:, k], k].mean() if vis[:, k].any() else np.nan for k in range(K)])
    lm_mm = np.array(
        [err_mm[mm_mask[:, k], k].mean() if mm_mask[:, k].any() else np.nan for k in range(K)]
    )
    return exp, lm, lm_mm


def _update(metric, batch):
    pred, target, vis, spacing = batch
    metric.update(
        torch.from_numpy(pred).float(),
        torch.from_numpy(target).float(),
        torch.from_numpy(vis).float(),
        torch.from_numpy(spacing).float(),
    )


def _check(metric, batches):
    exp, lm, lm_mm = _numpy_expected(batches)
    res = metric.compute()
    assert set(res) == {"mre", "mre_mm"} | {f"sdr_{r}" for r in RADII}
    for key, value in exp.items():
        assert res[key].item() == pytest.approx(value, rel=1e-5, nan_ok=True), key
    per = metric.per_landmark()
    np.testing.assert_allclose(per["mre"].numpy(), lm, rtol=1e-5)
    np.testing.assert_allclose(per["mre_mm"].numpy(), lm_mm, rtol=1e-5)


def test_matches_numpy_over_several_updates():
    batches = _batches()
    metric = LandmarkError(num_keypoints=K, radii=RADII)
    for batch in batches:
        _update(metric, batch)
    exp, _, _ = _numpy_expected(batches)
    # The data is not degenerate: SDRs are strictly between 0 and 1 somewhere, some mm exist.
    assert 0 < exp["sdr_12"] < 1 and math.isfinite(exp["mre_mm"])
    _check(metric, batches)


def test_invisible_targets_and_spacings_are_ignored_for_those_landmarks():
    batches = _batches(seed=1, n_batches=1, b=4)
    pred, target, vis, spacing = batches[0]
    vis[:, 2] = False  # landmark 2 never visible -> NaN per landmark
    target_garbage = target.copy()
    target_garbage[~vis] = 1e6
    metric = LandmarkError(num_keypoints=K, radii=RADII)
    _update(metric, (pred, target_garbage, vis, spacing))
    _check(metric, [(pred, target, vis, spacing)])
    assert math.isnan(metric.per_landmark()["mre"][2].item())


def test_mre_mm_is_nan_without_any_spacing():
    pred, target, vis, _ = _batches(seed=2, n_batches=1)[0]
    metric = LandmarkError(num_keypoints=K)
    _update(metric, (pred, target, vis, np.full(len(pred), np.nan)))
    res = metric.compute()
    assert math.isnan(res["mre_mm"].item()) and math.isfinite(res["mre"].item())
    assert torch.isnan(metric.per_landmark()["mre_mm"]).all()


def test_error_equal_to_radius_counts_as_success():
    metric = LandmarkError(num_keypoints=4, radii=(4, 5))
    target = torch.tensor([[[100.0, 200.0], [10.0, 10.0], [50.0, 60.0], [0.0, 0.0]]])
    offsets = torch.tensor([[[0.0, 4.0], [3.0, 4.0], [0.0, 4.001], [4.0, 0.0]]])  # 4, 5, 4.001, 4
    metric.update(target + offsets, target, torch.ones(1, 4), torch.tensor([0.5]))
    res = metric.compute()
    assert res["sdr_4"].item() == pytest.approx(2 / 4)  # 4 and 4 are <= 4; 5 and 4.001 are not
    assert res["sdr_5"].item() == pytest.approx(4 / 4)  # 5 <= 5 counts
    assert res["mre"].item() == pytest.approx((4 + 5 + 4.001 + 4) / 4, rel=1e-6)
    assert res["mre_mm"].item() == pytest.approx(0.5 * (4 + 5 + 4.001 + 4) / 4, rel=1e-6)


def test_reset_clears_all_state():
    batches = _batches(seed=3)
    metric = LandmarkError(num_keypoints=K, radii=RADII)
    for batch in batches[:2]:
        _update(metric, batch)
    metric.compute()
    metric.reset()
    assert metric.count.item() == 0 and metric.lm_count.sum().item() == 0
    for batch in batches[2:]:
        _update(metric, batch)
    _check(metric, batches[2:])


def test_states_sum_reduce_and_two_rank_merge_equals_single_metric():
    batches = _batches(seed=4, n_batches=6)
    single = LandmarkError(num_keypoints=K, radii=RADII)
    rank0 = LandmarkError(num_keypoints=K, radii=RADII)
    rank1 = LandmarkError(num_keypoints=K, radii=RADII)
    for i, batch in enumerate(batches):
        _update(single, batch)
        _update(rank0 if i % 2 == 0 else rank1, batch)

    # What DDP sync does: each state reduced with its dist_reduce_fx; all of them are sums.
    assert set(single._defaults) == {
        "err_sum", "count", "err_sum_mm", "count_mm", "hits",
        "lm_err_sum", "lm_count", "lm_err_sum_mm", "lm_count_mm",
    }  # fmt: skip
    summed = LandmarkError(num_keypoints=K, radii=RADII)
    for name in single._defaults:
        assert single._reductions[name] is not None, name
        stacked = torch.stack([getattr(rank0, name), getattr(rank1, name)])
        reduced = single._reductions[name](stacked)
        setattr(summed, name, reduced)
        torch.testing.assert_close(reduced, getattr(single, name))

    rank0.merge_state(rank1)
    for merged in (rank0, summed):
        merged._update_count = 1  # silence "compute before update" on the hand-built one
        a, b = merged.compute(), single.compute()
        for key in b:
            torch.testing.assert_close(a[key], b[key], equal_nan=True)
        for key, value in single.per_landmark().items():
            torch.testing.assert_close(merged.per_landmark()[key], value, equal_nan=True)
    _check(rank0, batches)


def test_compute_and_per_landmark_go_through_a_simulated_ddp_sync():
    """Rank 0's view when torchmetrics believes it runs distributed, with rank 1's states."""
    batches = _batches(seed=5, n_batches=4)
    rank1 = LandmarkError(num_keypoints=K, radii=RADII)
    for batch in batches[1::2]:
        _update(rank1, batch)
    holder = {}

    def gather(tensor, group=None):
        # The states are handed over as the attribute tensors themselves: find which one.
        (name,) = [n for n in rank1._defaults if getattr(holder["rank0"], n) is tensor]
        return [tensor, getattr(rank1, name)]

    rank0 = LandmarkError(
        num_keypoints=K, radii=RADII, dist_sync_fn=gather, distributed_available_fn=lambda: True
    )
    holder["rank0"] = rank0
    for batch in batches[0::2]:
        _update(rank0, batch)
    _check(rank0, batches)  # compute() and per_landmark() both see both ranks
    # Local accumulation is restored afterwards, and per_landmark() also works while synced.
    assert rank0.count.item() == sum(int(b[2].sum()) for b in batches[0::2])
    local = rank0.lm_count.clone()
    rank0.sync(dist_sync_fn=gather)
    per = rank0.per_landmark()
    _, lm, _ = _numpy_expected(batches)
    np.testing.assert_allclose(per["mre"].numpy(), lm, rtol=1e-5)
    rank0.unsync()
    assert torch.equal(rank0.lm_count, local)


def test_bad_shapes_raise():
    metric = LandmarkError(num_keypoints=3)
    with pytest.raises(ValueError):
        metric.update(torch.zeros(2, 4, 2), torch.zeros(2, 4, 2), torch.ones(2, 4), torch.ones(2))
    with pytest.raises(ValueError):
        metric.update(torch.zeros(2, 3, 2), torch.zeros(2, 3, 2), torch.ones(2, 3), torch.ones(3))
    assert LandmarkError.full_state_update is False and LandmarkError.higher_is_better is False
