"""The one DataLoader set-up every datamodule uses, and how callbacks find the evaluation loader."""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    pin_memory: bool,
    collate_fn: Callable | None = None,
    sampler: Sampler | None = None,
) -> DataLoader:
    """A loader that keeps the last partial batch and keeps its workers alive across epochs.

    No ``cv2.setNumThreads()`` in a ``worker_init_fn``: in a forked worker it destroys the parent's
    copied thread-pool state and can deadlock (seen with OpenCV 5, pthreads).
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
    )


def eval_sampler(dataset: Dataset) -> Sampler | None:
    """Under DDP, each evaluation sample on exactly one process; None in a single process.

    Lightning's default DistributedSampler pads the last round by repeating the first samples, so
    that every process runs the same number of batches: a padded sample would be scored twice. This
    sampler gives process ``r`` samples ``r, r + world, ...`` and nothing more (the processes may run
    one batch more or less, which is safe without gradients: DDP syncs nothing in a no-grad forward).
    Lightning leaves a loader with a DistributedSampler as it is. The loader must be built after the
    process group is up: inside ``trainer.fit/validate/test``, as Lightning asks a datamodule for it.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    world = dist.get_world_size()
    if len(dataset) < world:
        log.warning("%d evaluation samples for %d processes: some process would have none; Lightning's padded "
                    "sampler repeats samples instead (metrics that de-duplicate by index stay exact)", len(dataset),
                    world)
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=dist.get_rank(), shuffle=False)


def eval_loader(trainer: Any, stage: str = "val") -> DataLoader | None:
    """The first validation (``stage="val"``) or test loader of a Lightning trainer, or None.

    Lightning holds one loader, or a list when a datamodule returns several; hrexp evaluates the first.
    """
    loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return loaders
