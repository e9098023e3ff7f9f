"""LandmarkTask: perfect heatmaps decode, through each sample's inverse affine, to the original points."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from hrexp.codecs.heatmap import GaussianHeatmapCodec
from hrexp.geometry import apply_affine, invert_affine
from hrexp.losses.heatmap_mse import WeightedHeatmapMSE
from hrexp.models.heads import HeatmapHead
from hrexp.tasks.landmarks import LandmarkTask

FEATURES = [{"num_chs": 8, "reduction": 4}, {"num_chs": 16, "reduction": 8}]


def _task(upsample: bool) -> LandmarkTask:
    head = lambda **kw: HeatmapHead(upsample_to_input=upsample, **kw)  # noqa: E731
    return LandmarkTask(head, GaussianHeatmapCodec(sigma=1.0), WeightedHeatmapMSE(), FEATURES,
                        {"num_keypoints": 3, "keypoint_names": ["a", "b", "c"]}, sdr_radii=[1, 5])


def _batch(h=128, w=128):
    # away from the heatmap borders, where the DARK blur is biased (see test_codec.py)
    orig = torch.tensor([[[140.3, 200.7], [110.2, 120.9], [370.5, 300.1]], [[205.5, 205.5], [260.0, 350.25], [133.3, 144.4]]])
    # original (512 x 512) -> input (128 x 128): scale 0.25 plus a rotation and a shift, per sample
    mats = []
    for angle in (0.0, 7.0):
        a = math.radians(angle)
        s = 0.25
        mats.append(torch.tensor([[s * math.cos(a), -s * math.sin(a), 3.0], [s * math.sin(a), s * math.cos(a), -1.0], [0, 0, 1]]))
    matrix = torch.stack(mats)
    kp = apply_affine(orig, matrix)
    return {"keypoints": kp, "visible": torch.ones(2, 3), "keypoints_orig": orig, "visible_orig": torch.ones(2, 3),
            "matrix": matrix, "spacing": torch.tensor([0.5, float("nan")]), "image": torch.zeros(2, 3, h, w)}


@pytest.mark.parametrize("upsample", [False, True])
def test_perfect_heatmaps_predict_original_points(upsample):
    task = _task(upsample)
    batch = _batch()
    stride = task.stride
    assert stride == (1.0 if upsample else 4.0)
    size = (int(128 / stride), int(128 / stride))
    heatmaps, _ = task.codec.encode(batch["keypoints"], batch["visible"], heatmap_size=size, stride=stride)
    preds = task.predict(heatmaps, batch)
    # the codec recovers points within 0.1 heatmap px = 0.1 * stride input px = 0.4 * stride original px
    err = (preds["keypoints"] - batch["keypoints_orig"]).norm(dim=-1)
    assert err.max() < 0.4 * stride, err
    # decoding in the input frame agrees with the batch's input keypoints
    assert (preds["keypoints_input"] - batch["keypoints"]).norm(dim=-1).max() < 0.1 * stride
    # metrics of perfect predictions: MRE ~ 0, every landmark within 1 px; mm only for sample 0
    task.update_metrics("val", preds, batch)
    values = task.compute_metrics("val")
    assert values["val/mre"] < 0.5 and values["val/sdr_1"] == 1.0
    assert values["val/mre_mm"] < 0.25
    # the loss of the perfect heatmaps is 0, of zeros it is not
    assert task.loss(heatmaps, batch) == pytest.approx(0.0, abs=1e-12)
    assert task.loss(torch.zeros_like(heatmaps), batch) > 0


def test_head_output_matches_codec_grid():
    task = _task(False)
    feats = [torch.randn(2, 8, 32, 32), torch.randn(2, 16, 16, 16)]
    out = task(feats)
    assert out.shape == (2, 3, 32, 32)
    assert torch.isfinite(task.loss(out, _batch())).all()


def test_inverse_affine_round_trip():
    batch = _batch()
    back = apply_affine(batch["keypoints"], invert_affine(batch["matrix"]))
    torch.testing.assert_close(back, batch["keypoints_orig"], atol=1e-4, rtol=0)


def test_gallery_draws_the_points_where_they_are_in_the_input():
    """The report's gallery maps each prediction (kept in original px) through the sample's affine into the
    network input and draws it there: the red dots' centres are the input positions, enlarged by ``scale``."""
    from hrexp.evaluation.keypoint_report import sample_preds
    from hrexp.reports.drawing import PRED_COLOR

    task, batch, scale = _task(False), _batch(), 4
    shifted = batch["keypoints_orig"] + torch.tensor([8.0, -4.0])  # predictions 8 px right, 4 up (original px)
    samples = [{"index": i, "keypoints": shifted[i].numpy(), "scores": torch.ones(3).numpy()} for i in range(2)]
    preds = sample_preds(samples, batch)
    black = [torch.zeros(128, 128, 3, dtype=torch.uint8).numpy()] * 2
    drawn = task.draw_predictions(black, batch, preds, scale=scale)
    expected_input = apply_affine(shifted, batch["matrix"]).numpy()  # independent of sample_preds' own mapping
    for i, (picture, caption) in enumerate(drawn):
        assert picture.shape == (512, 512, 3)
        assert caption == "mean error 8.94 px"  # |(8, -4)| in original px
        red = np.all(picture == np.asarray(PRED_COLOR, np.uint8), axis=2)
        count, components = cv2.connectedComponents(red.astype(np.uint8))
        assert count - 1 == 3  # one dot per landmark (label 0 is the background)
        centres = np.array([np.argwhere(components == c).mean(axis=0)[::-1] for c in range(1, 4)])  # (x, y)
        want = (expected_input[i] + 0.5) * scale - 0.5  # pixel-centre convention, enlarged
        for point in want:
            assert np.linalg.norm(centres - point, axis=1).min() < 0.5, (centres, want)  # the +-0.5 convention moves it 1.5 px


