"""scripts/landmark_analysis.py: the label statistics on a hand-built spine, the error bins on a hand-written
predictions.csv, both subcommands end to end (``labels`` on the real AASCE data when present), clear exits."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, shared_path

sys.path.insert(0, str(ROOT / "scripts"))
import landmark_analysis as la  # scripts/ is not a package; the script imports timed_runs from there


def spine(height: float = 40, gap: float = 20, width: float = 100, top: float = 100, left: float = 200) -> np.ndarray:
    """``[68, 2]``: 17 axis-aligned vertebrae ``height`` x ``width``, ``gap`` px apart, corners tl, tr, bl, br."""
    points = []
    for v in range(17):
        t = top + v * (height + gap)
        points += [(left, t), (left + width, t), (left, t + height), (left + width, t + height)]
    return np.asarray(points, dtype=np.float64)


def l5_on_top(keypoints: np.ndarray, height: float, gap: float) -> np.ndarray:
    """The row with its last vertebra ("L5") moved above the first, as in 4 of the AASCE test rows."""
    out = keypoints.copy()
    out[-4:, 1] = keypoints[:4, 1] - (height + gap)  # one vertebra pitch above T1, same x
    return out


def test_label_statistics_on_a_hand_built_spine():
    regular = spine(height=40, gap=20)
    scrambled = l5_on_top(spine(height=40, gap=30), height=40, gap=30)
    both = np.stack([regular, scrambled])
    assert la.out_of_order(both).tolist() == [False, True]

    # Default: distances over the anatomical row only. Disc: bottom corner to the next top corner = the gap,
    # 20 px; like corners: one pitch, 40 + 20 = 60 px; every distance equal, so median = 10th percentile.
    stats = la.label_stats(both, patch=50)
    assert (stats["images"], stats["out_of_order"], stats["distance_rows"]) == (2, 1, 1)
    assert stats["disc_median_px"] == pytest.approx(20) and stats["disc_p10_px"] == pytest.approx(20)
    assert stats["like_median_px"] == pytest.approx(60) and stats["like_p10_px"] == pytest.approx(60)

    # --sorted: both rows, the second sorted back into a regular spine with gap 30 (pitch 70). Disc: 32 values
    # of 20 and 32 of 30 -> median (20 + 30) / 2 = 25, 10th percentile 20; like: 64 of 60 and 64 of 70 -> 65, 60.
    stats = la.label_stats(both, patch=50, sort=True)
    assert stats["distance_rows"] == 2
    assert stats["disc_median_px"] == pytest.approx(25) and stats["disc_p10_px"] == pytest.approx(20)
    assert stats["like_median_px"] == pytest.approx(65) and stats["like_p10_px"] == pytest.approx(60)


def test_patch_counts_on_a_hand_built_spine():
    # +-50 px around a corner: its own column only (the other is 100 px away); in the column, a corner's
    # neighbours are 40 px (same vertebra) and 20 px (across the disc) away, the next like corner 60 px.
    # So 3 per corner (itself, its vertebra's other one, the one across the disc); T1's top and L5's bottom
    # corners (4 of 68) have no disc neighbour: 2.
    counts = la.patch_counts(spine(height=40, gap=20)[None], 50)[0]
    assert sorted(counts.tolist()) == [2] * 4 + [3] * 64
    assert counts[0] == 2 and counts[4] == 3  # T1 top-left; T2 top-left (T1 bottom-left 20 px above, T2 bottom-left)
    # +-60 px, boundary included: T2's top-left also holds T1's and T3's top-left (60 px): 5; T1's: 3.
    counts = la.patch_counts(spine(height=40, gap=20)[None], 60)[0]
    assert counts[0] == 3 and counts[4] == 5
    stats = la.label_stats(spine(height=40, gap=20)[None], patch=50)
    assert (stats["patch_p10"], stats["patch_median"], stats["patch_p90"]) == (3, 3, 3)
    assert (stats["patch_min"], stats["patch_max"]) == (2, 3)


COLUMNS = ["image", "index", "landmark", "x", "y", "x_true", "y_true", "visible", "error_px", "x_coarse", "y_coarse",
           "error_coarse_px"]
# (image, landmark, error_px, error_coarse_px); "" = no truth (eval.py writes None as an empty cell)
ROWS = [("a.jpg", "L1", 10, 20), ("a.jpg", "L2", 40, 25), ("a.jpg", "L3", 60, 70),
        ("b.jpg", "L1", 15, 15), ("b.jpg", "L2", "", ""), ("b.jpg", "L3", 150, 120)]


def write_predictions(folder: Path, rows=ROWS, coarse: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    columns = COLUMNS if coarse else COLUMNS[:9]
    with open(folder / "predictions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for index, (image, landmark, error, error_coarse) in enumerate(rows):
            row = [image, index // 3, landmark, 1.0, 2.0, 3.0, 4.0, int(error != ""), error, 5.0, 6.0, error_coarse]
            writer.writerow(row[:len(columns)])
    return folder


def test_error_bins_of_a_refined_run(tmp_path):
    folder = write_predictions(tmp_path / "refined" / "eval")
    assert la.main(["errors", str(folder), "--results", str(tmp_path / "out"), "--name", "bins"]) == 0
    record = json.loads((tmp_path / "out" / "bins.json").read_text())
    rows = {r["bin"]: r for r in record["rows"]}
    assert list(rows) == ["0-25 px", "25-50 px", "50-96 px", "> 96 px", "all"]
    # 5 landmarks with truth, binned by stage 1's error (25 falls in 25-50):
    #   0-25: coarse 20, 15; refined 10, 15 -> share 2/5, coarse MRE 17.5, refined 12.5, better 1 of 2 (15 = 15 is not)
    #   25-50: coarse 25, refined 40 -> 1/5, 25, 40, 0;  50-96: 70 -> 60 -> 1/5, 70, 60, 1
    #   > 96: 120 -> 150 -> 1/5, 120, 150, 0;  all: coarse 250 / 5 = 50, refined 275 / 5 = 55, better 2 of 5
    expected = {"0-25 px": (2, 0.4, 17.5, 12.5, 0.5), "25-50 px": (1, 0.2, 25, 40, 0.0),
                "50-96 px": (1, 0.2, 70, 60, 1.0), "> 96 px": (1, 0.2, 120, 150, 0.0), "all": (5, 1.0, 50, 55, 0.4)}
    for name, (n, share, coarse_mre, refined_mre, better) in expected.items():
        row = rows[name]
        assert row["landmarks"] == n, name
        assert row["share"] == pytest.approx(share), name
        assert row["coarse_mre"] == pytest.approx(coarse_mre), name
        assert row["refined_mre"] == pytest.approx(refined_mre), name
        assert row["refined_better"] == pytest.approx(better), name
    # per landmark: L1 refined (10 + 15) / 2, coarse (20 + 15) / 2, better 1 of 2; L2 only image a;
    # L3 refined (60 + 150) / 2 = 105, coarse (70 + 120) / 2 = 95, better 1 of 2
    table = record["tables"][f"Per landmark: {folder}"]["rows"]
    got = [(r["landmark"], r["n"], r["mre"], r["coarse_mre"], r["refined_better"]) for r in table]
    assert got == [("L1", 2, 12.5, 17.5, 0.5), ("L2", 1, 40.0, 25.0, 0.0), ("L3", 2, 105.0, 95.0, 0.5)]
    assert (tmp_path / "out" / "bins.table.md").read_text().count("| 0-25 px |") == 1


def test_error_bins_without_coarse_columns():
    # final errors 10, 30, 100 (and one without truth): a third each in 0-25, 25-50, > 96; 50-96 empty
    rows = la.error_bins(np.array([10.0, 30.0, np.nan, 100.0]), None, [0, 25, 50, 96, np.inf])
    got = [(r["bin"], r["landmarks"], r["share"], r["mre"]) for r in rows]
    assert got == [("0-25 px", 1, pytest.approx(1 / 3), 10.0), ("25-50 px", 1, pytest.approx(1 / 3), 30.0),
                   ("50-96 px", 0, 0.0, None), ("> 96 px", 1, pytest.approx(1 / 3), 100.0),
                   ("all", 3, 1.0, pytest.approx(140 / 3))]
    assert "coarse_mre" not in rows[0]


def test_missing_inputs_exit_naming_the_path(tmp_path):
    missing = tmp_path / "no_eval"
    with pytest.raises(SystemExit) as caught:
        la.main(["errors", str(missing), "--results", str(tmp_path / "out")])
    assert str(missing / "predictions.csv") in str(caught.value)
    with pytest.raises(SystemExit) as caught:
        la.main(["labels", "--root", str(missing), "--results", str(tmp_path / "out")])
    assert str(missing) in str(caught.value) and "data folder not found" in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.shared_data
def test_labels_on_the_real_aasce_data(tmp_path):
    root = shared_path("spine_aasce")
    assert la.main(["labels", "--root", str(root), "--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "spine_labels.json").read_text())
    rows = {r["split"]: r for r in record["rows"]}
    assert set(rows) == {"training", "test"}
    # counted on the shared copy (aasce_reader's notes): 481 / 128 images, 24 / 4 rows out of order
    assert (rows["training"]["images"], rows["training"]["out_of_order"]) == (481, 24)
    assert (rows["test"]["images"], rows["test"]["out_of_order"]) == (128, 4)
    assert rows["test"]["distance_rows"] == 124
    assert "sunhl-1th-01-Mar-2017-313 D AP.jpg" in record["out_of_order_files"]["test"]
    for row in rows.values():  # a vertebra is ~90 px tall, the disc a few tens of px
        assert 20 < row["disc_median_px"] < 60 and 80 < row["like_median_px"] < 160
        assert 1 <= row["patch_p10"] <= row["patch_median"] <= row["patch_p90"] <= 68
