"""Framework overhead: hrexp's training step and epoch as ``train.py`` runs them, over a plain PyTorch loop.

hrexp side: the run ``train.py task=landmarks model=hrnet_w32`` builds (``build_run``: the
LightningModule with its task, metrics, logging, param groups, LR schedule, the default callbacks
(checkpoints, best metrics, LR monitor, progress bar, ...) and the CSV logger, the atomic checkpoint
plugin), fitted on batches already in memory (the datamodule's own first batches, collated once; the
data pipeline is the same code on both sides and ``benchmarks/data_pipeline.py`` measures it).

Plain side: a deep copy of the same module (the same initial weights), the same batches, and what a
hand-written loop does for the same training:

* per step: ``loss = task.loss(model(image), batch)`` (the same forward and loss, targets encoded the
  same way), ``zero_grad``, ``backward``, ``step`` of the same optimizer over the same parameter
  groups (``param_groups``: backbone / head lr, no decay on norms and biases), ``step`` of the same
  LR schedule, ``loss.item()`` (a loop logs its loss);
* per epoch, after the steps: a validation pass over the same val batches (eval mode, ``no_grad``,
  forward, loss, the task's decoding to original-image points and its metric update, then the mean
  val loss and the metric values: the MRE, which a loop needs to pick its best checkpoint), then
  ``torch.save`` of the same three files ``train.py``'s default callbacks write after an epoch that
  improved both monitors, as it always does after the first: the resumable last checkpoint (weights,
  optimizer and schedule state), the best-val-loss and the best-val-metric weights.

What hrexp does on top is what is measured: Lightning's loops and hooks, logging (per step and per
epoch, CSV), the callbacks, and the checkpoint plugin, which writes each file to a temporary file,
fsyncs it and renames it over the target (a crash never leaves a half-written checkpoint; the plain
``torch.save`` does not sync). That is the fair comparison: the same numerical work on both sides,
the framework's bookkeeping and safety on one.

Rows:

1. training step: per-step time = the time between the starts of consecutive steps (everything the
   loop does in between counts), validation off; ``--warmup`` untimed steps, then ``--steps`` timed.
2. epoch: one epoch of ``--epoch-steps`` training steps and ``--val-batches`` validation batches with
   the end-of-epoch checkpoints, timed from the epoch's start until ``trainer.fit`` returns (hrexp) or
   the last file is written (plain). Each side's run is fresh (new optimizer, new folder), as the
   first epoch of a run is; no sanity-check validation on either side (train.py runs 2 batches of it
   before the first epoch, outside every epoch). Few steps per epoch keep it affordable on a CPU and
   make the per-epoch costs (validation loop, logging, checkpoint writes) weigh more than in a real
   epoch (the default job's has 26 steps). An epoch of n steps costs n x step + fixed on each side,
   so its ratio moves monotonically with n from the fixed costs' ratio towards the step row's: a real
   epoch's ratio lies between this row's and the step row's.

Rounds alternate the order (hrexp first in odd rounds, plain first in even ones), so that drift of a
noisy or shared machine hits both sides alike. Each round gives a ratio hrexp / plain (step row: the
round's median hrexp step over its median plain step; epoch row: the two epochs); the headline is
the median of the per-round ratios, with their spread (min - max, interquartile range).
"""

from __future__ import annotations

import copy
import gc
import math
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.common import Table, main, median, parser, synchronize