def test_each_points_covariance_is_its_heatmap_peaks_in_original_pixels():
    """Encoded Gaussians of sigma 1 cell (4 input px) through a similarity of scale 1/4 (and a 7-degree turn):
    each point's covariance in original px is isotropic with sigma 16 px per axis (the window cuts a little),
    its trace is the spread squared (the spread's scale factor is the affine's, the covariance's M S M^T), and
    an ensemble's member covariance is the members' scatter about their mean."""
    task = _task(False)
    batch = _batch()
    heatmaps, _ = task.codec.encode(batch["keypoints"], batch["visible"], heatmap_size=(32, 32), stride=4.0)
    preds = task.predict(heatmaps, batch)
    covariance = preds["covariance"].numpy()
    assert covariance.shape == (2, 3, 2, 2)
    np.testing.assert_allclose(covariance[..., 0, 0], 256.0, rtol=0.06)
    np.testing.assert_allclose(covariance[..., 1, 1], 256.0, rtol=0.06)
    assert np.abs(covariance[..., 0, 1]).max() < 0.05 * 256
    np.testing.assert_allclose(preds["spread"].numpy() ** 2, np.trace(covariance, axis1=-2, axis2=-1), rtol=1e-5)
    batch["index"] = torch.tensor([0, 1])
    one = task.sample_results(preds, batch)
    shifted = {**preds, "keypoints": preds["keypoints"] + torch.tensor([4.0, -2.0])}
    two = task.sample_results(shifted, batch)
    combined = task.combine_members([one, two])
    # two members 2 * (2, -1) apart: each is (2, -1) from the mean, so the scatter is d d^T with d = (2, -1)
    np.testing.assert_allclose(combined[0]["member_covariance"], np.tile([[4.0, -2.0], [-2.0, 1.0]], (3, 1, 1)))
    np.testing.assert_allclose(combined[0]["covariance"], covariance[0], rtol=1e-5)
