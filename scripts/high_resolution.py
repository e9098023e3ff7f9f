"""Codecs and coarse-to-fine refinement on the real AASCE spine X-rays, each variant with the same training
time; writes the comparison table (test MRE in original px, median, SDR at 1/2/4 % of the image height).

    .venv/bin/python scripts/high_resolution.py --minutes 15            # the CPU comparison (~2 h)
    .venv/bin/python scripts/high_resolution.py --variants baseline udp --minutes 10
    .venv/bin/python scripts/high_resolution.py --smoke                 # a few steps on synthetic data

Every variant trains ``experiment=aasce_hrnet_w32`` with ``RECIPE`` for ``--minutes`` of wall time (``trainer.max_time``),
then ``eval.py`` scores its best-val-MRE checkpoint on the test split; the numbers come from that eval's
report (``report.json``). ``refine`` is the codec with the best validation MRE among the finished codec
variants (not the test one) plus ``refine=native``, in two runs that share the same time: stage 1 alone
for half of it, then the refiner alone (stage 1 frozen, jitter = stage 1's val MRE) for the other half.
Two runs, not one joint run: a joint run's stage 1 learns less in the same time, and a refiner cannot
correct errors beyond its patch (docs/results/high_resolution.md, the 15-minute pair). The lr decays over
each run's time (callbacks.time_budget). The table goes to ``docs/results/high_resolution.json`` and
``.table.md`` (command, commit, machine, date, steps and epochs of each row); high_resolution.md quotes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from timed_runs import COLUMNS, CPU, FP32, RESULTS, ROOT, train_and_eval, train_refiner, write_results

# The CPU recipe of this comparison, the same for every variant: a 256x128 input (a heatmap cell spans
# ~37 original px of a 2360 px tall X-ray, the regime the codecs and the refinement are for) so that
# stage 1 gets ~6 epochs in 15 min; batch 4; lr 1e-3 after a 100-step warmup (the experiment's 5-epoch
# warmup at 1e-4 would never finish in the budget); the train run's own test is skipped (eval.py scores).
# fp32 and NCHW, as the table's first runs: the rows differ from those only by the lr decaying over the time.
RECIPE = [*CPU, "data.image_size=[256,128]", "data.batch_size=4", "optimizer.lr=1e-3", "scheduler.warmup_steps=100",
          "test=false", *FP32]

CODECS = ("baseline", "udp", "simcc", "offset", "integral")
VARIANTS = {  # name -> overrides of experiment=aasce_hrnet_w32
    "baseline": ["task/codec=gaussian"],
    "udp": ["task/codec=udp"],
    "simcc": ["task/codec=simcc"],
    "offset": ["task/codec=offset"],
    "integral": ["task/codec=integral"],
}
REFINE = ["refine=native", "task.refine.patch_size=96", "task.refine.scale=0.5", "task.refine.train_patches=8",
          "task.refine.train_stage1=false", "task.refine.jitter_px=auto"]
TABLE = ("variant", "overrides", "train_min", "steps", "epochs", "best_val_mre", *COLUMNS, "cobb_smape", "coarse_mre")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=[*CODECS, "refine"], choices=[*CODECS, "refine"])
    parser.add_argument("--minutes", type=float, default=15.0, help="training time per variant")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "high_resolution")
    parser.add_argument("--results", type=Path, default=None,
                        help="where the table goes as high_resolution.json / .table.md (default: docs/results; --smoke: --out)")
    parser.add_argument("--smoke", action="store_true", help="a few steps on synthetic data (checks it starts)")
    args = parser.parse_args(argv)
    notes = (["SMOKE RUN (synthetic data, 2 steps), not a result"] if args.smoke else
             [f"{args.minutes:g} min of training per variant (trainer.max_time; the lr decays over it), the refined "
              "variant half for stage 1 and half for the refiner", "test split of AASCE (128 images), original px"])
    results = args.results or (args.out if args.smoke else RESULTS)
    rows = []
    for name in args.variants:
        if name == "refine":
            done = [r for r in rows if r["variant"] in CODECS]
            best = min(done, key=lambda r: r["best_val_mre"])["variant"] if done else "baseline"
            half = args.minutes / 2
            stage1 = train_and_eval(f"refine_{best}_stage1", "aasce_hrnet_w32", VARIANTS[best], args.out, half,
                                    args.smoke, RECIPE)
            rows.append(train_refiner(f"refine_{best}", "aasce_hrnet_w32", [*VARIANTS[best], *REFINE], stage1, args.out,
                                      half, args.smoke, RECIPE))
        else:
            rows.append(train_and_eval(name, "aasce_hrnet_w32", VARIANTS[name], args.out, args.minutes, args.smoke,
                                       RECIPE))
        write_results("high_resolution", "Codecs and refinement on AASCE at equal CPU time", rows, TABLE, results,
                      notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
