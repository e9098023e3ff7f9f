"""What the result scripts share (high_resolution.py, spine_table.py, ceph_table.py): train one experiment variant
for a fixed wall time, score its best checkpoint with eval.py, and write the table as JSON and Markdown into
docs/results/ with the command, commit, machine, date and each row's step and epoch counts.
Finished variants are reused, so a comparison that spans hours can be continued by calling it again."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
# The CPU recipe: batch 2, no loader workers (they would take the model's cores), time-bounded.
CPU = ["data.batch_size=2", "data.num_workers=0", "trainer.max_epochs=1000", "callbacks.progress_bar=null"]
# fp32 in NCHW, pinned: rows compared with earlier fp32 runs stay fp32 whatever the defaults become.
FP32 = ["trainer.precision=32", "speed.channels_last=false"]
# --smoke: the same commands on a tiny synthetic set, one short epoch, to check a script still starts.
SMOKE = ["data=synthetic_spine", "data.num_train=8", "data.num_test=4", "data.image_size=[64,32]",
         "data.original_size=[128,64]", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=1", "trainer.limit_test_batches=1"]
COLUMNS = ("mre", "median", "sdr_1%_height", "sdr_2%_height", "sdr_4%_height", "mre_over_height", "mre_over_diagonal")


def run(script: str, args: Sequence[str], log: Path, core: int | None = None) -> None:
    """``python <script> <args>`` in the repository, its output in ``log``; exits naming the log on failure.
    ``core``: pinned to that one CPU core with one torch thread (``taskset``), so that two runs side by side
    each get exactly one core's time."""
    log.parent.mkdir(parents=True, exist_ok=True)
    prefix, env = [], None
    if core is not None:
        prefix = ["taskset", "-c", str(core)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as fh:
        proc = subprocess.run([*prefix, sys.executable, str(ROOT / script), *args], cwd=ROOT, stdout=fh,
                              stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{script} {' '.join(args)} failed ({proc.returncode}); see {log}")


def train(name: str, experiment: str, overrides: Sequence[str], out: Path, minutes: float | None, smoke: bool,
          recipe: Sequence[str] = CPU, smoke_overrides: Sequence[str] = SMOKE, core: int | None = None) -> dict:
    """Train ``experiment`` + ``overrides`` for ``minutes`` (None: its own epochs) in ``<out>/<name>/train``; a
    finished run is reused. Returns its run record (results.json). ``core``: see :func:`run`."""
    base = [f"experiment={experiment}", *overrides, *recipe, *(smoke_overrides if smoke else [])]
    # ++: set whether or not the trainer config has the key (Lightning stops after that wall time)
    budget = [] if minutes is None else [f"++trainer.max_time={max_time(minutes)}"]
    results = out / name / "train" / "results.json"
    if results.is_file() and json.loads(results.read_text()).get("status") == "finished":
        print(f"{name}: reusing the finished run in {results.parent}")
    else:
        run("train.py", [*base, *budget, f"hydra.run.dir={out / name / 'train'}"], out / name / "train.log", core)
    return json.loads(results.read_text())


def evaluate(name: str, checkpoints: Sequence[str], out: Path, extra: Sequence[str] = (),
             core: int | None = None) -> dict:
    """``eval.py`` of one checkpoint (or a seed ensemble: several) on the test split (val where the data has no
    test split) in ``<out>/<name>/eval``; returns its report.json."""
    ckpt = checkpoints[0] if len(checkpoints) == 1 else "[" + ",".join(checkpoints) + "]"
    run("eval.py", [f"ckpt_path={ckpt}", "split=test", *extra, f"hydra.run.dir={out / name / 'eval'}"],
        out / name / "eval.log", core)
    return json.loads((out / name / "eval" / "report.json").read_text())


def training_facts(record: dict) -> dict:
    """How long a run trained, from its run record: ``train_min``, ``steps``, ``epochs`` (None where unknown)."""
    return {"train_min": float(record.get("train_time_s") or 0.0) / 60,
            "steps": record.get("trained_steps"), "epochs": record.get("trained_epochs")}


def record_row(name: str, overrides: Sequence[str], record: dict) -> dict:
    """A row's training facts from a run record: checkpoint, params, MACs, minutes, steps, epochs, best val MRE."""
    return {"variant": name, "overrides": " ".join(overrides),
            "checkpoint": record["checkpoints"]["checkpoint_best_metric"]["path"],
            "params_M": (record.get("params") or {}).get("total", 0) / 1e6, "macs_G": record.get("macs_g"),
            **training_facts(record), "precision": record.get("precision"),
            "best_val_mre": record["best"]["val/mre"]["value"]}


def train_and_eval(name: str, experiment: str, overrides: Sequence[str], out: Path, minutes: float | None, smoke: bool,
                   recipe: Sequence[str] = CPU, core: int | None = None) -> dict:
    """Train (:func:`train`), evaluate its best checkpoint on the test split (:func:`evaluate`); the row: the run
    record's facts (:func:`record_row`) and the report's overall errors. ``core``: see :func:`run`."""
    row = record_row(name, overrides, train(name, experiment, overrides, out, minutes, smoke, recipe, core=core))
    facts = evaluate(name, [row["checkpoint"]], out, core=core)
    # a refined run: its overall errors are the gated points'; each stage's alone beside them
    return {**row, **facts["overall"], "coarse_mre": (facts.get("coarse") or {}).get("mre"),
            "refined_mre": (facts.get("refined") or {}).get("mre"), "cobb_smape": (facts.get("cobb") or {}).get("smape"),
            "coarse_cobb_smape": (facts.get("cobb") or {}).get("smape_coarse")}


def train_refiner(name: str, experiment: str, overrides: Sequence[str], stage1: dict, out: Path, minutes: float | None,
                  smoke: bool, recipe: Sequence[str] = CPU, core: int | None = None) -> dict:
    """The second of two runs: ``experiment`` + ``overrides`` trains only the refiner on the frozen best
    checkpoint of ``stage1`` (a ``train_and_eval`` row); the row's training time is both runs'."""
    row = train_and_eval(name, experiment, [*overrides, f"task.refine.stage1_ckpt={stage1['checkpoint']}"], out, minutes,
                         smoke, recipe, core)
    row["train_min"] += stage1["train_min"]
    row["stage1_steps"], row["stage1_epochs"] = stage1.get("steps"), stage1.get("epochs")
    return row


def max_time(minutes: float) -> str:
    """Lightning's ``max_time`` string ``DD:HH:MM:SS`` (its dict form would reach it as a DictConfig)."""
    seconds = round(minutes * 60)
    return f"{seconds // 86400:02d}:{seconds // 3600 % 24:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def commit() -> str:
    """The checked-out commit, ``-dirty`` when tracked files differ from it."""
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def machine() -> str:
    """CPU model, cores, torch threads and GPU, as one line."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, {gpu}"


def markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> list[str]:
    """The rows as Markdown table lines, 4 significant digits."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row.get(c):.4g}" if isinstance(row.get(c), float) else ("" if row.get(c) is None else str(row.get(c)))
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_results(name: str, title: str, rows: Sequence[dict], columns: Sequence[str], out: Path,
                  notes: Sequence[str] = (), tables: dict[str, tuple[Sequence[dict], Sequence[str]]] | None = None,
                  extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """``<out>/<name>.json`` and ``<out>/<name>.table.md``: the table with how it was made.

    Both carry the command (this process's argv), commit, machine and date; every row keeps all its keys in
    the JSON (the step and epoch counts included), the Markdown shows ``columns``. ``tables`` adds more
    titled tables (e.g. per landmark); ``extra`` more JSON. The docs quote these files; they are rewritten,
    never edited by hand.
    """
    script = Path(sys.argv[0]).resolve()
    script_name = str(script.relative_to(ROOT)) if script.is_relative_to(ROOT) else sys.argv[0]
    header = {"command": "python " + shlex.join([script_name, *sys.argv[1:]]),
              "commit": commit(), "machine": machine(),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    out.mkdir(parents=True, exist_ok=True)
    payload = {"title": title, **header, "notes": list(notes), "columns": list(columns), "rows": list(rows),
               "tables": {k: {"columns": list(c), "rows": list(r)} for k, (r, c) in (tables or {}).items()},
               **(extra or {})}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    lines = [f"<!-- written by {header['command']}; do not edit: rerun the command -->", f"# {title}", "",
             f"- command: `{header['command']}`", f"- commit: `{header['commit']}`", f"- machine: {header['machine']}",
             f"- date: {header['date']}", *[f"- {n}" for n in notes], "", *markdown_table(rows, columns)]
    for key, (more_rows, more_columns) in (tables or {}).items():
        lines += ["", f"## {key}", "", *markdown_table(more_rows, more_columns)]
    md_path = out / f"{name}.table.md"
    md_path.write_text("\n".join(lines) + "\n")
    print("\n".join(markdown_table(rows, columns)))
    print(f"wrote {json_path} and {md_path}")
    return json_path, md_path
