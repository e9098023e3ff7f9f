"""The landmark task's report: error tables per landmark and per image, the SDR curve, the error box plot,
the galleries, confidences, and Cobb angles for spines in the AASCE layout (17 vertebrae x 4 corners)."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from hrexp.data.images import read_image_size
from hrexp.evaluation.context import ReportContext
from hrexp.evaluation.keypoint_report import confidence_section, feature_section, gallery_section, heatmap_section
from hrexp.evaluation.tables import number, write_table_csv
from hrexp.metrics.cobb import cobb_angles, cobb_smape
from hrexp.reports.eval_plots import error_boxplot, sdr_curve
from hrexp.reports.html_report import Figure, Section, TableBlock


def radial_errors(samples: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``[N, K]`` radial errors in px (NaN where the landmark is not annotated) and in mm (NaN also where the
    image's spacing is unknown)."""
    pred = np.stack([s["keypoints"] for s in samples])
    target = np.stack([s["keypoints_orig"] for s in samples])
    visible = np.stack([s["visible_orig"] for s in samples]) > 0
    error = np.where(visible, np.linalg.norm(pred - target, axis=-1), np.nan)
    spacing = np.array([float(s.get("spacing", math.nan)) for s in samples])
    return error, error * spacing[:, None]


def _stats(values: np.ndarray, suffix: str = "") -> dict[str, float | None]:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return {f"{k}{suffix}": None for k in ("mre", "median", "std", "p90", "max")}
    return {f"mre{suffix}": number(v.mean()), f"median{suffix}": number(np.median(v)), f"std{suffix}": number(v.std()),
            f"p90{suffix}": number(np.percentile(v, 90)), f"max{suffix}": number(v.max())}


def _sdr(values: np.ndarray, radii: Sequence[float]) -> dict[str, float | None]:
    v = values[np.isfinite(values)]
    return {f"sdr_{r:g}": (number((v <= r).mean()) if v.size else None) for r in radii}


def per_landmark_rows(names: Sequence[str], error: np.ndarray, error_mm: np.ndarray,
                      radii: Sequence[float]) -> list[dict[str, Any]]:
    """One row per landmark: count, mean/median/std/90th percentile/max error in px (and mm when any spacing
    is known), and the share within each SDR radius (px)."""
    has_mm = bool(np.isfinite(error_mm).any())
    rows = []
    for k, name in enumerate(names):
        row: dict[str, Any] = {"landmark": name, "n": int(np.isfinite(error[:, k]).sum()), **_stats(error[:, k])}
        if has_mm:
            row.update(_stats(error_mm[:, k], "_mm"))
        row.update(_sdr(error[:, k], radii))
        rows.append(row)
    return rows


def per_image_rows(samples: Sequence[Mapping[str, Any]], error: np.ndarray, error_mm: np.ndarray,
                   ctx: ReportContext) -> list[dict[str, Any]]:
    has_mm = bool(np.isfinite(error_mm).any())
    rows = []
    for i, sample in enumerate(samples):
        v = error[i][np.isfinite(error[i])]
        row: dict[str, Any] = {"image": ctx.image_name(sample["index"]), "index": int(sample["index"]),
                               "n": int(v.size), "mre": number(v.mean()) if v.size else None,
                               "median": number(np.median(v)) if v.size else None,
                               "max": number(v.max()) if v.size else None}
        if has_mm:
            row["mre_mm"] = number(np.nanmean(error_mm[i])) if np.isfinite(error_mm[i]).any() else None
        for key in ("scores", "spread", "member_spread"):
            if key in sample:
                row[f"mean_{key}"] = number(np.mean(sample[key]))
        rows.append(row)
    return rows


