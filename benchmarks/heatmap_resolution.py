"""Heatmap resolution: 1/4-resolution heatmaps with sub-pixel (DARK) decoding, hrexp's default, against
heatmaps upsampled to the full input (``task.head.upsample_to_input=true``), the reference plan's design
(``../shared/reference/spine_hrnet_plan.md``: 40 x 512 x 512 targets).

1. Cost: training-step time and peak memory at a 512x512 input with 40 landmarks (HRNet-W32 + heatmap
   head, synthetic spine data), each variant in a fresh process (on a CPU peak memory is the process's
   peak RSS above its RSS once the model and batch are built, before the first step; on a GPU
   ``max_memory_allocated`` above the memory allocated then).
2. Accuracy: each variant trained the same number of steps on the default job's data and input
   (``train.py task=landmarks model=hrnet_w32``, 8 epochs unless ``--epochs``), same seed, then its best val MRE and
   test MRE. The full-resolution variant's sigma is scaled by the stride (same Gaussian in image
   pixels), so only the resolution differs.

``--parts cost accuracy`` (default both): the cost table is written to ``heatmap_resolution-<device>``,
the accuracy table (tens of minutes of training) to ``heatmap_resolution_accuracy-<device>``, so each
can be rerun alone.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import (Table, current_rss_mb, in_fresh_process, main, median, parser, rss_mb,
                               seconds_per_call)

NAME = "heatmap_resolution"
RESULT_NAMES = {"cost": NAME, "accuracy": f"{NAME}_accuracy"}
VARIANTS = {"1/4 + DARK (default)": [], "full input resolution": ["task.head.upsample_to_input=true",
                                                                  "task.codec.sigma=8.0"]}


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="epochs of each accuracy run (default 8: the default job)")
    p.add_argument("--cost-size", type=int, default=512, help="square input of the cost table")
    p.add_argument("--batch-size", type=int, default=None, help="batch of the cost table (CPU 2, GPU 16)")
    p.add_argument("--parts", nargs="+", choices=list(RESULT_NAMES), default=list(RESULT_NAMES))
    return p


def step_cost(overrides: list[str], device: str, repeats: int) -> dict:
    """Time and peak memory of training steps of the run ``overrides`` composes (in a fresh process)."""
    import torch
    from hydra.utils import instantiate

    from benchmarks.common import startup, synchronize
    from benchmarks.overhead import compose
    from hrexp.jobs.train_run import build_run

    startup()
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(overrides, Path(tmp) / "run")
        datamodule, module, *_ = build_run(cfg)
        batch = next(iter(datamodule.train_dataloader()))
    batch = {k: v.to(dev) if hasattr(v, "to") else v for k, v in batch.items()}
    module = module.to(dev).train()
    optimizer = instantiate(cfg.optimizer)(module.parameters())

    def step():
        outputs = module(batch["image"])
        loss = module.task.loss(outputs, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return outputs

    synchronize(dev)
    built = current_rss_mb()  # model and batch in memory, no optimizer state yet
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
    outputs = step()  # the first step allocates the optimizer state; later ones reuse it
    times = seconds_per_call(step, dev, 0, repeats)
    peak = (torch.cuda.max_memory_allocated(dev) - base) / 2**20 if dev.type == "cuda" else rss_mb() - built
    return {"step_s": median(times), "peak_mb": peak, "heatmaps": list(outputs.shape[1:])}


def accuracy(overrides: list[str], out: Path) -> dict:
    """Train with ``overrides`` (train.py's run, in this process) and return its MRE numbers."""
    from benchmarks.overhead import compose
    from hrexp.jobs.train_run import train

    record = train(compose(overrides, out))
    best = record.best.get("val/mre")
    return {"val_mre": best.value if best else float("nan"), "epoch": best.epoch if best else None,
            "test_mre": record.test.metrics.get("test/mre") if record.test else float("nan"),
            "train_s": record.train_time_s}


def run(args) -> dict[str, list[Table]]:
    """The tables of each part asked for, by results-file name."""
    out = {}
    if "cost" in args.parts:
        out[RESULT_NAMES["cost"]] = [cost_table(args)]
    if "accuracy" in args.parts:
        out[RESULT_NAMES["accuracy"]] = [accuracy_table(args)]
    return out


def _common(args) -> tuple[bool, str]:
    return args.smoke, "model=hrnet_w18" if args.smoke else "model=hrnet_w32"


def cost_table(args) -> Table:
    smoke, model = _common(args)
    size = 64 if smoke else args.cost_size
    batch = args.batch_size or (2 if smoke or args.device.type == "cpu" else 16)
    common = [model, "task=landmarks", f"data.image_size=[{size},{size}]", f"data.batch_size={batch}"]
    if smoke:
        common += ["data.num_train=8", "data.num_test=2", "data.original_size=[128,64]"]
    cost = Table(f"Heatmap resolution: cost of a training step ({model[6:]}, {size}x{size} input, 40 landmarks, "
                 f"batch {batch}, {args.device.type})",
                 ["heatmaps", "targets (K x h x w)", "step s", "peak memory MB", "step ratio", "memory ratio"])
    results = {name: in_fresh_process(step_cost, overrides=common + extra, device=str(args.device),
                                      repeats=2 if smoke else 4) for name, extra in VARIANTS.items()}
    ref = results["1/4 + DARK (default)"]
    for name, r in results.items():
        cost.add(name, " x ".join(map(str, r["heatmaps"])), r["step_s"], r["peak_mb"], r["step_s"] / ref["step_s"],
                 r["peak_mb"] / ref["peak_mb"] if ref["peak_mb"] > 0 else float("nan"))
    cost.notes.append("ratios: variant / default. Peak memory of training above the model and batch: on a CPU "
                      "the process's peak RSS over its RSS before the first step, on a GPU max_memory_allocated "
                      "over the memory allocated then (activations, gradients, targets, AdamW state).")
    return cost


def accuracy_table(args) -> Table:
    smoke, model = _common(args)
    epochs = args.epochs or (1 if smoke else 8)
    acc = Table(f"Heatmap resolution: accuracy after the same steps (default job's data and input, {epochs} "
                f"epochs, seed 0)", ["heatmaps", "best val MRE px", "at epoch", "test MRE px", "train s"])
    train_common = [model, "task=landmarks", f"trainer.max_epochs={epochs}", "seed=0", "logger=csv",
                    f"trainer.accelerator={'gpu' if args.device.type == 'cuda' else 'cpu'}"]
    if smoke:
        train_common += ["data.num_train=8", "data.num_test=2", "data.original_size=[128,64]",
                         "data.image_size=[64,32]", "data.batch_size=2", "trainer.limit_train_batches=2",
                         "trainer.num_sanity_val_steps=0"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, extra) in enumerate(VARIANTS.items()):
            r = accuracy(train_common + extra, Path(tmp) / f"run{i}")
            acc.add(name, r["val_mre"], r["epoch"], r["test_mre"], r["train_s"])
    acc.notes.append("MRE in original-image pixels; both variants decode with DARK sub-pixel refinement; "
                     "full resolution uses sigma 8 (= 2 x stride 4) so the Gaussian is the same in image pixels.")
    return acc


if __name__ == "__main__":
    main(NAME, run, build_parser())
