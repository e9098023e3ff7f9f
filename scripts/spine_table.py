"""The reference plan's comparison on the real AASCE spine X-rays (issue 17): UNet, ResNet-50, HRNet-W32 and
HRNet-W32 with the best codec and refinement, trained and evaluated by hrexp's own commands.

    .venv/bin/python scripts/spine_table.py --minutes 40        # the reduced CPU version (~3 h), labelled so
    .venv/bin/python scripts/spine_table.py --full              # the full recipe (experiment/spine_*.yaml, GPU)
    .venv/bin/python scripts/spine_table.py --smoke             # a few steps on synthetic data

Each model trains ``experiment=spine_<model>`` (the reduced version: ``REDUCED``, ``--minutes`` of training),
``eval.py`` scores its best-val-MRE checkpoint on the 128 test images (report, SDR curve, worst-case gallery,
Cobb SMAPE), ``hrexp.compare`` compares the runs, and ``<out>/sdr_curve.png`` draws every model's SDR
curve. ``hrnet_w18_awing`` is the best recipe of ``scripts/ceph_table.py`` (``CEPH_RECIPE``). ``hrnet_w32_best`` is two runs: its first stage is the ``hrnet_w32`` run (reused; with another codec
than gaussian, a run of its own), then ``experiment=spine_hrnet_w32_best`` trains only the refiner on that
frozen stage 1 (half of ``--minutes`` in the reduced version); its training time is the sum of both. The
table goes to ``docs/results/spine_table.json`` and ``.table.md`` (``--name``: another file name) (command, commit, machine, date, steps and
epochs of each row); docs/results/spine_aasce.md quotes it.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from timed_runs import COLUMNS, CPU, FP32, RESULTS, ROOT, train_and_eval, train_refiner, write_results

MODELS = ("unet", "resnet50", "hrnet_w32", "hrnet_w32_best", "hrnet_w18_awing")
# hrnet_w18_awing: the best recipe of scripts/ceph_table.py (docs/results/ceph_isbi2015.md) on the spines:
# scratch HRNet-W18, Adaptive Wing loss, the precision trainer.precision=auto picks (bf16 where the CPU has it
# natively), channels_last. spine_base takes no model, so model= composes here.
CEPH_RECIPE = ("spine_base", ["model=hrnet_w18", "task/loss=adaptive_wing", "trainer.precision=auto",
                              "speed.channels_last=true"])
# The reduced CPU recipe: half the input (a vertebra 20 px tall), batch 4, lr 1e-3 after a 100-step warmup
# (the experiments' 5-epoch warmup at 1e-4 would not end within the budget), no test inside the train run
# (eval.py scores the best checkpoint). The same recipe as scripts/high_resolution.py, at 512x192.
REDUCED = [*CPU, "data.image_size=[512,192]", "data.batch_size=4", "optimizer.lr=1e-3", "scheduler.warmup_steps=100",
           "test=false"]
# stage 1 of hrnet_w32_best: the codec of experiment/spine_hrnet_w32_best.yaml (docs/results/high_resolution.md)
BEST_CODEC = "gaussian"
FULL: list[str] = []  # the experiments as they are (sized for a GPU)
# sdr_24: the plan's SDR@24px (original px), beside the radii relative to the height
TABLE = ("variant", "params_M", "macs_G", "train_min", "steps", "epochs", "precision", "best_val_mre", *COLUMNS, "sdr_24",
         "cobb_smape", "coarse_mre", "coarse_cobb_smape")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--minutes", type=float, default=40.0, help="training time per model (reduced version)")
    parser.add_argument("--full", action="store_true", help="the full recipe of experiment/spine_*.yaml (a GPU)")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "spine_table")
    parser.add_argument("--smoke", action="store_true", help="a few steps on synthetic data (checks it starts)")
    parser.add_argument("--results", type=Path, default=None,
                        help="where the table goes as spine_table.json / .table.md (default: docs/results; --smoke: --out)")
    parser.add_argument("--keep-other-rows", action="store_true",
                        help="keep the rows of the table already in --results for the models not run now (their runs "
                             "gone from --out); a note names the command, commit and date they came from")
    parser.add_argument("--core", type=int, default=None,
                        help="pin every run to this one CPU core with one torch thread (another job on the other)")
    parser.add_argument("--name", default="spine_table",
                        help="the results' file name, <name>.json / .table.md (default spine_table)")
    args = parser.parse_args(argv)
    recipe = FULL if args.full else REDUCED
    notes = (["SMOKE RUN (synthetic data), not a result"] if args.smoke else
             ["the full recipe (experiment/spine_*.yaml)" if args.full else
              f"reduced CPU version: 512x192, {args.minutes:g} min of training each (trainer.max_time; the lr decays "
              "over it), the refiner half of it", "test split of AASCE (128 images), original px"])
    if args.core is not None:
        notes.append(f"every run pinned to core {args.core} with one torch thread, another job on the other core: "
                     "one core's time per minute, not comparable with 2-thread rows")
    results = args.results or (args.out if args.smoke else RESULTS)
    kept = kept_rows(results / f"{args.name}.json", args.models) if args.keep_other_rows else []
    if kept:
        earlier = json.loads((results / f"{args.name}.json").read_text())
        notes.append(f"rows {', '.join(r['variant'] for r in kept)} kept from `{earlier['command']}` at "
                     f"{earlier['commit']}, {earlier['date']} (not rerun by this command)")
    rows: list[dict] = []
    for model in args.models:
        minutes = None if args.full else args.minutes  # the full recipe runs its epochs
        if model == "hrnet_w32_best":
            stage1_name = "hrnet_w32" if BEST_CODEC == "gaussian" else f"hrnet_w32_{BEST_CODEC}"
            stage1 = next((r for r in rows if r["variant"] == stage1_name), None) or train_and_eval(
                stage1_name, "spine_hrnet_w32", [f"task/codec={BEST_CODEC}", *FP32], args.out, minutes, args.smoke,
                recipe, args.core)
            row = train_refiner(model, "spine_hrnet_w32_best", FP32, stage1, args.out,
                                None if minutes is None else minutes / 2, args.smoke, recipe, args.core)
        elif model == "hrnet_w18_awing":
            row = train_and_eval(model, CEPH_RECIPE[0], CEPH_RECIPE[1], args.out, minutes, args.smoke, recipe, args.core)
        else:  # fp32, as the rows of the plan's first table (the ceph recipe's row is the one in bf16)
            row = train_and_eval(model, f"spine_{model}", FP32, args.out, minutes, args.smoke, recipe, args.core)
        rows.append(row)
        write_results(args.name, "The reference plan's comparison on AASCE", [*kept, *rows], TABLE, results, notes)
    # every model's SDR curve on one plot, from the errors of its eval's predictions.csv
    from hrexp.reports.eval_plots import sdr_curve

    errors = {}
    for row in rows:
        with open(args.out / row["variant"] / "eval" / "predictions.csv", newline="") as fh:
            errors[row["variant"]] = [float(r["error_px"]) for r in csv.DictReader(fh)]
    print(f"wrote {sdr_curve(errors, args.out / 'sdr_curve.png', marks=(12, 24, 48), title='test split, original px')}")
    from hrexp.compare import main as compare  # the curves and the table of the runs, labelled by their overrides

    return compare([*(str(args.out / m / "train") for m in args.models), "--out", str(args.out / "comparison")])


def kept_rows(table: Path, models: list[str]) -> list[dict]:
    """The rows of an earlier ``spine_table.json`` for the models not in ``models`` (none if there is no table)."""
    if not table.exists():
        return []
    return [row for row in json.loads(table.read_text())["rows"] if row["variant"] not in models]


if __name__ == "__main__":
    raise SystemExit(main())
