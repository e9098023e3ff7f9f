"""A peer at equal budget (issue 26): landmarker's Spatial Configuration-Net with adaptive heatmaps, trained for
the same CPU minutes on the same cephalogram split and input size as hrexp's best recipe of ceph_table.py.

    make peer-venv                                                  # .venv-peer: landmarker beside hrexp's venv
    .venv-peer/bin/python scripts/landmarker_peer.py --minutes 8    # ~10 min; writes docs/results/landmarker_peer.*
    .venv-peer/bin/python scripts/landmarker_peer.py --smoke        # a few steps (checks it starts)

landmarker (PyPI, an optional extra: ``pip install -e .[peer]``) ships the models, heatmap generators, losses
and decoders but not a training loop; the loop below is written here in the style of its examples
(docs/user/index.md and the ISBI 2015 adaptive-heatmap notebook of predict-idlab/landmarker): its
``OriginalSpatialConfigurationNet(in_channels=1, out_channels=19)``, a learnable
``GaussianHeatmapGenerator(sigmas=3, gamma=100)`` at the input size, ``GaussianHeatmapL2Loss(alpha=5)``,
SGD (lr 1e-6, momentum 0.99, Nesterov; weight decay 1e-3 on the network, none on the sigmas and rotations),
batch 1, fp32 (its examples use no autocast), ``ReduceLROnPlateau`` on the validation loss, and
``heatmap_to_coord(method="local_soft_argmax")`` to decode. ``--optimizer sgd adamw`` (the default) runs that
and then the AdamW variant its configs also offer (lr 1e-4), one row each.

What is the same as hrexp's run: the seeded split (128 / 22 images), the input (384x320, aspect kept), the
augmentation (hrexp's datamodule feeds both: the grey X-ray's first channel, rescaled to [0, 1] per image as
landmarker's ``ScaleIntensityd`` does), two torch threads, and the clock: training stops when ``--minutes``
of wall time (validations included, as Lightning's ``max_time`` counts them) would be passed by another
epoch's validation. The best validation epoch's MRE is reported, as hrexp's best-val checkpoint is.

hrexp's row is its ``adaptive_wing`` run of ``scripts/ceph_table.py`` (reused, named in the table: val MRE and
seconds per step); its peak memory comes from a short run of that recipe started here (``--memory-minutes``):
the peak resident memory (VmHWM) of the training process, as the peer's is of this process during its run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ceph_table import CPU, SMOKE  # noqa: E402  (hrexp's row runs ceph_table.py's recipe as it does)
from timed_runs import RESULTS, ROOT, evaluate, max_time, train, write_results  # noqa: E402

HREXP_RECIPE = "adaptive_wing"  # the best row of docs/results/ceph_table.table.md
HREXP_OVERRIDES = ["task/loss=adaptive_wing"]
MM_RADII = (2.0, 2.5, 3.0, 4.0)  # the challenge's SDR radii
TABLE = ("framework", "model", "optimizer", "input", "batch", "precision", "train_min", "steps", "epochs", "s_per_step",
         "peak_rss_gb", "params_M", "mre_mm", "median_mm", "sdr_2mm", "sdr_4mm")


def need_landmarker():
    try:
        import landmarker  # noqa: F401
    except ImportError:
        raise SystemExit("landmarker is not installed in this Python: run `make peer-venv` and call this script "
                         "with .venv-peer/bin/python (landmarker pins scipy<1.16, so it gets a venv of its own "
                         "layered on .venv)")


def peak_rss_gb(pid: int | str = "self") -> float:
    """The process's peak resident memory (VmHWM) in GiB. Read from /proc rather than getrusage: a child's
    ru_maxrss also counts the parent's pages it was forked (vforked) from."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise SystemExit(f"/proc/{pid}/status has no VmHWM line: peak memory needs Linux")


def reset_peak_rss() -> None:
    """Start VmHWM afresh at the current resident memory (clear_refs 5), so each run's peak is its own."""
    Path("/proc/self/clear_refs").write_text("5")


