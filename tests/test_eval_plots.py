"""The evaluation report's figures: SDR values by hand, valid PNGs of sensible sizes, gallery tiles in
their places, heatmap overlays aligned with hrexp's pixel-centre convention, and skeleton lines."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from hrexp.reports.drawing import draw_skeleton
from hrexp.reports.eval_plots import (confusion_matrix_plot, error_boxplot, feature_grid, heatmap_overlay,
                                      picture_grid, png_size, scatter_plot, sdr_curve, sdr_values)

RNG = np.random.default_rng(0)


def sensible(path, width=(500, 1600), height=(200, 2000)) -> tuple[int, int]:
    """The PNG's size, checked to be in the ranges and decodable."""
    w, h = png_size(path)
    assert width[0] <= w <= width[1] and height[0] <= h <= height[1], (w, h)
    assert cv2.imread(str(path)).shape == (h, w, 3)
    return w, h


def test_sdr_values_by_hand():
    errors = np.array([0.5, 1.0, 2.0, 3.0, np.nan, 10.0])  # 5 finite errors
    # r = 0: none; r = 1: 0.5 and 1 (the radius itself counts); 2.5: three; 10 and beyond: all
    assert np.allclose(sdr_values(errors, [0, 1, 2.5, 9.99, 10, 100]), [0, 0.4, 0.6, 0.8, 1, 1])
    assert np.isnan(sdr_values([np.nan, np.nan], [1, 2])).all()


def test_sdr_curve(tmp_path):
    errors = {"val": RNG.gamma(2, 2, 300), "test": np.r_[RNG.gamma(2, 3, 200), np.nan], "none": np.array([np.nan])}
    path = sdr_curve(errors, tmp_path / "sdr.png", marks=[2, 2.5, 3, 4], unit="mm")
    assert path == tmp_path / "sdr.png"
    sensible(path, height=(300, 1200))
    sensible(sdr_curve({"all zero": np.zeros(5)}, tmp_path / "zero.png", max_radius=None))


def test_error_boxplot_grows_with_the_landmarks(tmp_path):
    few = {f"L{i}": RNG.gamma(2, 2, 50) for i in range(5)} | {"never labelled": np.full(3, np.nan)}
    many = {f"landmark {i}": np.r_[RNG.gamma(2, 2, 50), np.nan] for i in range(68)}
    _, few_height = sensible(error_boxplot(few, tmp_path / "few.png", unit="mm", title="5 landmarks"))
    _, many_height = sensible(error_boxplot(many, tmp_path / "many.png"))
    assert many_height >= 68 * 15  # at least 15 px per landmark label
    assert many_height > few_height


def test_confusion_matrix(tmp_path):
    matrix = np.array([[50, 3, 0], [4, 20, 1], [0, 0, 0]])  # the last class never occurs: a blank row
    names = ["background", "polyp", "other"]
    sensible(confusion_matrix_plot(matrix, names, tmp_path / "cm.png"), height=(300, 1600))
    sensible(confusion_matrix_plot(matrix, names, tmp_path / "counts.png", normalise=False), height=(300, 1600))
    with pytest.raises(ValueError, match="2 class names"):
        confusion_matrix_plot(matrix, ["a", "b"], tmp_path / "bad.png")


def test_scatter(tmp_path):
    x = np.r_[RNG.random(100), np.nan, 0.5]
    y = np.r_[RNG.gamma(2, 2, 100), 1.0, np.nan]
    sensible(scatter_plot(x, y, tmp_path / "s.png", "confidence", "error (px)", title="confidence"))
    sensible(scatter_plot(x, np.r_[y[:-1], 0.0], tmp_path / "log.png", "confidence", "error", log_y=True))
    sensible(scatter_plot([np.nan], [np.nan], tmp_path / "empty.png", "x", "y"))


def test_feature_grid_of_four_branches(tmp_path):
    shapes = [(18, 16, 12), (36, 8, 6), (72, 4, 3), (144, 2, 2)]
    features = [RNG.random(shape).astype(np.float32) for shape in shapes]
    w, h = sensible(feature_grid(features, tmp_path / "f.png", title="HRNet branches"))
    assert w > h  # side by side
    sensible(feature_grid(features[:1], tmp_path / "one.png", names=["stem"]), width=(200, 1600))
    with pytest.raises(ValueError, match="3 names for 4"):
        feature_grid(features, tmp_path / "bad.png", names=["a", "b", "c"])


def test_png_size_refuses_other_files(tmp_path):
    (tmp_path / "x.png").write_bytes(b"\xff\xd8\xff\xe0 a jpeg")
    with pytest.raises(ValueError, match="x.png"):
        png_size(tmp_path / "x.png")


