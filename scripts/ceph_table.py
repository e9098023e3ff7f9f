"""Accuracy per CPU-hour on the ISBI 2015 cephalograms: recipes compared at equal training time (issue 26).

    .venv/bin/python scripts/ceph_table.py --minutes 60                       # every recipe, 60 min each
    .venv/bin/python scripts/ceph_table.py --minutes 20 --recipes gaussian udp adaptive
    .venv/bin/python scripts/ceph_table.py --smoke                            # a few steps each (checks it starts)

Every recipe trains ``experiment=ceph_isbi2015`` (scratch HRNet-W18, 384x320, batch 4, lr 1e-3 after a
100-step warmup) plus its overrides for ``--minutes`` of training (``trainer.max_time``: the lr decays over
that time, callbacks.time_budget), in the precision ``trainer.precision=auto`` picks (bf16 where the CPU has
it natively); ``eval.py`` then scores its best-val-MRE checkpoint on the seeded validation split (22 of the
150 images; the data has no test split). Two recipes split the time:

* ``progressive``: ``gaussian`` at 384x320 for half the time, then its backbone (``model.pretrained=<ckpt>``;
  the head starts afresh) trained at 512x416 for the other half;
* ``ensemble3``: ``gaussian`` with seeds 0, 1, 2 for a third of the time each, scored as one seed ensemble
  (``eval.py ckpt_path=[a,b,c]``, the mean of the three predictions).

Writes ``docs/results/ceph_table.json`` and ``.table.md`` (val MRE and median in mm, SDR at 2 / 2.5 / 3 / 4
mm, steps and epochs, a per-landmark table) and ``docs/results/ceph_curve.png``: val MRE (mm) at each
validation against training minutes, one line per run (a point before the end trained at a higher lr than
a run of that length would end at). Finished runs are reused: the script can be stopped and called again.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from timed_runs import RESULTS, ROOT, evaluate, record_row, train, write_results

EXPERIMENT = "ceph_isbi2015"
HIRES = ["data.image_size=[512,416]"]
RECIPES = {  # name -> overrides of experiment=ceph_isbi2015 (progressive and ensemble3: see the docstring)
    "gaussian": [],
    "udp": ["task/codec=udp"],
    "adaptive": ["task/codec=adaptive"],
    "adaptive_wing": ["task/loss=adaptive_wing"],
    "hires_w18": HIRES,
    "progressive": HIRES,
    "ensemble3": [],
}
# The CPU recipe: no loader workers (they would take the model's cores), the budget decides the length.
CPU = ["data.num_workers=0", "trainer.max_epochs=1000", "trainer.precision=auto", "callbacks.progress_bar=null",
       "test=false"]
SMOKE = ["data.image_size=[64,64]", "data.batch_size=2", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=0"]
SMOKE_EVAL = ["trainer.limit_test_batches=2", "report.enabled=true"]
MM_RADII = {"sdr_20": "sdr_2mm", "sdr_25": "sdr_2.5mm", "sdr_30": "sdr_3mm", "sdr_40": "sdr_4mm"}  # at 0.1 mm/px
TABLE = ("recipe", "input", "train_min", "steps", "epochs", "precision", "mre_mm", "median_mm", "sdr_2mm",
         "sdr_2.5mm", "sdr_3mm", "sdr_4mm", "p90_mm", "mre")


def run_recipe(name: str, minutes: float, out: Path, smoke: bool) -> tuple[dict, list[Path]]:
    """Train the recipe's run(s) and evaluate; returns the table row and its training folders."""
    size = "512x416" if RECIPES[name] == HIRES else "384x320"
    if name == "ensemble3":
        records = [train(f"ensemble3_seed{seed}", EXPERIMENT, [f"seed={seed}"], out, minutes / 3, smoke, CPU, SMOKE)
                   for seed in range(3)]
        rows = [record_row(f"seed{seed}", [], r) for seed, r in enumerate(records)]
        row = {**rows[0], "train_min": sum(r["train_min"] for r in rows), "steps": sum(r["steps"] or 0 for r in rows),
               "epochs": sum(r["epochs"] or 0 for r in rows), "checkpoint": [r["checkpoint"] for r in rows]}
        checkpoints, folders = row["checkpoint"], [out / f"ensemble3_seed{s}" / "train" for s in range(3)]
    elif name == "progressive":
        low = record_row("progressive_low", [], train("progressive_low", EXPERIMENT, [], out, minutes / 2, smoke, CPU, SMOKE))
        high = record_row("progressive", HIRES, train("progressive", EXPERIMENT, [*HIRES, f"model.pretrained={low['checkpoint']}"],
                                                       out, minutes / 2, smoke, CPU, SMOKE))
        row = {**high, "train_min": low["train_min"] + high["train_min"], "steps": (low["steps"] or 0) + (high["steps"] or 0),
               "epochs": (low["epochs"] or 0) + (high["epochs"] or 0)}
        size = "384x320 then 512x416"
        checkpoints, folders = [high["checkpoint"]], [out / "progressive_low" / "train", out / "progressive" / "train"]
    else:
        row = record_row(name, RECIPES[name], train(name, EXPERIMENT, RECIPES[name], out, minutes, smoke, CPU, SMOKE))
        checkpoints, folders = [row["checkpoint"]], [out / name / "train"]
    facts = evaluate(name, checkpoints, out, SMOKE_EVAL if smoke else ())
    overall = dict(facts["overall"])
    spacing_ok = overall.get("mre_mm") is not None and abs(overall["mre_mm"] * 10 - overall["mre"]) < 1e-3 * overall["mre"]
    if not spacing_ok and not smoke:
        raise SystemExit(f"{name}: the report's mm and px errors are not 0.1 mm/px apart; the SDR radii would be wrong")
    row.update({"recipe": name, "input": size, **overall, **{mm: overall.get(px) for px, mm in MM_RADII.items()}})
    row["per_landmark_csv"] = str(out / name / "eval" / "per_landmark.csv")
    return row, folders


