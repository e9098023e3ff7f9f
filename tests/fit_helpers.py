"""In-process training for tests that inspect optimizer, weights and schedule state during a run.

``fit`` builds a run from a composed config with ``train_run.build_run``, as ``train`` does (the
config's callbacks plus the test's own recording ones), and runs ``trainer.fit``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from hrexp.jobs.train_run import build_run

# The scratch HRNet-W18 on a small synthetic spine set: 2 steps of batch 4 per epoch at 64x32.
TINY_W18 = [
    "model=hrnet_w18",
    "trainer.limit_train_batches=2",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar=null",
    "data.num_train=20",
    "data.num_test=4",
    "data.original_size=[128,64]",
    "data.image_size=[64,32]",
    "data.batch_size=4",
    "data.num_workers=0",
    "seed=0",
]


def fit(cfg, extra_callbacks: list[pl.Callback] = (), ckpt_path: str | None = None) -> tuple[pl.Trainer, Any]:
    """Train ``cfg`` in this process; returns the trainer and the module."""
    run = build_run(cfg, extra_callbacks)
    run.trainer.fit(run.module, datamodule=run.datamodule, ckpt_path=ckpt_path, weights_only=True)
    return run.trainer, run.module


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter and buffer (BatchNorm statistics included)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], keys=None) -> list[str]:
    """Keys whose tensors are not bit-identical."""
    return [k for k in (keys or before) if not torch.equal(before[k], after[k])]


class LrRecorder(pl.Callback):
    """The lr of every param group (by name) just before each optimizer step."""

    def __init__(self):
        self.lrs: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.lrs.append({g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)})


class BackboneHashes(pl.Callback):
    """Writes ``<out_dir>/rank<r>_<when>.txt``: a hash of the backbone's weights and buffers on each rank,
    at the start of fit (``start``) and after each training epoch (``epoch<k>``). Configurable from a
    script run (``+callbacks.hashes._target_=tests.fit_helpers.BackboneHashes``)."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def _write(self, trainer, pl_module, when: str) -> None:
        import hashlib
        from pathlib import Path

        digest = hashlib.sha1()
        for name, tensor in sorted(pl_module.backbone.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        path = Path(self.out_dir) / f"rank{trainer.global_rank}_{when}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(digest.hexdigest())

    def on_train_start(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, "start")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module, f"epoch{trainer.current_epoch}")


class CrashOnTrainStart(pl.Callback):
    """Raises when training starts if ``crash`` (a sweep parameter): a job that fails mid-run."""

    def __init__(self, crash: bool):
        self.crash = crash

    def on_train_start(self, trainer, pl_module) -> None:
        if self.crash:
            raise RuntimeError("deliberate crash (tests.fit_helpers.CrashOnTrainStart)")


class FailingCheckpointIO:
    """Factory of an AtomicCheckpointIO whose ``fail_at``-th write (1-based) fails half-way.

    ``how="disk_full"`` raises ENOSPC as a full disk does; ``how="kill"`` SIGKILLs the process
    mid-write (a pre-empted job). Configurable from a script run:
    ``'trainer.plugins=[{_target_:tests.fit_helpers.FailingCheckpointIO,fail_at:4,how:kill}]'``.
    """

    def __new__(cls, fail_at: int, how: str = "disk_full"):
        import errno
        import os
        import signal

        from hrexp.training.checkpoint_io import AtomicCheckpointIO

        class _Failing(AtomicCheckpointIO):
            writes = 0

            def write(self, checkpoint, fh) -> None:
                type(self).writes += 1
                if type(self).writes < fail_at:
                    return super().write(checkpoint, fh)
                fh.write(b"PK\x03\x04 half a checkpoint")  # the start of a zip, as torch.save writes
                fh.flush()
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        return _Failing()


class NanAtStep(pl.Callback):
    """Makes the first image of the batch at optimizer step ``step`` NaN (a corrupt sample), and keeps a
    copy of the weights and optimizer step counts just before and just after that batch."""

    def __init__(self, step: int):
        self.step = step
        self.before: dict[str, torch.Tensor] | None = None
        self.after: dict[str, torch.Tensor] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            batch["image"][0] = float("nan")
            self.before = snapshot(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.before is not None and self.after is None:
            self.after = snapshot(pl_module)


class SignalAtStep(pl.Callback):
    """Sends ``signal`` (a name: SIGKILL, SIGTERM) to this process once optimizer step ``step`` is done:
    a job killed or pre-empted mid-epoch. Configurable from a script run
    (``+callbacks.stop._target_=tests.fit_helpers.SignalAtStep``)."""

    def __init__(self, step: int, signal: str = "SIGKILL"):
        self.step = step
        self.signal = signal

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            import os
            import signal

            os.kill(os.getpid(), getattr(signal, self.signal))
