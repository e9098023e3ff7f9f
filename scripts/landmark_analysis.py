"""Landmark analyses that were done by hand for docs/results/*.md: facts of the AASCE spine labels, and the
errors of eval.py runs binned by stage 1's error.

    .venv/bin/python scripts/landmark_analysis.py labels                        # docs/results/spine_labels.*
    .venv/bin/python scripts/landmark_analysis.py labels --patch 48 --sorted    # other patch, sorted rows
    .venv/bin/python scripts/landmark_analysis.py errors logs/run/eval          # docs/results/error_bins.*
    .venv/bin/python scripts/landmark_analysis.py errors A/eval B/eval --bins 0 25 50 96 inf --name refine_bins

``labels`` reads both splits of ``../shared/data/spine_aasce`` (``--root``) with the repository's reader
(``read_aasce``, rows as given) and reports per split: how many rows list their vertebrae out of
top-to-bottom order (a vertebra's corners' mean y not below the previous one's; the test ones by name);
the distance across the disc (a vertebra's bottom-left / bottom-right corner to the next vertebra's
top-left / top-right corner) and between like corners of neighbouring vertebrae (same corner, vertebra v
and v + 1), median and 10th percentile in original px; and how many of the image's 68 corners lie within
+-``--patch`` px (in x and in y, boundary included) of each corner, itself included: median, 10th and 90th
percentile. The distances use only the rows in anatomical order by default; ``--sorted`` sorts every row's
vertebrae top to bottom first and uses all rows. The out-of-order counts are of the rows as given, the
patch counts of all rows (they do not depend on the order). Writes ``spine_labels.json`` / ``.table.md``.

``errors`` reads each folder's ``predictions.csv`` (eval.py's report: one row per image x landmark with
``error_px`` and, for a coarse-to-fine run, ``error_coarse_px``; empty cells are landmarks without truth,
skipped). For a refined run: bins of stage 1's (coarse) error (``--bins`` edges in px, a bin holds
``lo <= e < hi``) with the share of landmarks, stage 1's MRE, the refined MRE and the share where the
refined point is strictly closer; without the coarse columns, the bins of the final error (share, MRE).
Per landmark: the final MRE, stage 1's MRE and the share refined better. Writes ``<--name>.json`` /
``.table.md`` (default ``error_bins``).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from timed_runs import RESULTS, ROOT, write_results

SPLITS = ("training", "test")
CORNERS = 4  # per vertebra: top-left, top-right, bottom-left, bottom-right (aasce_reader.CORNERS)
TL, TR, BL, BR = range(CORNERS)
DEFAULT_ROOT = Path(os.environ.get("HREXP_SHARED_DATA", ROOT.parent / "shared" / "data")) / "spine_aasce"
DEFAULT_BINS = (0.0, 25.0, 50.0, 96.0, math.inf)


# ---------------------------------------------------------------------------------------------- labels


def _blocks(keypoints: np.ndarray) -> np.ndarray:
    """``[N, 4 x V, 2]`` -> ``[N, V, 4, 2]`` (vertebra, corner)."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 3 or keypoints.shape[1] % CORNERS or keypoints.shape[2] != 2:
        raise ValueError(f"expected [N, 4 x vertebrae, 2] keypoints, got shape {keypoints.shape}")
    return keypoints.reshape(keypoints.shape[0], -1, CORNERS, 2)


def out_of_order(keypoints: np.ndarray) -> np.ndarray:
    """``[N]`` bool: the rows whose vertebrae's centre y (mean of the 4 corners) does not increase strictly from
    the first vertebra to the last (image rows grow downwards); the reader's ``vertebrae_out_of_order`` test."""
    centre_y = _blocks(keypoints)[..., 1].mean(axis=2)
    return (np.diff(centre_y, axis=1) <= 0).any(axis=1)


