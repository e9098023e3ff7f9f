"""Warmup + cosine schedule: lr per step against hand-computed values."""

import math

import pytest
import torch

from hrexp.training.schedules import constant, warmup_cosine


def _optimizer(lrs=(1e-3, 1e-4)):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def _lrs(opt, sched, steps):
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine_matches_hand_values():
    opt = _optimizer()
    sched = warmup_cosine(opt, total_steps=10, steps_per_epoch=2, warmup_epochs=1, min_lr=1e-6)
    lrs = _lrs(opt, sched, 10)
    # warmup of 2 steps: lr = base * (s + 1) / 2
    assert lrs[0][0] == pytest.approx(1e-3 * 0.5)
    assert lrs[1][0] == pytest.approx(1e-3)
    # cosine over the remaining 8 steps, from base at s=2 towards min_lr
    for s in range(2, 10):
        for base, got in zip((1e-3, 1e-4), lrs[s]):
            expected = 1e-6 + (base - 1e-6) * 0.5 * (1 + math.cos(math.pi * (s - 2) / 8))
            assert got == pytest.approx(expected, rel=1e-9)


def test_warmup_steps_override_epochs_and_end_at_min_lr():
    opt = _optimizer((2e-3,))
    sched = warmup_cosine(opt, total_steps=5, steps_per_epoch=100, warmup_epochs=5, warmup_steps=1, min_lr=1e-5)
    lrs = [lr[0] for lr in _lrs(opt, sched, 6)]
    assert lrs[0] == pytest.approx(2e-3)  # one warmup step reaches the peak
    assert lrs[5] == pytest.approx(1e-5)  # past the end the lr stays at min_lr


def test_constant_keeps_lr():
    opt = _optimizer((3e-4,))
    sched = constant(opt, total_steps=4, steps_per_epoch=2)
    assert [lr[0] for lr in _lrs(opt, sched, 4)] == [pytest.approx(3e-4)] * 4


def test_poly_matches_hand_values_with_and_without_warmup():
    from hrexp.training.schedules import poly

    opt = _optimizer()
    sched = poly(opt, total_steps=10, steps_per_epoch=5, power=0.9)
    lrs = _lrs(opt, sched, 10)
    for s in range(10):
        for g, base in enumerate((1e-3, 1e-4)):
            assert lrs[s][g] == pytest.approx(base * (1 - s / 10) ** 0.9)
    opt = _optimizer()
    sched = poly(opt, total_steps=10, steps_per_epoch=2, power=2.0, warmup_epochs=1, min_lr=1e-5)
    lrs = _lrs(opt, sched, 10)
    assert lrs[0][0] == pytest.approx(0.5e-3) and lrs[1][0] == pytest.approx(1e-3)
    # s = 5: 3 of 8 decay steps done
    assert lrs[5][0] == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 - 3 / 8) ** 2)
    with pytest.raises(ValueError, match="power"):
        poly(_optimizer(), total_steps=10, steps_per_epoch=2, power=0)


def test_step_decay_matches_hand_values_and_checks_milestones():
    from hrexp.training.schedules import step_decay

    opt = _optimizer()
    # 4 steps per epoch; warmup 2 steps; x0.1 at epoch 1 (step 4) and at epoch 2.5 (step 10)
    sched = step_decay(opt, total_steps=12, steps_per_epoch=4, milestones=[1, 2.5], gamma=0.1, warmup_steps=2)
    lrs = [lr[0] for lr in _lrs(opt, sched, 12)]
    expected = [0.5e-3, 1e-3, 1e-3, 1e-3] + [1e-4] * 6 + [1e-5] * 2
    assert lrs == [pytest.approx(e, rel=1e-9) for e in expected]
    for bad in ([2, 1], [0, 3], [1, 1]):
        with pytest.raises(ValueError, match="scheduler.milestones"):
            step_decay(_optimizer(), total_steps=12, steps_per_epoch=4, milestones=bad)
    with pytest.raises(ValueError, match="scheduler.gamma"):
        step_decay(_optimizer(), total_steps=12, steps_per_epoch=4, milestones=[1], gamma=0)


