"""Training throughput with the GPU fast path: images/s, peak memory and model FLOP utilisation.

Two workloads, each the run ``train.py`` builds (``build_run``: module, task, callbacks, the Trainer with
its precision and speed options) fitted on batches already in memory, so the data pipeline is out of
the picture (``benchmarks/data_pipeline.py`` measures that):

* pose: HRNet-W32, ``task=pose`` (17 COCO keypoints, heatmaps at 1/4), 256x192 input, batch 32 on a GPU.
  The images are made here (person boxes with random keypoints in a COCO file): the step's cost does
  not depend on what the pixels show. mmpose publishes about 120 images/s per V100 for this model.
* landmarks: HRNet-W32, ``task=landmarks`` (40 heatmaps), 512x512 input, batch 16 on a GPU.

Variants, each in a fresh process (peak memory of its own): fp32 eager (the reference and the CPU
default), fp32 + channels_last, bf16-mixed, bf16-mixed + channels_last, and ``trainer=gpu_fast``
(bf16-mixed, channels_last, torch.compile, cudnn.benchmark). On a CPU compile is left out unless
``--compile`` is given (inductor compiles a training step for many minutes there) and the last variant
is the same set on the CPU.

Model FLOP utilisation = 3 x forward multiply-adds x 2 x images/s / the card's dense bf16 peak (a
backward pass costs about twice the forward). The peak is looked up from the GPU's name, or given
with ``--peak-tflops``; on a CPU it is not reported.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import Table, in_fresh_process, main, median, parser

NAME = "throughput"

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, by name fragment.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "V100": 125.0}

WORKLOADS = {
    "pose": {"size": (256, 192), "gpu_batch": 32},
    "landmarks": {"size": (512, 512), "gpu_batch": 16},
}


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--batch-size", type=int, default=None, help="per workload default: GPU 32 / 16, CPU 2")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default GPU 30, CPU 6, smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default GPU 10 (compile), CPU 2)")
    p.add_argument("--compile", action="store_true", help="on a CPU, also run the compiled variant")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    return p


def peak_tflops(device_name: str) -> float | None:
    for fragment, value in PEAK_BF16_TFLOPS.items():  # most specific first
        if fragment in device_name:
            return value
    return None


def write_pose_data(root: Path, count: int, size: tuple[int, int]) -> list[str]:
    """``count`` images with one person box each and 17 random keypoints inside it (COCO format)."""
    import numpy as np
    from PIL import Image

    from hrexp.data.pose.keypoint_meta import load_meta_file

    names = list(load_meta_file("coco_person").names)
    rng = np.random.default_rng(0)
    h, w = size[0] * 2, size[1] * 2
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i}.jpg")
        box = [w * 0.2, h * 0.1, w * 0.6, h * 0.8]
        xs = rng.uniform(box[0], box[0] + box[2], len(names))
        ys = rng.uniform(box[1], box[1] + box[3], len(names))
        keypoints = [v for x, y in zip(xs, ys) for v in (float(x), float(y), 2)]
        images.append({"id": i, "file_name": f"{i}.jpg", "height": h, "width": w})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": box, "area": box[2] * box[3],
                            "iscrowd": 0, "num_keypoints": len(names), "keypoints": keypoints})
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "person", "keypoints": names, "skeleton": []}]}
    (root / "pose.json").write_text(json.dumps(coco))
    return ["task=pose", "data=coco_pose", f"data.root={root}", "data.train_json=pose.json",
            "data.train_images=images", "data.val_json=pose.json", "data.val_images=images"]


def throughput_worker(workload: str, model: str, size: tuple[int, int], overrides: list[str], device: str, warmup: int, steps: int,
                      batch: int, threads: int | None) -> dict:
    """Images/s and peak memory of ``steps`` training steps of one variant (run in a fresh process)."""
    import torch
    from torch.utils.data import DataLoader

    from benchmarks.common import rss_mb, startup
    from benchmarks.overhead import StepStarts, compose
    from hrexp.models.complexity import count_macs
    from hrexp.jobs.train_run import build_run

    startup(threads)
    ResetPeakAt = _reset_peak_callback()
    dev = torch.device(device)
    with tempfile.TemporaryDirectory() as tmp:
        common = [f"data.image_size=[{size[0]},{size[1]}]", f"data.batch_size={batch}", "trainer.max_epochs=1",
                  "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "test=false",
                  "callbacks.progress_bar=null", f"trainer.max_steps={warmup + steps + 1}", "data.num_workers=0"]
        if workload == "pose":
            common += write_pose_data(Path(tmp) / "pose", max(batch, 4), size)
        else:
            common += ["task=landmarks", f"data.num_train={max(batch, 8) + 2}", "data.num_test=2"]
        cfg = compose([f"model={model}", *common, *overrides], Path(tmp) / "run")
        timer = StepStarts(dev)
        peak_reset = ResetPeakAt(warmup, dev)
        run = build_run(cfg, extra_callbacks=[timer.callback, peak_reset])
        first = next(iter(run.datamodule.train_dataloader()))
        # The network's own forward cost (counted on an uncompiled run: the reference variant).
        macs = None if run.module.speed.compiling else count_macs(run.module, (1, 3, *size))
        loader = DataLoader([first] * (warmup + steps + 1), batch_size=None)  # already collated
        t0 = time.perf_counter()
        run.trainer.fit(run.module, train_dataloaders=loader)
        wall = time.perf_counter() - t0
        as_run = _as_run(run)
    images = int(first["image"].shape[0])  # the batch the loader really made, not the one asked for
    s = timer.starts
    times = [b - a for a, b in zip(s[warmup:warmup + steps], s[warmup + 1:warmup + steps + 1])]
    if dev.type == "cuda":  # from the first timed step: after compiling and the optimizer's first allocation
        peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak_mb = rss_mb()  # the process's high-water mark: model, optimizer state, activations
    return {"step_s": median(times), "images_per_s": images / median(times), "peak_mb": peak_mb, "macs": macs,
            "fit_wall_s": wall, "first_steps_s": s[warmup] - s[0] if len(s) > warmup else float("nan"),
            "as_run": as_run}


def _as_run(run) -> str:
    """What the fitted run really used: the Trainer's precision, the weights' memory layout, compiled or
    not (a variant whose overrides did not take shows here, not as a mislabelled row)."""
    import torch

    weight = next(p for p in run.module.backbone.parameters() if p.dim() == 4)
    layout = "channels_last" if (weight.is_contiguous(memory_format=torch.channels_last)
                                 and not weight.is_contiguous()) else "NCHW"
    parts = [str(run.trainer.precision), layout]
    if run.module.speed.compiling:
        parts.append("compiled")
    return ", ".join(parts)


def _reset_peak_callback():
    import lightning.pytorch as pl
    import torch

    class ResetPeakAt(pl.Callback):
        """Resets the GPU's peak-memory counter as the first timed step starts."""

        def __init__(self, step: int, device):
            self.step, self.device = step, device

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == self.step and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)

    return ResetPeakAt


