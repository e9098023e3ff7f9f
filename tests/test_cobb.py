"""Cobb angles: hand-built spines with known tilts, the challenge's SMAPE by hand, and the ground truth of
the real AASCE images (their corners give their angles.csv)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hrexp.metrics.cobb import cobb_angles, cobb_smape, vertebra_angles
from tests.helpers import shared_path

# Tilts (degrees) of 17 vertebrae: the most tilted are vertebra 3 (-6) and vertebra 12 (+17).
TILTS = [0, 0, -3, -6, -4, -1, 2, 5, 8, 11, 13, 15, 17, 14, 10, 7, 5]


def spine(tilts_deg, centre_x, width=60.0, height=40.0, spacing=60.0) -> np.ndarray:
    """Corners (TL, TR, BL, BR per vertebra) of rectangles at the given tilts and centre x positions."""
    corners = []
    for v, (tilt, cx) in enumerate(zip(tilts_deg, centre_x)):
        t = math.radians(tilt)
        u, n = np.array([math.cos(t), math.sin(t)]), np.array([-math.sin(t), math.cos(t)])
        c = np.array([cx, 100.0 + spacing * v])
        corners += [c - width / 2 * u - height / 2 * n, c + width / 2 * u - height / 2 * n,
                    c - width / 2 * u + height / 2 * n, c + width / 2 * u + height / 2 * n]
    return np.array(corners)


def test_vertebra_angles_are_the_tilt_differences():
    corners = spine(TILTS, [200.0] * 17)
    expected = np.abs(np.subtract.outer(TILTS, TILTS)).astype(float)
    # arccos near 1 resolves ~1e-6 degrees
    assert np.allclose(vertebra_angles(corners), expected, atol=1e-5)


def test_a_c_curve_by_hand():
    bulge = [200 + 40 * math.sin(math.pi * v / 16) for v in range(17)]  # one side of the end-to-end line
    result = cobb_angles(spine(TILTS, bulge), image_height=1200)
    assert result.curve == "C" and result.vertebrae == (3, 12)
    # main: 17 - (-6); then the top vertebra against vertebra 3: 0 - (-6); the bottom one against 12: 17 - 5
    assert np.allclose(result.angles, (23.0, 6.0, 12.0), atol=1e-5)
    assert result.by_region == pytest.approx({"PT": 6.0, "MT": 23.0, "TL/L": 12.0})


@pytest.mark.parametrize("shift, curve", [(0, "S upper"), (1000, "S lower")])
def test_an_s_curve_by_hand(shift, curve):
    wave = [200 + 40 * math.sin(2 * math.pi * v / 16) for v in range(17)]  # crosses the end-to-end line
    corners = spine(TILTS, wave)
    # the main curve's bottom endplates (vertebrae 3 and 12) sit at y = 100 + 60 v + 20: 300 and 840
    result = cobb_angles(corners, image_height=1140 + 1 - shift)
    assert result.curve == curve and result.vertebrae == (3, 12)
    if curve == "S upper":
        # above vertebra 3 the largest angle with it is vertebra 0's (0 - (-6)); below 12, vertebra 16's (17 - 5)
        assert np.allclose(result.angles, (23.0, 6.0, 12.0), atol=1e-5)
        assert result.by_region == pytest.approx({"PT": 6.0, "MT": 23.0, "TL/L": 12.0})
    else:
        # above 3: vertebra 0 (6 degrees); then above vertebra 0: nothing but itself (0)
        assert np.allclose(result.angles, (23.0, 6.0, 0.0), atol=1e-5)
        assert result.by_region == pytest.approx({"PT": 0.0, "MT": 6.0, "TL/L": 23.0})


def test_smape_by_hand():
    # image 1: (2 + 2 + 0) / (22 + 38 + 60); image 2: all zero in both: 0
    assert cobb_smape([[10, 20, 30], [0, 0, 0]], [[12, 18, 30], [0, 0, 0]]) == pytest.approx(100 * (4 / 120) / 2)
    with pytest.raises(ValueError, match="must both be"):
        cobb_smape([[1, 2, 3]], [[1, 2]])


def test_bad_corners_are_refused():
    with pytest.raises(ValueError, match=r"\[4 x vertebrae, 2\]"):
        cobb_angles(np.zeros((10, 2)), 100)
    corners = spine(TILTS, [200.0] * 17)
    corners[5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cobb_angles(corners, 1200)


@pytest.mark.parametrize("split", ["training", "test"])
def test_the_ground_truth_corners_give_the_ground_truth_angles(split):
    """All 481 + 128 images: the corners as hrexp reads them give angles.csv within its rounding."""
    root = shared_path("spine_aasce")  # skips, naming the folder, when the shared data is absent
    from hrexp.data.landmarks.aasce_reader import read_aasce

    records = read_aasce(root, split).records
    truth = np.loadtxt(root / "labels" / split / "angles.csv", delimiter=",")
    predicted = np.array([cobb_angles(r.keypoints, r.size[0]).angles for r in records])
    assert predicted.shape == truth.shape == (len(records), 3)
    error = np.abs(predicted - truth)
    # landmarks.csv stores the corners normalised to [0, 1] (5-6 digits), angles.csv 5 significant digits
    assert error.max() < 0.05, error.max(axis=0)
    assert cobb_smape(predicted, truth) < 0.01


def test_the_report_scores_predicted_corners_against_angles_csv(tmp_path):
    """eval's Cobb section on the real test split: the truth is angles.csv (by file name); the predicted
    angles and the SMAPE equal those computed here from the same corners."""
    import csv

    from hrexp.data.landmarks.datamodule import AasceDataModule
    from hrexp.evaluation.context import ReportContext
    from hrexp.evaluation.landmark_report import cobb_section

    root = shared_path("spine_aasce")
    datamodule = AasceDataModule(root=root, image_size=[256, 128], batch_size=2, num_workers=0)
    datamodule.setup()
    records = datamodule.splits["test"].records[:12]
    rng = np.random.default_rng(0)
    samples = [{"index": i, "keypoints": r.keypoints + rng.normal(0, 8, r.keypoints.shape),
                "keypoints_orig": r.keypoints, "visible_orig": np.ones(68)} for i, r in enumerate(records)]
    ctx = ReportContext(tmp_path, None, datamodule, "test")
    section = cobb_section(samples, ctx)
    truth = np.loadtxt(root / "labels" / "test" / "angles.csv", delimiter=",")
    names = [n.strip() for n in (root / "labels" / "test" / "filenames.csv").read_text().splitlines()]
    truth = np.array([truth[names.index(r.image_path.name)] for r in records])
    predicted = np.array([cobb_angles(s["keypoints"], r.size[0]).angles for s, r in zip(samples, records)])
    assert ctx.facts["cobb"]["truth"] == "angles.csv"
    assert ctx.facts["cobb"]["smape"] == pytest.approx(cobb_smape(predicted, truth), rel=1e-12)
    assert 1 < ctx.facts["cobb"]["smape"] < 60  # 8 px of corner noise: clearly off, not absurd
    with open(tmp_path / "cobb_angles.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert np.allclose([[float(r[f"pred_{j}"]) for j in (1, 2, 3)] for r in rows], predicted)
    assert np.allclose([[float(r[f"true_{j}"]) for j in (1, 2, 3)] for r in rows], truth)
    assert section.title == "Cobb angles"


def test_a_refined_model_gets_each_stages_cobb_smape(tmp_path):
    """Coarse-to-fine samples: the Cobb section scores the gated points as before and each stage's points
    apart (facts ``smape_refined`` / ``smape_coarse``, one summary row each), so that a gate that spoils the
    angles shows."""
    from hrexp.data.landmarks.datamodule import AasceDataModule
    from hrexp.evaluation.context import ReportContext
    from hrexp.evaluation.landmark_report import cobb_section

    root = shared_path("spine_aasce")
    datamodule = AasceDataModule(root=root, image_size=[256, 128], batch_size=2, num_workers=0)
    datamodule.setup()
    records = datamodule.splits["test"].records[:6]
    rng = np.random.default_rng(1)
    samples = []
    for i, r in enumerate(records):
        coarse = r.keypoints + rng.normal(0, 12, r.keypoints.shape)
        refined = r.keypoints + rng.normal(0, 3, r.keypoints.shape)
        used = rng.random(68) < 0.5
        samples.append({"index": i, "keypoints": np.where(used[:, None], refined, coarse), "keypoints_coarse": coarse,
                        "keypoints_refined": refined, "refined_used": used, "keypoints_orig": r.keypoints,
                        "visible_orig": np.ones(68)})
    ctx = ReportContext(tmp_path, None, datamodule, "test")
    section = cobb_section(samples, ctx)
    truth = np.loadtxt(root / "labels" / "test" / "angles.csv", delimiter=",")
    names = [n.strip() for n in (root / "labels" / "test" / "filenames.csv").read_text().splitlines()]
    truth = np.array([truth[names.index(r.image_path.name)] for r in records])
    for key, fact in (("keypoints", "smape"), ("keypoints_refined", "smape_refined"),
                      ("keypoints_coarse", "smape_coarse")):
        angles = np.array([cobb_angles(s[key], r.size[0]).angles for s, r in zip(samples, records)])
        assert ctx.facts["cobb"][fact] == pytest.approx(cobb_smape(angles, truth), rel=1e-12), fact
    # 3 px of noise gives better angles than 12 px
    assert ctx.facts["cobb"]["smape_refined"] < ctx.facts["cobb"]["smape_coarse"]
    summary = section.tables[0].rows
    assert [row["points"] for row in summary] == ["gated", "refined", "coarse"]
    assert summary[2]["cobb_smape_%"] == ctx.facts["cobb"]["smape_coarse"]
