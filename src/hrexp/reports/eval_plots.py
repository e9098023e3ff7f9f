"""The evaluation report's figures, each written as a PNG file of the run folder.

Like :mod:`hrexp.reports.plot`, the matplotlib figures are ``Figure`` objects on the Agg canvas:
no pyplot state to close, no display backend to pick, safe in a headless job or a DataLoader worker.
Picture composites (galleries, heatmap overlays) are NumPy/OpenCV on ``[H, W, 3]`` uint8 RGB
pictures, like :mod:`hrexp.reports.drawing`.

Figures are written at :data:`DPI` dots per inch, so a figure of ``w`` inches is ``w * DPI`` pixels wide.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hrexp.reports.html_report import PNG_SIGNATURE

DPI = 100
SDR_CURVE_POINTS = 300


def png_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a PNG file, read from its header; anything else raises ``ValueError`` naming it."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        raise ValueError(f"not a PNG file: {path}")
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def _figure(width_in: float, height_in: float) -> Any:
    """A matplotlib Figure on the Agg canvas (constrained layout: labels are never cut off)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    """Write the figure as PNG at :data:`DPI` (a fixed size: no ``bbox_inches="tight"``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    fig.clear()
    return path


def _finite(values: Any) -> np.ndarray:
    """A flat float array of the finite values (NaN/inf dropped: missing or unlabelled items)."""
    arr = np.asarray(values, np.float64).ravel()
    return arr[np.isfinite(arr)]


# --- landmark errors ---------------------------------------------------------------------------

def sdr_values(errors: Any, radii: Sequence[float] | np.ndarray) -> np.ndarray:
    """The successful detection rate at each radius: the share (0..1) of errors ``<= r``.

    NaN errors (no ground truth, no prediction) are left out of both the count and the total;
    with no finite error at all every share is NaN.
    """
    radii = np.asarray(radii, np.float64).ravel()
    err = np.sort(_finite(errors))
    if err.size == 0:
        return np.full(radii.shape, np.nan)
    return np.searchsorted(err, radii, side="right") / err.size


def sdr_curve(errors: Mapping[str, Any], path: Path, max_radius: float | None = None, unit: str = "px",
              marks: Sequence[float] = (), title: str = "") -> Path:
    """The SDR curve of each label: share of errors within ``r``, for ``r`` from 0 to ``max_radius``.

    Args:
        errors: label (a split, a landmark group, a model) -> its errors (NaNs ignored).
        max_radius: the curve's right end; default the 99th percentile of all errors (the last
            percent would stretch the axis for a few outliers), raised to show every mark.
        unit: of the errors, for the axis label.
        marks: the report's SDR radii, drawn as vertical dotted lines.
    """
    everything = _finite(np.concatenate([np.asarray(e, np.float64).ravel() for e in errors.values()])
                         if errors else [])
    if max_radius is None:
        max_radius = float(np.percentile(everything, 99)) if everything.size else 0.0
        if max_radius <= 0:
            max_radius = float(everything.max()) if everything.size else 0.0
        max_radius = max([max_radius, *(1.05 * float(m) for m in marks)])
        if max_radius <= 0:
            max_radius = 1.0
    radii = np.linspace(0.0, max_radius, SDR_CURVE_POINTS)
    fig = _figure(8, 5)
    ax = fig.subplots()
    for label, values in errors.items():
        n = _finite(values).size
        ax.plot(radii, 100 * sdr_values(values, radii), label=f"{label} (n={n})")
    for mark in marks:
        ax.axvline(float(mark), color="gray", linestyle=":", linewidth=1)
    ax.set(xlim=(0, max_radius), ylim=(0, 100), xlabel=f"radius ({unit})", ylabel="errors within radius (%)",
           title=title or "successful detection rate")
    ax.grid(alpha=0.3)
    if errors and len(errors) <= 12:
        ax.legend(fontsize="small", loc="lower right")
    return _save(fig, path)


def reliability_plot(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: Path, title: str = "") -> Path:
    """Nominal against empirical coverage, one line per label (``(nominal levels, empirical coverages)``),
    with the diagonal a kept promise lies on."""
    fig = _figure(6, 6)
    ax = fig.subplots()
    ax.plot([0, 100], [0, 100], color="gray", linestyle=":", linewidth=1, label="promise kept")
    for label, (nominal, empirical) in curves.items():
        ax.plot(100 * np.asarray(nominal, np.float64), 100 * np.asarray(empirical, np.float64), marker="o", label=label)
    low = min([50.0, *(100 * float(min(n)) for n, _ in curves.values() if len(n))])
    ax.set(xlim=(low - 5, 100), ylim=(0, 100), xlabel="nominal coverage (%)", ylabel="empirical coverage (%)",
           title=title or "prediction regions: reliability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return _save(fig, path)


def error_boxplot(errors_by_item: Mapping[str, Any], path: Path, unit: str = "px", title: str = "") -> Path:
    """One box of errors per landmark, NaNs dropped.

    The boxes are horizontal, one row per landmark from the top in the mapping's order, so 68
    landmarks still have readable names (the figure grows in height with the count).
    """
    names = list(errors_by_item)
    data = [_finite(errors_by_item[name]) for name in names]
    fig = _figure(8, max(2.5, 0.22 * len(names) + 1.2))
    ax = fig.subplots()
    if names:
        ax.boxplot(data, orientation="horizontal", tick_labels=[str(n) for n in names], showfliers=True,
                   flierprops={"markersize": 2, "alpha": 0.5}, medianprops={"color": "C3"})
        ax.invert_yaxis()  # the first landmark at the top
        ax.tick_params(axis="y", labelsize=8 if len(names) > 30 else 10)
    ax.set(xlabel=f"error ({unit})", title=title or "error per landmark")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


# --- classes -----------------------------------------------------------------------------------

def confusion_matrix_plot(matrix: Any, class_names: Sequence[str], path: Path, normalise: bool = True,
                          title: str = "") -> Path:
    """A confusion matrix (rows = truth, columns = prediction, counts) with each cell's count written in it.

    With ``normalise`` the colours are each row's shares (recall per class), so a rare class is as
    readable as a frequent one, and the cells read ``count`` over ``share %``; a row without any
    item stays blank.
    """
    counts = np.asarray(matrix, np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(class_names):
        raise ValueError(f"confusion matrix of shape {counts.shape} for {len(class_names)} class names")
    c = counts.shape[0]
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    shown = shares if normalise else counts
    side = min(16.0, max(4.5, 0.65 * c + 2.5))
    fig = _figure(side + 1.0, side)
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else max(1.0, shown.max()))
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class" if normalise else "count")
    font = 9 if c <= 10 else 7 if c <= 20 else 5
    top = 1 if normalise else max(1.0, shown.max())
    for i in range(c):
        for j in range(c):
            count = int(round(counts[i, j]))
            text = f"{count}\n{100 * shares[i, j]:.0f}%" if normalise and totals[i, 0] > 0 else str(count)
            ax.text(j, i, text, ha="center", va="center", fontsize=font,
                    color="white" if shown[i, j] > 0.5 * top else "black")
    names = [str(n) for n in class_names]
    ax.set_xticks(range(c), names, rotation=45 if c > 4 else 0, ha="right" if c > 4 else "center")
    ax.set_yticks(range(c), names)
    ax.set(xlabel="prediction", ylabel="truth", title=title or "confusion matrix")
    return _save(fig, path)


# --- relations ---------------------------------------------------------------------------------

def scatter_plot(x: Any, y: Any, path: Path, xlabel: str, ylabel: str, title: str = "", log_y: bool = False) -> Path:
    """A scatter of ``y`` against ``x`` (e.g. error against confidence); pairs with a NaN (or, with
    ``log_y``, a ``y <= 0``) are dropped and the number of points shown is in the title."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"scatter of {x.size} x values against {y.size} y values")
    keep = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
    fig = _figure(7, 5)
    ax = fig.subplots()
    ax.scatter(x[keep], y[keep], s=8, alpha=0.5, linewidths=0)
    if log_y and keep.any():
        ax.set_yscale("log")
    if not keep.any():
        ax.text(0.5, 0.5, "no points to plot", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{title} (n={int(keep.sum())})" if title else f"n={int(keep.sum())}")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# --- pictures ----------------------------------------------------------------------------------

GRID_GAP = 8  # px between tiles and around the grid
CAPTION_LINE = 18  # px per caption line under a tile
CAPTION_FONT = cv2.FONT_HERSHEY_SIMPLEX
CAPTION_SCALE = 0.45
BACKGROUND = (255, 255, 255)


def _rgb(picture: np.ndarray) -> np.ndarray:
    picture = np.asarray(picture)
    if picture.ndim == 2:
        picture = np.repeat(picture[..., None], 3, axis=2)
    if picture.ndim != 3 or picture.shape[2] != 3:
        raise ValueError(f"picture of shape {picture.shape}: expected [H, W, 3] RGB or [H, W]")
    return np.ascontiguousarray(picture, dtype=np.uint8)


def _fit_height(picture: np.ndarray, height: int) -> np.ndarray:
    """Scale to ``height`` keeping the aspect ratio (area averaging when shrinking, bilinear when enlarging)."""
    h, w = picture.shape[:2]
    width = max(1, round(w * height / h))
    if (h, w) == (height, width):
        return picture
    interpolation = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    return cv2.resize(picture, (width, height), interpolation=interpolation)


def _clip_text(text: str, width: int) -> str:
    """``text`` cut (with ``..``) to fit ``width`` pixels in the caption font."""
    def fits(t: str) -> bool:
        return cv2.getTextSize(t, CAPTION_FONT, CAPTION_SCALE, 1)[0][0] <= width
    if fits(text):
        return text
    while text and not fits(text + ".."):
        text = text[:-1]
    return text + ".."


def grid_cell_origin(index: int, columns: int, cell_width: int, tile_height: int,
                     caption_lines: int) -> tuple[int, int]:
    """``(x, y)`` of the top-left pixel of the ``index``-th cell of :func:`picture_grid` (row-major)."""
    row, col = divmod(index, columns)
    return (GRID_GAP + col * (cell_width + GRID_GAP),
            GRID_GAP + row * (tile_height + caption_lines * CAPTION_LINE + GRID_GAP))


def picture_grid(pictures: Sequence[tuple[np.ndarray, str]], path: Path, columns: int = 4,
                 tile_height: int = 320) -> Path:
    """A gallery PNG: each RGB uint8 picture scaled to ``tile_height`` (aspect kept), ``columns`` per
    row, its caption under it (each ``\\n`` starts a line; a line too long is cut with ``..``).

    Every cell is as wide as the widest scaled picture; a narrower picture is centred in its cell,
    its caption starting at its left edge.
    Cell ``i``'s top-left is :func:`grid_cell_origin`; the background is white.
    """
    if not pictures:
        raise ValueError(f"picture_grid: no pictures for {path}")
    columns = max(1, min(int(columns), len(pictures)))
    tiles = [_fit_height(_rgb(p), tile_height) for p, _ in pictures]
    captions = [str(c).split("\n") if c else [] for _, c in pictures]
    caption_lines = max(len(c) for c in captions)
    cell_width = max(t.shape[1] for t in tiles)
    rows = -(-len(tiles) // columns)
    width = GRID_GAP + columns * (cell_width + GRID_GAP)
    height = GRID_GAP + rows * (tile_height + caption_lines * CAPTION_LINE + GRID_GAP)
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    for i, (tile, lines) in enumerate(zip(tiles, captions)):
        x, y = grid_cell_origin(i, columns, cell_width, tile_height, caption_lines)
        left = x + (cell_width - tile.shape[1]) // 2
        canvas[y:y + tile_height, left:left + tile.shape[1]] = tile
        for j, line in enumerate(lines):
            baseline = y + tile_height + (j + 1) * CAPTION_LINE - 5
            text = _clip_text(line, x + cell_width - left)
            cv2.putText(canvas, text, (left, baseline), CAPTION_FONT, CAPTION_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return _write_png(canvas, path)


def _write_png(rgb: np.ndarray, path: Path) -> Path:
    """Write an RGB picture as PNG whatever the file's extension (OpenCV wants BGR)."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())
    return path


def heatmap_overlay(image: np.ndarray, heatmaps: Any, alpha: float = 0.5, normalise: bool = False) -> np.ndarray:
    """The heatmaps' maximum over keypoints, in colour, blended over the picture.

    Args:
        image: ``[H, W, 3]`` uint8 RGB (or ``[H, W]``).
        heatmaps: ``[K, h, w]`` (or ``[h, w]``) covering the image at stride ``H / h``.
        alpha: weight of the colour (0: the image, 1: the colours only).
        normalise: ``False`` clips the maximum to [0, 1], the scale of target and predicted
            heatmaps, so a weak prediction looks weak; ``True`` stretches it min..max to 0..1
            (for maps on another scale, e.g. logits); a constant map is then all 0.

    The map is resized to the image bilinearly (OpenCV's pixel-centre convention), which puts
    heatmap pixel ``u``'s centre at image ``x = (u + 0.5) * s - 0.5``, hrexp's convention. The
    colour map is inferno: its brightness grows with the value, so the hottest place is the
    brightest one and it reads in grey and for colour-blind readers.

    Returns:
        A new ``[H, W, 3]`` uint8 RGB picture.
    """
    picture = _rgb(image)
    maps = np.asarray(heatmaps.detach().cpu() if hasattr(heatmaps, "detach") else heatmaps, np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    heat = np.nan_to_num(maps.max(axis=0), nan=0.0)
    if normalise:
        low, high = float(heat.min()), float(heat.max())
        heat = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    heat = np.clip(heat, 0.0, 1.0)
    heat = cv2.resize(heat, (picture.shape[1], picture.shape[0]), interpolation=cv2.INTER_LINEAR)
    colors = cv2.applyColorMap(np.round(np.clip(heat, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    colors = cv2.cvtColor(colors, cv2.COLOR_BGR2RGB)
    blend = (1 - alpha) * picture.astype(np.float32) + alpha * colors.astype(np.float32)
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)


def feature_grid(features: Sequence[Any], path: Path, names: Sequence[str] | None = None, title: str = "") -> Path:
    """Each HRNet branch's feature map, side by side: the mean activation over channels as an image.

    Args:
        features: one ``[C, h, w]`` array (or tensor) per branch, highest resolution first;
            ``[h, w]`` counts as one channel.
        names: a label per branch (default ``branch 1..n``); each panel also says ``h x w, C channels``.

    Each panel has its own colour scale (the branches' magnitudes differ) and nearest-pixel
    display, so a 2 x 2 branch shows its 4 values, not a blur.
    """
    if not features:
        raise ValueError(f"feature_grid: no feature maps for {path}")
    names = list(names) if names is not None else [f"branch {i + 1}" for i in range(len(features))]
    if len(names) != len(features):
        raise ValueError(f"feature_grid: {len(names)} names for {len(features)} feature maps")
    fig = _figure(3.2 * len(features), 3.8)
    axes = np.atleast_1d(fig.subplots(1, len(features)))
    if title:
        fig.suptitle(title)
    for ax, feature, name in zip(axes, features, names):
        arr = np.asarray(feature.detach().float().cpu() if hasattr(feature, "detach") else feature, np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise ValueError(f"feature map {name!r} of shape {arr.shape}: expected [C, h, w]")
        c, h, w = arr.shape
        shown = ax.imshow(arr.mean(axis=0), cmap="viridis", interpolation="nearest")
        fig.colorbar(shown, ax=ax, shrink=0.7)
        ax.set_title(f"{name}\n{h} x {w}, {c} channels", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)