def variants(device_type: str, compile_on_cpu: bool) -> dict[str, list[str]]:
    accel = "gpu" if device_type == "cuda" else "cpu"
    out = {
        "fp32 (reference)": [f"trainer.accelerator={accel}", "trainer.precision=32", "speed.channels_last=false"],
        "fp32 + channels_last": [f"trainer.accelerator={accel}", "trainer.precision=32", "speed.channels_last=true"],
        "bf16-mixed": [f"trainer.accelerator={accel}", "trainer.precision=bf16-mixed", "speed.channels_last=false"],
        "bf16-mixed + channels_last": [f"trainer.accelerator={accel}", "trainer.precision=bf16-mixed",
                                       "speed.channels_last=true"],
    }
    if device_type == "cuda":
        out["trainer=gpu_fast (+ compile, cudnn.benchmark)"] = ["trainer=gpu_fast"]
        out["fp32 + channels_last + compile"] = ["trainer=gpu_fast", "trainer.precision=32"]
    elif compile_on_cpu:
        out["bf16-mixed + channels_last + compile"] = [*out["bf16-mixed + channels_last"], "speed.compile=true"]
    return out


def run(args) -> list[Table]:
    import torch

    smoke = args.smoke
    cuda = args.device.type == "cuda"
    steps = args.steps or (2 if smoke else 30 if cuda else 6)
    warmup = args.warmup or (1 if smoke else 10 if cuda else 2)
    device_name = torch.cuda.get_device_name(args.device) if cuda else "cpu"
    peak = args.peak_tflops or (peak_tflops(device_name) if cuda else None)
    tables = []
    for workload in args.workloads:
        batch = args.batch_size or (2 if smoke or not cuda else WORKLOADS[workload]["gpu_batch"])
        size = (64, 32) if smoke else WORKLOADS[workload]["size"]
        model = "hrnet_w18" if smoke else "hrnet_w32"
        table = Table(f"Training throughput: {model} {workload}, {size[0]}x{size[1]}, batch {batch}, "
                      f"{device_name}", ["variant", "images/s", "step ms", "x fp32", "peak memory MB",
                                         "MFU %", "first steps s", "as run"])
        results = {name: in_fresh_process(throughput_worker, workload=workload, model=model, size=size, overrides=overrides,
                                          device=str(args.device), warmup=warmup, steps=steps, batch=batch,
                                          threads=args.threads)
                   for name, overrides in variants(args.device.type, args.compile).items()}
        ref = results["fp32 (reference)"]
        macs = ref["macs"]
        for name, r in results.items():
            mfu = 100 * 3 * macs * 2 * r["images_per_s"] / (peak * 1e12) if peak and macs else None
            table.add(name, r["images_per_s"], 1000 * r["step_s"], r["images_per_s"] / ref["images_per_s"],
                      r["peak_mb"], "-" if mfu is None else mfu, r["first_steps_s"], r["as_run"])
        table.notes.append(f"forward: {macs / 1e9:.2f} G multiply-adds per image; MFU = 3 x that x 2 x images/s / "
                           + (f"{peak:g} TFLOP/s (dense bf16 peak)" if peak else "the device's bf16 peak (not "
                              "known for this device: --peak-tflops)"))
        table.notes.append(f"median of {steps} steps after {warmup} untimed ones (which compile, where compiled: "
                           "'first steps s'); data in memory. Peak memory: max_memory_allocated on a GPU, the "
                           "process's peak RSS on a CPU. images/s: the loader's real batch size over the median "
                           "step. as run: the fitted Trainer's precision, the backbone weights' layout, compiled.")
        if workload == "pose":
            table.notes.append("reference: mmpose publishes about 120 images/s per V100 for HRNet-W32 at 256x192.")
        tables.append(table)
    return tables


if __name__ == "__main__":
    main(NAME, run, build_parser())
