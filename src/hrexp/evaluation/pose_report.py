"""The pose task's report: the COCO AP/AR table, PCK per keypoint at 0.05 and 0.1 of the box size, a
per-instance table, and galleries with the predicted skeleton drawn."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from hrexp.evaluation.context import ReportContext
from hrexp.evaluation.keypoint_report import confidence_section, feature_section, gallery_section, heatmap_section
from hrexp.evaluation.tables import number, write_table_csv
from hrexp.reports.drawing import PRED_COLOR, draw_skeleton
from hrexp.reports.html_report import Section, TableBlock

PCK_THRESHOLDS = (0.05, 0.1)
COCO_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


def box_sizes(samples: Sequence[Mapping[str, Any]], ctx: ReportContext) -> np.ndarray:
    """Each instance's box size, ``max(width, height)`` of its ground-truth box (original px): PCK's unit."""
    instances = ctx.records().instances
    return np.array([max(float(instances[int(s["index"])].bbox[2]), float(instances[int(s["index"])].bbox[3]))
                     for s in samples])


def normalised_errors(samples: Sequence[Mapping[str, Any]], sizes: np.ndarray) -> np.ndarray:
    """``[N, K]`` keypoint errors over the box size (NaN where not labelled or the box is empty)."""
    pred = np.stack([s["keypoints"] for s in samples])
    target = np.stack([s["keypoints_orig"] for s in samples])
    visible = np.stack([s["visible_orig"] for s in samples]) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.linalg.norm(pred - target, axis=-1) / sizes[:, None]
    return np.where(visible & (sizes[:, None] > 0), error, np.nan)


def pck_rows(names: Sequence[str], error: np.ndarray) -> list[dict[str, Any]]:
    """PCK per keypoint (and over all): the share of labelled keypoints within each threshold x box size."""
    rows = []
    for name, column in [*zip(names, error.T), ("all keypoints", error.ravel())]:
        v = column[np.isfinite(column)]
        rows.append({"keypoint": name, "n": int(v.size),
                     **{f"pck@{t:g}": (number((v <= t).mean()) if v.size else None) for t in PCK_THRESHOLDS},
                     "mean_error_over_box": number(v.mean()) if v.size else None})
    return rows


def pose_report(task: Any, samples: Sequence[Mapping[str, Any]], ctx: ReportContext) -> list[Section]:
    """Every section of the pose report; its CSVs and PNGs written into ``ctx.out_dir``."""
    sizes = box_sizes(samples, ctx)
    error = normalised_errors(samples, sizes)
    coco = [{"metric": key, "value": ctx.metrics.get(f"{ctx.split}/{key}", ctx.metrics.get(f"val/{key}"))}
            for key in COCO_KEYS]
    coco = [row for row in coco if row["value"] is not None]
    pck = pck_rows(task.keypoint_names, error)
    write_table_csv(ctx.out_dir / "pck.csv", pck)
    instances = []
    for i, sample in enumerate(samples):
        v = error[i][np.isfinite(error[i])]
        instances.append({"instance": ctx.image_name(sample["index"]), "index": int(sample["index"]),
                          "box_size": float(sizes[i]), "labelled": int(v.size),
                          "mean_error_over_box": number(v.mean()) if v.size else None,
                          **{f"pck@{t:g}": (number((v <= t).mean()) if v.size else None) for t in PCK_THRESHOLDS},
                          "mean_score": number(np.mean(sample["scores"]))})
    write_table_csv(ctx.out_dir / "per_instance.csv", instances)
    sections = [Section("Keypoint accuracy",
                        text="COCO keypoint AP/AR (OKS, pycocotools) and PCK: the share of labelled keypoints "
                             "within 0.05 and 0.1 of the person box's larger side.",
                        tables=[TableBlock("COCO AP / AR", coco, max_rows=None),
                                TableBlock("PCK per keypoint", pck, csv="pck.csv"),
                                TableBlock("Per instance (first rows)", instances, csv="per_instance.csv", max_rows=20)])]
    skeleton = [tuple(pair) for pair in (ctx.module.dataset_meta.get("skeleton") or [])]

    def with_skeleton(picture: np.ndarray, batch: Mapping[str, Any], j: int, scale: int) -> np.ndarray:
        # The predicted skeleton in the (already enlarged) picture's pixels.
        sample = chosen_by_index[int(batch["index"][j])]
        matrix = batch["matrix"][j].double().cpu().numpy()
        points = sample["keypoints"] @ matrix[:2, :2].T + matrix[:2, 2]
        points = (points + 0.5) * scale - 0.5
        return draw_skeleton(picture, points, np.ones(len(points), bool), skeleton, PRED_COLOR, thickness=1)

    chosen_by_index = {int(s["index"]): s for s in samples}
    image_error = np.array([np.nan if r["mean_error_over_box"] is None else r["mean_error_over_box"]
                            for r in instances])
    sections.append(gallery_section(task, samples, image_error, ctx, unit="x box",
                                    decorate=with_skeleton if skeleton else None))
    pixel_error = error * sizes[:, None]
    for section in (confidence_section(samples, pixel_error, ctx, unit="px"), heatmap_section(task, samples, ctx),
                    feature_section(samples, ctx, ctx.facts["gallery_worst"][0] if ctx.facts.get("gallery_worst") else None)):
        if section is not None:
            sections.append(section)
    return sections
