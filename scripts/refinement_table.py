"""Does the second stage earn its place? Coarse-to-fine refinement against stage 1 alone at equal total CPU
time (issue 27), on the ISBI 2015 cephalograms, and the refiner's conditioning ablated.

    .venv/bin/python scripts/refinement_table.py --minutes 60                      # ~2.5 h: ceph, then the ablation
    .venv/bin/python scripts/refinement_table.py --minutes 60 --parts ceph         # the equal-time comparison alone
    .venv/bin/python scripts/refinement_table.py --minutes 60 --parts ceph --side-by-side  # both arms at once, ~1 h
    .venv/bin/python scripts/refinement_table.py --parts ablation --ablation-minutes 8
    .venv/bin/python scripts/refinement_table.py --smoke                           # a few steps each (checks it starts)

``ceph``: stage 1 (``experiment=ceph_isbi2015`` with the Adaptive Wing loss, the best recipe of
scripts/ceph_table.py) trained for ``--minutes``, against the same stage 1 trained for half of them plus
``experiment=ceph_isbi2015_refine`` (the refiner alone, on that frozen stage 1) for the other half. Both are
scored by ``eval.py`` on the seeded validation split (22 images; the data ships no test split): the gated
points (the checkpoint's gate, FITTED ON THESE SAME IMAGES, so an optimistic number), stage 2 everywhere
(``refined``: no fitting on them) and stage 1's points (``coarse``). Where the error goes: the refined run's
errors by stage-1 error bin and per landmark, from eval's predictions.csv.

``ablation``: the refiner trained ``--ablation-minutes`` on the same frozen stage 1 with each conditioning
(none, ``centre``, ``neighbours``, both: ``task.refine.condition``) and with offsets drawn from stage 1's
real validation errors (``empirical``: ``task.refine.offsets``; no conditioning), scored the same way.

``--side-by-side``: the two arms of ``ceph`` run at the same time, each pinned to one core with one torch
thread: equal CPU time exactly (T core-minutes each), in half the wall time, at one core's speed per run.

Writes ``docs/results/refinement.json`` and ``refinement.table.md`` (ceph), ``refinement_ablation.json`` and
``refinement_ablation.table.md`` (ablation); ``docs/results/refinement.md`` quotes them. Finished runs are reused: the script can be stopped and called again.
"""

from __future__ import annotations

import argparse
import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from timed_runs import RESULTS, ROOT, evaluate, record_row, train, write_results

STAGE1 = ("ceph_isbi2015", ["task/loss=adaptive_wing"])


def condition_option(names: list[str]) -> str:
    return "task.refine.condition=[" + ",".join(names) + "]"


REFINE = "ceph_isbi2015_refine"
# The CPU recipe of scripts/ceph_table.py: no loader workers, the time budget decides the length.
CPU = ["data.num_workers=0", "trainer.max_epochs=1000", "trainer.precision=auto", "callbacks.progress_bar=null",
       "test=false"]
SMOKE = ["data.image_size=[64,64]", "data.batch_size=2", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=0"]
SMOKE_REFINE = ["task.refine.patch_size=32"]
SMOKE_EVAL = ["trainer.limit_test_batches=2"]
# the ablation's rows: the refiner's conditioning (task.refine.condition) and its training offsets
ABLATION = {"none": [], "centre": [condition_option(["centre"])], "neighbours": [condition_option(["neighbours"])],
            "both": [condition_option(["centre", "neighbours"])], "empirical": ["task.refine.offsets=empirical"]}
MM_PER_PX = 0.1  # the ISBI 2015 images (checked against eval's mm columns)
BINS_MM = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, float("inf"))
TABLE = ("row", "train_min", "steps", "epochs", "precision", "mre_mm", "refined_mm", "coarse_mm", "median_mm",
         "refined_median_mm", "coarse_median_mm", "sdr_2mm", "sdr_2.5mm", "sdr_3mm", "sdr_4mm", "refined_sdr_2mm",
         "refined_share")


