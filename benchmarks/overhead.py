"""Framework overhead: hrexp's training step as ``train.py`` runs it, over a plain PyTorch loop.

hrexp side: the run ``train.py task=landmarks model=hrnet_w32`` builds (``build_run``: the
LightningModule with its task, metrics, logging, param groups, LR schedule, the default callbacks and
the CSV logger, the atomic checkpoint plugin), fitted on batches already in memory (the datamodule's
own first batches, collated once), validation off. Plain side: a deep copy of the same module, the
same batches, ``loss = task.loss(model(image), batch)`` (the same forward and loss, targets encoded
the same way), ``zero_grad``, ``backward``, the config's optimizer (AdamW) ``step``, ``loss.item()``.

Per-step time = time between the starts of consecutive steps (everything the loop does in between
counts). Rounds alternate hrexp / plain so that drift of a noisy machine hits both; the ratio is the
median hrexp step over the median plain step, also given per round.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

from benchmarks.common import Table, main, median, parser, synchronize

NAME = "overhead"


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--model", default="hrnet_w32")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's (8), 2 with --smoke")
    p.add_argument("--image-size", type=int, nargs=2, default=None, help="h w; default: the config's [256, 128]")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 20, smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3, smoke 1)")
    p.add_argument("--rounds", type=int, default=None, help="hrexp/plain rounds (default 3, smoke 1)")
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


def hrexp_round(cfg, batches, warmup: int, steps: int, device) -> list[float]:
    """Seconds of each timed hrexp step (``fit`` on ``batches`` in memory)."""
    from torch.utils.data import DataLoader

    from hrexp.training.train_run import build_run

    timer = StepStarts(device)
    _, module, _, _, trainer = build_run(cfg, extra_callbacks=[timer.callback])
    loader = DataLoader(batches[: warmup + steps + 1], batch_size=None)  # batch_size=None: already collated
    trainer.fit(module, train_dataloaders=loader)
    s = timer.starts
    return [b - a for a, b in zip(s[warmup:warmup + steps], s[warmup + 1:warmup + steps + 1])]


def plain_round(module, cfg, batches, warmup: int, steps: int, device) -> list[float]:
    """Seconds of each timed step of the hand-written loop on a copy of the module."""
    from hydra.utils import instantiate

    model = copy.deepcopy(module).to(device).train()
    optimizer = instantiate(cfg.optimizer)(model.parameters())
    starts = []
    for batch in batches[: warmup + steps + 1]:
        synchronize(device)
        starts.append(time.perf_counter())
        batch = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}
        loss = model.task.loss(model(batch["image"]), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss.item()  # a hand-written loop logs its loss too
    return [b - a for a, b in zip(starts[warmup:warmup + steps], starts[warmup + 1:warmup + steps + 1])]


def run(args) -> list[Table]:
    from hrexp.training.train_run import build_run

    smoke = args.smoke
    warmup = args.warmup or (1 if smoke else 3)
    steps = args.steps or (2 if smoke else 20)
    rounds = args.rounds or (1 if smoke else 3)
    model = "hrnet_w18" if smoke and args.model == "hrnet_w32" else args.model
    overrides = [f"model={model}", "task=landmarks", "trainer.max_epochs=1", "trainer.limit_val_batches=0",
                 "trainer.num_sanity_val_steps=0", "test=false", f"trainer.max_steps={warmup + steps + 1}",
                 f"trainer.accelerator={'gpu' if args.device.type == 'cuda' else 'cpu'}"]
    if args.batch_size or smoke:
        overrides.append(f"data.batch_size={args.batch_size or 2}")
    if args.image_size or smoke:
        h, w = args.image_size or (64, 32)
        overrides.append(f"data.image_size=[{h},{w}]")
    if smoke:
        overrides += ["data.num_train=8", "data.num_test=2", "data.original_size=[128,64]"]

    hrexp_times, plain_times, per_round = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(overrides, Path(tmp) / "run0")
        datamodule, module, _, _, _ = build_run(cfg)
        loader = datamodule.train_dataloader()
        batches = []
        while len(batches) < warmup + steps + 1:
            batches += list(loader)
        batches = batches[: warmup + steps + 1]
        for r in range(rounds):
            cfg = compose(overrides, Path(tmp) / f"run{r + 1}")
            h = hrexp_round(cfg, batches, warmup, steps, args.device)
            p = plain_round(module, cfg, batches, warmup, steps, args.device)
            hrexp_times += h
            plain_times += p
            per_round.append(median(h) / median(p))
    image = batches[0]["image"]
    table = Table(
        f"Framework overhead: hrexp step / plain loop ({model}, batch {image.shape[0]}, input "
        f"{image.shape[2]}x{image.shape[3]}, {args.device.type})",
        ["hrexp step ms (median)", "plain step ms (median)", "ratio", "ratio per round", "steps x rounds"],
    )
    table.add(1000 * median(hrexp_times), 1000 * median(plain_times), median(hrexp_times) / median(plain_times),
              ", ".join(f"{x:.3f}" for x in per_round), f"{steps} x {rounds}")
    table.notes.append("target: ratio <= 1.02. hrexp = the run train.py builds (metrics, logging, callbacks, "
                       "schedule, checkpoint plugin), data in memory, validation off.")
    return [table]


if __name__ == "__main__":
    main(NAME, run, build_parser())