def prediction_rows(samples: Sequence[Mapping[str, Any]], names: Sequence[str], error: np.ndarray,
                    ctx: ReportContext, coarse_error: np.ndarray | None = None,
                    refined_error: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Every landmark of every image: prediction, truth (original px, pixel centres at integers), error,
    confidences; coarse-to-fine: each stage's point and error, and whether the gate used stage 2's."""
    rows = []
    for i, sample in enumerate(samples):
        image = ctx.image_name(sample["index"])
        for k, name in enumerate(names):
            row = {"image": image, "index": int(sample["index"]), "landmark": name,
                   "x": float(sample["keypoints"][k, 0]), "y": float(sample["keypoints"][k, 1]),
                   "x_true": float(sample["keypoints_orig"][k, 0]), "y_true": float(sample["keypoints_orig"][k, 1]),
                   "visible": int(sample["visible_orig"][k] > 0), "error_px": number(error[i, k])}
            for key in ("scores", "spread", "member_spread"):
                if key in sample:
                    row[key] = float(sample[key][k])
            # the point's own 2x2 covariance (original px^2): the heatmap peak's, the ensemble members'; with the
            # errors they give any region's score again (scripts/uncertainty_table.py re-calibrates from them)
            for key, prefix in (("covariance", "cov"), ("member_covariance", "member_cov")):
                if key in sample:
                    cov = np.asarray(sample[key][k], np.float64)
                    row.update({f"{prefix}_xx": float(cov[0, 0]), f"{prefix}_xy": float(cov[0, 1]),
                                f"{prefix}_yy": float(cov[1, 1])})
            if sample.get("spacing") is not None:
                row["spacing_mm"] = number(float(np.asarray(sample["spacing"], np.float64).reshape(-1)[0]))
            if coarse_error is not None:  # coarse-to-fine: stage 1's point, to see what stage 2 changed
                coarse = sample["keypoints_coarse"][k]
                row.update(x_coarse=float(coarse[0]), y_coarse=float(coarse[1]),
                           error_coarse_px=number(coarse_error[i, k]))
            if refined_error is not None:  # and stage 2's own point, and whether the gate kept it
                refined = sample["keypoints_refined"][k]
                row.update(x_refined=float(refined[0]), y_refined=float(refined[1]),
                           error_refined_px=number(refined_error[i, k]))
                if "refined_used" in sample:
                    row["refined_used"] = int(bool(sample["refined_used"][k]))
            rows.append(row)
    return rows


# SDR radii as a share of each image's height: for data without a pixel spacing (AASCE X-rays).
HEIGHT_FRACTIONS = (0.01, 0.02, 0.04)


def image_sizes(samples: Sequence[Mapping[str, Any]], ctx: ReportContext) -> np.ndarray:
    """``[N, 2]`` (height, width) of each sample's original image (from its record, else the file header)."""
    records = ctx.records().records
    sizes = []
    for sample in samples:
        record = records[int(sample["index"])]
        sizes.append(record.size or read_image_size(record.image_path))
    return np.asarray(sizes, dtype=np.float64)


def relative_errors(error: np.ndarray, sizes: np.ndarray) -> dict[str, float | None]:
    """MRE over the image height and over its diagonal, and SDR at 1 %, 2 % and 4 % of the height."""
    height, diagonal = sizes[:, :1], np.hypot(sizes[:, :1], sizes[:, 1:])
    ok = np.isfinite(error)
    if not ok.any():
        return {}
    out = {"mre_over_height": number((error / height)[ok].mean()),
           "mre_over_diagonal": number((error / diagonal)[ok].mean())}
    for fraction in HEIGHT_FRACTIONS:
        out[f"sdr_{fraction:.0%}_height"] = number((error <= fraction * height)[ok].mean())
    return out


# The layout the Cobb procedure (hrexp.metrics.cobb) reads: the thoracic and lumbar spine (T1..L5, 17 vertebrae) top
# to bottom, each vertebra's four corners in this order, named "<vertebra>_<corner>". Defined by what the procedure
# needs, not by one dataset's names: any data whose landmarks follow it gets the Cobb angles.
SPINE_VERTEBRAE = 17
SPINE_CORNERS = ("tl", "tr", "bl", "br")


def is_spine_layout(names: Sequence[str]) -> bool:
    """Whether the landmarks are 17 vertebrae x 4 corners named ``<vertebra>_<corner>``, corners in
    :data:`SPINE_CORNERS`' order (the AASCE layout)."""
    n = len(SPINE_CORNERS)
    if len(names) != SPINE_VERTEBRAE * n:
        return False
    for v in range(SPINE_VERTEBRAE):
        parts = [str(name).rpartition("_") for name in names[v * n:(v + 1) * n]]
        vertebra = parts[0][0]
        if not vertebra or any(p[0] != vertebra for p in parts) or tuple(p[2] for p in parts) != SPINE_CORNERS:
            return False
    return True


def cobb_section(samples: Sequence[Mapping[str, Any]], ctx: ReportContext) -> Section | None:
    """Predicted Cobb angles against the data's reference angles (``angles.csv``) or, without one, against
    the angles of the ground-truth corners; the challenge's SMAPE; ``cobb_angles.csv``."""
    records = ctx.records().records
    reference = getattr(ctx.datamodule, "reference_angles", None)
    truth_table = reference(ctx.split) if callable(reference) else None
    rows, predicted, truth = [], [], []
    # coarse-to-fine: each stage's angles too (does the gate keep stage 1's angles, or improve them?)
    stage_keys = [key for key in ("refined", "coarse") if samples and f"keypoints_{key}" in samples[0]]
    per_stage: dict[str, list] = {key: [] for key in stage_keys}
    for sample in samples:
        record = records[int(sample["index"])]
        height = (record.size or read_image_size(record.image_path))[0]
        if not np.all(sample["visible_orig"] > 0):
            continue  # the angles need every corner
        pred = cobb_angles(sample["keypoints"], height)
        if truth_table is not None:
            true_angles, source = np.asarray(truth_table[int(sample["index"])], np.float64), "angles.csv"
        else:
            true_angles, source = np.asarray(cobb_angles(sample["keypoints_orig"], height).angles), "corners"
        predicted.append(pred.angles)
        for key in stage_keys:
            per_stage[key].append(cobb_angles(sample[f"keypoints_{key}"], height).angles)
        truth.append(true_angles)
        rows.append({"image": ctx.image_name(sample["index"]), "index": int(sample["index"]), "curve": pred.curve,
                     **{f"true_{j + 1}": float(true_angles[j]) for j in range(3)},
                     **{f"pred_{j + 1}": float(pred.angles[j]) for j in range(3)},
                     "abs_error_1": float(abs(pred.angles[0] - true_angles[0])),
                     "smape": cobb_smape(np.asarray([pred.angles]), true_angles[None])})
    if not rows:
        return None
    smape = cobb_smape(np.asarray(predicted), np.asarray(truth))
    csv = write_table_csv(ctx.out_dir / "cobb_angles.csv", rows)
    ctx.facts["cobb"] = {"smape": smape, "truth": source, "images": len(rows)}
    summary = [{"images": len(rows), "truth": source, "cobb_smape_%": smape,
                "mean_abs_error_largest_deg": float(np.mean([r["abs_error_1"] for r in rows]))}]
    if stage_keys:
        summary[0] = {"points": "gated", **summary[0]}
        for key in stage_keys:
            angles = np.asarray(per_stage[key])
            ctx.facts["cobb"][f"smape_{key}"] = cobb_smape(angles, np.asarray(truth))
            summary.append({"points": key, "images": len(rows), "truth": source,
                            "cobb_smape_%": ctx.facts["cobb"][f"smape_{key}"],
                            "mean_abs_error_largest_deg": float(np.mean(np.abs(angles[:, 0] - np.asarray(truth)[:, 0])))})
    text = ("Cobb angles from the predicted vertebra corners with the AASCE 2019 challenge's procedure "
            "(hrexp.metrics.cobb), in angles.csv's order: the largest first, then the second and third "
            f"region's. Truth: {source}. SMAPE is the challenge's symmetric mean absolute percentage error.")
    return Section("Cobb angles", text=text, tables=[TableBlock("Cobb angle agreement", summary),
                                                     TableBlock("Per image (degrees)", rows, csv=csv.name, max_rows=20)])


def landmark_report(task: Any, samples: Sequence[Mapping[str, Any]], ctx: ReportContext) -> list[Section]:
    """Every section of the landmark report, its CSV tables and PNGs written into ``ctx.out_dir``."""
    names = task.keypoint_names
    radii = list(task.sdr_radii)
    error, error_mm = radial_errors(samples)
    landmark_rows = per_landmark_rows(names, error, error_mm, radii)
    image_rows = per_image_rows(samples, error, error_mm, ctx)
    write_table_csv(ctx.out_dir / "per_landmark.csv", landmark_rows)
    write_table_csv(ctx.out_dir / "per_image.csv", image_rows)
    # coarse-to-fine: each stage's own errors beside the gated ones (what the second stage and the gate bought)
    stages = {key: radial_errors([{**s, "keypoints": s[f"keypoints_{key}"]} for s in samples])
              for key in ("refined", "coarse") if f"keypoints_{key}" in samples[0]}
    coarse = stages["coarse"][0] if "coarse" in stages else None
    refined = stages["refined"][0] if "refined" in stages else None
    write_table_csv(ctx.out_dir / "predictions.csv", prediction_rows(samples, names, error, ctx, coarse, refined))
    sizes = image_sizes(samples, ctx)

    def overall_row(px: np.ndarray, mm: np.ndarray) -> dict[str, Any]:
        row = {"images": len(samples), **_stats(px), **_sdr(px, radii), **relative_errors(px, sizes)}
        if np.isfinite(mm).any():
            row.update(_stats(mm, "_mm"))
        return row

    overall = [overall_row(error, error_mm)]
    if stages:
        used = np.stack([np.asarray(s["refined_used"], bool) for s in samples]) if "refined_used" in samples[0] else None
        share = None if used is None else number(used[np.isfinite(error)].mean())
        overall = [{"stage": "gated (the checkpoint's gate)", "refined_share": share, **overall[0]},
                   *({"stage": label, **overall_row(*stages[key])} for key, label in
                     (("refined", "refined (stage 2 everywhere)"), ("coarse", "coarse (stage 1)")) if key in stages)]
        for key, row in zip([k for k in ("refined", "coarse") if k in stages], overall[1:]):
            ctx.facts[key] = row
    ctx.facts["overall"] = overall[0]
    write_table_csv(ctx.out_dir / "overall.csv", overall)
    curves = {"all landmarks": error[np.isfinite(error)]} if not stages else {
        "gated": error[np.isfinite(error)], **{key: stages[key][0][np.isfinite(stages[key][0])] for key in stages}}
    curve = sdr_curve(curves, ctx.out_dir / "sdr_curve.png", marks=radii, unit="px")
    box = error_boxplot({name: error[:, k] for k, name in enumerate(names)}, ctx.out_dir / "error_boxplot.png",
                        unit="px", title="radial error per landmark")
    sections = [
        Section("Landmark errors", text="Radial errors in original-image pixels (and mm where the spacing is "
                "known); SDR is the share of landmarks within each radius. Relative to each image: MRE over its "
                "height and its diagonal, and SDR within 1, 2 and 4 % of its height.",
                tables=[TableBlock("All landmarks", overall, csv="overall.csv")],
                figures=[Figure(curve, "SDR curve: the share of landmarks within r pixels."),
                         Figure(box, "Radial error per landmark.")]),
    ]
    image_error = np.array([np.nan if r["mre"] is None else r["mre"] for r in image_rows])
    decorate = None
    if ctx.calibration is not None:  # conformal prediction regions (hrexp.evaluation.regions), drawn in the gallery
        from hrexp.evaluation.regions import region_decorator, region_section, region_shape, spacing_of

        levels = ctx.calibration_levels or ctx.calibration.levels
        shape = region_shape(ctx.calibration, samples)
        decorate = region_decorator(ctx.calibration, shape, max(levels), samples)
    sections.append(gallery_section(task, samples, image_error, ctx, unit="px", decorate=decorate))
    if ctx.calibration is not None:
        sections.append(region_section(samples, ctx.calibration, levels, names, ctx.out_dir, spacing_of(samples),
                                       ctx.facts,
                                       [ctx.image_name(s["index"]) for s in samples]))
    for section in (confidence_section(samples, error, ctx, unit="px"),
                    cobb_section(samples, ctx) if is_spine_layout(names) else None,
                    heatmap_section(task, samples, ctx),
                    feature_section(samples, ctx, ctx.facts["gallery_worst"][0] if ctx.facts.get("gallery_worst") else None)):
        if section is not None:
            sections.append(section)
    # the long tables last: the pictures above are what a reader looks at first
    sections.append(Section("Per landmark and per image",
                            tables=[TableBlock("Per landmark", landmark_rows, csv="per_landmark.csv", max_rows=None),
                                    TableBlock("Per image (first rows; sorted as the split)", image_rows,
                                               csv="per_image.csv", max_rows=20)]))
    return sections
