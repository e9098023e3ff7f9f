"""Reader for the AASCE 2019 / SpineWeb 16 spine X-ray layout.

Layout under ``root`` (as in ``shared/data/spine_aasce``)::

    data/<split>/<name>.jpg             grayscale JPEG
    labels/<split>/filenames.csv        one image file name per line, no header
    labels/<split>/landmarks.csv        one row per image, same order, no header, comma separated:
                                        136 numbers = x1..x68 then y1..y68, normalised to [0, 1]
                                        by the image width / height
    labels/<split>/<name>.jpg.mat       MATLAB file, field p2 = [68, 2] uint16 pixel (x, y)

Facts checked on the shared copy (481 training, 128 test images):

- ``landmarks.csv`` is exactly ``p2 / [width, height]`` rounded to 5 significant digits, so
  ``x_norm * width`` reproduces ``p2`` within 0.04 px (rounding it gives ``p2`` exactly for every
  image of both splits); ``p2`` is integer-valued, so the annotations are quantised to whole pixels.
- Whether ``p2`` counts from 0 or (MATLAB) from 1 is not recorded. We take the values as they are
  (pixel index = pixel centre, our convention); if they are 1-based, every landmark is off by the
  same +1 px in x and y, below the annotation noise, and the same for predictions and targets.
- One training landmark lies outside its image (``sunhl-1th-25-Jul-2016-49 A AP.jpg``, L4
  bottom-right corner, y = 1.0245 * height): coordinates outside the image are allowed (they become
  invisible only if they fall outside the network input).
- No pixel spacing is known, so ``spacing`` is None (mm metrics are NaN).
- The 17 vertebrae are not always listed top to bottom (by their corners' mean y): 24 of the 481
  training and 4 of the 128 test images break the order. In 22 of them (18 training, all 4 test) the
  row's "L5" (once "L4") lies above "T1"; in one training image "L5" has the same height as "L4". In
  the one we looked at (test ``sunhl-1th-01-Mar-2017-313 D AP.jpg``) the lowest vertebra sits just
  above the sacrum: the row lists T2-L5 and then T1, so every name is one vertebra off. ``angles.csv``
  was computed from the rows as given (our Cobb angles match it on all 609 images that way), so
  ``vertebra_order="as_given"`` is the default, logged with a count; ``"top_to_bottom"`` sorts each
  image's vertebrae by height, which restores the names in such rows.

The reader reads each image's header (PIL, no decoding) because the normalised coordinates need the
real size; it fills ``record.size`` on the way.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hrexp.data.errors import DataError, ErrorCollector
from hrexp.data.images import read_image_size
from hrexp.data.landmarks.records import LandmarkRecord, LandmarkSet
from hrexp.data.landmarks.validation import parse_coordinate

VERTEBRAE = [f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)]
CORNERS = ("tl", "tr", "bl", "br")  # top-left, top-right, bottom-left, bottom-right
AASCE_LANDMARK_NAMES = [f"{v}_{c}" for v in VERTEBRAE for c in CORNERS]
VERTEBRA_ORDERS = ("as_given", "top_to_bottom")

log = logging.getLogger(__name__)


def check_vertebra_order(value: str, option: str = "vertebra_order") -> None:
    """Refuses a ``vertebra_order`` other than :data:`VERTEBRA_ORDERS`, naming ``option``."""
    if value not in VERTEBRA_ORDERS:
        raise ValueError(f"{option}={value!r}: expected one of {', '.join(VERTEBRA_ORDERS)}")


def vertebrae_out_of_order(keypoints: np.ndarray) -> list[int]:
    """Indices ``i`` of the vertebrae whose corners' mean y is not below vertebra ``i - 1``'s (image rows
    grow downwards); ``keypoints`` is ``[4 x vertebrae, 2]`` in the AASCE corner order."""
    centre_y = np.asarray(keypoints, dtype=np.float64)[:, 1].reshape(-1, len(CORNERS)).mean(axis=1)
    return [int(i) for i in np.flatnonzero(np.diff(centre_y) <= 0) + 1]


def top_to_bottom(keypoints: np.ndarray) -> np.ndarray:
    """The vertebrae (4 corners each, kept together) reordered by their corners' mean y, top first."""
    blocks = np.asarray(keypoints).reshape(-1, len(CORNERS), keypoints.shape[-1])
    order = np.argsort(blocks[:, :, 1].mean(axis=1), kind="stable")
    return blocks[order].reshape(keypoints.shape)


