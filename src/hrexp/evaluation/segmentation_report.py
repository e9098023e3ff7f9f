"""The segmentation task's report: per-class IoU and Dice, a per-image table, the confusion matrix, and
overlay galleries of the images with the lowest and highest IoU."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from hrexp.evaluation.context import ReportContext
from hrexp.evaluation.tables import number, write_table_csv
from hrexp.reports.eval_plots import confusion_matrix_plot, picture_grid
from hrexp.reports.html_report import Figure, Section, TableBlock


def class_scores(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class IoU and Dice of a ``[C, C]`` confusion matrix (rows = truth); NaN where undefined."""
    confusion = confusion.astype(np.float64)
    tp = np.diag(confusion)
    fp, fn = confusion.sum(0) - tp, confusion.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return tp / (tp + fp + fn), 2 * tp / (2 * tp + fp + fn)


def segmentation_report(task: Any, samples: Sequence[Mapping[str, Any]], ctx: ReportContext) -> list[Section]:
    """Every section of the segmentation report; its CSVs and PNGs written into ``ctx.out_dir``."""
    names = task.class_names
    total = np.sum([s["confusion"] for s in samples], axis=0)
    iou, dice = class_scores(total)
    class_rows = [{"class": name, "iou": number(iou[c]), "dice": number(dice[c]),
                   "pixels_true": int(total[c].sum()), "pixels_predicted": int(total[:, c].sum())}
                  for c, name in enumerate(names)]
    write_table_csv(ctx.out_dir / "per_class.csv", class_rows)
    image_rows, image_score = [], []
    foreground = slice(1, None) if len(names) > 1 else slice(None)
    for sample in samples:
        sample_iou, sample_dice = class_scores(sample["confusion"])
        fg = sample_iou[foreground]
        score = float(np.nanmean(fg)) if np.isfinite(fg).any() else np.nan
        image_score.append(score)
        correct, counted = np.trace(sample["confusion"]), sample["confusion"].sum()
        image_rows.append({"image": ctx.image_name(sample["index"]), "index": int(sample["index"]),
                           "foreground_iou": number(score), "pixel_acc": number(correct / counted) if counted else None,
                           **{f"iou_{name}": number(sample_iou[c]) for c, name in enumerate(names)},
                           **{f"dice_{name}": number(sample_dice[c]) for c, name in enumerate(names)}})
    write_table_csv(ctx.out_dir / "per_image.csv", image_rows)
    matrix = confusion_matrix_plot(total, names, ctx.out_dir / "confusion_matrix.png")
    sections = [Section("Segmentation accuracy",
                        text="IoU and Dice per class from the confusion matrix of the whole split, at each image's "
                             "original resolution (ignored pixels left out).",
                        tables=[TableBlock("Per class", class_rows, csv="per_class.csv"),
                                TableBlock("Per image (first rows)", image_rows, csv="per_image.csv", max_rows=20)],
                        figures=[Figure(matrix, "Confusion matrix (rows: truth), coloured by the share of each row.")])]
    sections.append(_gallery(task, samples, np.asarray(image_score), ctx))
    return sections


@torch.no_grad()
def _gallery(task: Any, samples: Sequence[Mapping[str, Any]], score: np.ndarray, ctx: ReportContext) -> Section:
    """The images with the lowest and the highest foreground IoU: truth | prediction overlays."""
    n = max(0, int(ctx.options.gallery))
    order = [int(i) for i in np.argsort(np.where(np.isfinite(score), score, np.inf), kind="stable")
             if np.isfinite(score[i])]
    worst, best = order[:n], order[::-1][:n]
    ctx.facts["gallery_worst"] = [int(samples[i]["index"]) for i in worst]
    ctx.facts["gallery_best"] = [int(samples[i]["index"]) for i in best]
    figures = []
    for label, chosen in (("worst", worst), ("best", best)):
        if not chosen:
            continue
        indices = [int(samples[i]["index"]) for i in chosen]
        batch = ctx.batch(indices)
        ctx.module.eval()
        preds = task.predict(task.eval_outputs(ctx.module, batch), batch)
        drawn = task.draw_predictions(ctx.pictures(batch), batch, preds)
        pictures = [(picture, f"{ctx.image_name(index)}: IoU {score[i]:.3f}")
                    for (picture, _), index, i in zip(drawn, indices, chosen)]
        path = picture_grid(pictures, ctx.out_dir / f"gallery_{label}.png", columns=min(2, len(pictures)))
        figures.append(Figure(path, f"The {len(chosen)} {label} images by foreground IoU: ground truth | prediction."))
    return Section("Worst and best images", figures=figures)
