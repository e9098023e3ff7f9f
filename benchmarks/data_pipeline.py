"""Data pipeline on large images: can the landmark datamodule feed the model?

For each source (the real AASCE X-rays in ``../shared/data/spine_aasce``, up to 1427x3755 JPG, when
present; 2000x2400 grayscale JPGs made here) it measures, with the training transform (decode,
shrink, augment) of the datamodule ``train.py`` builds (``data=spine_aasce`` / ``data=landmarks_csv``):
- per sample on the main process: decode ms (``load_image``), and a whole training sample from the
  original and from the reduced copy in the image cache (``data.image_cache``, on by default);
- samples/s of the training DataLoader with 0, 1, 2, ... workers, cache off and on (collation
  included; the first batch, which pays the worker start, is not timed);
- the model's training samples/s at the same input and batch (HRNet-W32 + heatmap head, forward,
  loss with heatmap targets encoded on the fly, backward, AdamW), and how long encoding the targets
  of a batch takes (vectorised over the batch and landmarks).
Data is the bottleneck where its samples/s is below the model's; with 0 workers the two add up.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, Table, main, median, parser, seconds_per_call

NAME = "data_pipeline"


def build_parser():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, nargs=2, default=None, help="network input h w (default: the config's)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the config's (8)")
    p.add_argument("--images", type=int, default=None, help="images made for the 2000x2400 source (default 16)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per loader (default 6)")
    p.add_argument("--workers", type=int, nargs="+", default=None, help="worker counts (default 0 1 .. cpus)")
    return p


def make_large_images(folder: Path, count: int, size: tuple[int, int], num_landmarks: int = 68) -> Path:
    """``count`` grayscale JPGs of ``size`` (h, w) with X-ray-like smooth content, and their landmark CSV."""
    import cv2

    rng = np.random.default_rng(0)
    h, w = size
    rows = []
    for i in range(count):
        low = rng.random((h // 32 + 1, w // 32 + 1)).astype(np.float32)
        image = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
        image += 0.05 * rng.standard_normal((h, w)).astype(np.float32)  # film grain, as X-rays have
        image = np.clip(image * 200 + 20, 0, 255).astype(np.uint8)
        name = f"xray_{i:03d}.jpg"
        cv2.imwrite(str(folder / name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        xy = rng.uniform([0.2 * w, 0.1 * h], [0.8 * w, 0.9 * h], size=(num_landmarks, 2))
        rows.append(",".join([name, *(f"{v:.1f}" for v in xy.ravel())]))
    header = ",".join(["image", *(f"p{k}_{c}" for k in range(num_landmarks) for c in "xy")])
    csv = folder / "landmarks.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    return csv


def loader_samples_per_s(datamodule, workers: int, batches: int, cache) -> float:
    """Samples/s of the training loader with ``workers`` workers and the image cache on or off, after its
    first batch (which pays the workers' start)."""
    datamodule.num_workers = workers
    for dataset in datamodule.datasets.values():
        dataset.image_cache = cache
    loader = datamodule.train_dataloader()
    it = iter(loader)
    next(it)
    t0, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        seen += batch["image"].shape[0]
    rate = seen / (time.perf_counter() - t0)
    del it, loader
    return rate


def model_step(module, batch, optimizer):
    def step():
        loss = module.task.loss(module(batch["image"]), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def per_sample_ms(dataset, n: int, cache) -> float:
    dataset.image_cache = cache
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        dataset[i]
        times.append(time.perf_counter() - t0)
    return 1000 * median(times)


def measure_source(name: str, data_overrides: list[str], args, tmp: Path, table: Table) -> None:
    from hydra.utils import instantiate

    from benchmarks.overhead import compose
    from hrexp.data.images import load_image
    from hrexp.jobs.train_run import build_run

    overrides = ["model=hrnet_w32" if not args.smoke else "model=hrnet_w18", "task=landmarks", *data_overrides,
                 f"data.image_cache={tmp / ('cache_' + name.split()[0])}"]
    if args.image_size:
        overrides.append(f"data.image_size=[{args.image_size[0]},{args.image_size[1]}]")
    if args.batch_size:
        overrides.append(f"data.batch_size={args.batch_size}")
    cfg = compose(overrides, tmp / f"run_{name.split()[0]}")
    datamodule, module, *_ = build_run(cfg)
    dataset = datamodule.datasets["train"]
    cache = dataset.image_cache
    n = min(len(dataset), 3 if args.smoke else 12)
    decode = median([_seconds(lambda: load_image(dataset.landmark_set.records[i].image_path)) for i in range(n)])
    largest = max((r.size for r in dataset.landmark_set.records), key=lambda s: s[0] * s[1])
    uncached_ms = per_sample_ms(dataset, n, None)
    per_sample_ms(dataset, n if args.smoke else len(dataset), cache)  # fills the cache: one pass over the images
    # The reduced copies the pass stored (0 would mean the "(cache)" columns never read the cache).
    entries = len(list(cache.folder.rglob("*.npy"))) if cache is not None else 0
    cached_ms = per_sample_ms(dataset, n, cache)
    workers = args.workers or ([0, 1] if args.smoke else list(range(0, (os.cpu_count() or 1) + 1)))
    batches = args.batches or (1 if args.smoke else 6)
    rates = {w: (loader_samples_per_s(datamodule, w, batches, None), loader_samples_per_s(datamodule, w, batches, cache))
             for w in workers}

    batch = next(iter(datamodule.train_dataloader()))
    batch = {k: v.to(args.device) if hasattr(v, "to") else v for k, v in batch.items()}
    module = module.to(args.device).train()
    optimizer = instantiate(cfg.optimizer)(module.parameters())
    step = median(seconds_per_call(model_step(module, batch, optimizer), args.device, 1, 2 if args.smoke else 5))
    heatmap_hw = tuple(module(batch["image"]).shape[-2:])
    task = module.task
    encode = median(seconds_per_call(
        lambda: task.codec.encode(batch["keypoints"], batch["visible"], heatmap_hw, task.stride), args.device, 1, 5))
    model_rate = batch["image"].shape[0] / step
    for w, (plain, cached) in rates.items():
        table.add(name, f"{largest[1]}x{largest[0]}", "x".join(str(v) for v in batch["image"].shape[2:][::-1]),
                  1000 * decode, uncached_ms, cached_ms, entries, w, plain, cached, model_rate, cached / model_rate,
                  1000 * encode)


def _seconds(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run(args) -> list[Table]:
    table = Table(
        f"Data pipeline: training samples/s of the landmark datamodule vs the model ({args.device.type})",
        ["source", "largest image (w x h)", "input (w x h)", "decode ms", "sample ms", "sample ms (cache)",
         "cache entries", "workers",
         "data samples/s", "data samples/s (cache)", "model samples/s", "data (cache) / model",
         "target encode ms/batch"],
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        aasce = Path(os.environ.get("HREXP_SHARED_DATA", ROOT.parent / "shared" / "data")) / "spine_aasce"
        if aasce.is_dir():
            measure_source("AASCE X-rays (JPG)", ["data=spine_aasce", f"data.root={aasce}"], args, tmp, table)
        else:
            table.notes.append(f"AASCE X-rays: not measured, {aasce} is absent")
        # Smoke: large enough that the 256x128 input sees them at under half size, so the cache is used.
        size = (600, 500) if args.smoke else (2400, 2000)
        big = tmp / "large"
        big.mkdir()
        csv = make_large_images(big, args.images or (2 if args.smoke else 16), size)
        measure_source(f"made {size[1]}x{size[0]} gray JPG", ["data=landmarks_csv", f"data.csv={csv}"], args, tmp,
                       table)
    table.notes += [
        "decode ms: cv2 decode of one original. sample ms: one training sample (decode, fit keeping the aspect, "
        "rotation/scale/intensity augmentation); (cache): the same from the reduced copy in data.image_cache "
        "(hrexp's default), after one pass has filled it; cache entries: the reduced copies that pass stored.",
        "data samples/s: the training loader, collation included; workers 0 = on the training process, where "
        "its time adds to every step instead of overlapping it. Data keeps up where data / model > 1.",
    ]
    return [table]


if __name__ == "__main__":
    main(NAME, run, build_parser())
