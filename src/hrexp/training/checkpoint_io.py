"""Checkpoint files written whole or not at all, and slimmed to weights where resuming is not needed.

:class:`AtomicCheckpointIO` is the Trainer's ``CheckpointIO`` plugin (``conf/trainer/default.yaml``).
Each checkpoint is written to a hidden temporary file beside its target, flushed and synced to disk,
then renamed over the target (``os.replace``: atomic within one filesystem). A write that fails
(disk full, quota, a kill) therefore leaves the previous file exactly as it was. Lightning's own
writer goes through a temporary file in the system's temp folder and moves it into place, which
across filesystems is a copy (not atomic) and needs the checkpoint's size free in ``/tmp``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

# What only resuming needs: a weights-only checkpoint drops these (the weights, the run config in
# "hrexp", the loop counters, and EMA's raw weights "current_model_state" stay).
RESUME_ONLY_KEYS = ("optimizer_states", "lr_schedulers", "callbacks", "MixedPrecision", "DoublePrecision")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the message names the file and says the old one is intact."""


def weights_only(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint without the optimizer, schedule and callback states (about 1/3 the size with AdamW)."""
    slim = {k: v for k, v in checkpoint.items() if k not in RESUME_ONLY_KEYS}
    slim["hrexp"] = {**checkpoint.get("hrexp", {}), "contents": "weights"}
    return slim


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint atomically; ``storage_options={"keep": "weights"}`` slims it first.

    Raises:
        CheckpointWriteError: The file could not be written (the cause, e.g. ``No space left on
            device``, is named); nothing of it is left behind and the previous file is unchanged.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        keep = (storage_options or {}).get("keep", "all")
        if keep not in ("all", "weights"):
            raise ValueError(f"storage_options keep={keep!r}: expected 'all' or 'weights'")
        if keep == "weights":
            checkpoint = weights_only(checkpoint)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path.parent)
        temp = _temp_path(path)
        try:
            with open(temp, "wb") as fh:
                self.write(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temp, path)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                state = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
                message = f"could not write checkpoint {path}: {exc.strerror or exc}; {state}"
                log.error(message)
                raise CheckpointWriteError(message) from exc
            raise
        _sync_folder(path.parent)

    def write(self, checkpoint: dict[str, Any], fh: Any) -> None:
        """Serialise ``checkpoint`` into the open temporary file (tests replace this to simulate failures)."""
        torch.save(checkpoint, fh)


def _remove_stale_temps(folder: Path) -> None:
    """Delete the temporary files of writers that no longer run (killed mid-write)."""
    for temp in folder.glob(".*.tmp-*"):
        try:
            pid = int(temp.name.rsplit("-", 1)[1])
            os.kill(pid, 0)  # raises when no such process
            alive = pid != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:  # another user's live process
            alive = True
        if not alive:
            temp.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every filesystem allows syncing a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
