"""Reader for the wide landmark CSV format.

Layout (one row per image)::

    image,pixel_spacing,L1_x,L1_y,L2_x,L2_y,...
    images/a.png,0.5,10.0,20.5,,,...

- the image column is ``image_column`` when the header has it, else the first column; paths are
  relative to the CSV file's folder unless absolute;
- every landmark is a ``<name>_x``/``<name>_y`` column pair; names and their order come from the
  ``_x`` columns of the header;
- an optional ``spacing_column`` (mm per pixel); an empty cell falls back to the ``pixel_spacing``
  argument, then to unknown;
- an empty x AND y cell means a missing landmark; any other non-numeric text (``nan``, ``abc``) is
  an error;
- other columns (e.g. a patient id) are not used; each gets one warning naming it, with the option
  it may have been meant for (a ``PixelSpacing`` column: ``data.spacing_column=PixelSpacing``), so a
  misnamed column does not silently cost the mm metrics.
"""

from __future__ import annotations

import csv
import difflib
import logging
import re
from pathlib import Path

import numpy as np

from hrexp.data.errors import DataError, ErrorCollector
from hrexp.data.images import IMAGE_EXTENSIONS
from hrexp.data.landmarks.records import LandmarkRecord, LandmarkSet
from hrexp.data.landmarks.validation import parse_coordinate, parse_spacing
from hrexp.data.paths import resolve_path


log = logging.getLogger(__name__)