def scored(name: str, row: dict, out: Path, smoke: bool, core: int | None = None) -> dict:
    """``row`` (a record_row) with eval's gated, refined and coarse errors in mm on the validation split."""
    facts = evaluate(name, [row["checkpoint"]], out, SMOKE_EVAL if smoke else (), core)
    overall = facts["overall"]
    if overall.get("mre_mm") is None or abs(overall["mre_mm"] - overall["mre"] * MM_PER_PX) > 1e-3 * overall["mre"]:
        raise SystemExit(f"{name}: eval's mm and px errors are not {MM_PER_PX} mm/px apart; the SDR radii would be wrong")
    stage = {key: facts.get(key) or {} for key in ("refined", "coarse")}
    return {**row, "mre_mm": overall["mre_mm"], "median_mm": overall.get("median_mm"),
            **{f"sdr_{mm}mm": overall.get(f"sdr_{round(mm * 10)}") for mm in (2, 2.5, 3, 4)},
            "refined_mm": stage["refined"].get("mre_mm", overall["mre_mm"]),
            "coarse_mm": stage["coarse"].get("mre_mm", overall["mre_mm"]),
            "refined_sdr_2mm": stage["refined"].get("sdr_20"), "refined_share": overall.get("refined_share"),
            "refined_median_mm": stage["refined"].get("median_mm", overall.get("median_mm")),
            "coarse_median_mm": stage["coarse"].get("median_mm", overall.get("median_mm")),
            "predictions_csv": str(out / name / "eval" / "predictions.csv")}


def stage1(name: str, minutes: float, out: Path, smoke: bool, core: int | None = None) -> dict:
    experiment, overrides = STAGE1
    return record_row(name, overrides, train(name, experiment, overrides, out, minutes, smoke, CPU, SMOKE, core))


def refiner(name: str, first: dict, options: list[str], minutes: float, out: Path, smoke: bool,
            core: int | None = None) -> dict:
    overrides = [f"task.refine.stage1_ckpt={first['checkpoint']}", *options, *(SMOKE_REFINE if smoke else [])]
    row = record_row(name, overrides[1:], train(name, REFINE, overrides, out, minutes, smoke, CPU, SMOKE, core))
    return {**row, "refiner_min": row["train_min"], "train_min": row["train_min"] + first["train_min"],
            "steps": (row["steps"] or 0) + (first["steps"] or 0), "epochs": (row["epochs"] or 0) + (first["epochs"] or 0)}


def error_bins(rows: list[dict]) -> list[dict]:
    """The refined run's landmarks binned by stage 1's error (mm): how many, each stage's mean error, how often
    stage 2 was better, and how often the gate used it."""
    coarse, refined, gated, used = (np.array([r[k] for r in rows]) for k in ("coarse", "refined", "gated", "used"))
    out = []
    for lo, hi in zip(BINS_MM[:-1], BINS_MM[1:]):
        inside = (coarse >= lo) & (coarse < hi)
        n = int(inside.sum())
        out.append({"stage-1 error (mm)": f"{lo:g}-{hi:g}", "landmarks": n,
                    **({"coarse_mm": float(coarse[inside].mean()), "refined_mm": float(refined[inside].mean()),
                        "gated_mm": float(gated[inside].mean()),
                        "refined_better": float((refined[inside] < coarse[inside]).mean()),
                        "refined_used": float(used[inside].mean())} if n else {})})
    return out


def per_landmark(rows: list[dict]) -> list[dict]:
    """Per landmark: each stage's mean error (mm) and how often the gate used stage 2."""
    table: dict[str, list[dict]] = {}
    for r in rows:
        table.setdefault(r["landmark"], []).append(r)
    return [{"landmark": name, "coarse_mm": float(np.mean([r["coarse"] for r in rs])),
             "refined_mm": float(np.mean([r["refined"] for r in rs])),
             "gated_mm": float(np.mean([r["gated"] for r in rs])),
             "refined_used": float(np.mean([r["used"] for r in rs]))} for name, rs in table.items()]


