"""The datamodule base: what every datamodule shares, the hooks a family fills in, the one a format fills in.

Three levels, one class each:

- :class:`HRExpDataModule` (here): ``setup()`` (idempotent), the test-split fallback, ``splits``,
  ``test_split_name``, the loaders and their batch sizes, the collate hook, the seeded split
  helpers, ``resolve_path`` and ``load_image``;
- a family base (``landmarks/``, ``pose/``, ``segmentation/`` ``datamodule.py``): checks the splits
  and splits off what the format did not give (:meth:`~HRExpDataModule.complete_splits`), builds the
  datasets with the family's transforms (:meth:`~HRExpDataModule.build_datasets`), and says what a
  task needs (:attr:`~HRExpDataModule.dataset_meta`) and what the network sees
  (:attr:`~HRExpDataModule.input_size`, :attr:`~HRExpDataModule.input_size_option`);
- a format (a subclass of a family base, one per annotation format): reads the files into the
  family's split records (:meth:`~HRExpDataModule.read_splits`). A new format is a subclass that
  implements ``read_splits()`` only.

A family also says how ``predict.py`` prepares a new image (no annotation) as its evaluation transform
does: the classmethod :meth:`~HRExpDataModule.prediction_preparer` (built from a checkpoint's stored
config alone, with :meth:`~HRExpDataModule.stored_option`; no data is read).

``setup()`` runs ``read_splits() -> complete_splits() -> test fallback -> build_datasets()`` once:
every split is read and checked before training, so bad data fails in seconds. Call
``prepare_data()`` then ``setup()`` before asking for ``dataset_meta`` (the task's head needs it);
Lightning's own later ``setup`` calls are then no-ops.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from lightning import LightningDataModule
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, default_collate

from hrexp.data import images, paths
from hrexp.data.errors import DataError
from hrexp.errors import ConfigError
from hrexp.data.loaders import eval_sampler, make_loader
from hrexp.data.sampling import TrainSampler
from hrexp.data.splits import split_indices, split_three

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def check_auto_or(value: Any, kind: type, option: str) -> Any:
    """``"auto"`` or ``value`` as ``kind`` (an int >= 0 or a bool); a clear error naming ``option`` otherwise."""
    if value == "auto":
        return value
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    expected = "a whole number >= 0" if kind is int else "true or false"
    raise ValueError(f"{option}={value!r}: expected auto or {expected}")


class ImagePreparer:
    """A family's evaluation-time preparation of one new image for ``predict.py`` (see
    :meth:`HRExpDataModule.prediction_preparer`): a picklable callable ``(image, path) -> [sample, ...]`` (run
    in DataLoader workers; ``image`` as :func:`~hrexp.data.images.load_image` decodes it) whose samples
    :attr:`collate` batches. :attr:`per_instance`: an image may give several samples (pose: one per person
    box) or none."""

    per_instance = False

    def __call__(self, image: np.ndarray, path: Path) -> list[dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} prepares no image")

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """The batch of the samples of one or more images (torch's default collate)."""
        return default_collate(samples)


def class_default(cls: type, name: str) -> Any:
    """The default of the constructor argument ``name`` of ``cls`` (the nearest class of its MRO that takes it with
    a default); ``inspect.Parameter.empty`` when none does. What an older stored config lacks is read from here."""
    for klass in cls.__mro__:
        parameter = inspect.signature(klass.__init__).parameters.get(name)
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            return parameter.default
    return inspect.Parameter.empty


class HRExpDataModule(LightningDataModule):
    """Base of every hrexp datamodule (see the module docstring for the hooks).

    Args:
        batch_size: Training batch size.
        eval_batch_size: Validation / test batch size (None: ``batch_size``).
        num_workers: DataLoader workers, or ``"auto"`` (:meth:`loader_workers`).
        pin_memory: DataLoader ``pin_memory``, or ``"auto"`` (on an accelerator).
        val_fraction: Validation share split off the training split when the format gives no
            validation split.
        split_seed: Seed of the split helpers (their own generator, independent of the global seed).
        root: Folder that :meth:`resolve_path` resolves relative paths against (None: the working
            directory).
    """

    #: The config option of :attr:`input_size`, for error messages (``"data.image_size"``).
    input_size_option: str = "data.image_size"

    def __init__(
        self,
        *,
        batch_size: int,
        eval_batch_size: int | None = None,
        num_workers: int | str = 0,
        pin_memory: bool | str = False,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        root: str | Path | None = None,
    ):
        super().__init__()
        self.batch_size = int(batch_size)
        self._eval_batch_size = None if eval_batch_size is None else int(eval_batch_size)
        self.num_workers = check_auto_or(num_workers, int, "data.num_workers")
        self.pin_memory = check_auto_or(pin_memory, bool, "data.pin_memory")
        self.val_fraction = float(val_fraction)
        self.split_seed = int(split_seed)
        self.root = None if root in (None, "") else Path(root)
        self.test_split_name = "test"
        self.datasets: dict[str, Dataset] = {}
        self._splits: dict[str, Any] | None = None
        self._resume_position: dict[str, int] | None = None

    # ------------------------------------------------------------------ the format's hook
    def read_splits(self) -> dict[str, Any]:
        """Reads the annotation files: ``{"train": records, "val": records or None, "test": records or None}``.

        The records are the family's type (``LandmarkSet``, ``PoseSplit``, ``SegSet``); None means the
        format has no file for that split (the family splits validation, and for segmentation test,
        off the training split; no test split at all tests on the validation split).
        """
        raise NotImplementedError(f"{type(self).__name__}: a data format implements read_splits()")

    # ------------------------------------------------------------------ the family's hooks
    def complete_splits(self, splits: dict[str, Any]) -> dict[str, Any]:
        """Checks every split read and splits off the missing ones; returns ``train`` and ``val`` (and
        ``test`` when there is one: None makes the validation split the test split)."""
        raise NotImplementedError(f"{type(self).__name__}: a datamodule family implements complete_splits()")

    def build_datasets(self, splits: dict[str, Any]) -> dict[str, Dataset]:
        """One dataset per split (``train``, ``val``, ``test``) with the family's transforms.

        ``splits`` is the dict kept as :attr:`splits`; a family may replace a split's records in it
        by the ones its dataset serves (pose: the test split's detection boxes).
        """
        raise NotImplementedError(f"{type(self).__name__}: a datamodule family implements build_datasets()")

    @property
    def dataset_meta(self) -> dict[str, Any]:
        """What a task needs to know about the data (keypoint names, classes, ...); after ``setup()``."""
        raise NotImplementedError(f"{type(self).__name__}: a datamodule family implements dataset_meta")

    @property
    def input_size(self) -> tuple[int, int]:
        """The network input ``(height, width)`` during training (see :attr:`input_size_option`)."""
        raise NotImplementedError(f"{type(self).__name__}: a datamodule family implements input_size")

    def collate_fn(self, split: str) -> Callable | None:
        """The loader's collate function for ``split``; None: torch's default collate."""
        return None

    def sample_name(self, split: str, index: int) -> str:
        """What a message calls sample ``index`` of ``split`` (a family names the file and row)."""
        return f"{split} sample {index}"

    # ------------------------------------------------------------------ the family's prediction hook
    @classmethod
    def prediction_preparer(cls, run_cfg: DictConfig, boxes: Mapping[str, list[Any]] | None = None) -> ImagePreparer:
        """How ``predict.py`` prepares a new image for a checkpoint of this family: the family's evaluation
        transform with the options the run was trained with (``run_cfg``, the checkpoint's stored config).

        Args:
            boxes: Person boxes by image file name (``predict.py boxes=...``: objects with ``bbox``
                ``(x, y, w, h)``, ``score`` and ``image_id``); only a family that crops boxes takes them.

        Raises:
            ConfigError: The family prepares no image for prediction, or ``boxes`` it does not take.
        """
        raise ConfigError(f"ckpt_path: the checkpoint's data family {cls.__name__} ({run_cfg.data._target_}) has "
                          f"no prediction preprocessing; it implements {cls.__name__}.prediction_preparer")

    @classmethod
    def refuse_boxes(cls, run_cfg: DictConfig, boxes: Mapping[str, list[Any]] | None) -> None:
        """Refuses ``boxes`` for a family that crops no person boxes (its :meth:`prediction_preparer` calls it)."""
        if boxes is not None:
            task = OmegaConf.select(run_cfg, "choices.task")
            raise ConfigError(f"boxes=...: only top-down pose checkpoints crop person boxes; this one was trained on "
                              f"{cls.__name__} data (task={task}); leave boxes unset")

    @classmethod
    def stored_option(cls, run_cfg: DictConfig, name: str) -> Any:
        """``data.<name>`` of a stored run config, or the family's default when the config lacks it (older runs).

        Raises:
            ConfigError: Neither the config nor any class of the family has it.
        """
        value = OmegaConf.select(run_cfg, f"data.{name}", default=inspect.Parameter.empty)
        if value is not inspect.Parameter.empty:
            return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
        default = class_default(cls, name)
        if default is not inspect.Parameter.empty:
            return default
        raise ConfigError(f"the checkpoint's config has no data.{name}, and {cls.__name__} has no default for it")

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Reads, checks and splits the data once (later calls are no-ops), then builds the datasets.

        Raises:
            DataError: Bad data, named by file and row (raised by the format's reader or the family's
                checks).
        """
        if self._splits is not None:
            return
        name = type(self).__name__
        splits = dict(self.read_splits())
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise ValueError(f"{name}.read_splits() returned splits {unknown}; expected only {list(SPLITS)}")
        if splits.get("train") is None:
            raise DataError(f"{name}: no training data (read_splits() gave no 'train' split)")
        splits = dict(self.complete_splits({split: splits.get(split) for split in SPLITS}))
        if splits.get("val") is None:
            raise RuntimeError(f"{name}.complete_splits() returned no 'val' split")
        if splits.get("test") is None:
            log.warning("%s: no test split: the test split is the validation split (%d samples)", name,
                        len(splits["val"]))
            splits["test"], self.test_split_name = splits["val"], "val"
        else:
            self.test_split_name = "test"
        self.datasets = self.build_datasets(splits)
        self._splits = splits

    # ------------------------------------------------------------------ what the rest of hrexp reads
    @property
    def splits(self) -> dict[str, Any]:
        """The records of ``train``, ``val`` and ``test`` after ``setup()`` (``test`` is ``val`` when
        :attr:`test_split_name` is ``"val"``).

        Raises:
            RuntimeError: Before ``setup()``.
        """
        if self._splits is None:
            raise RuntimeError(
                f"{type(self).__name__}: call setup() (after prepare_data()) before using the data (splits, "
                f"datasets, loaders, dataset_meta)"
            )
        return self._splits

    @property
    def eval_batch_size(self) -> int:
        """Validation / test batch size (``batch_size`` unless set)."""
        return self.batch_size if self._eval_batch_size is None else self._eval_batch_size

    @eval_batch_size.setter
    def eval_batch_size(self, value: int | None) -> None:
        self._eval_batch_size = None if value is None else int(value)

    def dataloader(self, split: str) -> DataLoader:
        """The loader of ``split``: shuffled training batches, or evaluation batches in split order
        (the last partial batch is kept; under DDP each sample on one process, see
        :func:`hrexp.data.loaders.eval_sampler`)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        self.splits  # noqa: B018 (raises before setup)
        train = split == "train"
        dataset = self.datasets[split]
        if train:
            # Order and augmentation from (seed, epoch, sample); a resumed run continues mid-epoch exactly.
            sampler = TrainSampler(dataset, self.batch_size, position=self._train_position)
        else:
            # Under DDP each evaluation sample on exactly one process: metrics count no padding twice.
            sampler = eval_sampler(dataset)
        return make_loader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=False,
            num_workers=self.loader_workers(),
            pin_memory=self.loader_pin_memory(),
            collate_fn=self.collate_fn(split),
            sampler=sampler,
        )

    def _on_accelerator(self) -> bool:
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type != "cpu"

    def loader_workers(self) -> int:
        """DataLoader workers: ``num_workers``, or for ``auto`` 0 when training on the CPU (the model's
        threads need every core, and with the image cache a sample costs ~1 % of a CPU step: see
        ``benchmarks/results``) and otherwise the CPUs of this process per local device, less one, at
        most 8."""
        if self.num_workers != "auto":
            return self.num_workers
        if not self._on_accelerator():
            return 0
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        devices = max(1, int(getattr(self.trainer, "num_devices", 1)))
        return max(1, min(8, cpus // devices - 1))

    def loader_pin_memory(self) -> bool:
        """``pin_memory``, or for ``auto`` pinned exactly when training on an accelerator."""
        return self._on_accelerator() if self.pin_memory == "auto" else self.pin_memory

    # ------------------------------------------------------------------ resuming mid-epoch
    def state_dict(self) -> dict[str, Any]:
        """Where training stands, saved by Lightning in every checkpoint: the epoch, the batches of it
        already trained on and the epoch's length (so a resumed run's sampler skips exactly those)."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":  # validation inside fit counts (epoch-end saves)
            return {}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return {"train_position": {"epoch": int(trainer.current_epoch), "batches": done,
                                   "epoch_batches": trainer.num_training_batches}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_position = state_dict.get("train_position")

    def _train_position(self) -> tuple[int, int]:
        """``(epoch, batches to skip)`` for the training iteration that is starting.

        Right after a resume the checkpoint says (Lightning creates that iterator before it sets the
        sampler's epoch); otherwise it is the trainer's current epoch from its start.
        """
        position, self._resume_position = self._resume_position, None
        if position is not None:
            if position["batches"] >= position["epoch_batches"]:  # saved at the end of an epoch
                return position["epoch"] + 1, 0
            return position["epoch"], position["batches"]
        return (int(self.trainer.current_epoch) if self.trainer is not None else 0), 0

    def train_dataloader(self) -> DataLoader:
        return self.dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    # ------------------------------------------------------------------ helpers for families and formats
    def split_train_val(self, n: int) -> tuple[list[int], list[int]]:
        """Seeded ``(train, val)`` indices of ``range(n)`` with ``val_fraction`` and ``split_seed``."""
        return split_indices(n, self.val_fraction, self.split_seed)

    def split_train_val_test(self, n: int, val_fraction: float, test_fraction: float) -> tuple[list[int], list[int], list[int]]:
        """Seeded ``(train, val, test)`` indices of ``range(n)`` with ``split_seed`` (a fraction 0: empty part)."""
        return split_three(n, val_fraction, test_fraction, self.split_seed)

    def split_source(self, source: str, split: str) -> str:
        """The ``source`` of records split off ``source`` (named in messages): ``"a.csv [val split, seed 0]"``."""
        return f"{source} [{split} split, seed {self.split_seed}]"

    def resolve_path(self, value: str | Path | None) -> Path | None:
        """An option's path, relative to ``root`` when one is set (see :func:`hrexp.data.paths.resolve_path`)."""
        return paths.resolve_path(value, self.root)

    @staticmethod
    def load_image(path: str | Path) -> np.ndarray:
        """An image as float32 in [0, 1] (see :func:`hrexp.data.images.load_image`)."""
        return images.load_image(path)
