"""The refinement gate (hrexp.refine.gate): thresholds fitted by hand-checkable cases, never worse than either
stage on the data it was fitted on, stored in the checkpoint, and applied by the coarse-to-fine task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hrexp.refine.gate import RefinementGate, fit_gate
from tests.test_coarse_to_fine import built


def _points(xs, ys=None):
    ys = [0.0] * len(xs) if ys is None else ys
    return torch.tensor([[x, y] for x, y in zip(xs, ys)], dtype=torch.float64)


def test_the_thresholds_fitted_on_hand_made_cases():
    """Truth at the origin, 4 samples, 5 landmarks (each case worked out by hand in the comments)."""
    n = 4
    truth = torch.zeros(n, 5, 2, dtype=torch.float64)
    coarse = torch.zeros(n, 5, 2, dtype=torch.float64)
    refined = torch.zeros(n, 5, 2, dtype=torch.float64)
    scores = torch.zeros(n, 5, dtype=torch.float64)
    visible = torch.ones(n, 5, dtype=torch.bool)
    # 0: stage 2 always better (error 1 against 10, moved 9): kept everywhere; max_move 9, min_score 0.5
    coarse[:, 0], refined[:, 0], scores[:, 0] = _points([10] * 4), _points([1] * 4), torch.tensor([.5, .6, .7, .8])
    # 1: stage 2 always worse (5 against 1): never used
    coarse[:, 1], refined[:, 1], scores[:, 1] = _points([1] * 4), _points([5] * 4), 0.9
    # 2: good where it moved little. Moves 10, 8, 30, ~31.6 with errors 0, 2, 40, ~31.6 against 10 each:
    # max_move 8 sums 2 + 30 = 32, max_move 10 sums 0 + 2 + 20 = 22 (the best), every move 73.6; stage 1 40
    coarse[:, 2] = _points([10] * 4)
    refined[:, 2] = _points([0, 2, 40, 10], [0, 0, 0, 30])
    scores[:, 2] = 0.9
    # 3: good where confident. Every point moved 5; at scores .9 and .8 stage 2 hits the truth where stage 1 was 5
    # off, at .2 and .1 it is 20 off where stage 1 was 15: min_score 0.8 sums 0 + 0 + 15 + 15 = 30, stage 1 40,
    # every refined point 40
    coarse[:, 3] = _points([5, 5, 0, 0], [0, 0, 15, 15])
    refined[:, 3] = _points([0, 0, 0, 0], [0, 0, 20, 20])
    scores[:, 3] = torch.tensor([0.9, 0.8, 0.2, 0.1])
    # 4: never annotated: stage 1 stays
    visible[:, 4] = False
    use, max_move, min_score = fit_gate(coarse, refined, scores, truth, visible)
    assert use.tolist() == [True, False, True, True, False]
    assert max_move[0] == 9 and min_score[0] == pytest.approx(0.5)
    assert max_move[2] == 10 and min_score[2] == pytest.approx(0.9)
    assert max_move[3] == 5 and min_score[3] == pytest.approx(0.8)
    gate = RefinementGate(5)
    gate.set(use, max_move, min_score)
    points, accepted = gate(coarse, refined, scores)
    assert accepted[:, 2].tolist() == [True, True, False, False]
    assert accepted[:, 3].tolist() == [True, True, False, False]
    assert not accepted[:, 1].any() and accepted[:, 0].all() and not accepted[:, 4].any()
    error = (points - truth).norm(dim=-1)
    assert error[:, 2].sum() == pytest.approx(22) and error[:, 3].sum() == pytest.approx(30)


def test_the_gated_error_is_never_above_either_stage_on_the_fitting_data():
    generator = torch.Generator().manual_seed(0)
    for trial in range(30):
        n, k = int(torch.randint(1, 40, (1,), generator=generator)), 4
        truth = torch.rand(n, k, 2, generator=generator, dtype=torch.float64) * 100
        coarse = truth + torch.randn(n, k, 2, generator=generator, dtype=torch.float64) * 10
        refined = truth + torch.randn(n, k, 2, generator=generator, dtype=torch.float64) * 10 * (trial % 3)
        scores = torch.rand(n, k, generator=generator, dtype=torch.float64)
        visible = torch.rand(n, k, generator=generator) > 0.2
        gate = RefinementGate(k)
        gate.set(*fit_gate(coarse, refined, scores, truth, visible))
        gated, _ = gate(coarse, refined, scores)
        for name, other in (("coarse", coarse), ("refined", refined)):
            per_landmark = [((gated - truth).norm(dim=-1)[visible[:, j], j].sum(),
                             (other - truth).norm(dim=-1)[visible[:, j], j].sum()) for j in range(k)]
            assert all(g <= o + 1e-6 for g, o in per_landmark), (trial, name, per_landmark)


def test_an_unfitted_gate_passes_every_refined_point_and_old_checkpoints_load_unfitted():
    gate = RefinementGate(3)
    coarse, refined = torch.zeros(2, 3, 2), torch.ones(2, 3, 2) * 50
    points, accepted = gate(coarse, refined, torch.zeros(2, 3))
    assert accepted.all() and torch.equal(points, refined)  # as refinement behaved before gates existed
    parent = torch.nn.Module()
    parent.gate = RefinementGate(3)
    parent.load_state_dict({}, strict=True)  # a checkpoint written before the gate: nothing missing
    assert not bool(parent.gate.fitted)
    fitted = RefinementGate(3)
    fitted.set(torch.tensor([True, False, True]), torch.tensor([1.0, 2.0, math.inf]), torch.tensor([0.1, 0.2, 0.3]))
    parent.load_state_dict({f"gate.{k}": v for k, v in fitted.state_dict().items()})
    assert bool(parent.gate.fitted) and parent.gate.use.tolist() == [True, False, True]
    assert parent.gate.summary()["max_move_px"] == [1.0, 2.0, None]


def perfect_stage1(task, batch, truth=None):
    """Stage 1's outputs for a batch: the heatmaps of the truth (so its points are within rounding of it), or
    of ``truth`` where given (original px)."""
    truth = batch["keypoints_orig"].float() if truth is None else truth
    b, k, _ = truth.shape
    matrix = batch["matrix"].float()
    points = torch.einsum("bij,bkj->bki", matrix[:, :2, :2], truth) + matrix[:, None, :2, 2]
    h, w = (s // 4 for s in batch["image"].shape[-2:])
    return task.codec.encode(points, torch.ones(b, k), heatmap_size=(h, w), stride=4.0)[0]


def test_the_task_refits_the_gate_each_validation_and_never_scores_worse_than_stage_one(compose_cfg, monkeypatch):
    """Stage 1 on the truth, and a refiner that sends even landmarks to a patch corner (~15 px off) and leaves
    odd ones where stage 1 put them: validation refits the gate, which turns the even landmarks off, so val/mre
    is at most stage 1's and far under stage 2's; the gate is in the state dict (so in every checkpoint) and
    the test split applies it."""
    _, datamodule, module = built(compose_cfg)
    task = module.task.eval()
    assert not bool(task.gate.fitted)

    def corner_or_centre(patches, landmark):
        maps = torch.zeros(len(patches), 1, 8, 8)
        maps[:, 0, 3:5, 3:5] = 1.0  # the centre: stage 1's own point
        even = landmark % 2 == 0
        maps[even] = 0.0
        maps[even, 0, 0, 0] = 1.0  # the corner: ~15 px away
        return maps

    monkeypatch.setattr(task.refiner, "forward", corner_or_centre)
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            task.update_metrics("val", task.predict(perfect_stage1(task, batch), batch), batch)
    values = {k: float(v) for k, v in task.compute_metrics("val").items()}
    assert bool(task.gate.fitted)
    assert not task.gate.use[0::2].any()  # the far-off refinements are turned off
    assert values["val/mre"] <= values["val/mre_coarse"] + 1e-6
    assert values["val/mre"] < values["val/mre_refined"] - 5
    assert 0.0 <= values["val/refined_used"] <= 0.5
    assert task.metric_mode("val/mre_coarse") == "min" and task.metric_mode("val/sdr_4_refined") == "max"
    assert torch.equal(module.state_dict()["task.gate.use"], task.gate.use)
    # the test split applies the stored gate: its points are stage 1's where the gate says so
    batch = next(iter(datamodule.test_dataloader()))
    with torch.no_grad():
        preds = task.predict(perfect_stage1(task, batch), batch)
    off = ~task.gate.use
    assert torch.equal(preds["keypoints"][:, off], preds["keypoints_coarse"][:, off])
    assert not preds["refined_used"][:, off].any()
    np.testing.assert_array_equal(preds["refined_used"].numpy()[:, 0::2], False)


def test_gate_data_keeps_its_shapes_for_a_single_sample_and_landmark():
    """torchmetrics squeezes one-element results: one image with one landmark must still fit the gate."""
    from hrexp.refine.gate import GateData

    data = GateData()
    data.update(torch.zeros(1, 1, 2), torch.ones(1, 1, 2), torch.ones(1, 1), torch.zeros(1, 1, 2),
                torch.ones(1, 1, dtype=torch.bool), torch.tensor([0.1]))
    shaped = GateData.shaped(data.compute(), 1)
    assert shaped["scores"].shape == (1, 1) and shaped["spacing"].shape == (1,) and shaped["coarse"].shape == (1, 1, 2)
    use, _, _ = fit_gate(shaped["coarse"], shaped["refined"], shaped["scores"], shaped["truth"], shaped["visible"])
    assert use.tolist() == [False]  # stage 2 moved it 1.4 px off the truth stage 1 had


def test_validation_keeps_stage_ones_errors_and_empirical_offsets_draw_each_landmarks_own(compose_cfg):
    """offsets=empirical: after a validation the task holds stage 1's errors (point - truth) of every validation
    landmark, and training offsets are drawn from the landmark's own errors (plus a quarter of the jitter as
    noise); before any validation, and with offsets=normal, they are normal with sigma jitter_px."""
    from hrexp.tasks.coarse_to_fine import EMPIRICAL_NOISE

    _, datamodule, module = built(compose_cfg, ["task.refine.offsets=empirical"])
    task = module.task
    shift = torch.tensor([6.0, -4.0])
    task.eval()
    errors = []
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            truth = batch["keypoints_orig"].float()
            preds = task.predict(perfect_stage1(task, batch, truth + shift), batch)
            errors.append(preds["keypoints_coarse"] - truth)
            task.update_metrics("val", preds, batch)
    task.compute_metrics("val")
    errors = torch.cat(errors)
    assert task.residuals.shape == errors.shape and bool(task.residual_seen.all())
    torch.testing.assert_close(task.residuals, errors)

    # hand-made residuals: landmark 0 was seen once, at (5, -3); landmark 1 never; the others at (0, 9) or (0, -9)
    k = task.num_keypoints
    residuals = torch.zeros(3, k, 2)
    residuals[:, 2:] = torch.tensor([[0.0, 9.0], [0.0, -9.0], [0.0, 9.0]])[:, None]
    residuals[1, 0] = torch.tensor([5.0, -3.0])
    seen = torch.ones(3, k, dtype=torch.bool)
    seen[:, :2] = False
    seen[1, 0] = True
    task.residuals, task.residual_seen = residuals, seen
    task.jitter_px = 1.0
    task.train()
    torch.manual_seed(0)
    offsets = task._offsets(torch.zeros(4000, k, 2), None)
    noise = EMPIRICAL_NOISE * task.jitter_px
    np.testing.assert_allclose(offsets[:, 0].mean(0).numpy(), [5.0, -3.0], atol=0.05)
    assert float(offsets[:, 0].std(0).max()) == pytest.approx(noise, rel=0.1)
    assert float(offsets[:, 1].std(0).mean()) == pytest.approx(task.jitter_px, rel=0.1)  # never seen: normal
    ys = offsets[:, 2:, 1]
    assert set(torch.round(ys).unique().tolist()) <= {-10.0, -9.0, -8.0, 8.0, 9.0, 10.0}  # only its own errors
    assert float((ys > 0).float().mean()) == pytest.approx(2 / 3, abs=0.03)
    task.offsets = "normal"
    assert float(task._offsets(torch.zeros(4000, k, 2), None)[:, 0].std()) == pytest.approx(1.0, rel=0.1)
