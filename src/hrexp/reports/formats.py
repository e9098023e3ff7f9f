"""The comparison table written out: markdown, CSV, a console table and a W&B Table.

Each takes the columns and rows of :func:`hrexp.reports.table.build_table` (raw values, ``None`` for
an empty cell) and only formats them.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hrexp.reports.table import FIXED_COLUMNS, NOTE, OVERRIDES
from hrexp.utils.wandb_env import wandb_offline

# Markdown formats of the non-metric numeric columns; metric columns use 4 significant digits.
MD_FORMATS = {"params (M)": "{:.2f}", "G multiply-adds": "{:.2f}", "train time (s)": "{:.0f}"}


def _md_cell(column: str, value: Any, base: Path | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        text = MD_FORMATS.get(column, "{:.4g}").format(value)
    elif column == "best checkpoint" and base is not None:
        try:
            text = Path(value).relative_to(base).as_posix()
        except ValueError:  # moved runs keep their training machine's paths
            text = str(value)
    elif column == "pretrained" and "/" in str(value):
        text = Path(str(value)).name  # a local weights file: its name is what tells runs apart
    elif column == NOTE:
        first = str(value).splitlines()[0]
        text = first if len(first) <= 120 else first[:119] + "…"  # the CSV keeps the whole note
    else:
        text = str(value)
    return text.replace("|", "\\|")


def _numeric(column: str, rows: Sequence[Mapping[str, Any]]) -> bool:
    values = [r.get(column) for r in rows if r.get(column) is not None]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def markdown(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], base: Path | None = None,
             footnote: str = "") -> str:
    """A GitHub/pandoc markdown table, numbers right-aligned, checkpoint paths relative to ``base``."""
    align = ["---:" if _numeric(c, rows) else "---" for c in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(c, row.get(c), base) for c in columns) + " |")
    if footnote:
        lines += ["", footnote]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """The table at full precision (floats as Python writes them back exactly), empty cells empty."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return path


def print_console(columns: Sequence[str], rows: Sequence[Mapping[str, Any]], base: Path | None) -> None:
    """The table's best values in a terminal; the per-metric columns at the best epoch are in the files."""
    from rich.console import Console
    from rich.table import Table

    keep = [c for c in columns if c in FIXED_COLUMNS or c in (OVERRIDES, "best epoch", "train time (s)", NOTE)
            or (c.startswith("best ") and c != "best checkpoint")]
    table = Table(title="Run comparison (all columns: comparison.md / comparison.csv)")
    for column in keep:
        table.add_column(column, justify="right" if _numeric(column, rows) else "left", no_wrap=True,
                         max_width=60 if column in (NOTE, OVERRIDES) else None)
    for row in rows:
        table.add_row(*(_md_cell(c, row.get(c), base).replace("\\|", "|") for c in keep))
    console = Console()
    if not console.is_terminal:  # piped to a log file: no terminal width to squeeze the table into
        console = Console(width=220)
    console.print(table)


# ----------------------------------------------------------------------------- W&B


def log_wandb_table(rows: Sequence[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str], run: Any = None, *,
                    project: str = "hrexp", group: str | None = None, dir: str | Path | None = None) -> Any:
    """Log the comparison as a W&B Table under the key ``comparison``; return the table.

    Args:
        rows: dicts keyed by column (as :func:`hrexp.reports.table.build_table` gives) or sequences
            in column order.
        columns: the table's columns.
        run: a W&B run to log to; ``None`` starts one (job type ``comparison``, offline when
            :func:`wandb_offline`), and finishes it after logging.
        project, group, dir: for the run started when ``run`` is ``None``.
    """
    import wandb

    data = [[row.get(c) for c in columns] if isinstance(row, Mapping) else list(row) for row in rows]
    # One type per column: a W&B Table rejects a column mixing text with numbers or booleans.
    data = [[v if v is None or isinstance(v, (int, float, str)) and not isinstance(v, bool) else str(v)
             for v in row] for row in data]
    table = wandb.Table(columns=list(columns), data=data)
    own = run is None
    if own:
        run = wandb.init(project=project, group=group, job_type="comparison", dir=None if dir is None else str(dir),
                         mode="offline" if wandb_offline() else "online")
    try:
        run.log({"comparison": table})
    finally:
        if own:
            run.finish()
    return table