NAME = "overhead"
TARGET = 1.02
ROWS = ("step", "epoch")


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="hrnet_w32")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's (8), 2 with --smoke")
    p.add_argument("--image-size", type=int, nargs=2, default=None, help="h w; default: the config's [256, 128]")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round of the step row (default 6, smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first in each round (default 1)")
    p.add_argument("--rounds", type=int, default=None, help="rounds of each row (default 10, smoke 3)")
    p.add_argument("--epoch-steps", type=int, default=None,
                   help="training steps of the epoch row's epoch (default 4, smoke 2)")
    p.add_argument("--val-batches", type=int, default=None,
                   help="validation batches of the epoch row's epoch (default 2, smoke 1)")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which rows (default both)")
    return p


def compose(overrides: list[str], out_dir: Path):
    """The config train.py would compose, with its outputs in ``out_dir``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from hrexp.startup import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


class StepStarts:
    """A Lightning callback keeping the time at which each training step starts."""

    def __init__(self, device):
        import lightning.pytorch as pl

        outer = self

        class _Callback(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                synchronize(device)
                outer.starts.append(time.perf_counter())

        self.starts: list[float] = []
        self.callback = _Callback()


class EpochWatch:
    """A Lightning callback keeping when the (first) training epoch starts and counting the training and
    validation batches run (sanity-check batches excluded)."""

    def __init__(self, device):
        import lightning.pytorch as pl

        outer = self

        class _Callback(pl.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if outer.start is None:
                    synchronize(device)
                    outer.start = time.perf_counter()

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                outer.train_batches += 1

            def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
                if not trainer.sanity_checking:
                    outer.val_batches += 1

        self.start: float | None = None
        self.train_batches = 0
        self.val_batches = 0
        self.callback = _Callback()


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}


def _files(folder: Path) -> tuple[int, float]:
    """Checkpoint files under ``folder`` and their MB."""
    paths = [p for p in folder.rglob("*") if p.is_file() and p.suffix in (".ckpt", ".pt")]
    return len(paths), sum(p.stat().st_size for p in paths) / 2**20


def plain_optimizer(model, total_steps: int):
    """The optimizer and per-step LR schedule the hrexp module configures (same groups, same factory),
    built without a Trainer, for the plain loop."""
    optimizer = model.param_group_rules.create_optimizer(model.optimizer_factory, model.backbone, model.task)
    scheduler = None
    if model.scheduler_factory is not None:
        scheduler = model.scheduler_factory(optimizer, total_steps=total_steps, steps_per_epoch=total_steps)
    return optimizer, scheduler


def plain_train_step(model, optimizer, scheduler, batch, device) -> float:
    batch = _to(batch, device)
    loss = model.task.loss(model(batch["image"]), batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.item()  # a hand-written loop logs its loss too


def plain_validation(model, batches, device) -> dict[str, float]:
    """Mean val loss and the task's metrics over ``batches`` (what a loop needs to pick best checkpoints)."""
    import torch

    task = model.task
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            batch = _to(batch, device)
            outputs = model(batch["image"])
            flipped = model(batch["image"].flip(-1)) if task.flip_test else None
            n = batch["image"].shape[0]
            total += float(task.loss(outputs, batch)) * n
            count += n
            task.update_metrics("val", task.predict(outputs, batch, flipped_outputs=flipped), batch)
    values = {name: float(v) for name, v in task.compute_metrics("val").items()}
    model.train()
    return {"val/loss": total / max(count, 1), **values}


def hrexp_round(cfg, batches, warmup: int, steps: int, device) -> list[float]:
    """Seconds of each timed hrexp step (``fit`` on ``batches`` in memory)."""
    from torch.utils.data import DataLoader

    from hrexp.jobs.train_run import build_run

    timer = StepStarts(device)
    _, module, _, _, trainer = build_run(cfg, extra_callbacks=[timer.callback])
    loader = DataLoader(batches[: warmup + steps + 1], batch_size=None)  # batch_size=None: already collated
    trainer.fit(module, train_dataloaders=loader)
    s = timer.starts
    if len(s) < warmup + steps + 1:
        raise RuntimeError(f"hrexp ran {len(s)} steps, expected {warmup + steps + 1}")
    return [b - a for a, b in zip(s[warmup:warmup + steps], s[warmup + 1:warmup + steps + 1])]


def plain_round(module, batches, warmup: int, steps: int, device) -> list[float]:
    """Seconds of each timed step of the hand-written loop on a copy of the module."""
    model = copy.deepcopy(module).to(device).train()
    optimizer, scheduler = plain_optimizer(model, total_steps=warmup + steps + 1)
    starts = []
    for batch in batches[: warmup + steps + 1]:
        synchronize(device)
        starts.append(time.perf_counter())
        plain_train_step(model, optimizer, scheduler, batch, device)
    return [b - a for a, b in zip(starts[warmup:warmup + steps], starts[warmup + 1:warmup + steps + 1])]


def hrexp_epoch(cfg, train_batches, val_batches, device) -> dict:
    """One epoch of the run train.py builds: its seconds (epoch start to ``fit``'s return) and its work."""
    from torch.utils.data import DataLoader

    from hrexp.jobs.train_run import build_run

    watch = EpochWatch(device)
    _, module, _, _, trainer = build_run(cfg, extra_callbacks=[watch.callback])
    # Time spent in the checkpoint plugin's writes (serialise, fsync, rename), to say where the time goes.
    io = trainer.strategy.checkpoint_io
    save, writes = io.save_checkpoint, []

    def timed_save(*args, **kwargs):
        t = time.perf_counter()
        save(*args, **kwargs)
        writes.append(time.perf_counter() - t)

    io.save_checkpoint = timed_save
    trainer.fit(module, train_dataloaders=DataLoader(train_batches, batch_size=None),
                val_dataloaders=DataLoader(val_batches, batch_size=None))
    synchronize(device)
    seconds = time.perf_counter() - watch.start
    files, mb = _files(Path(cfg.paths.output_dir))
    return {"seconds": seconds, "train_steps": watch.train_batches, "val_batches": watch.val_batches,
            "files": files, "mb": mb, "write_s": sum(writes)}


def plain_epoch(module, train_batches, val_batches, device, out_dir: Path) -> dict:
    """The same epoch by hand: steps, validation, the three checkpoint files (see the module docstring)."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(module).to(device).train()
    optimizer, scheduler = plain_optimizer(model, total_steps=len(train_batches))
    best = {"val/loss": math.inf, module.task.monitor["metric"]: None}
    synchronize(device)
    t0 = time.perf_counter()
    steps = 0
    for batch in train_batches:
        plain_train_step(model, optimizer, scheduler, batch, device)
        steps += 1
    values = plain_validation(model, val_batches, device)
    t_write = time.perf_counter()
    torch.save({"epoch": 0, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict()}, out_dir / "last.pt")
    monitor, mode = module.task.monitor["metric"], module.task.monitor["mode"]
    if values["val/loss"] < best["val/loss"]:
        torch.save({"epoch": 0, "model": model.state_dict(), "val/loss": values["val/loss"]}, out_dir / "best-loss.pt")
    value = values.get(monitor)
    if value is not None and (best[monitor] is None or (value < best[monitor] if mode == "min" else value > best[monitor])):
        torch.save({"epoch": 0, "model": model.state_dict(), monitor: value}, out_dir / "best-metric.pt")
    synchronize(device)
    t1 = time.perf_counter()
    files, mb = _files(out_dir)
    return {"seconds": t1 - t0, "train_steps": steps, "val_batches": len(val_batches), "files": files, "mb": mb,
            "write_s": t1 - t_write}


def spread(ratios: list[float]) -> dict[str, float]:
    """Median, min, max and quartiles (numpy's linear interpolation) of the per-round ratios."""
    import numpy as np

    q1, q3 = np.percentile(ratios, [25, 75])
    return {"median": float(np.median(ratios)), "min": float(min(ratios)), "max": float(max(ratios)),
            "q1": float(q1), "q3": float(q3)}


def verdict(s: dict[str, float]) -> str:
    """Whether the target is met within the spread of the per-round ratios."""
    if s["q3"] <= TARGET:
        return f"met: the median and the whole interquartile range are <= {TARGET}"
    if s["median"] <= TARGET:
        return f"met by the median; the interquartile range reaches above {TARGET}"
    if s["q1"] <= TARGET:
        return f"not met by the median, but within the spread: the interquartile range includes {TARGET}"
    return f"not met: the whole interquartile range is above {TARGET}"


def order(r: int) -> tuple[str, str]:
    """Which side runs first in round ``r`` (0-based): hrexp in odd rounds (1st, 3rd, ...), plain in even."""
    return ("hrexp", "plain") if r % 2 == 0 else ("plain", "hrexp")


def run(args) -> list[Table]:
    from hrexp.jobs.train_run import build_run

    smoke = args.smoke
    warmup = args.warmup or 1
    steps = args.steps or (2 if smoke else 6)
    rounds = args.rounds or (3 if smoke else 10)
    epoch_steps = args.epoch_steps or (2 if smoke else 4)
    val_batches_n = args.val_batches or (1 if smoke else 2)
    model = "hrnet_w18" if smoke and args.model == "hrnet_w32" else args.model
    common = [f"model={model}", "task=landmarks", "trainer.max_epochs=1", "trainer.num_sanity_val_steps=0",
              "test=false", f"trainer.accelerator={'gpu' if args.device.type == 'cuda' else 'cpu'}"]
    if args.batch_size or smoke:
        common.append(f"data.batch_size={args.batch_size or 2}")
    if args.image_size or smoke:
        h, w = args.image_size or (64, 32)
        common.append(f"data.image_size=[{h},{w}]")
    if smoke:
        common += ["data.num_train=8", "data.num_test=2", "data.original_size=[128,64]"]
    step_overrides = [*common, "trainer.limit_val_batches=0", f"trainer.max_steps={warmup + steps + 1}"]

    rows: dict[str, dict] = {}
    work: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        cfg = compose(common, tmp / "run0")
        datamodule, module, _, _, _ = build_run(cfg)
        need = max(warmup + steps + 1, epoch_steps)
        train_batches = []
        while len(train_batches) < need:
            train_batches += list(datamodule.train_dataloader())
        train_batches = train_batches[:need]
        val_batches = list(datamodule.val_dataloader())[:val_batches_n]
        if len(val_batches) < val_batches_n:
            raise SystemExit(f"--val-batches {val_batches_n}: the validation split has {len(val_batches)} batches")

        if "step" in args.rows:
            per: dict[str, list] = {"hrexp": [], "plain": [], "first": []}
            for r in range(rounds):
                times = {}
                for side in order(r):
                    if side == "hrexp":
                        cfg = compose(step_overrides, tmp / f"step{r}")
                        times[side] = hrexp_round(cfg, train_batches, warmup, steps, args.device)
                    else:
                        times[side] = plain_round(module, train_batches, warmup, steps, args.device)
                    gc.collect()
                shutil.rmtree(tmp / f"step{r}", ignore_errors=True)
                per["hrexp"].append(times["hrexp"])
                per["plain"].append(times["plain"])
                per["first"].append(order(r)[0])
            rows["training step"] = {
                "hrexp_all": [t for ts in per["hrexp"] for t in ts], "plain_all": [t for ts in per["plain"] for t in ts],
                "hrexp_round": [median(ts) for ts in per["hrexp"]], "plain_round": [median(ts) for ts in per["plain"]],
                "first": per["first"], "timed": f"{steps} steps x {rounds} rounds ({warmup} untimed first)"}

        if "epoch" in args.rows:
            per = {"hrexp": [], "plain": [], "first": []}
            epoch_train = train_batches[:epoch_steps]
            for r in range(rounds):
                results = {}
                for side in order(r):
                    if side == "hrexp":
                        cfg = compose(common, tmp / f"epoch{r}" / "hrexp")
                        results[side] = hrexp_epoch(cfg, epoch_train, val_batches, args.device)
                    else:
                        results[side] = plain_epoch(module, epoch_train, val_batches, args.device,
                                                    tmp / f"epoch{r}" / "plain")
                    gc.collect()
                shutil.rmtree(tmp / f"epoch{r}", ignore_errors=True)
                for side in ("hrexp", "plain"):
                    per[side].append(results[side]["seconds"])
                    work.setdefault(side, []).append(results[side])
                per["first"].append(order(r)[0])
            rows["epoch"] = {
                "hrexp_all": per["hrexp"], "plain_all": per["plain"], "hrexp_round": per["hrexp"],
                "plain_round": per["plain"], "first": per["first"],
                "timed": f"1 epoch ({epoch_steps} steps, {val_batches_n} val batches, checkpoints) x {rounds} rounds"}

    image = train_batches[0]["image"]
    table = Table(
        f"Framework overhead: hrexp / plain loop ({model}, batch {image.shape[0]}, input "
        f"{image.shape[2]}x{image.shape[3]}, {args.device.type})",
        ["row", "hrexp ms (median)", "plain ms (median)", "ratio (median of rounds)", "ratio min", "ratio q1",
         "ratio q3", "ratio max", "ratio per round", "hrexp ms per round", "plain ms per round", "first per round",
         "timed"],
        formats={"ratio (median of rounds)": ".3f", "ratio min": ".3f", "ratio q1": ".3f", "ratio q3": ".3f",
                 "ratio max": ".3f", "ratio per round": ".3f", "hrexp ms per round": ".0f",
                 "plain ms per round": ".0f"},
    )
    for name, row in rows.items():
        ratios = [h / p for h, p in zip(row["hrexp_round"], row["plain_round"])]
        s = spread(ratios)
        table.add(name, 1000 * median(row["hrexp_all"]), 1000 * median(row["plain_all"]), s["median"], s["min"],
                  s["q1"], s["q3"], s["max"], ratios, [1000 * t for t in row["hrexp_round"]],
                  [1000 * t for t in row["plain_round"]], row["first"], row["timed"])
        table.notes.append(f"{name}: target ratio <= {TARGET}: {verdict(s)} (median {s['median']:.3f}, "
                           f"IQR {s['q1']:.3f} - {s['q3']:.3f}, range {s['min']:.3f} - {s['max']:.3f})")
    table.notes += [
        "ratio per round: the round's hrexp time / its plain time (step row: medians of the round's steps); the "
        "headline is the median of these, q1 / q3 their quartiles. Rounds alternate which side runs first.",
        "hrexp = the run train.py builds (metrics, logging, callbacks, schedule, checkpoint plugin), data in "
        "memory; plain = the same model, batches, optimizer groups and schedule in a hand-written loop. Step row: "
        "validation off. Epoch row: validation and the end-of-epoch checkpoints on both sides (see "
        "benchmarks/overhead.py).",
    ]
    tables = [table]
    if work:
        done = Table("Overhead: what each epoch of the epoch row did (medians over rounds)",
                     ["side", "training steps", "val batches", "checkpoint files", "checkpoint MB",
                      "checkpoint write ms"])
        for side in ("hrexp", "plain"):
            done.add(side, *(median([w[k] for w in work[side]]) for k in ("train_steps", "val_batches", "files", "mb")),
                     1000 * median([w["write_s"] for w in work[side]]))
        done.notes.append("the same work on both sides: hrexp's files are Lightning checkpoints (last.ckpt resumable, "
                          "two best-weights files), written atomically; plain's the same contents by torch.save.")
        done.notes.append("checkpoint write ms: hrexp, the time inside the checkpoint plugin's writes (serialise, "
                          "fsync, rename; Lightning collects the states before); plain, its three torch.save calls, "
                          "state_dict() calls included.")
        tables.append(done)
    return tables


if __name__ == "__main__":
    main(NAME, run, build_parser())
