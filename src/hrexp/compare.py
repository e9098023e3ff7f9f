"""Compare runs from their own records: ``python -m hrexp.compare <sweep or run folders...>``.

Each folder is a run folder (``results.json``, ``csv/metrics.csv``) or a folder searched for run
folders (a Hydra multirun folder: one run per numbered subfolder). Writes ``comparison.md``,
``comparison.csv`` and ``comparison.png`` to ``--out`` (default: the first folder given). Whether a
metric is better high or low comes from each run's record (``results.json``; ``config.yaml`` for a
run without one), never from the metric's name. The logic is in :mod:`hrexp.reports.comparison`.

Examples::

    python -m hrexp.compare logs/train/multiruns/2025-01-01_12-00-00
    python -m hrexp.compare runs/a runs/b --out reports --sort "params (M)" --metrics val/mre,val/sdr_4
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hrexp.reports.comparison import CompareError, compare
from hrexp.startup import startup


def parse_args(argv: list[str] | None = None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m hrexp.compare", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="run folders or sweep folders")
    parser.add_argument("--out", type=Path, help="output folder (default: the first folder given)")
    parser.add_argument("--sort", help="column header or metric name (default: the headline metric)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--descending", dest="descending", action="store_true",
                           help="sort descending (default: descending when the sorted metric is higher-is-better "
                           "in the runs' records, else ascending)")
    direction.add_argument("--ascending", dest="descending", action="store_false", help="sort ascending")
    parser.set_defaults(descending=None)
    parser.add_argument("--metrics", help="comma-separated metric columns, e.g. val/mre,val/loss "
                        "(default: every validation metric logged)")
    parser.add_argument("--wandb", action="store_true", help="also log the table as a W&B Table "
                        "(offline when WANDB_MODE=offline or no API key is configured)")
    parser.add_argument("--wandb-project", default="hrexp")
    parser.add_argument("--wandb-group")
    return parser, parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    startup()
    parser, args = parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    try:
        result = compare(args.folders, out=args.out, sort=args.sort, descending=args.descending, metrics=metrics,
                         wandb=args.wandb, wandb_project=args.wandb_project, wandb_group=args.wandb_group)
    except CompareError as exc:
        parser.error(str(exc))  # exit code 2, with the usage line
    for path in result.files.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
