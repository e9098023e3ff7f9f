"""Codecs and coarse-to-fine refinement on the real AASCE spine X-rays, each variant with the same training
time; writes the comparison table (test MRE in original px, median, SDR at 1/2/4 % of the image height).

    .venv/bin/python scripts/high_resolution.py --minutes 40            # the full CPU comparison (~4 h)
    .venv/bin/python scripts/high_resolution.py --variants baseline udp --minutes 10
    .venv/bin/python scripts/high_resolution.py --smoke                 # a few steps on synthetic data

Every variant trains ``experiment=aasce_hrnet_w32`` for ``--minutes`` of wall time (``trainer.max_time``),
then ``eval.py`` scores its best-val-MRE checkpoint on the test split; the numbers come from that eval's
report (``report.json``). ``refine`` is the codec with the best validation MRE among the finished codec
variants (not the test one) plus ``refine=native``, trained in one run within the same time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODECS = ("baseline", "udp", "simcc", "offset", "integral")
VARIANTS = {  # name -> overrides of experiment=aasce_hrnet_w32
    "baseline": ["task/codec=gaussian"],
    "udp": ["task/codec=udp"],
    "simcc": ["task/codec=simcc"],
    "offset": ["task/codec=offset"],
    "integral": ["task/codec=integral"],
}
REFINE = ["refine=native", "task.refine.patch_size=96", "task.refine.scale=0.5", "task.refine.jitter_px=24",
          "task.refine.train_patches=8"]
# The CPU recipe: batch 2 at 512x256 (the experiment's input), no workers (they would take the model's cores).
CPU = ["data.batch_size=2", "data.num_workers=0", "trainer.max_epochs=1000", "callbacks.progress_bar=null"]
# --smoke: the same commands on a tiny synthetic set, a few steps, to check the script still starts.
SMOKE = ["data=synthetic_spine", "data.num_train=8", "data.num_test=4", "data.image_size=[64,32]",
         "data.original_size=[128,64]", "model=hrnet_w18", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1"]
COLUMNS = ("mre", "median", "sdr_1%_height", "sdr_2%_height", "sdr_4%_height", "mre_over_height")


def run(script: str, args: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed ({proc.returncode}); see {log}")


def train_and_eval(name: str, overrides: list[str], out: Path, minutes: float, smoke: bool) -> dict:
    """Train one variant for the time budget, evaluate its best checkpoint on the test split."""
    base = ["experiment=aasce_hrnet_w32", *overrides, *CPU, *(SMOKE if smoke else [])]
    budget = [] if smoke else [f"trainer.max_time={{minutes: {minutes}}}"]
    results = out / name / "train" / "results.json"
    finished = results.is_file() and json.loads(results.read_text()).get("status") == "finished"
    if finished:  # a variant finished by an earlier call (the full comparison spans hours): kept, not retrained
        print(f"{name}: reusing the finished run in {results.parent}")
    else:
        run("train.py", [*base, *budget, f"hydra.run.dir={out / name / 'train'}"], out / name / "train.log")
    record = json.loads(results.read_text())
    train_s = float(record.get("train_time_s") or 0.0)
    ckpt = record["checkpoints"]["checkpoint_best_metric"]["path"]
    run("eval.py", [f"ckpt_path={ckpt}", "split=test", f"hydra.run.dir={out / name / 'eval'}"], out / name / "eval.log")
    facts = json.loads((out / name / "eval" / "report.json").read_text())
    overall = facts["overall"]
    return {"variant": name, "overrides": " ".join(overrides), "train_min": round(train_s / 60, 1),
            "best_val_mre": record["best"]["val/mre"]["value"], **{c: overall.get(c) for c in COLUMNS},
            "coarse_mre": (facts.get("coarse") or {}).get("mre")}


def write_table(rows: list[dict], path: Path, minutes: float, smoke: bool) -> None:
    head = ["variant", "overrides", "train_min", "best_val_mre", *COLUMNS, "coarse_mre"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{row[h]:.4g}" if isinstance(row[h], float) else ("" if row[h] is None else str(row[h])) for h in head]
        lines.append("| " + " | ".join(cells) + " |")
    note = "SMOKE RUN (synthetic data, 2 steps): not a result" if smoke else \
        f"{minutes:g} min of training per variant on this machine, {date.today()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!-- written by scripts/high_resolution.py: {note} -->\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=[*CODECS, "refine"], choices=[*CODECS, "refine"])
    parser.add_argument("--minutes", type=float, default=40.0, help="training time per variant")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "high_resolution")
    parser.add_argument("--table", type=Path, default=None, help="results table (default: <out>/table.md)")
    parser.add_argument("--smoke", action="store_true", help="a few steps on synthetic data (checks it starts)")
    args = parser.parse_args(argv)
    rows = []
    for name in args.variants:
        if name == "refine":
            done = [r for r in rows if r["variant"] in CODECS]
            best = min(done, key=lambda r: r["best_val_mre"])["variant"] if done else "baseline"
            rows.append(train_and_eval(f"refine_{best}", [*VARIANTS[best], *REFINE], args.out, args.minutes, args.smoke))
        else:
            rows.append(train_and_eval(name, VARIANTS[name], args.out, args.minutes, args.smoke))
        write_table(rows, args.table or args.out / "table.md", args.minutes, args.smoke)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
