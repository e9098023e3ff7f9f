"""CocoKeypointAP: COCO OKS AP/AR against pycocotools run independently, DDP de-duplication, OKS NMS."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from hrexp.metrics.coco_keypoints import STAT_NAMES, CocoKeypointAP, oks_nms
from tests.ddp_helpers import run_on_two_ranks

# COCO's 17 person sigmas: test data only, the metric must not know them.
COCO_SIGMAS = [s / 10 for s in (.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89)]
SIGMAS5 = [0.05, 0.10, 0.15, 0.20, 0.25]
TEST_COCO = Path(__file__).resolve().parents[1].parent / "shared/data/pose_coco_samples/coco/test_coco.json"


@pytest.fixture(scope="module")
def coco_gt() -> dict:
    if not TEST_COCO.exists():
        pytest.skip(f"COCO sample annotations not found: {TEST_COCO}")
    return json.loads(TEST_COCO.read_text())


def gt_predictions(gt: dict) -> dict[str, torch.Tensor]:
    """One prediction per annotated person (num_keypoints > 0): its GT keypoints, scores 1.

    Unlabelled keypoints go to the box centre, where a model would put them somewhere; they do not
    count in the OKS (only labelled GT keypoints do).
    """
    anns = [a for a in gt["annotations"] if a["num_keypoints"] > 0]
    kpts = []
    for a in anns:
        k = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        x, y, w, h = a["bbox"]
        k[k[:, 2] == 0, :2] = (x + w / 2, y + h / 2)
        kpts.append(k[:, :2])
    n, k = len(anns), len(kpts[0])
    return {
        "keypoints": torch.tensor(np.stack(kpts), dtype=torch.float32),
        "keypoint_scores": torch.ones(n, k),
        "image_id": torch.tensor([a["image_id"] for a in anns]),
        "bbox_score": torch.ones(n),
        "index": torch.arange(n),
    }


def take(preds: dict[str, torch.Tensor], rows) -> dict[str, torch.Tensor]:
    rows = torch.as_tensor(rows, dtype=torch.long)
    return {key: value[rows] for key, value in preds.items()}


def perturbed_predictions(gt: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """GT predictions with ~3 px noise, keypoint scores in (0.3, 1), box scores in (0.5, 1), plus a
    false positive (the first person moved by 150 px) appended last."""
    rng = np.random.default_rng(seed)
    p = gt_predictions(gt)
    n, k = p["keypoint_scores"].shape
    kpts = p["keypoints"].numpy() + rng.normal(0, 3, size=(n, k, 2))
    fp = kpts[:1] + 150
    return {
        "keypoints": torch.tensor(np.concatenate([kpts, fp]), dtype=torch.float32),
        "keypoint_scores": torch.tensor(rng.uniform(0.3, 1.0, size=(n + 1, k)), dtype=torch.float32),
        "image_id": torch.cat([p["image_id"], p["image_id"][:1]]),
        "bbox_score": torch.tensor(rng.uniform(0.5, 1.0, size=n + 1), dtype=torch.float32),
        "index": torch.arange(n + 1),
    }


def metric_for(gt: dict, sigmas, **kwargs) -> CocoKeypointAP:
    metric = CocoKeypointAP(sigmas, **kwargs)
    metric.set_ground_truth(gt)
    return metric


def run_metric(gt: dict, sigmas, batches, **kwargs) -> dict[str, float]:
    metric = metric_for(gt, sigmas, **kwargs)
    for batch in batches:
        metric.update(**batch)
    return {key: float(value) for key, value in metric.compute().items()}


def pycocotools_reference(gt: dict, preds: dict[str, torch.Tensor], sigmas, tmp_path: Path) -> list[float]:
    """pycocotools on its own, from a JSON file, with the rescored score computed here by hand."""
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    results = []
    for i in range(len(preds["index"])):
        kpts = preds["keypoints"][i].double().numpy()
        ks = preds["keypoint_scores"][i].double().numpy()
        assert (ks > 0.2).all()  # so the rescoring mean is over all keypoints
        flat = []
        for (x, y), s in zip(kpts, ks):
            flat += [float(x), float(y), float(s)]
        score = float(preds["bbox_score"][i]) * sum(float(s) for s in ks) / len(ks)
        results.append({"image_id": int(preds["image_id"][i]), "category_id": 1, "keypoints": flat, "score": score})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
        ev = COCOeval(coco, coco.loadRes(results), "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


# --- synthetic 5-keypoint data --------------------------------------------------------------------


def person(ann_id: int, image_id: int, x0: float, y0: float, size: float = 100.0, hidden=()) -> dict:
    """A 5-keypoint person in a ``size`` x ``size`` box at (x0, y0): a cross of keypoints."""
    offsets = [(0.5, 0.1), (0.2, 0.4), (0.8, 0.4), (0.3, 0.9), (0.7, 0.9)]
    kpts = []
    for j, (u, v) in enumerate(offsets):
        kpts += [0, 0, 0] if j in hidden else [x0 + u * size, y0 + v * size, 2]
    return {
        "id": ann_id, "image_id": image_id, "category_id": 7, "keypoints": kpts,
        "num_keypoints": 5 - len(hidden), "area": size * size, "bbox": [x0, y0, size, size], "iscrowd": 0,
    }


def synthetic_gt(annotations: list[dict], image_ids=(1, 2, 3)) -> dict:
    return {
        "images": [{"id": i, "width": 400, "height": 300} for i in image_ids],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "thing", "keypoints": ["a", "b", "c", "d", "e"]}],
    }


def prediction(keypoints, image_id: int, index: int, bbox_score: float = 1.0) -> dict[str, torch.Tensor]:
    kpts = torch.tensor(keypoints, dtype=torch.float32)[None]
    return {
        "keypoints": kpts,
        "keypoint_scores": torch.ones(1, kpts.shape[1]),
        "image_id": torch.tensor([image_id]),
        "bbox_score": torch.tensor([bbox_score]),
        "index": torch.tensor([index]),
    }


def xy(ann: dict) -> np.ndarray:
    return np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2]


# --- tests ----------------------------------------------------------------------------------------


def test_ground_truth_as_prediction_scores_one(coco_gt):
    preds = gt_predictions(coco_gt)
    assert len(preds["index"]) == 12  # the 14 annotations less the two without keypoints
    out = run_metric(coco_gt, COCO_SIGMAS, [take(preds, range(5)), take(preds, range(5, 12))])
    assert out["AP"] == 1.0 and out["AR"] == 1.0
    assert out["AP50"] == out["AP75"] == out["AR50"] == out["AR75"] == 1.0
    assert set(out) == set(STAT_NAMES)


def test_perturbed_predictions_equal_pycocotools(coco_gt, tmp_path):
    preds = perturbed_predictions(coco_gt)
    out = run_metric(coco_gt, COCO_SIGMAS, [take(preds, range(6)), take(preds, range(6, 13))], oks_nms_threshold=None)
    expected = pycocotools_reference(coco_gt, preds, COCO_SIGMAS, tmp_path)
    for name, value in zip(STAT_NAMES, expected):
        assert out[name] == pytest.approx(value, abs=1e-9), name
    # Not a trivial score: the noise and the false positive cost something.
    assert 0.3 < out["AP"] < 1.0


def test_duplicate_indices_are_counted_once(coco_gt):
    preds = perturbed_predictions(coco_gt)
    # Without NMS, which would otherwise hide an exact duplicate.
    once = run_metric(coco_gt, COCO_SIGMAS, [take(preds, range(7)), take(preds, range(7, 13))], oks_nms_threshold=None)
    # As a padded DistributedSampler does: some samples come again, with their own index.
    batches = [take(preds, range(7)), take(preds, [0, 2, 12]), take(preds, range(7, 13))]
    assert run_metric(coco_gt, COCO_SIGMAS, batches, oks_nms_threshold=None) == once
    assert run_metric(coco_gt, COCO_SIGMAS, batches) == run_metric(coco_gt, COCO_SIGMAS, [preds])
    # The same rows under NEW indices are extra predictions and do change the numbers.
    extra = take(preds, [0, 2, 12])
    extra["index"] = torch.tensor([100, 101, 102])
    changed = run_metric(coco_gt, COCO_SIGMAS, [preds, extra], oks_nms_threshold=None)
    assert changed != run_metric(coco_gt, COCO_SIGMAS, [preds], oks_nms_threshold=None)


def _ddp_worker(rank: int, world_size: int, gt: dict, preds: dict) -> dict:
    n = len(preds["index"])
    sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=False)
    rows = list(sampler)
    out = {}
    for nms in (0.9, None):  # without NMS an exact duplicate would count; with it, the default
        metric = metric_for(gt, COCO_SIGMAS, oks_nms_threshold=nms)
        metric.update(**take(preds, rows[:4]))
        metric.update(**take(preds, rows[4:]))
        out[str(nms)] = {key: float(value) for key, value in metric.compute().items()}
    return {"rows": rows, "metrics": out}


def test_ddp_two_processes_equal_single_process(coco_gt, tmp_path):
    preds = perturbed_predictions(coco_gt)  # 13 predictions: 2 ranks x 7, one sample padded in twice
    ranks = run_on_two_ranks(_ddp_worker, (coco_gt, preds), tmp_path)
    all_rows = ranks[0]["rows"] + ranks[1]["rows"]
    assert len(all_rows) == 14 and len(set(all_rows)) == 13  # the padding really duplicated a sample
    for nms in (0.9, None):
        single = run_metric(coco_gt, COCO_SIGMAS, [preds], oks_nms_threshold=nms)
        for r in ranks:
            assert r["metrics"][str(nms)] == single


def test_custom_keypoint_count_and_hand_computed_oks():
    anns = [person(1, 1, 20, 30), person(2, 1, 200, 50, hidden=(3,)), person(3, 2, 50, 50, size=60),
            person(4, 3, 10, 10, size=150, hidden=(0, 4)), person(5, 3, 220, 100)]
    gt = synthetic_gt(anns)
    batches = [prediction(xy(a), a["image_id"], i) for i, a in enumerate(anns)]
    out = run_metric(gt, SIGMAS5, batches)
    assert out["AP"] == 1.0 and out["AR"] == 1.0

    # One large person (area 100^2 > 96^2), prediction moved by d^2 = 10^2 + 200 = 300 px^2:
    # OKS = mean_k exp(-300 / (2 * 10000 * (2 sigma_k)^2)) = mean exp(-[1.5, .375, .1667, .09375, .06]).
    gt1 = synthetic_gt([person(1, 1, 20, 30)], image_ids=(1,))
    e = np.array([1.5, 0.375, 300 / 1800, 0.09375, 0.06])
    oks = float(np.exp(-e).mean())
    assert oks == pytest.approx(0.72183, abs=1e-4)
    moved = xy(gt1["annotations"][0]) + np.array([10.0, math.sqrt(200.0)])
    out = run_metric(gt1, SIGMAS5, [prediction(moved, 1, 0)])
    # Matched at OKS thresholds .50 .55 .60 .65 .70 only: 5 of 10; one GT, one detection.
    # (approx: pycocotools' precision is tp / (tp + fp + eps), 1 / (1 + 2.2e-16) for one TP.)
    assert out["AP50"] == pytest.approx(1.0) and out["AP75"] == 0.0
    assert out["AP"] == pytest.approx(0.5) and out["AR"] == pytest.approx(0.5) and out["APl"] == pytest.approx(0.5)
    assert out["APm"] == -1.0 and out["ARm"] == -1.0  # no medium-sized GT: pycocotools' -1 kept
    # The sigmas are really used: twice as large sigmas make the same offset an OKS of ~0.92.
    out = run_metric(gt1, [2 * s for s in SIGMAS5], [prediction(moved, 1, 0)])
    assert out["AP75"] == pytest.approx(1.0) and out["AP"] == pytest.approx(0.9)


def test_oks_nms_suppresses_near_duplicate():
    base = np.array([[50, 10], [20, 40], [80, 40], [30, 90], [70, 90]], dtype=np.float64)
    # Input order scrambled: the near duplicate (0.5 px off) comes first, the far one in the middle.
    kpts = np.stack([base + 0.5, base + 100, base])
    scores = np.array([0.8, 0.7, 0.9])
    areas = np.full(3, 100.0 * 100.0)
    # OKS(dup, base) = mean exp(-0.5 / (80000 sigma^2)) ~= 0.99927
    assert oks_nms(kpts, scores, areas, SIGMAS5, 0.9).tolist() == [2, 1]
    assert oks_nms(kpts, scores, areas, SIGMAS5, 0.9999).tolist() == [2, 0, 1]
    assert oks_nms(kpts[:0], scores[:0], areas[:0], SIGMAS5, 0.9).tolist() == []


def test_metric_applies_oks_nms():
    a, b = person(1, 1, 20, 30), person(2, 1, 250, 150)
    gt = synthetic_gt([a, b], image_ids=(1,))
    # TP 0.9, duplicate of it 0.8, TP 0.7: without NMS the duplicate is a false positive in between.
    batches = [prediction(xy(a), 1, 0, 0.9), prediction(xy(a) + 0.5, 1, 1, 0.8), prediction(xy(b), 1, 2, 0.7)]
    assert run_metric(gt, SIGMAS5, batches)["AP"] == 1.0
    no_nms = run_metric(gt, SIGMAS5, batches, oks_nms_threshold=None)
    # 101-point interpolated precision: 1 up to recall 0.5, 2/3 from there to recall 1.
    assert no_nms["AP"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    assert no_nms["AR"] == 1.0


def test_rescoring_ignores_low_keypoint_scores():
    a, b = person(1, 1, 20, 30), person(2, 1, 250, 150)
    gt = synthetic_gt([a, b], image_ids=(1,))
    fp = prediction(xy(a) + 300, 1, 1, 0.9)
    # FP: box 0.9, keypoints [1, .1, .1, .1, .1] -> 0.9 * mean over those > 0.2 = 0.9; TP b: all
    # 0.5 -> 0.5. So the FP outranks b; a plain mean (0.9 * 0.28) would not.
    fp["keypoint_scores"] = torch.tensor([[1.0, 0.1, 0.1, 0.1, 0.1]])
    tp_b = prediction(xy(b), 1, 2)
    tp_b["keypoint_scores"] = torch.full((1, 5), 0.5)
    out = run_metric(gt, SIGMAS5, [prediction(xy(a), 1, 0, 0.99), fp, tp_b])
    assert out["AP"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    # All keypoint scores under the threshold -> score 0, ranked last.
    fp["keypoint_scores"] = torch.full((1, 5), 0.1)
    assert run_metric(gt, SIGMAS5, [prediction(xy(a), 1, 0, 0.99), fp, tp_b])["AP"] == 1.0


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_errors_and_empty_input(coco_gt):
    with pytest.raises(ValueError, match=r"17 keypoints but 5 sigmas"):
        CocoKeypointAP(SIGMAS5).set_ground_truth(coco_gt)
    for bad in ([], [0.1, 0.0], [0.1, -0.2]):
        with pytest.raises(ValueError, match="sigmas"):
            CocoKeypointAP(bad)
    metric = CocoKeypointAP(COCO_SIGMAS)
    metric.update(**gt_predictions(coco_gt))
    with pytest.raises(RuntimeError, match="set_ground_truth"):
        metric.compute()
    with pytest.raises(ValueError, match=r"\[B, 17, 2\]"):
        metric.update(**take(prediction(xy(person(1, 1, 0, 0)), 1, 0), [0]))

    zeros = {name: 0.0 for name in STAT_NAMES}
    assert run_metric(coco_gt, COCO_SIGMAS, []) == zeros
    empty = take(gt_predictions(coco_gt), [])
    assert run_metric(coco_gt, COCO_SIGMAS, [empty]) == zeros
    # A prediction on an image the ground truth does not have: predictions and ground truth disagree.
    stray = take(gt_predictions(coco_gt), [0])
    stray["image_id"] = torch.tensor([123456789])
    with pytest.raises(ValueError, match=r"image ids \[123456789\] that are not in the ground truth"):
        run_metric(coco_gt, COCO_SIGMAS, [stray])
