"""eval.py's report on a tiny landmark checkpoint trained here: its tables equal the metrics computed
independently, the galleries hold the images they say, the plots are real PNGs, report.html embeds every
image, confidences and seed ensembles are scored, and bad report options are refused by name."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
from scipy.stats import spearmanr

from hrexp.evaluation.uncertainty import rank_against_error
from hrexp.reports.eval_plots import png_size
from hrexp.reports.html_report import embedded_images, image_sources
from hrexp.errors import ConfigError
from hrexp.jobs.eval_run import evaluate
from tests.conftest import compose_for
from tests.fit_helpers import TINY_W18, fit


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def checkpoints(module_tmp, cache_dir):
    """Two tiny W18 landmark models (seeds 0 and 1), a few steps each."""
    paths = []
    for seed in (0, 1):
        cfg = compose_for([*TINY_W18, "trainer.max_epochs=2", "trainer.limit_train_batches=3", "test=false",
                           f"seed={seed}"], module_tmp / f"train{seed}", "train")
        trainer, _ = fit(cfg)
        path = module_tmp / f"seed{seed}.ckpt"
        trainer.save_checkpoint(path)
        paths.append(path)
    return paths


def run_eval(out, overrides):
    cfg = compose_for(list(overrides), out, "eval")
    return evaluate(cfg), out / "run"


@pytest.fixture(scope="module")
def single(checkpoints, module_tmp):
    return run_eval(module_tmp / "eval", [f"ckpt_path={checkpoints[0]}", "report.heatmaps=[0,1]",
                                          "report.features=true", "report.gallery=2"])


def test_the_tables_equal_the_metric_and_each_other(single):
    summary, out = single
    predictions = read_csv(out / "predictions.csv")
    pred = np.array([[float(r["x"]), float(r["y"])] for r in predictions])
    true = np.array([[float(r["x_true"]), float(r["y_true"])] for r in predictions])
    error = np.linalg.norm(pred - true, axis=1)  # every landmark of the synthetic set is annotated
    assert np.allclose(error, [float(r["error_px"]) for r in predictions])
    # the metric eval logged (LandmarkError during trainer.test) is the mean of these errors
    assert summary["metrics"]["test/mre"] == pytest.approx(error.mean(), rel=1e-5)
    names = list(dict.fromkeys(r["landmark"] for r in predictions))
    per_landmark = {r["landmark"]: r for r in read_csv(out / "per_landmark.csv")}
    assert list(per_landmark) == names and len(names) == 40
    for k, name in enumerate(names):
        e = error[[i for i, r in enumerate(predictions) if r["landmark"] == name]]
        row = per_landmark[name]
        assert float(row["mre"]) == pytest.approx(e.mean(), rel=1e-6)
        assert float(row["median"]) == pytest.approx(np.median(e), rel=1e-6)
        assert float(row["p90"]) == pytest.approx(np.percentile(e, 90), rel=1e-6)
        assert float(row["max"]) == pytest.approx(e.max(), rel=1e-6)
        assert float(row["sdr_8"]) == pytest.approx((e <= 8).mean())
    per_image = read_csv(out / "per_image.csv")
    for row in per_image:
        e = error[[i for i, r in enumerate(predictions) if r["index"] == row["index"]]]
        assert float(row["mre"]) == pytest.approx(e.mean(), rel=1e-6)


def test_the_galleries_hold_the_worst_and_best_images(single):
    _, out = single
    facts = json.loads((out / "report.json").read_text())
    per_image = read_csv(out / "per_image.csv")
    by_error = sorted(per_image, key=lambda r: float(r["mre"]))
    assert facts["gallery_worst"] == [int(r["index"]) for r in by_error[::-1][:2]]
    assert facts["gallery_best"] == [int(r["index"]) for r in by_error[:2]]
    for name in ("gallery_worst", "gallery_best"):
        width, height = png_size(out / f"{name}.png")
        assert 300 <= width <= 4000 and 200 <= height <= 3000


def test_plots_are_pngs_and_the_html_embeds_every_one(single):
    _, out = single
    for name in ("sdr_curve", "error_boxplot", "confidence_scores", "confidence_spread", "heatmaps"):
        width, height = png_size(out / f"{name}.png")
        assert 300 <= width <= 5000 and 200 <= height <= 3000, name
    assert list(out.glob("features_*.png"))
    html = (out / "report.html").read_text()
    sources = image_sources(html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    embedded = embedded_images(html)
    pngs = {p.read_bytes() for p in out.glob("*.png")}
    assert all(image in pngs for image in embedded)  # each embedded image is one of the report's PNGs
    assert len(embedded) >= 8
    assert "http://" not in html and "https://" not in html  # works offline


def test_the_markdown_report_holds_the_tables_and_links_every_plot(single):
    _, out = single
    text = (out / "report.md").read_text()
    per_landmark = read_csv(out / "per_landmark.csv")
    first = per_landmark[0]
    assert f"| {first['landmark']} | {first['n']} | {float(first['mre']):.4g} |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(p.name for p in out.glob("*.png"))  # every plot linked, relative, existing


def test_confidences_are_ranked_against_the_errors(single):
    _, out = single
    predictions = read_csv(out / "predictions.csv")
    error = np.array([float(r["error_px"]) for r in predictions])
    spread = np.array([float(r["spread"]) for r in predictions])
    rows = {r["confidence"]: r for r in read_csv(out / "confidence.csv")}
    row = rows["heatmap peak width (px)"]
    assert float(row["spearman_rho"]) == pytest.approx(spearmanr(spread, error).statistic, abs=1e-9)
    least = np.argsort(-spread, kind="stable")[:math.ceil(0.1 * len(error))]
    assert float(row["least_confident_10%_mre_px"]) == pytest.approx(error[least].mean())


def test_rank_against_error_by_hand():
    stats = rank_against_error(np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10.0]), np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 11.0]))
    assert stats["least_confident_mre"] == 11.0 and stats["rest_mre"] == 1.0 and stats["ratio"] == 11.0
    assert stats["spearman"] == pytest.approx(spearmanr(np.arange(10), [1] * 9 + [11]).statistic)
    assert math.isnan(rank_against_error(np.ones(5), np.arange(5.0))["spearman"])  # constant: undefined


def test_a_seed_ensemble_scores_the_mean_prediction(checkpoints, module_tmp, single):
    summary, out = run_eval(module_tmp / "ensemble", [f"ckpt_path=[{checkpoints[0]},{checkpoints[1]}]",
                                                      "report.gallery=1"])
    members = summary["ensemble"]["members"]
    assert members[0]["metrics"]["test/mre"] == pytest.approx(single[0]["metrics"]["test/mre"], rel=1e-6)
    predictions = read_csv(out / "predictions.csv")
    error = np.array([float(r["error_px"]) for r in predictions])
    assert summary["metrics"]["test/mre"] == pytest.approx(error.mean(), rel=1e-5)
    # the mean of the two members' predictions, landmark by landmark, each member scored alone
    _, second = run_eval(module_tmp / "eval_seed1", [f"ckpt_path={checkpoints[1]}", "report.gallery=0"])
    alone = [read_csv(single[1] / "predictions.csv"), read_csv(second / "predictions.csv")]
    assert [(r["index"], r["landmark"]) for r in predictions] == [(r["index"], r["landmark"]) for r in alone[0]]
    xy = [np.array([[float(r["x"]), float(r["y"])] for r in rows]) for rows in (predictions, *alone)]
    assert np.abs(xy[1] - xy[2]).max() > 1.0  # the members differ, so the mean is a real test
    np.testing.assert_allclose(xy[0], (xy[1] + xy[2]) / 2, atol=1e-3)
    # two members: each is half their distance from the mean
    spread = np.array([float(r["member_spread"]) for r in predictions])
    np.testing.assert_allclose(spread, np.linalg.norm(xy[1] - xy[2], axis=1) / 2, atol=1e-3)
    assert "spread across ensemble members (px)" in {r["confidence"] for r in read_csv(out / "confidence.csv")}


@pytest.mark.parametrize("override, message", [
    ("report.gallerry=3", "report.gallerry: unknown report option"),
    ("report.gallery=-1", "report.gallery=-1: expected a number of images >= 0"),
    ("report.features=maybe", "report.features='maybe': expected true"),
])
def test_bad_report_options_are_refused_by_name(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_eval(tmp_path, ["ckpt_path=x.ckpt", override if "gallerry" not in override else "+" + override])


def test_pck_per_keypoint_by_hand():
    from hrexp.evaluation.pose_report import normalised_errors, pck_rows

    samples = [{"keypoints": np.array([[10.0, 0], [0, 0], [0, 0]]), "keypoints_orig": np.zeros((3, 2)),
                "visible_orig": np.array([1.0, 1, 0])},
               {"keypoints": np.array([[4.0, 3], [0, 0], [0, 0]]), "keypoints_orig": np.zeros((3, 2)),
                "visible_orig": np.array([1.0, 1, 1])}]
    error = normalised_errors(samples, np.array([100.0, 50.0]))
    assert np.allclose(error[0, :2], [0.1, 0.0]) and np.isnan(error[0, 2]) and np.allclose(error[1], [0.1, 0, 0])
    rows = {r["keypoint"]: r for r in pck_rows(["a", "b", "c"], error)}
    assert rows["a"]["pck@0.05"] == 0.0 and rows["a"]["pck@0.1"] == 1.0  # 0.1 is within 0.1 (inclusive)
    assert rows["b"]["pck@0.05"] == 1.0 and rows["c"]["n"] == 1
    assert rows["all keypoints"]["n"] == 5 and rows["all keypoints"]["pck@0.05"] == pytest.approx(3 / 5)


def test_relative_errors_by_hand():
    from hrexp.evaluation.landmark_report import relative_errors

    error = np.array([[3.0, 10.0], [np.nan, 2.0]])
    sizes = np.array([[100.0, 0.0], [200.0, 0.0]])  # heights 100 and 200 (zero widths: diagonal = height)
    out = relative_errors(error, sizes)
    assert out["mre_over_height"] == pytest.approx((0.03 + 0.10 + 0.01) / 3)
    assert out["mre_over_diagonal"] == pytest.approx(out["mre_over_height"])
    assert out["sdr_1%_height"] == pytest.approx(1 / 3) and out["sdr_4%_height"] == pytest.approx(2 / 3)