def _read(predictions: Path) -> list[dict]:
    """eval's predictions.csv of a refined run: per visible landmark its stages' errors in mm and the gate's use."""
    with open(predictions, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if int(r["visible"])]
    return [{"landmark": r["landmark"], "coarse": float(r["error_coarse_px"]) * MM_PER_PX,
             "refined": float(r["error_refined_px"]) * MM_PER_PX, "gated": float(r["error_px"]) * MM_PER_PX,
             "used": int(r.get("refined_used") or 0)} for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="T: stage 1 alone for T, or T/2 + refiner T/2")
    parser.add_argument("--parts", nargs="+", default=["ceph", "ablation"], choices=["ceph", "ablation"])
    parser.add_argument("--condition", nargs="*", default=[], choices=["centre", "neighbours"],
                        help="the refiner's conditioning in the ceph comparison (default none)")
    parser.add_argument("--offsets", default="normal", choices=["normal", "empirical"],
                        help="the refiner's training offsets in the ceph comparison")
    parser.add_argument("--ablation", nargs="+", default=list(ABLATION), choices=list(ABLATION),
                        help="the ablation's rows (conditionings, and empirical offsets)")
    parser.add_argument("--ablation-minutes", type=float, default=None, help="each ablation refiner's time (default T/4)")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "refinement_table")
    parser.add_argument("--results", type=Path, default=None,
                        help="where refinement.json / .table.md go (default: docs/results; --smoke: --out)")
    parser.add_argument("--side-by-side", action="store_true",
                        help="run ceph's two arms at once, each pinned to one core with one torch thread")
    parser.add_argument("--smoke", action="store_true", help="a few steps per run at 64x64 (checks it starts)")
    args = parser.parse_args(argv)
    results = args.results or (args.out if args.smoke else RESULTS)
    half, ablation_minutes = args.minutes / 2, args.ablation_minutes or args.minutes / 4
    notes = (["SMOKE RUN (2 steps per run at 64x64), not a result"] if args.smoke else
             [(f"T = {args.minutes:g} min of training for each arm, the two arms side by side, each pinned to one "
               "core with one torch thread (T core-minutes each)" if args.side_by_side else
               f"T = {args.minutes:g} min of training on the 2-core CPU, nothing else running") + "; stage 1 = "
              "experiment=ceph_isbi2015 task/loss=adaptive_wing (scratch HRNet-W18, 384x320)",
              "seeded validation split of ../shared/data/ceph_isbi2015 (22 of 150 images), errors in mm at 0.1 mm/px",
              "mre_mm and sdr_*: the gated points, whose gate was fitted on these same 22 images (optimistic); "
              "refined_mm: stage 2 everywhere; coarse_mm: the checkpoint's stage 1"])
    ablation_notes = list(notes)  # before the equal-time comparison's own
    rows: list[dict] = []
    tables: dict[str, tuple[list[dict], list[str]]] = {}
    cores = (0, 1) if args.side_by_side else (None, None)
    options = [condition_option(args.condition), f"task.refine.offsets={args.offsets}"]

    def alone_arm() -> dict:
        return scored("stage1_full", stage1("stage1_full", args.minutes, args.out, args.smoke, cores[0]), args.out,
                      args.smoke, cores[0])

    def two_stage_arm() -> tuple[dict, dict]:
        first = stage1("stage1_half", half, args.out, args.smoke, cores[1])
        refined = refiner("refined", first, options, half, args.out, args.smoke, cores[1])
        return first, scored("refined", refined, args.out, args.smoke, cores[1])

    if "ceph" not in args.parts:
        first = stage1("stage1_half", half, args.out, args.smoke)
    else:
        with ThreadPoolExecutor(max_workers=2 if args.side_by_side else 1) as pool:
            alone_future, two_future = pool.submit(alone_arm), pool.submit(two_stage_arm)
            alone, (first, both) = alone_future.result(), two_future.result()
        rows.append({**alone, "row": f"stage 1 alone, {args.minutes:g} min"})
        rows.append({**both, "row": f"stage 1 {half:g} min + refiner {half:g} min "
                                    f"(condition: {' + '.join(args.condition) or 'none'}; {args.offsets} offsets)"})
        cut = 1 - both["mre_mm"] / alone["mre_mm"]
        cut_refined = 1 - both["refined_mm"] / alone["mre_mm"]
        notes += [f"MRE of the two stages against stage 1 alone at equal time: gated {-cut:+.1%}, stage 2 everywhere "
                  f"{-cut_refined:+.1%} (goal: -30 %); the two stages reach {both['mre_mm']:.3g} mm (goal <= 1.5) and "
                  f"SDR@2mm {both['sdr_2mm']:.1%} (goal >= 75 %)"]
        points = _read(Path(both["predictions_csv"]))  # eval's predictions.csv, read once for both tables
        bins = error_bins(points)
        tables["The refined run by stage-1 error"] = (bins, ["stage-1 error (mm)", "landmarks", "coarse_mm", "refined_mm",
                                                             "gated_mm", "refined_better", "refined_used"])
        landmarks = per_landmark(points)
        tables["The refined run per landmark (mm)"] = (landmarks, list(landmarks[0]))
        write_results("refinement", "Refinement against stage 1 alone at equal CPU time", rows, TABLE, results, notes,
                      tables)
    if "ablation" in args.parts:
        ablation = []
        for name in args.ablation:
            run = f"ablation_{name}"
            row = scored(run, refiner(run, first, ABLATION[name], ablation_minutes, args.out, args.smoke), args.out,
                         args.smoke)
            ablation.append({**row, "row": name if name == "empirical" else f"condition: {name}"})
            # a file of its own: the equal-time comparison and the ablation are run (and rerun) apart
            write_results("refinement_ablation", f"Refiner ablation: refiner {ablation_minutes:g} min on stage 1 of "
                          f"{half:g} min", ablation, TABLE, results, ablation_notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