def read_aasce(root: str | Path, split: str = "training", vertebra_order: str = "as_given") -> LandmarkSet:
    """Reads one split of the AASCE layout into a LandmarkSet with 68 landmarks.

    Args:
        root: The dataset folder (holding ``data/`` and ``labels/``).
        split: ``"training"`` or ``"test"``.
        vertebra_order: ``"as_given"`` (the rows' order, the one ``angles.csv`` was computed from) or
            ``"top_to_bottom"`` (each image's vertebrae sorted by height); see the module notes.

    Raises:
        DataError: Missing files, row count mismatch, rows with a wrong number of values or
            non-numeric values, unreadable images (all row errors reported together).
    """
    check_vertebra_order(vertebra_order)
    root = Path(root).absolute()
    label_dir = root / "labels" / split
    image_dir = root / "data" / split
    names_file = label_dir / "filenames.csv"
    landmarks_file = label_dir / "landmarks.csv"
    for required in (names_file, landmarks_file):
        if not required.is_file():
            raise DataError(f"{required}: AASCE annotation file not found (root={root}, split={split!r})")
    filenames = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines()]
    filenames = [f for f in filenames if f]
    lines = [line for line in landmarks_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) != len(filenames):
        raise DataError(
            f"{landmarks_file}: expected one row per image of {names_file.name} ({len(filenames)}), got {len(lines)}"
        )
    k = len(AASCE_LANDMARK_NAMES)
    errors = ErrorCollector(landmarks_file)
    records: list[LandmarkRecord] = []
    unordered: list[str] = []  # images whose vertebrae are not listed top to bottom
    for row_number, (filename, line) in enumerate(zip(filenames, lines), start=1):
        where = f"row {row_number} ({filename})"
        cells = line.split(",")
        if len(cells) != 2 * k:
            errors.add(where, f"expected {2 * k} numbers (x1..x{k} then y1..y{k}), got {len(cells)}")
            continue
        values = []
        for n, cell in enumerate(cells):
            value, problem = parse_coordinate(cell)
            if problem or value is None:
                errors.add(where, f"value {n + 1}: {problem or 'empty cell (AASCE has no missing landmarks)'}")
                break
            values.append(value)
        if len(values) != 2 * k:
            continue
        image_path = image_dir / filename
        try:
            height, width = read_image_size(image_path)
        except FileNotFoundError:
            errors.add(where, f"image not found: {image_path}")
            continue
        except (OSError, ValueError) as exc:
            errors.add(where, f"image is not a readable image file: {image_path} ({exc.__class__.__name__})")
            continue
        normalised = np.asarray(values, dtype=np.float64)
        keypoints = np.stack([normalised[:k] * width, normalised[k:] * height], axis=1)
        if vertebrae_out_of_order(keypoints):
            unordered.append(filename)
            if vertebra_order == "top_to_bottom":
                keypoints = top_to_bottom(keypoints)
        records.append(
            LandmarkRecord(
                image_path=image_path,
                keypoints=keypoints,
                visible=np.ones(k, dtype=bool),
                spacing=None,
                source=f"{landmarks_file.relative_to(root)}:{where}",
                size=(height, width),
            )
        )
    errors.raise_if_any()
    if unordered:
        log.info("%s: %d of %d images list their vertebrae out of top-to-bottom order (e.g. %s); %s", landmarks_file,
                 len(unordered), len(records), unordered[0],
                 "reordered (vertebra_order=top_to_bottom)" if vertebra_order == "top_to_bottom"
                 else "kept as given, as angles.csv was computed (data.vertebra_order=top_to_bottom reorders them)")
    return LandmarkSet(names=list(AASCE_LANDMARK_NAMES), records=records, flip_pairs=[], source=str(landmarks_file))


def read_aasce_angles(root: str | Path, split: str = "training") -> dict[str, np.ndarray]:
    """``labels/<split>/angles.csv`` by image file name: the three Cobb angles in degrees, largest first.

    Raises:
        DataError: A missing file, a row count other than ``filenames.csv``'s, or a row without 3 numbers.
    """
    label_dir = Path(root).absolute() / "labels" / split
    angles_file, names_file = label_dir / "angles.csv", label_dir / "filenames.csv"
    for required in (names_file, angles_file):
        if not required.is_file():
            raise DataError(f"{required}: AASCE annotation file not found")
    names = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [line for line in angles_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(rows) != len(names):
        raise DataError(f"{angles_file}: expected one row per image of {names_file.name} ({len(names)}), got {len(rows)}")
    out = {}
    for number, (name, row) in enumerate(zip(names, rows), start=1):
        try:
            values = np.array([float(v) for v in row.split(",")])
        except ValueError:
            values = np.array([])
        if values.shape != (3,) or not np.isfinite(values).all():
            raise DataError(f"{angles_file}: row {number} ({name}): expected 3 angles in degrees, got {row!r}")
        out[name] = values
    return out
