"""The one DataLoader set-up every datamodule uses, and how callbacks find the evaluation loader."""

from __future__ import annotations

from typing import Any, Callable

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


def eval_loader(trainer: Any, stage: str = "val") -> DataLoader | None:
    """The first validation (``stage="val"``) or test loader of a Lightning trainer, or None.

    Lightning holds one loader, or a list when a datamodule returns several; hrexp evaluates the first.
    """
    loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return loaders
