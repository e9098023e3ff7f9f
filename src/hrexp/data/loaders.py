"""The one DataLoader set-up every datamodule uses."""

from __future__ import annotations

from typing import Callable

from torch.utils.data import DataLoader, Dataset


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    pin_memory: bool,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A loader that keeps the last partial batch and keeps its workers alive across epochs.

    No ``cv2.setNumThreads()`` in a ``worker_init_fn``: in a forked worker it destroys the parent's
    copied thread-pool state and can deadlock (seen with OpenCV 5, pthreads).
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
    )