def hrexp_peak_rss(overrides: list[str], out: Path, minutes: float) -> tuple[float, dict]:
    """Train hrexp's recipe for ``minutes`` in ``out`` (a fresh folder), polling the training process's VmHWM;
    returns its peak in GiB and its run record."""
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = [sys.executable, str(ROOT / "train.py"), *overrides, f"++trainer.max_time={max_time(minutes)}",
            f"hydra.run.dir={out / 'train'}"]
    peak = 0.0
    with open(out / "train.log", "w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            try:
                peak = max(peak, peak_rss_gb(proc.pid))
            except (OSError, SystemExit):
                pass  # exiting between poll and read
            time.sleep(0.5)
    if proc.returncode != 0:
        raise SystemExit(f"train.py {' '.join(overrides)} failed ({proc.returncode}); see {out / 'train.log'}")
    return peak, json.loads((out / "train" / "results.json").read_text())


def ceph_datamodule(smoke: bool):
    """hrexp's datamodule of experiment=ceph_isbi2015 at batch 1 (the peer's batch), no workers."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from hrexp.startup import startup

    startup(ROOT)
    overrides = ["experiment=ceph_isbi2015", "data.num_workers=0", "data.batch_size=1"]
    if smoke:
        overrides.append("data.image_size=[64,64]")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm = instantiate(cfg.data)
    dm.setup("fit")
    return dm, tuple(cfg.data.image_size)


def grey(images):
    """The X-ray's first channel, rescaled to [0, 1] per image (landmarker's ScaleIntensityd)."""
    x = images[:, :1]
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


def to_original(points_xy, matrix):
    """Input-image (x, y) points back to original px through the inverse of the batch's 3x3 affine (float64),
    as hrexp's heatmap task maps its predictions."""
    from hrexp.geometry import apply_affine, invert_affine

    return apply_affine(points_xy.double(), invert_affine(matrix.double()))


def validate(model, generator, criterion, loader, smoke: bool) -> dict:
    """Val loss and errors in mm of the decoded heatmaps (local soft-argmax, landmarker's decoder)."""
    import numpy as np
    import torch
    from landmarker.heatmap import heatmap_to_coord

    from hrexp.reports.eval_plots import sdr_values

    model.eval()
    losses, errors = [], []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if smoke and i >= 2:
                break
            if i == 0:  # the errors are measured after mapping back through the inverse affine: check it once
                truth = to_original(batch["keypoints"], batch["matrix"])
                gap = float((truth - batch["keypoints_orig"].double()).abs().max())
                if gap > 0.01:
                    raise SystemExit(f"landmarker peer: the batch's matrix does not map keypoints back to "
                                     f"keypoints_orig ({gap:.3g} px apart); the errors in mm would be wrong")
            out = model(grey(batch["image"]))
            target_yx = batch["keypoints"].flip(-1)
            losses.append(float(criterion(out, generator.sigmas, generator(target_yx))))
            pred_xy = heatmap_to_coord(out, method="local_soft_argmax").flip(-1)
            pred = to_original(pred_xy, batch["matrix"])
            error_px = (pred - batch["keypoints_orig"].double()).norm(dim=-1)
            errors.append((error_px * batch["spacing"].double()[:, None]).flatten().numpy())
    model.train()
    mm = np.concatenate(errors)
    sdr = sdr_values(mm, MM_RADII)
    return {"val_loss": float(np.mean(losses)), "mre_mm": float(mm.mean()), "median_mm": float(np.median(mm)),
            **{f"sdr_{r:g}mm": float(v) for r, v in zip(MM_RADII, sdr)}}


