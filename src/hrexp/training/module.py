"""The one LightningModule: backbone + task, optimizer and schedule. It knows no particular task."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Mapping

import lightning.pytorch as pl
import rich
import torch
from lightning.pytorch.utilities import rank_zero_only
from rich.table import Table
from torch import nn
from torchmetrics import MeanMetric

from hrexp.data.loaders import eval_loader
from hrexp.training.param_groups import ParamGroupRules, describe_groups
from hrexp.training.schedules import BudgetClock
from hrexp.training.speed import SpeedOptions

log = logging.getLogger(__name__)


class HRExpModule(pl.LightningModule):
    """Compose a backbone and a task into one trainable model.

    The task supplies the head, the loss, the decoding to original-image predictions and the
    metrics; this class only runs the loops, logs ``train/loss``, ``val/loss``, ``test/loss`` and the
    task's metrics, and builds the optimizer (param groups from ``param_groups``) and a per-step
    schedule.

    Args:
        backbone: returns a list of feature maps (highest resolution first).
        task: a :class:`hrexp.tasks.base.Task` (landmarks, pose, segmentation).
        optimizer: partial optimizer constructor, called with the parameters.
        scheduler: partial schedule factory, called as
            ``scheduler(optimizer, total_steps=..., steps_per_epoch=...)``; ``None`` for none.
        run_config: the resolved run config (plain dict), stored in every checkpoint so a checkpoint
            alone rebuilds its model (``eval.py``).
        param_groups: how parameters are grouped for the optimizer (backbone/head lr, no decay on
            norms and biases); ``None`` for the defaults.
        dataset_meta: what the data told the task (keypoint names, classes), stored in every
            checkpoint so that eval can say what a checkpoint was trained for.
        nonfinite_loss: a NaN/inf training loss ``stop``s the run (naming the step and the batch's
            samples; the checkpoints written so far stay) or is ``skip``ped (no weight update for that
            optimizer step, counted in ``train/skipped_batches``).
        speed: channels_last and torch.compile (:class:`hrexp.training.speed.SpeedOptions`); ``None``
            for neither. Applied here, in place, so the optimizer sees the converted parameters.
    """

    def __init__(
        self,
        backbone: nn.Module,
        task: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        run_config: Mapping[str, Any] | None = None,
        param_groups: ParamGroupRules | None = None,
        dataset_meta: Mapping[str, Any] | None = None,
        nonfinite_loss: str = "stop",
        speed: SpeedOptions | None = None,
    ):
        super().__init__()
        if nonfinite_loss not in ("stop", "skip"):
            raise ValueError(f"nonfinite_loss={nonfinite_loss!r}: expected 'stop' or 'skip'")
        self.nonfinite_loss = nonfinite_loss
        # Batches whose loss was NaN/inf and that did not update the weights (nonfinite_loss=skip).
        self.skipped_batches = 0
        self._skip_step = False
        self._saved_buffers: list[torch.Tensor] | None = None
        self.backbone = backbone
        self.task = task
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.run_config = dict(run_config or {})
        self.param_group_rules = param_groups or ParamGroupRules()
        self.dataset_meta = dict(dataset_meta or {})
        self.losses = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        # Set by a callback (callbacks.freeze_backbone) during a head-only phase.
        self.backbone_frozen = False
        # Callbacks delay the lr of one part's param groups through add_schedule_gate.
        self.schedule_gates: dict[str, tuple[str, Callable[[int], Mapping[str, int]]]] = {}
        # A time-limited run's clock (callbacks.time_budget sets it in setup): the schedule follows it.
        self.budget_clock: BudgetClock | None = None
        # One row per optimizer group, filled by configure_optimizers (for the run record).
        self.param_group_summary: list[dict[str, Any]] = []
        # The task's per-item tables of the last test epoch (per_landmark, per_class), for eval.py.
        self.eval_tables: dict[str, list[dict[str, Any]]] = {}
        # eval.py sets collect_samples: each test sample's results (task.sample_results), for its report;
        # after the test epoch eval_samples holds every rank's, ordered by index.
        self.collect_samples = False
        self.eval_samples: list[dict[str, Any]] = []
        self.speed = speed or SpeedOptions()
        self.speed.apply(self.backbone, getattr(self.task, "head", None))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # A frozen backbone builds no autograd graph: no gradient reaches it and no backward runs through it.
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            features = self.backbone(self.speed.images(images))
        return self.task(features)

    def add_schedule_gate(self, name: str, part: str, gate: Callable[[int], Mapping[str, int]]) -> None:
        """Delay the lr of the param groups of one ``part`` (``backbone`` or ``head``).

        A callback calls this from its ``setup`` hook, which Lightning runs before
        ``configure_optimizers``; ``gate(steps_per_epoch)`` returns ``{"start_step", "ramp_steps"}``
        for those groups (see :func:`hrexp.training.schedules.delayed`). ``name`` makes a repeated
        call (a second fit) replace, not add.
        """
        self.schedule_gates[name] = (part, gate)

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (eval mode: fixed BatchNorm statistics; no gradients) or release the backbone.

        Released, the backbone follows the module's own mode; modules frozen by
        ``model.freeze_stages`` stay in eval mode (the backbones' ``train()`` keeps them there).
        """
        self.backbone_frozen = bool(frozen)
        self.backbone.train(self.training and not self.backbone_frozen)

    # --- loops -------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.nonfinite_loss == "skip" and self._saved_buffers is None:
            # A skipped step must not leave its mark on the BatchNorm statistics either: keep a copy of
            # the buffers (a few hundred kB for HRNet-W32) from the start of the optimizer step.
            self._saved_buffers = [b.detach().clone() for b in self.buffers()]
        # A task whose training loss needs no outputs (a refiner on a frozen stage 1) skips the forward.
        outputs = self(batch["image"]) if self.task.trains_on_outputs else None
        loss = self.task.loss(outputs, batch)
        if self._nonfinite(loss):
            self._on_nonfinite_loss(loss, batch, batch_idx)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def _nonfinite(self, loss: torch.Tensor) -> bool:
        bad = not bool(torch.isfinite(loss.detach()))
        # Under DDP every rank must take the same decision (one stops or skips, all do).
        return self.trainer.strategy.reduce_boolean_decision(bad, all=False) if self.trainer.world_size > 1 else bad

    def _on_nonfinite_loss(self, loss: torch.Tensor, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        datamodule = self.trainer.datamodule
        indices = [int(i) for i in batch["index"]] if "index" in batch else []
        names = [datamodule.sample_name("train", i) if datamodule is not None else f"train sample {i}" for i in indices]
        where = (f"training loss {float(loss.detach())} at step {self.global_step} (epoch {self.current_epoch}, batch "
                 f"{batch_idx}); its samples: {'; '.join(names) or 'unknown'}")
        if "bf16" in str(self.trainer.precision) and self.device.type == "cpu":
            # oneDNN's bf16 kernels (torch 2.14.1) returned NaN on tiny feature maps (scripts/bf16_check.py)
            where += (f" (trained in {self.trainer.precision} on a CPU, where oneDNN's bf16 kernels have given NaN on "
                      "small inputs: try trainer.precision=32 or speed.channels_last=false)")
        if self.nonfinite_loss == "stop":
            raise FloatingPointError(
                f"{where}. The checkpoints written so far are kept; resume from last.ckpt, or set "
                "nonfinite_loss=skip to skip such batches"
            )
        self._skip_step = True
        self.skipped_batches += 1
        log.warning("skipped (nonfinite_loss=skip, %d so far): %s", self.skipped_batches, where)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Callable | None = None) -> None:
        # With nonfinite_loss=skip the closure (forward + backward, gradients all-reduced under DDP) runs
        # first, so that a step whose batch had a NaN/inf loss can leave the weights and the optimizer
        # state untouched. (16-mixed: its GradScaler already skips steps with non-finite gradients.)
        if self.nonfinite_loss != "skip":
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer_closure()
        if self._skip_step:
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():  # after the backward, which still needed the buffers as they were
                for buffer, saved in zip(self.buffers(), self._saved_buffers):
                    buffer.copy_(saved)
            self._skip_step = False
        else:
            optimizer.step()
        self._saved_buffers = None
        self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, on_epoch=False)

    def _eval_epoch_start(self, stage: str) -> None:
        # A task scored against a whole-split ground truth (pose: COCO annotations) gets the dataset
        # of the loader about to run: eval.py may test on the validation loader.
        self.task.on_eval_epoch_start(stage, getattr(eval_loader(self.trainer, stage), "dataset", None))

    def _eval_step(self, stage: str, batch: Mapping[str, torch.Tensor]) -> None:
        # A task may run its own inference (segmentation: whole images or sliding windows).
        outputs = self.task.eval_outputs(self, batch)
        flipped = self(batch["image"].flip(-1)) if self.task.flip_test else None
        # Samples without any target (detection boxes) have no loss; the metric still scores them.
        if self.task.has_targets(batch):
            self.losses[stage].update(self.task.loss(outputs, batch), weight=batch["image"].shape[0])
        preds = self.task.predict(outputs, batch, flipped_outputs=flipped)
        self.task.update_metrics(stage, preds, batch)
        if stage == "test" and self.collect_samples:
            self.eval_samples.extend(self.task.sample_results(preds, batch))

    def _eval_epoch_end(self, stage: str) -> None:
        with warnings.catch_warnings():
            # No update at all (only detection boxes, no targets) is expected: the loss is NaN, not logged.
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            loss = self.losses[stage].compute()
        self.losses[stage].reset()
        values = {} if torch.isnan(loss) else {f"{stage}/loss": loss}
        values.update(self.task.compute_metrics(stage))
        # The loss and the task's headline metric go to the progress bar; everything to the loggers.
        monitor = str(self.task.monitor.get("metric", ""))
        shown = {f"{stage}/loss", monitor.replace("val/", f"{stage}/", 1)}
        for key, value in values.items():
            # torchmetrics already reduced the states across ranks: no second sync here.
            self.log(key, value, prog_bar=key in shown, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._eval_epoch_start("val")

    def on_test_epoch_start(self) -> None:
        self.eval_samples = []
        self._eval_epoch_start("test")

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_test_epoch_end(self) -> None:
        # The task's per-item tables (eval.py writes them) are read before the metrics reset.
        self.eval_tables = self.task.per_item_tables("test")
        self._eval_epoch_end("test")
        if self.collect_samples:
            self.eval_samples = gather_samples(self.eval_samples, self.trainer.world_size)


    # --- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        optimizer = self.param_group_rules.create_optimizer(self.optimizer_factory, self.backbone, self.task)
        self.param_group_summary = describe_groups(optimizer, self)
        self._print_param_groups()
        if self.scheduler_factory is None:
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, int(self.trainer.max_epochs or 1))
        per_epoch = max(1, total // epochs)
        # A part frozen for the first epochs (callbacks.freeze_backbone) gets lr 0 until its phase starts.
        for part, gate in self.schedule_gates.values():
            for group in optimizer.param_groups:
                if group.get("part") == part:
                    group.update(gate(per_epoch))
        timed = {} if self.budget_clock is None else {"clock": self.budget_clock}
        scheduler = self.scheduler_factory(optimizer, total_steps=total, steps_per_epoch=per_epoch, **timed)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    @rank_zero_only
    def _print_param_groups(self) -> None:
        table = Table(title="Optimizer parameter groups")
        for column in ("group", "tensors", "parameters", "base lr", "weight decay"):
            table.add_column(column, justify="left" if column == "group" else "right")
        for row in self.param_group_summary:
            table.add_row(row["name"], str(row["tensors"]), f"{row['params']:,}",
                          "-" if row["lr"] is None else f"{row['lr']:.3g}",
                          "-" if row["weight_decay"] is None else f"{row['weight_decay']:.3g}")
            log.info("param group %s: %d tensors, %d parameters, lr %s, weight_decay %s", row["name"],
                     row["tensors"], row["params"], row["lr"], row["weight_decay"])
        rich.print(table)

    # --- checkpoints -------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Callbacks write first (the EMA callback records that state_dict holds averaged weights).
        info = checkpoint.setdefault("hrexp", {})
        info.update(config=self.run_config, dataset_meta=self.dataset_meta, format=2,
                    skipped_batches=self.skipped_batches)
        info.setdefault("weights", {"kind": "raw"})

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A resumed run keeps counting the batches it skipped before.
        self.skipped_batches = int(checkpoint.get("hrexp", {}).get("skipped_batches", 0))


def gather_samples(local: list[dict[str, Any]], world_size: int) -> list[dict[str, Any]]:
    """Every rank's per-sample results, ordered by sample index, each index once (DDP samplers may repeat)."""
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        parts: list[Any] = [None] * world_size
        torch.distributed.all_gather_object(parts, local)
        local = [sample for part in parts for sample in part]
    unique = {int(sample["index"]): sample for sample in local}
    return [unique[i] for i in sorted(unique)]
