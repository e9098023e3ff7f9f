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
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hrexp.errors import UserError

log = logging.getLogger(__name__)

# What only resuming needs: a weights-only checkpoint drops these (the weights, the run config in
# "hrexp", the loop counters, and EMA's raw weights "current_model_state" stay).
RESUME_ONLY_KEYS = ("optimizer_states", "lr_schedulers", "callbacks", "MixedPrecision", "DoublePrecision")


class CheckpointWriteError(UserError, RuntimeError):
    """A checkpoint could not be written; the message names the file and says the old one is intact."""


class CheckpointReadError(UserError, ValueError):
    """A file given as a checkpoint that is none, or that hrexp refuses to load; the message says which."""


def read_checkpoint(path: str | Path, option: str = "ckpt_path", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only, never arbitrary objects.

    A pickle that carries code (a class or function to call on loading) is refused before anything
    of it runs: ``torch.load(weights_only=True)`` unpickles with an allow-list.

    Raises:
        CheckpointReadError: No such file, a file that is not a PyTorch checkpoint (text, another
            format), a truncated or corrupt one, or one refused for carrying objects; the message
            names the option and the file.
    """
    path = Path(path)
    where = f"{option}={str(path)!r}"
    if not path.is_file():
        raise CheckpointReadError(f"{where}: no such checkpoint file")
    with open(path, "rb") as fh:
        zip_like = fh.read(4) == b"PK\x03\x04"  # torch.save's format; cut short, it is no valid zip any more
    try:
        # mmap (no copy in memory) works for torch's zip format only; other files go to the unpickler,
        # whose allow-list refuses objects, or which says what the file is not.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text or "Unsupported global" in text:
            raise CheckpointReadError(
                f"{where}: refused: the file holds pickled Python objects other than tensors and plain data, "
                "which could run code when loaded; hrexp loads checkpoints with weights_only=True (only "
                "checkpoints written by hrexp / Lightning load)"
            ) from None
        raise CheckpointReadError(f"{where}: not a PyTorch checkpoint ({text.splitlines()[0]})") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, IndexError, ... on files it cannot parse
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if zip_like:
            raise CheckpointReadError(f"{where}: not a complete PyTorch checkpoint (truncated or corrupt: {first})") from None
        raise CheckpointReadError(f"{where}: not a PyTorch checkpoint (expected the file torch.save writes)") from None


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


def weight_mismatch(ckpt_state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a checkpoint's weights and a model's (shapes, missing, unexpected)."""
    lines = []
    for key in ckpt_state.keys() & model_state.keys():
        a, b = tuple(ckpt_state[key].shape), tuple(model_state[key].shape)
        if a != b:
            lines.append(f"{key}: checkpoint {list(a)}, model {list(b)}")
    missing = sorted(model_state.keys() - ckpt_state.keys())
    unexpected = sorted(ckpt_state.keys() - model_state.keys())
    if missing:
        lines.append(f"{len(missing)} weights not in the checkpoint (e.g. {missing[0]})")
    if unexpected:
        lines.append(f"{len(unexpected)} checkpoint weights not in the model (e.g. {unexpected[0]})")
    return sorted(lines)