def train_peer(minutes: float, optimizer_name: str, out: Path, smoke: bool) -> dict:
    """landmarker's recipe in a loop written here (its wheel has none), for ``minutes`` of wall time."""
    import torch
    from landmarker.heatmap import GaussianHeatmapGenerator
    from landmarker.losses import GaussianHeatmapL2Loss
    from landmarker.models import OriginalSpatialConfigurationNet

    torch.manual_seed(0)
    reset_peak_rss()
    dm, size = ceph_datamodule(smoke)
    num_keypoints = dm.num_keypoints
    model = OriginalSpatialConfigurationNet(in_channels=1, out_channels=num_keypoints)
    generator = GaussianHeatmapGenerator(nb_landmarks=num_keypoints, sigmas=3, gamma=100, heatmap_size=size,
                                         learnable=True)
    criterion = GaussianHeatmapL2Loss(alpha=5)
    groups = [{"params": model.parameters(), "weight_decay": 1e-3},
              {"params": [generator.sigmas], "weight_decay": 0.0}, {"params": [generator.rotation], "weight_decay": 0.0}]
    if optimizer_name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=1e-6, momentum=0.99, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=1e-4)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=10, cooldown=10)
    budget_s = minutes * 60
    start = time.perf_counter()
    steps = epochs = 0
    train_s = 0.0
    val_s = 0.0
    history, best = [], None
    done = False
    while not done:
        for i, batch in enumerate(dm.train_dataloader()):
            t0 = time.perf_counter()
            optimizer.zero_grad()
            predicted = model(grey(batch["image"]))
            target = generator(batch["keypoints"].flip(-1))  # landmarker's landmarks are (y, x)
            loss = criterion(predicted, generator.sigmas, target)
            if not math.isfinite(loss.item()):
                raise SystemExit(f"landmarker peer: the loss is {loss.item()} at step {steps}")
            loss.backward()
            optimizer.step()
            steps += 1
            train_s += time.perf_counter() - t0
            elapsed = time.perf_counter() - start
            last_val = history[-1]["val_s"] if history else 0.0
            # stop when another step and a validation would not fit the budget (as hrexp's time budget does)
            if elapsed + train_s / steps + last_val > budget_s or (smoke and i >= 1):
                done = True
                break
        epochs += 1
        t0 = time.perf_counter()
        facts = validate(model, generator, criterion, dm.val_dataloader(), smoke)
        facts["val_s"] = time.perf_counter() - t0
        val_s += facts["val_s"]
        plateau.step(facts["val_loss"])
        facts.update(steps=steps, epochs=epochs, minutes=(time.perf_counter() - start) / 60)
        history.append(facts)
        print(f"epoch {epochs}: {steps} steps, {facts['minutes']:.2f} min, val MRE {facts['mre_mm']:.3f} mm, "
              f"SDR@2mm {facts['sdr_2mm']:.3f}", flush=True)
        if best is None or facts["mre_mm"] < best["mre_mm"]:
            best = dict(facts)
    total = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    from importlib.metadata import version

    return {"framework": f"landmarker {version('landmarker')}",
            "model": "OriginalSpatialConfigurationNet, adaptive Gaussian heatmaps",
            "input": f"{size[0]}x{size[1]}", "batch": 1, "precision": "32", "optimizer": optimizer_name,
            "train_min": total / 60, "steps": steps, "epochs": epochs, "s_per_step": train_s / max(steps, 1),
            "validation_min": val_s / 60, "peak_rss_gb": peak_rss_gb(),
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "best_epoch": best["epochs"], **{k: best[k] for k in ("mre_mm", "median_mm", "sdr_2mm", "sdr_2.5mm",
                                                                 "sdr_3mm", "sdr_4mm")}}


