"""Conformal regions through the commands: ``eval.py conformal.calibrate=val`` calibrates on the val split, writes
the thresholds beside the checkpoint and scores the test split with them (summary, report section, reliability
plot); ``predict.py`` then writes each point's region from that file with no data, flags points whose region is
too large and images unlike the calibration images; a split that would be both calibrated and scored is refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hrexp.conformal.calibration import Calibration, calibration_path
from hrexp.conformal.regions import scores
from hrexp.errors import ConfigError
from tests.conftest import compose_for
from tests.helpers import write_image
from tests.test_predict import _train, read_csv, run_predict


@pytest.fixture(scope="module")
def model(module_tmp, cache_dir):
    from tests.fit_helpers import TINY_W18

    # image_cache=null: the dataset decodes the original as predict does
    # 60 images: 9 in val, enough for a finite 90 % threshold (ceil(10 * 0.9) = 9); 95 % needs 19, so it is infinite
    return _train([*TINY_W18, "data.image_cache=null", "data.num_train=60", "data.num_test=8"], module_tmp / "model",
                  "model")


def run_eval(ckpt, out, *extra):
    from hrexp.jobs.eval_run import evaluate

    cfg = compose_for([f"ckpt_path={ckpt}", "report.gallery=1", *extra], out, "eval")
    return evaluate(cfg), out / "run"


def test_eval_calibrates_on_val_and_scores_the_test_split_with_the_thresholds(model, tmp_path):
    ckpt, datamodule, module = model
    summary, run = run_eval(ckpt, tmp_path / "eval", "conformal.calibrate=val")
    file = calibration_path(ckpt)
    assert file.is_file() and (run / "conformal.json").read_text() == file.read_text()
    calibration = Calibration.load(file)
    assert calibration.source["split"] == "val" and calibration.source["images"] == len(datamodule.datasets["val"])
    assert set(calibration.thresholds) == {"radius", "heatmap"}  # no ensemble: one checkpoint
    # the radius thresholds are the conformal quantiles of the val errors, computed here from the task itself
    import torch

    errors = []
    for i in range(len(datamodule.datasets["val"])):
        sample = datamodule.datasets["val"][i]
        batch = {k: v[None] for k, v in sample.items()}
        with torch.no_grad():
            preds = module.task.predict(module(batch["image"]), batch)
        errors.append((preds["keypoints"] - batch["keypoints_orig"])[0].double().numpy())
    distance = scores(np.stack(errors))
    n = distance.shape[0]
    rank = math.ceil((n + 1) * 0.9)
    expected = np.sort(distance, axis=0)[rank - 1] if rank <= n else np.full(distance.shape[1], np.inf)
    np.testing.assert_allclose(calibration.threshold("radius", 0.9), expected, rtol=1e-4)
    # the test split scored with them: coverage per shape and level, as many points as the test split has
    regions = {(r["kind"], r["shape"], r["level"]): r for r in summary["conformal"]["regions"]}
    assert set(regions) >= {("conformal", "radius", 0.9), ("conformal", "heatmap", 0.95), ("uncalibrated", "heatmap", 0.9)}
    assert regions["conformal", "radius", 0.9]["points"] == 8 * 40
    assert 0 <= regions["conformal", "radius", 0.9]["coverage"] <= 1
    report = json.loads((run / "report.json").read_text())
    assert report["regions"]["rows"][0]["kind"] == "conformal"
    assert (run / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Prediction regions" in (run / "report.html").read_text()
    # a later eval without calibrate=val finds the file beside the checkpoint and uses it
    again, _ = run_eval(ckpt, tmp_path / "again", "report.enabled=false")
    assert again["conformal"]["calibration"] == str(file)
    assert json.dumps(again["conformal"]["regions"]) == json.dumps(summary["conformal"]["regions"])  # NaN == NaN here
    assert math.isinf(calibration.threshold("radius", 0.95)[0])  # 9 images cannot promise 95 %


def test_calibrating_on_the_scored_split_is_refused(model, tmp_path):
    ckpt, _, _ = model
    with pytest.raises(ConfigError, match="conformal.calibrate=val with split=val: the scored split is the val split"):
        run_eval(ckpt, tmp_path / "eval", "conformal.calibrate=val", "split=val")
    with pytest.raises(ConfigError, match=r"conformal.levels=\[0.9, 1.5\]: expected a list of coverages"):
        run_eval(ckpt, tmp_path / "eval2", "conformal.levels=[0.9,1.5]")


def test_predict_writes_each_points_region_from_the_calibration_file_and_flags(model, tmp_path):
    ckpt, datamodule, _ = model
    run_eval(ckpt, tmp_path / "eval", "conformal.calibrate=val", "report.enabled=false")
    calibration = Calibration.load(calibration_path(ckpt))
    source = datamodule.splits["val"].records[0].image_path
    photo = write_image(tmp_path / "images" / "photo.png", np.full((128, 64, 3), 200, np.uint8))  # flat grey: no spine
    images = [str(source), str(photo)]
    summary = run_predict(ckpt, images, tmp_path / "out", "conformal.level=0.9", "conformal.shape=radius",
                          "conformal.review_px=1e9", "conformal.spacing=0.5")
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    radius = calibration.threshold("radius", 0.9)
    first = [r for r in rows if r["file"] == str(source)]
    np.testing.assert_allclose([float(r["region_major"]) for r in first], radius)
    np.testing.assert_allclose([float(r["region_major_mm"]) for r in first], 0.5 * radius)
    np.testing.assert_allclose([float(r["region_area"]) for r in first], math.pi * radius ** 2)
    assert all(r["review"] == "0" for r in rows)  # nothing reaches 1e9 px
    assert summary["regions"]["shape"] == "radius" and summary["counts"]["points_to_review"] == 0
    # the heatmap ellipses, and a review size every region exceeds
    summary = run_predict(ckpt, images, tmp_path / "out2", "conformal.level=0.9", "conformal.review_px=0.001")
    rows = read_csv(tmp_path / "out2" / "predictions.csv")
    assert all(r["review"] == "1" for r in rows) and summary["counts"]["points_to_review"] == len(rows)
    majors = np.array([float(r["region_major"]) for r in rows])
    minors = np.array([float(r["region_minor"]) for r in rows])
    drawn = np.isfinite(majors)  # a flat map (no covariance) has no region: NaN, and it is flagged for review
    assert drawn.mean() > 0.5 and np.all(majors[drawn] >= minors[drawn]) and np.all(minors[drawn] >= 0)
    entries = json.loads((tmp_path / "out2" / "predictions.json").read_text())
    assert entries[0]["regions"]["major"] == pytest.approx(list(majors[:40]), nan_ok=True)
    # each image says whether its peaks are lower than every calibration image's (PointRegions.unusual)
    minimum = calibration.source["image_mean_score"]["min"]
    for entry in entries:
        mean_score = float(np.mean(entry["keypoints"][2::3]))
        assert entry["unusual_image"] is (mean_score < minimum), entry["file_name"]
    assert summary["counts"]["unusual_images"] == sum(e["unusual_image"] for e in entries)
    # without a calibration file: no region columns, and a named file that is missing is an error
    calibration_path(ckpt).unlink()
    run_predict(ckpt, images, tmp_path / "out3")
    assert "region_major" not in read_csv(tmp_path / "out3" / "predictions.csv")[0]
    with pytest.raises(ConfigError, match="no such file"):
        run_predict(ckpt, images, tmp_path / "out4", f"conformal.calibration={tmp_path / 'none.json'}")


def test_the_uncertainty_table_script_still_starts(model, tmp_path):
    """scripts/uncertainty_table.py --smoke on the tiny checkpoint: val-to-test conformal rows checked against
    eval.py's own coverage, leave-one-image-out rows, and predict.py's flags on an X-ray and a grey photo."""
    import shutil
    import sys

    from tests.helpers import ROOT

    ckpt, datamodule, _ = model
    copy = tmp_path / "model.ckpt"  # the script writes a calibration beside the checkpoint: not the fixture's
    shutil.copy(ckpt, copy)
    source = datamodule.splits["val"].records[0].image_path
    photo = write_image(tmp_path / "photos" / "photo.png", np.full((128, 64, 3), 200, np.uint8))
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import uncertainty_table
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    out = tmp_path / "out"
    assert uncertainty_table.main(["--smoke", "--aasce", str(copy), "--ceph", str(copy), "--photos", str(photo),
                                   "--xray-root", str(source.parent), "--out", str(out)]) == 0
    record = json.loads((out / "uncertainty.json").read_text())
    assert "SMOKE RUN" in (out / "uncertainty.table.md").read_text()
    rows = {(r["data"], r["kind"], r["thresholds"], r["shape"], r["level"]): r for r in record["rows"]}
    eval_summary = json.loads((out / "aasce_test" / "summary.json").read_text())
    theirs = {(r["shape"], r["level"]): r["coverage"] for r in eval_summary["conformal"]["regions"]
              if r["kind"] == "conformal"}
    assert rows["AASCE test", "conformal", "per landmark", "radius", 0.9]["coverage"] == theirs["radius", 0.9]
    assert rows["AASCE test", "conformal", "per landmark", "radius", 0.9]["points"] == 8 * 40
    assert ("ceph val", "uncalibrated", "", "heatmap", 0.95) in rows
    flags = {r["image"]: r for r in record["tables"]["Flags on X-rays and photos (predict.py, 95 % heatmap regions, "
                                                     "review beyond 50 px)"]["rows"]}
    assert flags["photo.png"]["kind"] == "photo" and flags[source.name]["kind"] == "X-ray (validation)"


def test_export_draws_each_points_calibrated_ellipse_in_the_graph(model, tmp_path):
    """export.py with a calibration beside the checkpoint and decode=true: the graph outputs each point's ellipse,
    whose ends lie at the calibrated Mahalanobis length of the codec's own covariance (regions.scores, not the
    ellipse code); without decode, or for a refined checkpoint's stage 1, the calibration is refused when named
    and skipped (and said) when found beside the checkpoint."""
    import shutil

    import onnxruntime as ort
    import torch

    from hrexp.export.onnx_export import REGIONS
    from hrexp.jobs.export_run import export, export_regions

    ckpt, datamodule, module = model
    copy = tmp_path / "model.ckpt"
    shutil.copy(ckpt, copy)
    run_eval(copy, tmp_path / "eval", "conformal.calibrate=val", "report.enabled=false")
    file = calibration_path(copy)
    thresholds = Calibration.load(file).threshold("heatmap", 0.9)
    # 9 val images promise 90 % where each landmark's scores are all finite (a flat map has no ellipse, no score)
    assert np.isfinite(thresholds).mean() > 0.5
    summary = export(compose_for([f"ckpt_path={copy}", "decode=true", "conformal.level=0.9", "batch=fixed",
                                  "batch_size=2"], tmp_path / "export", "export"))
    assert summary["outputs"] == ["maps", "keypoints", "scores", *REGIONS]
    np.testing.assert_allclose([np.inf if t is None else t for t in summary["regions"]["thresholds"]], thresholds,
                               rtol=1e-6)
    assert summary["check"]["max_region_difference"] <= 1e-3
    images = torch.stack([datamodule.datasets["val"][i]["image"] for i in range(2)])
    session = ort.InferenceSession(summary["file"], providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images.numpy()})))
    with torch.no_grad():
        outputs = module(images)
        covariance = module.task.codec.point_covariance(outputs, stride=module.task.stride).double().numpy()
    angle = np.radians(got["region_angle"].astype(np.float64))
    direction = np.stack([np.cos(angle), np.sin(angle)], -1)
    across = np.stack([-np.sin(angle), np.cos(angle)], -1)
    drawn = np.isfinite(got["region_major"])
    assert drawn.mean() > 0.4
    # an infinite threshold draws the whole plane wherever the peak has a covariance, NaN where it has none
    determinant = covariance[..., 0, 0] * covariance[..., 1, 1] - covariance[..., 0, 1] ** 2
    whole = ~np.isfinite(thresholds)[None] & (determinant > 1e-9)
    assert np.isinf(got["region_major"][whole]).all() and np.isnan(got["region_major"][determinant <= 0]).all()
    for axis, unit in (("region_major", direction), ("region_minor", across)):
        ends = got[axis].astype(np.float64)[..., None] * unit
        lengths = scores(ends, covariance)
        np.testing.assert_allclose(lengths[drawn], np.broadcast_to(thresholds, drawn.shape)[drawn], rtol=2e-3)
    # decode=false: a calibration named is refused, one found beside the checkpoint is skipped and said
    with pytest.raises(ConfigError, match="decode=true"):
        export(compose_for([f"ckpt_path={copy}", f"conformal.calibration={file}"], tmp_path / "named", "export"))
    cfg = compose_for([f"ckpt_path={copy}"], tmp_path / "auto", "export")
    thresholds_used, record = export_regions(cfg, module, refined=False)
    assert thresholds_used is None and "decode=true" in record["skipped"]
    # a refined checkpoint's calibration is of its two stages' points: not for the stage 1 the file holds
    cfg = compose_for([f"ckpt_path={copy}", "decode=true", "coarse_only=true"], tmp_path / "refined", "export")
    assert "stage 1 alone" in export_regions(cfg, module, refined=True)[1]["skipped"]
    # a checkpoint with other landmarks than the calibration's: refused when named, skipped when found
    from types import SimpleNamespace

    other = SimpleNamespace(task=SimpleNamespace(keypoint_names=["only_one"]))
    cfg = compose_for([f"ckpt_path={copy}", "decode=true"], tmp_path / "other", "export")
    assert "calibrated for other landmarks (40) than this checkpoint's (1)" in export_regions(cfg, other, False)[1]["skipped"]
    cfg = compose_for([f"ckpt_path={copy}", "decode=true", f"conformal.calibration={file}"], tmp_path / "o2", "export")
    with pytest.raises(ConfigError, match=r"calibrated for other landmarks \(40\) than this checkpoint's \(1\)"):
        export_regions(cfg, other, False)
    # the radius shape: the radii (original px) in the record, nothing in the graph
    cfg = compose_for([f"ckpt_path={copy}", "conformal.shape=radius", "conformal.level=0.9"], tmp_path / "r", "export")
    thresholds_used, record = export_regions(cfg, module, refined=False)
    assert thresholds_used is None and record["outputs"] == []
    np.testing.assert_allclose([np.inf if t is None else t for t in record["thresholds"]],
                               Calibration.load(file).threshold("radius", 0.9), rtol=1e-6)
