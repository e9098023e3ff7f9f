"""Eval's CSV tables: one row per item, full precision (the files are data, not a display)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping, Sequence


def write_table_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """One CSV row per item; the columns of the first row in order; None and NaN as empty cells."""
    columns = list(rows[0]) if rows else []
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if value != value else repr(value)
    return str(value)


def number(value: Any) -> float | None:
    """A table cell from a NumPy or Python number: a float, or None when undefined (NaN, inf)."""
    value = float(value)
    return value if math.isfinite(value) else None
