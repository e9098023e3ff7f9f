"""The training order and augmentation draws: functions of (seed, epoch, sample), resumable mid-epoch."""

from __future__ import annotations

import pickle

import numpy as np
import torch
from torch.utils.data import DataLoader

from hrexp.data.sampling import SampleKey, TrainSampler, sample_rng


def _order(sampler: TrainSampler) -> list[int]:
    return [int(k) for k in sampler]


def test_each_epoch_is_a_seeded_permutation_and_a_resume_skips_the_trained_batches():
    dataset = list(range(11))
    position = {"value": (0, 0)}
    sampler = TrainSampler(dataset, batch_size=3, position=lambda: position["value"], seed=7)
    epoch0 = _order(sampler)
    assert sorted(epoch0) == dataset and len(sampler) == 11
    assert _order(sampler) == epoch0  # the same epoch again: the same order
    position["value"] = (1, 0)
    epoch1 = _order(sampler)
    assert sorted(epoch1) == dataset and epoch1 != epoch0
    position["value"] = (1, 2)  # resumed after 2 batches of 3 in epoch 1
    assert _order(sampler) == epoch1[6:]
    assert _order(TrainSampler(dataset, 3, position=lambda: (1, 0), seed=8)) != epoch1  # another seed


def test_keys_carry_the_draw_of_each_sample_and_survive_pickling():
    sampler = TrainSampler(list(range(5)), batch_size=2, position=lambda: (3, 0), seed=11)
    keys = list(sampler)
    assert all(isinstance(k, SampleKey) and (k.seed, k.epoch) == (11, 3) for k in keys)
    copy = pickle.loads(pickle.dumps(keys[0]))
    assert (int(copy), copy.seed, copy.epoch) == (int(keys[0]), 11, 3)
    a, b = sample_rng(keys[0]).uniform(size=4), sample_rng(copy).uniform(size=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, sample_rng(SampleKey(int(keys[0]), 11, 4)).uniform(size=4))  # another epoch
    assert sample_rng(3) is None  # a plain index: the transform's default generator


class _Noisy(torch.utils.data.Dataset):
    """Each item: its index and one random draw, as an augmenting dataset makes it."""

    def __len__(self) -> int:
        return 9

    def __getitem__(self, key):
        rng = sample_rng(key)
        draw = rng.uniform() if rng is not None else torch.rand(()).item()
        return torch.tensor([float(int(key)), draw])


def test_batches_are_the_same_with_any_number_of_workers():
    def batches(workers: int) -> list[torch.Tensor]:
        sampler = TrainSampler(_Noisy(), batch_size=4, position=lambda: (2, 0), seed=5)
        return list(DataLoader(_Noisy(), batch_size=4, sampler=sampler, num_workers=workers))

    single, parallel = batches(0), batches(2)
    assert len(single) == 3 and all(torch.equal(a, b) for a, b in zip(single, parallel))