def per_landmark(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Landmark x recipe: each recipe's val MRE in mm per landmark (eval's per_landmark.csv)."""
    table: dict[str, dict] = {}
    for row in rows:
        with open(row["per_landmark_csv"], newline="") as fh:
            for r in csv.DictReader(fh):
                table.setdefault(r["landmark"], {"landmark": r["landmark"]})[row["recipe"]] = (
                    float(r["mre_mm"]) if r.get("mre_mm") not in (None, "") else None)
    return list(table.values()), ["landmark", *[r["recipe"] for r in rows]]


def curves(folders: dict[str, list[Path]]) -> dict[str, list[tuple[float, float]]]:
    """Each run's (training minutes, val MRE mm) at every validation, from its metrics.csv (time/train_min is
    logged by callbacks.time_budget); a second stage continues from its first stage's minutes."""
    out = {}
    for recipe, runs in folders.items():
        offset = 0.0
        for index, folder in enumerate(runs):
            points = []
            with open(folder / "csv" / "metrics.csv", newline="") as fh:
                for r in csv.DictReader(fh):
                    if r.get("val/mre_mm") and r.get("time/train_min"):
                        points.append((offset + float(r["time/train_min"]), float(r["val/mre_mm"])))
            label = recipe if len(runs) == 1 else f"{recipe} ({folder.parent.name})"
            out[label] = sorted(points)
            if recipe == "progressive" and points:
                offset = max(p[0] for p in points)
    return out


def plot_curves(series: dict[str, list[tuple[float, float]]], path: Path, minutes: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in series.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
    ax.axhline(2.0, color="grey", linestyle=":", label="goal 2.0 mm")
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("val MRE (mm)")
    ax.set_yscale("log")
    ax.set_title(f"ISBI 2015 cephalograms, seeded val split: {minutes:g} min per recipe")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--minutes", type=float, default=60.0, help="training time per recipe")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "ceph_table")
    parser.add_argument("--results", type=Path, default=None,
                        help="where the table goes as ceph_table.json / .table.md (default: docs/results; --smoke: --out)")
    parser.add_argument("--smoke", action="store_true", help="a few steps per recipe (checks it starts)")
    args = parser.parse_args(argv)
    results = args.results or (args.out if args.smoke else RESULTS)
    notes = (["SMOKE RUN (2 steps per run at 64x64), not a result"] if args.smoke else
             [f"{args.minutes:g} min of training per recipe on the 2-core CPU, nothing else running",
              "seeded validation split of ../shared/data/ceph_isbi2015 (22 of 150 images), errors in mm at 0.1 mm/px",
              "scratch HRNet-W18 (no pretrained weights on this machine)"])
    rows, folders = [], {}
    for name in args.recipes:
        row, runs = run_recipe(name, args.minutes, args.out, args.smoke)
        rows.append(row)
        folders[name] = runs
        landmarks, columns = per_landmark(rows)
        series = curves(folders)
        curve_png = plot_curves(series, results / "ceph_curve.png", args.minutes)
        write_results("ceph_table", "Recipes on the ISBI 2015 cephalograms at equal CPU time", rows, TABLE, results,
                      [*notes, f"curve: {curve_png.name}"], {"Val MRE (mm) per landmark": (landmarks, columns)},
                      {"curves": {k: [list(p) for p in v] for k, v in series.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