def sort_top_to_bottom(keypoints: np.ndarray) -> np.ndarray:
    """Each row's vertebrae (4 corners kept together) reordered by centre y, top first (stable)."""
    blocks = _blocks(keypoints)
    order = np.argsort(blocks[..., 1].mean(axis=2), axis=1, kind="stable")
    return np.take_along_axis(blocks, order[:, :, None, None], axis=1).reshape(np.shape(keypoints))


def disc_distances(keypoints: np.ndarray) -> np.ndarray:
    """Across each disc: bottom-left of vertebra v to top-left of v + 1 and bottom-right to top-right, flat."""
    b = _blocks(keypoints)
    left = np.linalg.norm(b[:, 1:, TL] - b[:, :-1, BL], axis=-1)
    right = np.linalg.norm(b[:, 1:, TR] - b[:, :-1, BR], axis=-1)
    return np.concatenate([left.ravel(), right.ravel()])


def like_corner_distances(keypoints: np.ndarray) -> np.ndarray:
    """Between like corners of neighbouring vertebrae (corner c of vertebra v and of v + 1), all 4 corners, flat."""
    b = _blocks(keypoints)
    return np.linalg.norm(b[:, 1:] - b[:, :-1], axis=-1).ravel()


def patch_counts(keypoints: np.ndarray, half_size: float) -> np.ndarray:
    """``[N, K]``: how many of the row's K points lie within +-``half_size`` in x and in y (boundary included)
    of each point, itself included."""
    k = np.asarray(keypoints, dtype=np.float64)
    delta = np.abs(k[:, :, None, :] - k[:, None, :, :])  # [N, K, K, 2]
    return (delta <= half_size).all(axis=-1).sum(axis=-1)


def _pct(values: np.ndarray, q: float) -> float | None:
    values = np.asarray(values, dtype=np.float64)
    return float(np.percentile(values, q)) if values.size else None


def label_stats(keypoints: np.ndarray, patch: float = 96.0, sort: bool = False) -> dict:
    """The ``labels`` figures of one split from ``[N, 68, 2]`` keypoints (plain NumPy, the rows as given).

    The distances use the rows in anatomical order only (``sort=False``) or every row after sorting its
    vertebrae top to bottom (``sort=True``); the out-of-order count is of the rows as given, the patch counts
    of all rows."""
    keypoints = np.asarray(keypoints, dtype=np.float64)
    bad = out_of_order(keypoints)
    rows = sort_top_to_bottom(keypoints) if sort else keypoints[~bad]
    disc, like = disc_distances(rows), like_corner_distances(rows)
    counts = patch_counts(keypoints, patch).ravel()
    return {"images": len(keypoints), "out_of_order": int(bad.sum()),
            "distance_rows": len(rows),
            "disc_median_px": _pct(disc, 50), "disc_p10_px": _pct(disc, 10),
            "like_median_px": _pct(like, 50), "like_p10_px": _pct(like, 10),
            "patch_px": float(patch), "patch_median": _pct(counts, 50), "patch_p10": _pct(counts, 10),
            "patch_p90": _pct(counts, 90), "patch_min": int(counts.min()) if counts.size else None,
            "patch_max": int(counts.max()) if counts.size else None}


def read_split(root: Path, split: str) -> tuple[np.ndarray, list[str]]:
    """``[N, 68, 2]`` keypoints (original px, rows as given) and the image file names of one split."""
    from hrexp.data.errors import DataError
    from hrexp.data.landmarks.aasce_reader import read_aasce

    try:
        data = read_aasce(root, split, vertebra_order="as_given")
    except DataError as exc:
        raise SystemExit(f"cannot read the AASCE {split!r} labels under {root}: {exc}") from None
    if not data.records:
        raise SystemExit(f"{root}: no {split!r} images")
    return np.stack([r.keypoints for r in data.records]), [Path(r.image_path).name for r in data.records]