def bounding_box(picture: np.ndarray, color) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` (exclusive ends) of the pixels of exactly this colour."""
    ys, xs = np.nonzero(np.all(picture == np.asarray(color, np.uint8), axis=2))
    assert len(xs), color
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_picture_grid_places_the_tiles(tmp_path):
    colors = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), None, (200, 0, 200), (0, 200, 200)]
    textured = RNG.integers(0, 256, (40, 30, 3), np.uint8)  # tile 4: its pixels are checked after the resize
    pictures = [(np.full((40, 30, 3), c, np.uint8) if c else textured, f"tile {i}") for i, c in enumerate(colors)]
    path = picture_grid(pictures, tmp_path / "grid.png", columns=3, tile_height=80)
    grid = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # written as BGR: the colours must come back
    boxes = {i: bounding_box(grid, c) for i, c in enumerate(colors) if c}
    for x0, y0, x1, y1 in boxes.values():
        assert (x1 - x0, y1 - y0) == (60, 80)  # 40 x 30 scaled to a height of 80
    rows = sorted({b[1] for b in boxes.values()})
    cols = sorted({b[0] for b in boxes.values()})
    assert len(rows) == 3 and len(cols) == 3  # 7 pictures, 3 per row: 3 rows
    for i, (x0, y0, _, _) in boxes.items():
        assert (rows.index(y0), cols.index(x0)) == divmod(i, 3)  # row-major order
    # caption space: each row's top is at least a tile and a caption line below the previous one
    assert rows[1] - rows[0] >= 80 + 10 and rows[2] - rows[1] == rows[1] - rows[0]
    assert grid.shape[0] >= rows[2] + 80 + 10
    # a caption is written under tile 0 (dark pixels on the white background below it)
    x0, y0, x1, y1 = boxes[0]
    assert (grid[y1:rows[1], x0:x1] < 100).any()
    # the textured picture, resized as documented, at row 1, column 1
    x, y = cols[1], rows[1]
    expected = cv2.resize(textured, (60, 80), interpolation=cv2.INTER_LINEAR)
    assert np.abs(grid[y:y + 80, x:x + 60].astype(int) - expected).mean() < 1


def test_picture_grid_of_mixed_sizes(tmp_path):
    pictures = [(np.zeros((100, 300, 3), np.uint8), "wide"), (np.zeros((300, 100), np.uint8), "grey, tall")]
    w, h = png_size(picture_grid(pictures, tmp_path / "g.png", columns=4, tile_height=60))
    assert 2 * 180 <= w <= 2 * 180 + 60 and 60 <= h <= 60 + 60  # one row, two cells as wide as the widest


def test_heatmap_overlay_peak_where_the_convention_puts_it():
    stride, (h, w) = 8, (16, 12)
    image = np.zeros((h * stride, w * stride, 3), np.uint8)
    maps = np.zeros((2, h, w), np.float32)
    yy, xx = np.mgrid[:h, :w]
    maps[0] = np.exp(-((xx - 10) ** 2 + (yy - 3) ** 2) / 2.0)  # peak 1 at heatmap (u, v) = (10, 3)
    maps[1] = 0.6 * np.exp(-((xx - 2) ** 2 + (yy - 12) ** 2) / 2.0)  # a weaker second keypoint
    overlay = heatmap_overlay(image, maps, alpha=0.6)
    assert overlay.shape == image.shape and overlay.dtype == np.uint8
    brightness = overlay.astype(int).sum(axis=2)
    y, x = np.unravel_index(np.argmax(brightness), brightness.shape)
    # pixel u's centre at x = (u + 0.5) * s - 0.5: (83.5, 27.5); u * s (80) or corner-aligned (86.4) would miss
    assert abs(x - 83.5) <= 1 and abs(y - 27.5) <= 1
    assert brightness[int(12.5 * stride), int(2.5 * stride)] > brightness[0, 0]  # the second map shows too
    assert np.array_equal(heatmap_overlay(image + 77, maps, alpha=0.0), image + 77)


def test_heatmap_overlay_normalise():
    image = np.zeros((8, 8, 3), np.uint8)
    weak = np.zeros((1, 2, 2), np.float32)
    weak[0, 0, 0] = 0.2
    clipped = heatmap_overlay(image, weak, alpha=1.0).astype(int).sum(axis=2)
    stretched = heatmap_overlay(image, weak, alpha=1.0, normalise=True).astype(int).sum(axis=2)
    assert stretched.max() > clipped.max()  # the weak peak is shown weak unless normalised
    constant = heatmap_overlay(image, -np.ones((1, 2, 2)), alpha=1.0, normalise=True)
    assert (constant == constant[0, 0]).all() and constant.sum(axis=2).max() < 10  # all the colour of 0


def test_draw_skeleton():
    color = (0, 0, 255)
    image = np.zeros((40, 40, 3), np.uint8)
    points = np.array([[5.0, 20.0], [35.0, 20.0], [20.0, 5.0]])
    drawn = draw_skeleton(image, points, np.array([True, True, False]), [(0, 1), (1, 2)], color)
    assert drawn is not image and not image.any()  # a new picture
    assert tuple(drawn[20, 20]) == color  # on the line between the two visible points
    assert not drawn[:15].any()  # nothing towards the invisible third point
    hidden = draw_skeleton(image, points, np.array([True, False, True]), [(0, 1), (1, 2)], color)
    assert not hidden.any()
    big = draw_skeleton(image, points, None, [(0, 1)], color, thickness=1, scale=2)
    assert big.shape == (80, 80, 3)
    assert big[40:42, 40].any() and not big[30].any()  # y = (20 + 0.5) * 2 - 0.5 = 40.5
    with pytest.raises(ValueError, match="out of range"):
        draw_skeleton(image, points, None, [(0, 3)], color)
