"""A conformal calibration (hrexp.conformal.calibration) fitted on evaluated samples, saved beside a checkpoint
and read back the same; bad files refused naming the field; and the regions measured on other samples
(hrexp.evaluation.regions): calibrated ones keep their level, the uncalibrated heatmap ellipses of an
overconfident model do not."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hrexp.conformal.calibration import Calibration, calibration_path, fit
from hrexp.conformal.regions import calibrate, scores
from hrexp.errors import ConfigError
from hrexp.evaluation.regions import assess

LEVELS = (0.9, 0.95)
NAMES = ["a", "b", "c"]


def samples_with_known_errors(rng, n: int, confidence: float = 1.0, members: int = 0) -> list[dict]:
    """Per image and landmark an error drawn from N(0, S) with S known per point; the 'heatmap' reports S times
    ``confidence`` (1: honest; 0.25: twice too sure in standard deviation); landmark c is invisible in image 0."""
    out = []
    for i in range(n):
        scale = rng.uniform(0.5, 2.0, 3)
        cov = np.array([np.diag([4.0, 1.0]) * s ** 2 for s in scale])  # [K, 2, 2]
        truth = rng.uniform(50, 450, (3, 2))
        error = np.einsum("kij,kj->ki", np.linalg.cholesky(cov), rng.standard_normal((3, 2)))
        sample = {"index": i, "keypoints": truth + error, "keypoints_orig": truth,
                  "visible_orig": np.array([1.0, 1.0, 0.0 if i == 0 else 1.0]), "covariance": cov * confidence}
        if members:
            points = truth + error + rng.normal(0, 0.5, (members, 3, 2))
            d = points - points.mean(0)
            sample["member_covariance"] = np.einsum("mki,mkj->kij", d, d) / members
        out.append(sample)
    return out


def test_fit_save_and_load_give_the_same_regions(tmp_path):
    rng = np.random.default_rng(0)
    samples = samples_with_known_errors(rng, 200, members=3)
    calibration = fit(samples, NAMES, LEVELS, source={"split": "val", "checkpoint": "best.ckpt"})
    assert set(calibration.thresholds) == {"radius", "heatmap", "ensemble"}
    errors = np.stack([s["keypoints"] - s["keypoints_orig"] for s in samples])
    errors[0, 2] = np.nan  # invisible: left out
    expected = calibrate(scores(errors, np.stack([s["covariance"] for s in samples])), LEVELS)
    np.testing.assert_array_equal(calibration.thresholds["heatmap"], expected)
    path = calibration.save(calibration_path(tmp_path / "best.ckpt"))
    assert path.name == "best.ckpt.conformal.json"
    back = Calibration.load(path)
    assert back.levels == list(LEVELS) and back.keypoint_names == NAMES and back.source["images"] == 200
    for shape in calibration.thresholds:
        np.testing.assert_array_equal(back.thresholds[shape], calibration.thresholds[shape])
    cov = np.diag([4.0, 1.0])[None].repeat(3, 0)
    region = back.regions("heatmap", 0.95, cov)
    np.testing.assert_allclose(region["major"], 2 * back.threshold("heatmap", 0.95))
    np.testing.assert_allclose(back.regions("radius", 0.9)["area"], math.pi * back.threshold("radius", 0.9) ** 2)
    with pytest.raises(ConfigError, match=r"conformal level 0.5: this calibration has \[0.9, 0.95\]"):
        back.threshold("radius", 0.5)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(format=7), "'format'"),
    (lambda d: d.update(levels=[0.9, 1.2]), "'levels'"),
    (lambda d: d["thresholds"]["radius"].update({"0.9": [1.0]}), "'thresholds.radius'"),
    (lambda d: d["thresholds"].update(square={}), "'thresholds.square'"),
])
def test_a_bad_calibration_file_is_refused_naming_the_field(tmp_path, edit, field):
    rng = np.random.default_rng(1)
    data = fit(samples_with_known_errors(rng, 40), NAMES, LEVELS).to_dict()
    edit(data)
    path = tmp_path / "x.conformal.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=f"conformal calibration {path}: field {field}"):
        Calibration.load(path)
    with pytest.raises(ConfigError, match="no such file"):
        Calibration.load(tmp_path / "none.json")


def test_calibrated_regions_keep_their_level_on_other_images_and_uncalibrated_ones_do_not():
    rng = np.random.default_rng(2)
    n = 3000
    calibration = fit(samples_with_known_errors(rng, n, confidence=0.25), NAMES, LEVELS)
    rows = assess(samples_with_known_errors(rng, n, confidence=0.25), calibration, LEVELS,
                  spacing=np.full(n, 0.1))
    by = {(r["kind"], r["shape"], r["level"]): r for r in rows}
    for level in LEVELS:
        tolerance = 4 * math.sqrt(2 * level * (1 - level) / (3 * n))
        for shape in ("radius", "heatmap"):
            assert abs(by["conformal", shape, level]["coverage"] - level) < tolerance, (shape, level)
        # the heatmap's own ellipses, twice too sure: far under their level
        assert by["uncalibrated", "heatmap", level]["coverage"] < level - 0.3
        # ellipses that follow each point's spread are smaller than discs for the same coverage
        assert by["conformal", "heatmap", level]["mean_area"] < 0.8 * by["conformal", "radius", level]["mean_area"]
        # and their size ranks the error; a disc's is the same for every image (it differs only by landmark)
        assert by["conformal", "heatmap", level]["spearman_area_error"] > 0.3
        assert abs(by["conformal", "radius", level]["spearman_area_error"]) < 0.1
        assert by["conformal", "radius", level]["area_unit"] == "mm^2"
    # mm^2 at 0.1 mm per px: the disc's area is pi r^2 / 100
    r = calibration.threshold("radius", 0.9)
    assert by["conformal", "radius", 0.9]["mean_area"] == pytest.approx(np.mean(math.pi * r ** 2 / 100), rel=1e-3)


def test_predicts_regions_read_the_file_flag_large_regions_and_unusual_images(tmp_path):
    """predict.yaml's conformal options (hrexp.prediction.regions): the file beside the checkpoint, its level and
    shape, a review size on the major semi-axis, and an image whose mean peak is below every calibration image's."""
    from hrexp.prediction.regions import point_regions

    rng = np.random.default_rng(4)
    samples = samples_with_known_errors(rng, 60)
    for i, sample in enumerate(samples):
        sample["scores"] = np.full(3, 0.5 + i / 200)  # image means 0.5 .. 0.795
    calibration = fit(samples, NAMES, LEVELS)
    assert calibration.source["image_mean_score"]["min"] == pytest.approx(0.5)
    ckpt = tmp_path / "m.ckpt"
    assert point_regions({}, ckpt) is None  # auto, and no file beside the checkpoint
    calibration.save(calibration_path(ckpt))
    radius = calibration.threshold("radius", 0.95)
    regions = point_regions({"shape": "radius", "review_px": float(np.median(radius))}, ckpt)
    drawn = regions.of(None, 2)
    np.testing.assert_allclose(drawn["major"], np.tile(radius, (2, 1)))
    np.testing.assert_array_equal(drawn["review"], np.tile(radius > np.median(radius), (2, 1)))
    assert regions.unusual(np.full(3, 0.49)) and not regions.unusual(np.full(3, 0.51))
    assert point_regions({"calibration": None}, ckpt) is None
    with pytest.raises(ConfigError, match="conformal level 0.8: this calibration has"):
        point_regions({"level": 0.8}, ckpt)
    with pytest.raises(ConfigError, match=r"conformal.review_px=-1: expected a positive number"):
        point_regions({"review_px": -1}, ckpt)
    with pytest.raises(ConfigError, match="conformal.colour: unknown option"):
        point_regions({"colour": "red"}, ckpt)
    heatmap = point_regions({"shape": "heatmap"}, ckpt)
    with pytest.raises(ConfigError, match="gives no per-point covariance; use conformal.shape=radius"):
        heatmap.of(None, 1)
