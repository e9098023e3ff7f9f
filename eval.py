"""Evaluate a checkpoint: ``python eval.py ckpt_path=<file.ckpt> [split=test|val] [data=... data.x=...]``.

The same as the installed ``hrexp-eval``, with this repository as the project root. Writes the
task's per-item tables (``per_landmark.csv``, ``per_class.csv``, ...) and ``summary.json`` to its
run folder (logs/eval/runs/<time>).
"""

from pathlib import Path

from hrexp.cli import evaluate

if __name__ == "__main__":
    evaluate(project_root=Path(__file__).resolve().parent)
