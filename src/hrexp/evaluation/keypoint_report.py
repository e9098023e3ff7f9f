"""Report parts every heatmap keypoint task shares (landmarks, pose): the worst/best gallery, heatmap
overlays, backbone feature maps, and how well the confidences rank the errors."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from hrexp.evaluation.context import ReportContext
from hrexp.evaluation.tables import number, write_table_csv
from hrexp.evaluation.uncertainty import rank_against_error
from hrexp.geometry import apply_affine
from hrexp.reports.eval_plots import feature_grid, heatmap_overlay, picture_grid, scatter_plot
from hrexp.reports.html_report import Figure, Section, TableBlock

# (key of the samples, name in the report, True when a higher value means more confident)
CONFIDENCES = (("scores", "heatmap peak value", True), ("spread", "heatmap peak width (px)", False),
               ("member_spread", "spread across ensemble members (px)", False))


def sample_preds(samples: Sequence[Mapping[str, Any]], batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The samples' predictions as a task's ``predict`` gives them for ``batch`` (input and original px)."""
    device = batch["matrix"].device
    keypoints = torch.as_tensor(np.stack([s["keypoints"] for s in samples]), dtype=torch.float32, device=device)
    return {"keypoints": keypoints, "keypoints_input": apply_affine(keypoints, batch["matrix"].float()),
            "scores": torch.as_tensor(np.stack([s["scores"] for s in samples]), dtype=torch.float32, device=device)}


def gallery_section(task: Any, samples: Sequence[Mapping[str, Any]], image_error: np.ndarray, ctx: ReportContext,
                    unit: str, decorate: Callable[[np.ndarray, Mapping[str, Any], int, int], np.ndarray] | None = None
                    ) -> Section:
    """The ``gallery`` worst and best samples by ``image_error`` (NaN: never shown), drawn by the task.

    ``decorate(picture, batch, i, scale)`` may draw more on a picture (pose: the skeleton).
    """
    n = max(0, int(ctx.options.gallery))
    order = [int(i) for i in np.argsort(np.where(np.isfinite(image_error), image_error, np.inf), kind="stable")
             if np.isfinite(image_error[i])]
    worst, best = order[::-1][:n], order[:n]
    ctx.facts["gallery_worst"] = [int(samples[i]["index"]) for i in worst]
    ctx.facts["gallery_best"] = [int(samples[i]["index"]) for i in best]
    figures = []
    for label, chosen in (("worst", worst), ("best", best)):
        if not chosen:
            continue
        chosen_samples = [samples[i] for i in chosen]
        batch = ctx.batch([s["index"] for s in chosen_samples])
        scale = ctx.drawing_scale(batch)
        drawn = task.draw_predictions(ctx.pictures(batch), batch, sample_preds(chosen_samples, batch), scale=scale)
        pictures = []
        for j, (picture, _) in enumerate(drawn):
            if decorate is not None:
                picture = decorate(picture, batch, j, scale)
            name = ctx.image_name(chosen_samples[j]["index"])
            pictures.append((picture, f"{name}: {image_error[chosen[j]]:.2f} {unit}"))
        path = picture_grid(pictures, ctx.out_dir / f"gallery_{label}.png", columns=min(4, len(pictures)))
        figures.append(Figure(path, f"The {len(chosen)} {label} images by mean error: ground truth green, "
                                    "prediction red, joined by yellow lines (in the network's input)."))
    return Section("Worst and best images", figures=figures)


def confidence_section(samples: Sequence[Mapping[str, Any]], error: np.ndarray, ctx: ReportContext,
                       unit: str) -> Section | None:
    """Spearman's rho and least-confident-10% error for each confidence the samples carry; ``confidence.csv``."""
    rows, figures = [], []
    for key, name, higher_is_confident in CONFIDENCES:
        if key not in samples[0]:
            continue
        value = np.stack([s[key] for s in samples]).astype(np.float64)
        uncertainty = -value if higher_is_confident else value
        stats = rank_against_error(uncertainty, error)
        rows.append({"confidence": name, "n": stats["n"], "spearman_rho": number(stats["spearman"]),
                     f"least_confident_10%_mre_{unit}": number(stats["least_confident_mre"]),
                     f"rest_mre_{unit}": number(stats["rest_mre"]), "ratio": number(stats["ratio"])})
        ctx.facts[f"confidence_{key}"] = stats
        path = scatter_plot(value.ravel(), error.ravel(), ctx.out_dir / f"confidence_{key}.png", xlabel=name,
                            ylabel=f"radial error ({unit})", title=f"{name} against error", log_y=True)
        figures.append(Figure(path, f"Every keypoint: {name} against its error."))
    if not rows:
        return None
    csv = write_table_csv(ctx.out_dir / "confidence.csv", rows)
    text = ("How well each confidence ranks the errors, over every visible keypoint. spearman_rho is the rank "
            "correlation of the uncertainty (the negated peak value; the widths as they are) with the error: "
            "positive means the less confident keypoints are the worse ones. The least confident 10% are "
            "compared with the rest.")
    return Section("Confidence against error", text=text,
                   tables=[TableBlock("Confidence against error", rows, csv=csv.name)], figures=figures)


def heatmap_section(task: Any, samples: Sequence[Mapping[str, Any]], ctx: ReportContext) -> Section | None:
    """``report.heatmaps``: each chosen sample's heatmaps (maximum over keypoints) over its input."""
    if not ctx.options.heatmaps:
        return None
    indices = ctx.resolve(ctx.options.heatmaps, len(ctx.dataset))
    batch, _, outputs = ctx.run(indices)
    outputs = task.codec.keypoint_maps(outputs, task.num_keypoints)
    if outputs is None:  # SimCC's x / y vectors, a regression: no map to draw
        return Section("Heatmaps", text=f"The codec {type(task.codec).__name__} predicts no heatmaps.")
    pictures = []
    for j, picture in enumerate(ctx.pictures(batch)):
        scale = ctx.drawing_scale(batch)
        big = np.repeat(np.repeat(picture, scale, axis=0), scale, axis=1)
        pictures.append((heatmap_overlay(big, outputs[j].float().cpu().numpy(), normalise=True), ctx.image_name(indices[j])))
    path = picture_grid(pictures, ctx.out_dir / "heatmaps.png", columns=min(4, len(pictures)))
    ctx.facts["heatmaps"] = indices
    return Section("Heatmaps", text="The network's heatmaps (the maximum over all keypoints, scaled to its own maximum) over its input.",
                   figures=[Figure(path, "heatmaps of " + ", ".join(ctx.image_name(i) for i in indices))])


def feature_section(samples: Sequence[Mapping[str, Any]], ctx: ReportContext, worst: int | None) -> Section | None:
    """``report.features``: each backbone branch's mean activation for the chosen samples (``true``: the worst)."""
    chosen = ctx.options.features
    if chosen is True:
        indices = [] if worst is None else [worst]
    elif not chosen:
        return None
    else:
        indices = ctx.resolve(chosen, len(ctx.dataset))
    figures = []
    for index in indices:
        _, features, _ = ctx.run([index])
        arrays = [f[0].float().cpu().numpy() for f in features]
        names = [f"branch {b + 1} (1/{int(info['reduction'])})"
                 for b, info in enumerate(ctx.module.backbone.feature_info[:len(arrays)])]
        path = feature_grid(arrays, ctx.out_dir / f"features_{index}.png", names=names,
                            title=f"backbone features of {ctx.image_name(index)}")
        figures.append(Figure(path, f"Mean activation over channels of each branch, {ctx.image_name(index)}."))
    ctx.facts["features"] = indices
    return Section("Feature maps", figures=figures) if figures else None