def test_a_group_with_a_start_step_gets_lr_zero_then_ramps_into_the_schedule():
    """start_step / ramp_steps on a group (a backbone frozen for the first epochs)."""
    opt = _optimizer()
    opt.param_groups[1].update(start_step=4, ramp_steps=2)
    sched = warmup_cosine(opt, total_steps=10, steps_per_epoch=2, warmup_steps=0, min_lr=0.0)
    lrs = _lrs(opt, sched, 10)
    for s in range(10):
        cosine = 0.5 * (1 + math.cos(math.pi * s / 10))
        ramp = 0.0 if s < 4 else min(1.0, (s - 3) / 2)
        assert lrs[s][0] == pytest.approx(1e-3 * cosine, rel=1e-9)
        assert lrs[s][1] == pytest.approx(1e-4 * cosine * ramp, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("name", ["warmup_cosine", "poly", "step_decay"])
def test_a_negative_warmup_is_refused(name):
    from hrexp.training import schedules

    extra = {"milestones": [1]} if name == "step_decay" else {}
    with pytest.raises(ValueError, match="warmup must be >= 0 steps, got -2"):
        getattr(schedules, name)(_optimizer(), total_steps=10, steps_per_epoch=2, warmup_steps=-2, **extra)


# --- a time-limited run: the schedule follows the BudgetClock (hrexp.callbacks.time_budget sets it) -------------

def _timed_lrs(opt, sched, clock, fractions):
    """The lr after each scheduler step, the clock set to ``fractions[i]`` before step i (as the callback does)."""
    out = []
    for fraction in fractions:
        clock.fraction = fraction
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def test_a_time_limited_cosine_decays_over_the_clock_by_hand():
    from hrexp.training.schedules import BudgetClock

    base, floor = 1e-3, 1e-5
    clock = BudgetClock(fraction=0.0)
    opt = _optimizer((base,))
    # the step count alone (10**6 steps) would barely decay: the clock decides
    sched = warmup_cosine(opt, total_steps=10**6, steps_per_epoch=100, warmup_steps=2, min_lr=floor, clock=clock)
    assert opt.param_groups[0]["lr"] == pytest.approx(base / 2)  # step 0: (0 + 1) / 2
    lrs = _timed_lrs(opt, sched, clock, [0.01, 0.02, 0.51, 0.755, 1.0, 1.0])
    assert lrs[0] == pytest.approx(base)  # step 1: (1 + 1) / 2, the warmup's last step
    # step 2 ends the warmup at fraction 0.02; the decay spreads over the remaining 0.98
    assert clock.warmup_end_step == 2 and clock.warmup_end_fraction == pytest.approx(0.02)
    assert lrs[1] == pytest.approx(base)
    assert lrs[2] == pytest.approx(floor + (base - floor) * 0.5)  # progress (0.51 - 0.02) / 0.98 = 0.5
    assert lrs[3] == pytest.approx(floor + (base - floor) * 0.5 * (1 + math.cos(math.pi * 0.75)))  # 0.735 / 0.98
    assert lrs[4] == pytest.approx(floor) and lrs[5] == pytest.approx(floor)


def test_time_ends_a_warmup_longer_than_a_quarter_of_the_budget():
    from hrexp.training.schedules import MAX_WARMUP_FRACTION, BudgetClock, poly

    assert MAX_WARMUP_FRACTION == 0.25
    base = 2e-3
    clock = BudgetClock(fraction=0.0)
    opt = _optimizer((base,))
    sched = poly(opt, total_steps=10**6, steps_per_epoch=100, power=1.0, warmup_steps=1000, clock=clock)
    lrs = _timed_lrs(opt, sched, clock, [0.1, 0.3, 0.65, 1.0])
    assert lrs[0] == pytest.approx(base * 0.1 / 0.25)  # time outpaces (1 + 1) / 1000
    assert lrs[1] == pytest.approx(base)  # fraction 0.3 >= 0.25 ends the warmup at step 2
    assert lrs[2] == pytest.approx(base * (1 - (0.65 - 0.3) / 0.7))  # linear decay over the remaining 0.7
    assert lrs[3] == pytest.approx(0.0)


def test_the_step_limit_still_ends_a_time_limited_run_that_runs_out_of_epochs_first():
    from hrexp.training.schedules import BudgetClock

    clock = BudgetClock(fraction=0.0)
    opt = _optimizer((1e-3,))
    sched = warmup_cosine(opt, total_steps=4, steps_per_epoch=2, warmup_steps=0, min_lr=1e-6, clock=clock)
    lrs = _timed_lrs(opt, sched, clock, [0.01, 0.02, 0.03, 0.04])
    assert lrs[1] == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 2 / 4)))  # steps: 2 of 4
    assert lrs[3] == pytest.approx(1e-6)


class _FakeTimer:
    """A Timer whose elapsed training time the test sets."""

    def __init__(self):
        self.elapsed = 0.0

    def time_elapsed(self) -> float:
        return self.elapsed


def _budget_at(elapsed: float, budget_s=40.0, reserve_s=4.0, step_s=0.5):
    from hrexp.callbacks.time_budget import TimeBudget

    budget = TimeBudget()
    budget.timer, budget.budget_s, budget.reserve_s, budget.step_s = _FakeTimer(), budget_s, reserve_s, step_s
    budget.timer.elapsed = elapsed
    return budget


def test_the_time_budget_reading_by_hand():
    # budget 40 s, reserve 4 s: A = 36 s for training, one step 0.5 s (no interval measured: step_s stays)
    fraction, stop = _budget_at(20.0).measure(epoch_ends=False)
    assert fraction == pytest.approx((20.0 + 0.5 + 0.5) / 36.0) and not stop
    # this batch ends the epoch: a validation (the reserve) comes before the next step
    fraction, stop = _budget_at(20.0).measure(epoch_ends=True)
    assert fraction == pytest.approx((20.0 + 0.5 + 4.0 + 0.5) / 36.0) and not stop
    # ... and near the end it would overrun: 33 + 0.5 + 4 > 36 + 0.5, so training stops now
    assert _budget_at(33.0).measure(epoch_ends=True) == (1.0, True)


def test_the_step_before_an_epoch_end_that_leaves_no_room_trains_at_the_clocks_end():
    # elapsed 32 s: the next step ends at 32.5 s and its validation (4 s) would pass A = 36 s, so the next
    # reading stops training: the next step is the last, and its lr is min_lr (fraction 1)
    fraction, stop = _budget_at(32.0).measure(epoch_ends=False, next_ends_epoch=True)
    assert fraction == 1.0 and not stop
    # the same moment mid-epoch: (32 + 0.5 + 0.5) / 36, training goes on
    fraction, _ = _budget_at(32.0).measure(epoch_ends=False, next_ends_epoch=False)
    assert fraction == pytest.approx(33.0 / 36.0)
    # with room for the validation and more steps, an epoch end changes nothing: 31 + 0.5 + 4 <= 36
    fraction, _ = _budget_at(31.0).measure(epoch_ends=False, next_ends_epoch=True)
    assert fraction == pytest.approx(32.0 / 36.0)
