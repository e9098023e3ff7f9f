"""The Task contract's hooks: metric directions from the metrics themselves, the monitor check,
per-item tables, drawing, baselines and summary lines, and BestMetrics taking its directions from
the task."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hrexp.callbacks.best_metrics import BestMetrics
from hrexp.codecs.heatmap import GaussianHeatmapCodec
from hrexp.losses.heatmap_mse import WeightedHeatmapMSE
from hrexp.losses.segmentation import SegmentationLoss
from hrexp.models.heads import HeatmapHead
from hrexp.reports.drawing import GT_COLOR, PRED_COLOR, class_color
from hrexp.run_record import Best, RunRecord
from hrexp.tasks.landmarks import LandmarkTask
from hrexp.tasks.segmentation import SegmentationTask

FEATURES = [{"num_chs": 8, "reduction": 4}, {"num_chs": 16, "reduction": 32}]
LANDMARK_META = {"num_keypoints": 2, "keypoint_names": ["a", "b"]}
SEG_META = {"num_classes": 3, "class_names": ["bg", "a", "b"], "ignore_index": 255}


def landmark_task(**kw) -> LandmarkTask:
    return LandmarkTask(lambda **k: HeatmapHead(**k), GaussianHeatmapCodec(sigma=1.0), WeightedHeatmapMSE(), FEATURES,
                        LANDMARK_META, sdr_radii=[2, 5], **kw)


def seg_task(**kw) -> SegmentationTask:
    return SegmentationTask(lambda **k: HeatmapHead(**k), SegmentationLoss(), FEATURES, SEG_META, **kw)


# ----------------------------------------------------------------------------- directions
def test_directions_come_from_each_metric_not_from_names():
    task = landmark_task()
    assert task.metric_mode("val/mre") == "min" and task.metric_mode("test/mre_mm") == "min"
    assert task.metric_mode("val/sdr_2") == "max" and task.metric_mode("test/sdr_5") == "max"
    assert task.metric_mode("val/loss") == "min" and task.metric_mode("val/unknown_key") == "min"  # the metric's default
    seg = seg_task()
    # iou_<class> keys are built from the class names: the metric's higher_is_better covers them
    assert {seg.metric_mode(f"val/{k}") for k in ("mIoU", "dice", "pixel_acc", "iou_a")} == {"max"}


def test_a_monitor_mode_against_the_metrics_direction_fails_at_construction():
    with pytest.raises(ValueError, match=r"task.monitor.mode='max' but val/mre is better when lower.*set task.monitor.mode=min"):
        landmark_task(monitor={"metric": "val/mre", "mode": "max"})
    with pytest.raises(ValueError, match=r"val/mIoU is better when higher"):
        seg_task(monitor={"metric": "val/mIoU", "mode": "min"})
    with pytest.raises(ValueError, match=r"expected 'min' or 'max'"):
        landmark_task(monitor={"metric": "val/mre", "mode": "lowest"})
    landmark_task(monitor={"metric": "val/sdr_5", "mode": "max"})  # a max metric of a min task is fine


def test_best_metrics_takes_directions_from_the_task_and_checks_given_ones():
    module = SimpleNamespace(task=landmark_task())
    cb = BestMetrics([{"metric": "val/loss"}, {"metric": "val/sdr_5"}])
    cb.setup(None, module, "fit")
    assert cb.monitors == [("val/loss", "min"), ("val/sdr_5", "max")]
    bad = BestMetrics([{"metric": "val/sdr_5", "mode": "min"}])
    with pytest.raises(ValueError, match="val/sdr_5, but the metric is better when higher"):
        bad.setup(None, module, "fit")
    # A metric the task has no direction for needs its mode, and then keeps it.
    undeclared = SimpleNamespace(task=SimpleNamespace(metric_mode=lambda name: None))
    with pytest.raises(ValueError, match="declares no direction for val/custom"):
        BestMetrics([{"metric": "val/custom"}]).setup(None, undeclared, "fit")
    given = BestMetrics([{"metric": "val/custom", "mode": "max"}])
    given.setup(None, undeclared, "fit")
    assert given.monitors == [("val/custom", "max")]


# ----------------------------------------------------------------------------- tables
def test_per_landmark_table_holds_each_landmarks_mean_error_in_px_and_mm():
    task = landmark_task()
    target = torch.zeros(2, 2, 2, dtype=torch.float64)
    pred = torch.tensor([[[3.0, 4.0], [1.0, 0.0]], [[6.0, 8.0], [0.0, 0.0]]], dtype=torch.float64)
    visible = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    task.metrics["test"].update(pred, target, visible, torch.tensor([0.5, float("nan")]))
    rows = task.per_item_tables("test")["per_landmark"]
    # a: errors 5 and 10 px -> 7.5 px; only sample 0 has a spacing: 5 px x 0.5 mm = 2.5 mm. b: sample 0 only.
    assert rows == [{"landmark": "a", "mre": 7.5, "mre_mm": 2.5}, {"landmark": "b", "mre": 1.0, "mre_mm": 0.5}]


def test_per_class_table_holds_each_class_iou_and_dice():
    task = seg_task()
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    preds = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 255]]]).clamp(max=2)
    task.metrics["val"].update(preds, target, torch.tensor([0]))
    rows = {r["class"]: r for r in task.per_item_tables("val")["per_class"]}
    # bg: tp 3, fn 1 (predicted 1), fp 0 -> IoU 3/4, Dice 6/7; a: tp 4... target a has 4 px, all predicted a
    # except the last, predicted 2: tp 3, fp 1 (bg pixel), fn 1 -> IoU 3/5, Dice 6/8.
    assert rows["bg"]["iou"] == pytest.approx(3 / 4) and rows["bg"]["dice"] == pytest.approx(6 / 7)
    assert rows["a"]["iou"] == pytest.approx(3 / 5) and rows["a"]["dice"] == pytest.approx(6 / 8)
    assert rows["b"]["iou"] == 0.0  # predicted once, never true


# ----------------------------------------------------------------------------- drawing
def test_keypoint_drawing_marks_truth_and_prediction_and_captions_the_original_pixel_error():
    task = landmark_task()
    image = np.full((32, 32, 3), 90, np.uint8)
    batch = {"keypoints": torch.tensor([[[5.0, 5.0], [20.0, 20.0]]]), "visible": torch.ones(1, 2),
             "keypoints_orig": torch.tensor([[[10.0, 10.0], [40.0, 40.0]]]), "visible_orig": torch.tensor([[1.0, 0.0]])}
    preds = {"keypoints_input": torch.tensor([[[25.0, 8.0], [20.0, 20.0]]]),
             "keypoints": torch.tensor([[[13.0, 14.0], [0.0, 0.0]]])}
    ((picture, caption),) = task.draw_predictions([image], batch, preds)
    assert tuple(picture[5, 5]) == GT_COLOR and tuple(picture[8, 25]) == PRED_COLOR
    assert caption == "mean error 5.00 px"  # only the visible landmark: |(13, 14) - (10, 10)| = 5


def test_segmentation_drawing_shows_truth_and_prediction_side_by_side():
    task = seg_task()
    image = np.zeros((64, 64, 3), np.uint8)  # padded input; the image itself is 40 x 50
    mask = torch.full((1, 40, 50), 0, dtype=torch.long)
    mask[0, :10, :10] = 1
    mask[0, 30:, 40:] = 255  # ignored: not scored, not drawn
    labels = torch.zeros(1, 40, 50, dtype=torch.long)
    labels[0, :10, :5] = 2
    batch = {"mask": mask, "image_hw": torch.tensor([[40, 50]]), "mask_hw": torch.tensor([[40, 50]])}
    ((picture, caption),) = task.draw_predictions([image], batch, {"labels": labels})
    assert picture.shape == (40, 100, 3)
    half = lambda c: tuple(int(v * 0.5 + 0.5) for v in c)  # noqa: E731  (alpha 0.5 over black)
    assert tuple(picture[2, 7]) == half(class_color(1)) and tuple(picture[35, 45]) == (0, 0, 0)
    assert tuple(picture[2, 52]) == half(class_color(2)) and tuple(picture[2, 57]) == (0, 0, 0)
    scored = 40 * 50 - 10 * 10
    correct = scored - 100  # the 10 x 10 truth square: 50 px predicted 2, 50 px predicted 0
    assert caption == f"ground truth | prediction, pixel accuracy {correct / scored:.3f}"


# ----------------------------------------------------------------------------- run summary
def test_landmark_summary_rows_compare_the_best_mre_with_the_mean_shape_baseline():
    task = landmark_task()
    record = RunRecord(best={"val/mre": Best(2.0, 3)}, baselines={"mean_shape_val": {"mre": 8.0, "sdr_2": 0.1}})
    assert task.summary_rows(record) == [("mean-shape baseline val/mre", "8"), ("best val/mre / baseline", "0.25")]
    assert task.summary_rows(RunRecord()) == []
    assert seg_task().summary_rows(record) == []  # a task without baselines adds nothing
