"""The training order and each sample's augmentation draws, as functions of (seed, epoch, sample).

A run killed mid-epoch and resumed from its last checkpoint must see the same batches, with the same
augmentations, as a run never stopped. Neither a DataLoader's shuffle nor augmentation drawn from
a process-wide random stream allows that: the stream depends on how many samples were already
drawn (and, with workers, on which worker drew them). Here:

* :class:`TrainSampler` orders epoch ``e`` by a permutation seeded with ``(seed, e)`` and, when a
  run resumes mid-epoch, starts after the batches that run already trained on
  (``skip_batches()``, asked when the epoch's iteration starts);
* it yields :class:`SampleKey` indices, ints that also carry ``(seed, epoch)``: a dataset draws the
  sample's augmentation from :func:`sample_rng`, so the draws depend only on ``(seed, epoch,
  index)``, whatever the number of workers, the prefetching or an interruption.

Under DDP it is a ``DistributedSampler`` (Lightning leaves it in place): each rank takes every
``world``-th index of the padded permutation, as Lightning's own sampler does.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Iterator, Sized

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

log = logging.getLogger(__name__)


class SampleKey(int):
    """A sample index that also says which draw of augmentation it gets (``seed``, ``epoch``)."""

    seed: int
    epoch: int

    def __new__(cls, index: int, seed: int, epoch: int) -> "SampleKey":
        key = super().__new__(cls, index)
        key.seed, key.epoch = seed, epoch
        return key

    def __reduce__(self):  # pickled to DataLoader workers
        return SampleKey, (int(self), self.seed, self.epoch)


def sample_rng(key: int) -> np.random.Generator | None:
    """The augmentation generator of one sample: seeded by ``(seed, epoch, index)`` for a
    :class:`SampleKey`, None (the transform's default) for a plain index."""
    if not isinstance(key, SampleKey):
        return None
    return np.random.default_rng([key.seed, key.epoch, int(key)])


def run_seed() -> int:
    """The run's seed (``seed_everything`` sets ``PL_GLOBAL_SEED``); an unseeded run draws one."""
    value = os.environ.get("PL_GLOBAL_SEED")
    if value is not None:
        return int(value)
    seed = int(np.random.SeedSequence().entropy % (2**32))
    log.info("unseeded run: training order and augmentation seeded with %d (a resumed run continues differently)",
             seed)
    return seed


class TrainSampler(DistributedSampler):
    """Shuffled, resumable training order with per-sample augmentation seeds (see the module doc).

    Args:
        dataset: The training dataset.
        batch_size: The loader's batch size (to turn skipped batches into skipped samples).
        position: Returns ``(epoch, batches of it already trained on)``, asked each time an epoch's
            iteration begins (``(epoch, 0)`` at a normal epoch start; the datamodule answers from the
            trainer and, right after a resume, from the checkpoint).
        seed: Seed of the order and the augmentation (default: the run's seed).
    """

    def __init__(self, dataset: Sized, batch_size: int, position: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 seed: int | None = None):
        distributed = dist.is_available() and dist.is_initialized()
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=0, drop_last=False)
        self.seed = run_seed() if seed is None else int(seed)
        self.batch_size = int(batch_size)
        self.position = position

    def __iter__(self) -> Iterator[SampleKey]:
        # The epoch comes from `position`, not from Lightning's set_epoch: on resume Lightning creates
        # the first iterator (and, with workers, draws its indices) before it calls set_epoch.
        self.epoch, skip_batches = self.position()
        generator = torch.Generator()
        generator.manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.dataset), generator=generator).tolist()
        if len(order) < self.total_size:  # pad as DistributedSampler does: every rank the same count
            order += (order * (self.total_size // len(order) + 1))[: self.total_size - len(order)]
        mine = order[self.rank:self.total_size:self.num_replicas]
        skip = skip_batches * self.batch_size
        if skip:
            log.info("resuming epoch %d after %d samples already trained on", self.epoch, skip)
        return iter([SampleKey(i, self.seed, self.epoch) for i in mine[skip:]])

    def __len__(self) -> int:
        return self.num_samples
