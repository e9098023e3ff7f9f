"""Does bf16 cost accuracy? The ceph recipe trained in fp32 and in bf16-mixed at equal epochs, and each
checkpoint scored at both inference precisions (issue 26).

    .venv/bin/python scripts/precision_table.py                    # 2 seeds x {bf16-mixed, 32}, 10 epochs each
    .venv/bin/python scripts/precision_table.py --seeds 0 --epochs 3
    .venv/bin/python scripts/precision_table.py --smoke            # a few steps each (checks it starts)

Each run trains ``experiment=ceph_isbi2015`` for ``--epochs`` epochs (the cosine schedule is sized in steps,
so both precisions see the same lr at every step; no time budget) in ``trainer.precision=32`` or
``bf16-mixed``; ``eval.py`` then scores its best-val-MRE checkpoint on the seeded validation split three times:
``precision=32``, ``precision=bf16-mixed`` (the heads' output conv in float32, ``speed.float32_output``, the
default) and ``bf16-mixed`` with ``speed.float32_output=false`` (everything in bf16; "bf16 out"). Writes ``docs/results/precision_table.json`` and ``.table.md``:
per run its training minutes, seconds per step, and the val MRE / SDR@2mm at either inference precision;
a summary row per training precision (mean over seeds). Finished runs are reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

from timed_runs import RESULTS, ROOT, evaluate, train, training_facts, write_results

EXPERIMENT = "ceph_isbi2015"
PRECISIONS = ("bf16-mixed", "32")
CPU = ["data.num_workers=0", "callbacks.progress_bar=null", "test=false"]
SMOKE = ["data.image_size=[64,64]", "data.batch_size=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
         "trainer.num_sanity_val_steps=0"]
SMOKE_EVAL = ["trainer.limit_test_batches=2"]
# Inference variants: (folder, label, eval.py overrides). "bf16" keeps the heads' output conv in float32 (the
# default, speed.float32_output); "bf16 out" computes it in bf16 too (as hrexp did before).
INFERENCE = (("infer_32", "32", ["precision=32"]),
             ("infer_bf16-mixed", "bf16", ["precision=bf16-mixed"]),
             ("infer_bf16-mixed_bf16output", "bf16 out", ["precision=bf16-mixed", "speed.float32_output=false"]))
TABLE = ("train precision", "seed", "epochs", "steps", "train_min", "s_per_step", "mre_mm (eval 32)",
         "mre_mm (eval bf16)", "mre_mm (eval bf16 out)", "sdr_2mm (eval 32)", "sdr_2mm (eval bf16)",
         "sdr_2mm (eval bf16 out)")


def run_one(precision: str, seed: int, epochs: int, out: Path, smoke: bool) -> dict:
    name = f"{precision}_s{seed}"
    record = train(name, EXPERIMENT, [f"trainer.precision={precision}", f"trainer.max_epochs={epochs}", f"seed={seed}"],
                   out, None, smoke, CPU, SMOKE)
    checkpoint = record["checkpoints"]["checkpoint_best_metric"]["path"]
    facts = training_facts(record)
    steps = facts["steps"] or 0
    row = {"train precision": precision, "seed": seed, "epochs": facts["epochs"], "steps": steps,
           "train_min": facts["train_min"], "checkpoint": checkpoint,
           "s_per_step": facts["train_min"] * 60 / steps if steps else None}
    for folder, label, overrides in INFERENCE:
        report = out / name / folder / "eval" / "report.json"
        if report.is_file() and not smoke:  # scored before: reused like the finished run
            facts = json.loads(report.read_text())
        else:
            facts = evaluate(f"{name}/{folder}", [checkpoint], out, [*overrides, *(SMOKE_EVAL if smoke else [])])
        overall = facts["overall"]
        row[f"mre_mm (eval {label})"] = overall.get("mre_mm")
        row[f"sdr_2mm (eval {label})"] = overall.get("sdr_20")
        row[f"eval {label}"] = {k: overall.get(k) for k in ("mre", "mre_mm", "median_mm", "sdr_20", "sdr_25", "sdr_30",
                                                             "sdr_40")}
    return row


def summary(rows: list[dict]) -> list[dict]:
    """Per training precision: the mean over seeds of every numeric column."""
    out = []
    for precision in PRECISIONS:
        mine = [r for r in rows if r["train precision"] == precision]
        if not mine:
            continue
        row = {"train precision": precision, "seed": "mean of " + ",".join(str(r["seed"]) for r in mine)}
        for column in TABLE[2:]:
            values = [r[column] for r in mine if isinstance(r.get(column), (int, float))]
            row[column] = mean(values) if values else None
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "precision_table")
    parser.add_argument("--results", type=Path, default=None,
                        help="where precision_table.json / .table.md go (default: docs/results; --smoke: --out)")
    parser.add_argument("--smoke", action="store_true", help="a few steps per run (checks it starts)")
    parser.add_argument("--note", action="append", default=[], help="a line for the table's notes (e.g. what else ran)")
    args = parser.parse_args(argv)
    results = args.results or (args.out if args.smoke else RESULTS)
    epochs = 1 if args.smoke else args.epochs
    notes = (["SMOKE RUN (2 steps per run at 64x64), not a result"] if args.smoke else
             [(f"experiment=ceph_isbi2015 (scratch HRNet-W18, 384x320, batch 4, channels_last) for {epochs} epochs "
               "per run, equal steps and lr in both precisions"),
              "seeded validation split of ../shared/data/ceph_isbi2015, errors in mm at 0.1 mm/px; SDR@2mm = sdr_20",
              "train_min and s_per_step are wall time with nothing else running unless a note says otherwise"])
    notes = [*notes, *args.note]
    rows = []
    for seed in args.seeds:
        for precision in PRECISIONS:
            rows.append(run_one(precision, seed, epochs, args.out, args.smoke))
            write_results("precision_table", "bf16-mixed against fp32 on the cephalograms, training and inference",
                          rows, TABLE, results, notes, {"Mean over seeds": (summary(rows), TABLE)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