def _landmark_columns(header: list[str], source: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Landmark names and (x column, y column) indices from the header."""
    index = {}
    for i, name in enumerate(header):
        if name in index:
            raise DataError(f"{source}: header: column {name!r} appears twice")
        index[name] = i
    names: list[str] = []
    pairs: list[tuple[int, int]] = []
    for i, column in enumerate(header):
        if column.endswith("_x"):
            name = column[:-2]
            y_column = f"{name}_y"
            if y_column not in index:
                raise DataError(
                    f"{source}: header: column {column!r} has no matching {y_column!r} column "
                    f"(every landmark needs <name>_x and <name>_y)"
                )
            names.append(name)
            pairs.append((i, index[y_column]))
        elif column.endswith("_y") and f"{column[:-2]}_x" not in index:
            raise DataError(
                f"{source}: header: column {column!r} has no matching {column[:-2] + '_x'!r} column "
                f"(every landmark needs <name>_x and <name>_y)"
            )
    if not names:
        upper = [c for c in header if c.endswith(("_X", "_Y"))]
        hint = f"; columns end in lower-case _x/_y, not {upper[:4]}" if upper else ""
        raise DataError(f"{source}: header: no landmark columns found (expected <name>_x,<name>_y pairs{hint})")
    return names, pairs


def read_landmarks_csv(
    path: str | Path,
    *,
    image_column: str = "image",
    spacing_column: str | None = "pixel_spacing",
    pixel_spacing: float | None = None,
) -> LandmarkSet:
    """Reads a wide landmark CSV into a LandmarkSet.

    Args:
        path: The CSV file.
        image_column: Name of the image-path column; the first column is used when the header has
            no column of that name.
        spacing_column: Name of the optional pixel-spacing column (mm per pixel); None to ignore.
        pixel_spacing: Spacing for rows without a spacing cell (mm per pixel), None for unknown.

    Returns:
        The set; image sizes are not filled (validation does that).

    Raises:
        DataError: Unreadable file, bad header, or bad rows (all row errors reported together).
    """
    path = Path(path).absolute()
    source = str(path)
    default_spacing, problem = parse_spacing(pixel_spacing)
    if problem:
        raise DataError(f"{source}: config field pixel_spacing: {problem}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel writes a BOM
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise DataError(f"{source}: annotation file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{source}: cannot read the CSV file ({exc})") from None
    if not rows:
        raise DataError(f"{source}: the file is empty: expected a header row")
    header = [c.strip() for c in rows[0]]
    names, pairs = _landmark_columns(header, source)
    image_idx = header.index(image_column) if image_column in header else 0
    if header[image_idx].endswith(("_x", "_y")):
        raise DataError(f"{source}: header: no image column {image_column!r} and the first column is a coordinate")
    spacing_idx = header.index(spacing_column) if spacing_column and spacing_column in header else None
    used = {i for pair in pairs for i in pair} | {image_idx} | ({spacing_idx} if spacing_idx is not None else set())
    for message in unused_column_warnings(header, rows[1:], used, image_column=image_column,
                                          spacing_column=spacing_column, spacing_known=default_spacing is not None):
        log.warning("%s: %s", source, message)

    errors = ErrorCollector(source)
    records: list[LandmarkRecord] = []
    first_row: dict[Path, str] = {}
    k = len(names)
    for row_number, row in enumerate(rows[1:], start=1):
        if not row or all(c.strip() == "" for c in row):
            continue  # blank lines (e.g. a trailing newline pair) are not data rows
        where = f"row {row_number}"
        if len(row) != len(header):
            errors.add(
                where,
                f"expected {len(header)} fields as in the header ({k} landmarks x 2 coordinates + "
                f"{len(header) - 2 * k} other), got {len(row)}",
            )
            continue
        image_text = row[image_idx].strip()
        if not image_text:
            errors.add(where, f"column {header[image_idx]!r}: empty image path")
            continue
        keypoints = np.full((k, 2), np.nan, dtype=np.float64)
        visible = np.zeros(k, dtype=bool)
        row_ok = True
        for j, (xi, yi) in enumerate(pairs):
            x, x_problem = parse_coordinate(row[xi])
            y, y_problem = parse_coordinate(row[yi])
            for column, problem_text in ((header[xi], x_problem), (header[yi], y_problem)):
                if problem_text:
                    errors.add(where, f"column {column!r}: {problem_text}")
                    row_ok = False
            if x_problem or y_problem:
                continue
            if (x is None) != (y is None):
                given, empty = (header[xi], header[yi]) if y is None else (header[yi], header[xi])
                errors.add(where, f"column {given!r} is set but {empty!r} is empty (a landmark needs both or neither)")
                row_ok = False
                continue
            if x is not None:
                keypoints[j] = (x, y)
                visible[j] = True
        spacing = default_spacing
        if spacing_idx is not None:
            cell_spacing, problem = parse_spacing(row[spacing_idx])
            if problem:
                errors.add(where, f"column {header[spacing_idx]!r}: {problem}")
                row_ok = False
            elif cell_spacing is not None:
                spacing = cell_spacing
        image_path = resolve_path(image_text, path.parent)
        if image_path in first_row:  # one image, one row: a second one is a copy-paste slip or a merge
            errors.add(where, f"image {image_text!r} is already listed in {first_row[image_path]}; expected one row per "
                              "image")
            row_ok = False
        first_row.setdefault(image_path, where)
        if row_ok:
            records.append(
                LandmarkRecord(
                    image_path=image_path,
                    keypoints=keypoints,
                    visible=visible,
                    spacing=spacing,
                    source=f"{path.name}:{where}",
                )
            )
    errors.raise_if_any()
    return LandmarkSet(names=names, records=records, flip_pairs=[], source=source)


def _looks_like_spacing(column: str, spacing_column: str | None) -> bool:
    """A column name that is probably a pixel spacing: contains "spacing" or is close to the configured name."""
    def plain(name: str) -> str:
        return re.sub(r"[^a-z0-9]", "", name.lower())

    if "spacing" in column.lower():
        return True
    return bool(spacing_column) and difflib.SequenceMatcher(None, plain(column), plain(spacing_column)).ratio() >= 0.6


def _looks_like_image_paths(rows: list[list[str]], index: int, sample: int = 50) -> bool:
    """The column's first non-empty cells all end in an image extension."""
    cells = [row[index].strip() for row in rows if len(row) > index and row[index].strip()][:sample]
    return bool(cells) and all(c.lower().endswith(IMAGE_EXTENSIONS) for c in cells)


def unused_column_warnings(
    header: list[str],
    rows: list[list[str]],
    used: set[int],
    *,
    image_column: str,
    spacing_column: str | None,
    spacing_known: bool,
) -> list[str]:
    """One message per header column that the reader does not use, with the option it may be meant for.

    Args:
        header: The header cells.
        rows: The data rows (to tell whether a column holds image file names).
        used: Indices of the columns read (landmark pairs, image, spacing).
        image_column: The configured image column (``data.image_column``).
        spacing_column: The configured spacing column (``data.spacing_column``), None when off.
        spacing_known: A default spacing is configured (``data.pixel_spacing``).

    Returns:
        Messages without the file name; plus one saying the pixel spacing is unknown when the
        configured spacing column is absent and no default is set.
    """
    image_present = image_column in header
    spacing_present = bool(spacing_column) and spacing_column in header
    image_part = (
        f"the image column {image_column!r}" if image_present
        else f"the image column (the first column, as data.image_column={image_column!r} is not in the header)"
    )
    spacing_part = f"the spacing column {spacing_column!r}" if spacing_column else "a spacing column (none is set)"
    messages = []
    for i, column in enumerate(header):
        if i in used:
            continue
        hints = []
        if column.lower().endswith(("_x", "_y")):
            hints.append(f"landmark columns end in lower-case _x/_y: rename it {column[:-2] + column[-2:].lower()!r} "
                         f"if it is a coordinate")
        if not spacing_present and _looks_like_spacing(column, spacing_column):
            hints.append(f"if it holds the pixel spacing set data.spacing_column={column}")
        if not image_present and _looks_like_image_paths(rows, i):
            hints.append(f"if it holds the image paths set data.image_column={column}")
        messages.append(
            f"column {column!r} is not used: not a <name>_x/<name>_y landmark pair, not {image_part} nor "
            f"{spacing_part}" + "".join(f"; {hint}" for hint in hints)
        )
    if spacing_column and not spacing_present and not spacing_known:
        messages.append(
            f"no spacing column {spacing_column!r} and no data.pixel_spacing: the pixel spacing is unknown, so "
            f"the mm metrics will be missing"
        )
    return messages


def write_landmarks_csv(
    path: str | Path,
    landmark_set: LandmarkSet,
    *,
    relative_to: str | Path | None = None,
    precision: int = 4,
) -> None:
    """Writes a set in the wide CSV format (the inverse of :func:`read_landmarks_csv`).

    Args:
        path: Output CSV file.
        landmark_set: Records to write; missing landmarks become empty cells.
        relative_to: Write image paths relative to this folder when they are inside it.
        precision: Decimals of the coordinates.
    """
    path = Path(path)
    header = ["image", "pixel_spacing"]
    for name in landmark_set.names:
        header += [f"{name}_x", f"{name}_y"]
    base = Path(relative_to).absolute() if relative_to is not None else None
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for record in landmark_set.records:
            image = Path(record.image_path)
            if base is not None and image.is_absolute() and image.is_relative_to(base):
                image = image.relative_to(base)
            row = [image.as_posix(), "" if record.spacing is None else repr(float(record.spacing))]
            for (x, y), vis in zip(record.keypoints, record.visible):
                row += [f"{x:.{precision}f}", f"{y:.{precision}f}"] if vis else ["", ""]
            writer.writerow(row)