def run_labels(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.is_dir():
        raise SystemExit(f"AASCE data folder not found: {root} (pass --root or set HREXP_SHARED_DATA)")
    rows, names = [], {}
    for split in SPLITS:
        keypoints, files = read_split(root, split)
        row = {"split": split, **label_stats(keypoints, args.patch, args.sorted)}
        rows.append(row)
        names[split] = [f for f, bad in zip(files, out_of_order(keypoints)) if bad]
    order = ("every row, its vertebrae sorted top to bottom (--sorted)" if args.sorted else
             "the rows in anatomical order only (out-of-order rows left out; --sorted sorts them instead)")
    notes = [(f"data: {root}, read with hrexp.data.landmarks.aasce_reader.read_aasce (vertebra_order=as_given), "
              "original px"),
             "out_of_order: rows whose vertebrae's centre y (mean of 4 corners) does not increase from T1 to L5",
             f"test rows out of order: {', '.join(names['test']) or 'none'}",
             ("disc: bottom-left of vertebra v to top-left of v+1 and bottom-right to top-right; like: the same "
              f"corner of vertebrae v and v+1; both over {order} (distance_rows)"),
             (f"patch: how many of the image's 68 corners lie within +-{args.patch:g} px (x and y, boundary "
              "included) of each corner, itself included; over all rows as given")]
    columns = ("split", "images", "out_of_order", "distance_rows", "disc_median_px", "disc_p10_px", "like_median_px",
               "like_p10_px", "patch_px", "patch_p10", "patch_median", "patch_p90")
    write_results("spine_labels", "Facts of the AASCE spine labels", rows, columns, Path(args.results), notes,
                  extra={"out_of_order_files": names, "sorted": bool(args.sorted)})
    return 0


# ---------------------------------------------------------------------------------------------- errors


def _float(cell: str | None) -> float:
    return float(cell) if cell not in (None, "") else math.nan


def read_predictions(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """From ``<folder>/predictions.csv``: each row's landmark name, final error (``error_px``) and stage 1's
    error (``error_coarse_px``; None when the run has no coarse columns). Empty cells become NaN."""
    path = Path(folder) / "predictions.csv"
    if not path.is_file():
        raise SystemExit(f"predictions.csv not found: {path} (an eval.py output folder holds one)")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "error_px" not in fields or "landmark" not in fields:
            raise SystemExit(f"{path}: expected columns 'landmark' and 'error_px' (eval.py's predictions.csv), "
                             f"got {', '.join(fields) or 'none'}")
        rows = list(reader)
    coarse = np.array([_float(r["error_coarse_px"]) for r in rows]) if "error_coarse_px" in fields else None
    return [r["landmark"] for r in rows], np.array([_float(r["error_px"]) for r in rows]), coarse


def _bin_label(lo: float, hi: float) -> str:
    return f"> {lo:g} px" if math.isinf(hi) else f"{lo:g}-{hi:g} px"


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def error_bins(error: np.ndarray, coarse: np.ndarray | None, edges: Sequence[float]) -> list[dict]:
    """One row per bin (and one ``all``): with ``coarse``, bins of stage 1's error with the share of landmarks,
    stage 1's MRE, the refined MRE and the share where the refined error is strictly smaller; without, bins of
    the final error with share and MRE. NaN (no truth) is left out; a bin holds ``lo <= e < hi``."""
    error = np.asarray(error, dtype=np.float64)
    if coarse is not None:
        coarse = np.asarray(coarse, dtype=np.float64)
        ok = np.isfinite(error) & np.isfinite(coarse)
        key, error, coarse = coarse[ok], error[ok], coarse[ok]
    else:
        ok = np.isfinite(error)
        key = error = error[ok]
    rows = []
    bins = [(lo, hi, _bin_label(lo, hi)) for lo, hi in itertools.pairwise(edges)] + [(-math.inf, math.inf, "all")]
    for lo, hi, label in bins:
        inside = (key >= lo) & (key < hi) if label != "all" else np.ones(key.shape, bool)
        row = {"bin": label, "landmarks": int(inside.sum()),
               "share": float(inside.mean()) if key.size else None}
        if coarse is not None:
            row.update(coarse_mre=_mean(coarse[inside]), refined_mre=_mean(error[inside]),
                       refined_better=_mean((error[inside] < coarse[inside]).astype(float)))
        else:
            row["mre"] = _mean(error[inside])
        rows.append(row)
    return rows


def per_landmark(names: Sequence[str], error: np.ndarray, coarse: np.ndarray | None) -> list[dict]:
    """One row per landmark (first-seen order): final MRE and, with ``coarse``, stage 1's MRE and the share where
    the refined error is strictly smaller (over the rows where both are known)."""
    names_arr = np.asarray(names)
    rows = []
    for name in dict.fromkeys(names):
        mine = names_arr == name
        e = error[mine]
        row = {"landmark": name, "n": int(np.isfinite(e).sum()), "mre": _mean(e[np.isfinite(e)])}
        if coarse is not None:
            c = coarse[mine]
            both = np.isfinite(e) & np.isfinite(c)
            row.update(coarse_mre=_mean(c[np.isfinite(c)]), refined_better=_mean((e[both] < c[both]).astype(float)))
        rows.append(row)
    return rows


def run_errors(args: argparse.Namespace) -> int:
    edges = list(args.bins)
    if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise SystemExit(f"--bins: expected at least 2 increasing edges, got {args.bins}")
    rows, tables, any_coarse = [], {}, False
    for folder in args.eval_dirs:
        names, error, coarse = read_predictions(Path(folder))
        any_coarse |= coarse is not None
        kind = "stage-1 (coarse) error" if coarse is not None else "final error (no coarse columns)"
        rows += [{"run": str(folder), "binned_by": kind, **r} for r in error_bins(error, coarse, edges)]
        landmark_rows = per_landmark(names, error, coarse)
        columns = ["landmark", "n", "mre"] + (["coarse_mre", "refined_better"] if coarse is not None else [])
        tables[f"Per landmark: {folder}"] = (landmark_rows, columns)
    columns = ["run", "binned_by", "bin", "landmarks", "share"] + (
        ["coarse_mre", "refined_mre", "refined_better", "mre"] if any_coarse else ["mre"])
    notes = [("errors in original px from each folder's predictions.csv (eval.py); landmarks without truth (empty "
              "cells) left out"),
             ("refined runs: bins of stage 1's error (error_coarse_px), coarse_mre = stage 1's MRE, refined_mre = "
              "the final MRE, refined_better = share where error_px < error_coarse_px; other runs: bins of error_px, "
              "mre"),
             (f"bin edges {', '.join(f'{e:g}' for e in edges)} px; a bin holds lo <= error < hi; share of the "
              "run's landmarks")]
    write_results(args.name, "Errors binned by stage 1's error", rows, columns, Path(args.results), notes, tables)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    labels = sub.add_parser("labels", help="facts of the AASCE spine labels (spine_labels.json / .table.md)")
    labels.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the AASCE folder (data/, labels/)")
    labels.add_argument("--patch", type=float, default=96.0, help="patch half-size in original px")
    labels.add_argument("--sorted", action="store_true",
                        help="distances over every row sorted top to bottom (default: anatomical rows only)")
    labels.add_argument("--results", type=Path, default=RESULTS, help="where the tables go (default docs/results)")
    errors = sub.add_parser("errors", help="errors binned by stage 1's error, from eval.py folders")
    errors.add_argument("eval_dirs", nargs="+", type=Path, help="eval.py output folders (holding predictions.csv)")
    errors.add_argument("--bins", nargs="+", type=float, default=list(DEFAULT_BINS), help="bin edges in px (inf ok)")
    errors.add_argument("--name", default="error_bins", help="output name: <results>/<name>.json / .table.md")
    errors.add_argument("--results", type=Path, default=RESULTS, help="where the tables go (default docs/results)")
    args = parser.parse_args(argv)
    return run_labels(args) if args.command == "labels" else run_errors(args)


if __name__ == "__main__":
    raise SystemExit(main())