def hrexp_row(ceph_runs: Path, memory_minutes: float, out: Path, smoke: bool) -> dict:
    """hrexp's best recipe: accuracy and s/step of ceph_table.py's finished run, peak memory of a short run here."""
    run = ceph_runs / HREXP_RECIPE
    if smoke:  # a few steps on small images, trained and scored here
        record = train("hrexp", "ceph_isbi2015", HREXP_OVERRIDES, out, None, True, CPU, SMOKE)
        checkpoint = record["checkpoints"]["checkpoint_best_metric"]["path"]
        report = evaluate("hrexp", [checkpoint], out, ["trainer.limit_test_batches=2"])
    else:
        results = run / "train" / "results.json"
        if not results.is_file():
            raise SystemExit(f"{results} is missing: run `python scripts/ceph_table.py --recipes {HREXP_RECIPE}` first "
                             "(the peer is compared with that run)")
        record = json.loads(results.read_text())
        report = json.loads((run / "eval" / "report.json").read_text())
    overall = report["overall"]
    peak, memory_record = hrexp_peak_rss(["experiment=ceph_isbi2015", *HREXP_OVERRIDES, *CPU, *(SMOKE if smoke else [])],
                                         out / "hrexp_memory", memory_minutes)
    steps = record.get("trained_steps") or 0
    return {"framework": "hrexp", "model": "HRNet-W18, Adaptive Wing loss (ceph_table.py adaptive_wing)",
            "optimizer": "adamw",
            "input": "x".join(str(s) for s in record["input_size"]) if record.get("input_size") else "384x320",
            "batch": record.get("global_batch_size"), "precision": record.get("precision"), "train_min": float(record["train_time_s"]) / 60,
            "steps": steps, "epochs": record.get("trained_epochs"),
            "s_per_step": float(record["train_time_s"]) / steps if steps else None, "peak_rss_gb": peak,
            "peak_rss_run_min": float(memory_record.get("train_time_s") or 0) / 60,
            "params_M": (record.get("params") or {}).get("total", 0) / 1e6, "run": str(run.relative_to(ROOT)) if
            run.is_relative_to(ROOT) else str(run), "mre_mm": overall.get("mre_mm"), "median_mm": overall.get("median_mm"),
            "sdr_2mm": overall.get("sdr_20"), "sdr_4mm": overall.get("sdr_40")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="the peer's training wall time (ceph_table.py's)")
    parser.add_argument("--optimizer", nargs="+", choices=("sgd", "adamw"), default=["sgd", "adamw"],
                        help="one run each; sgd: landmarker's examples (lr 1e-6, Nesterov 0.99); adamw: its configs' "
                             "variant (1e-4)")
    parser.add_argument("--ceph-runs", type=Path, default=ROOT / "logs" / "ceph_table",
                        help="ceph_table.py's --out, holding the hrexp run compared with")
    parser.add_argument("--memory-minutes", type=float, default=1.5, help="the short hrexp run whose peak memory is taken")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "landmarker_peer")
    parser.add_argument("--smoke", action="store_true", help="a few steps on small images (checks it starts)")
    parser.add_argument("--results", type=Path, default=None, help="where the table goes (default: docs/results; "
                                                                 "--smoke: --out)")
    args = parser.parse_args(argv)
    need_landmarker()
    torch_threads = int(os.environ.get("HREXP_PEER_THREADS", "2"))
    import torch

    torch.set_num_threads(torch_threads)
    peers = [train_peer(args.minutes, name, args.out / f"landmarker_{name}", args.smoke) for name in args.optimizer]
    ours = hrexp_row(args.ceph_runs, args.memory_minutes, args.out, args.smoke)
    notes = (["SMOKE RUN (64x64, a few steps), not a result"] if args.smoke else
             [f"{args.minutes:g} min of training wall time each (validations included), 2-core CPU, nothing else running",
              "seeded validation split of ../shared/data/ceph_isbi2015 (22 of 150 images), errors in mm; best "
              "validation epoch (hrexp: its best-val checkpoint scored by eval.py)",
              "landmarker's loop is written in scripts/landmarker_peer.py in the style of its examples (its wheel "
              "has none); the data pipeline (split, resize, augmentation) is hrexp's for both",
              "peak_rss_gb: the training process's peak resident memory (hrexp: a short run of the same recipe, "
              f"{args.memory_minutes:g} min, one validation or more)"])
    write_results("landmarker_peer", "landmarker's SCN against hrexp's best ceph recipe at equal CPU time",
                  [ours, *peers], TABLE, args.results or (args.out if args.smoke else RESULTS), notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
