"""The evaluation report as one self-contained HTML file.

The report is copied around (mailed, attached to tickets, opened on a laptop without the run
folder), so everything it shows is inside the file: figures are embedded as base64 ``data:`` URIs,
the CSS is inline, and there is no script, font or other external reference. The only links are the
table of contents (in-page anchors) and the names of the full CSV tables next to the report.

This module only renders; what goes into the sections is decided by ``eval.py``.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from numbers import Integral, Real
from pathlib import Path
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_URI_PREFIX = "data:image/png;base64,"


@dataclass
class TableBlock:
    """A table of a section.

    Attributes:
        title: shown above the table.
        rows: one dict per row; the columns are the keys of the first row, in their order (a key
            missing from a later row gives an empty cell).
        csv: file name of the full table in the run folder, shown (and linked) under the table.
        max_rows: longer tables are cut in the HTML, with a note saying so; ``None`` shows all rows.
        digits: floats are shown with this many significant digits; ``None`` and NaN give an empty cell.
    """

    title: str
    rows: list[dict[str, Any]]
    csv: str | None = None
    max_rows: int | None = 50
    digits: int = 4


@dataclass
class Figure:
    """A PNG file of the run folder, embedded in the report."""

    path: Path
    caption: str = ""


@dataclass
class Section:
    """A titled part of the report: a short text, then its tables, then its figures.

    ``text`` is plain text (HTML-escaped); a blank line starts a new paragraph.
    """

    title: str
    text: str = ""
    tables: list[TableBlock] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       font-size: 14px; line-height: 1.4; color: #222; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.3em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.4em; }
table { border-collapse: collapse; margin: 0.3em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 2px 8px; }
th { background: #f2f2f2; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fafafa; }
table.meta th { background: none; border: none; padding-left: 0; color: #555; font-weight: 600; }
table.meta td { border: none; }
.note { color: #666; font-size: 12px; margin: 0.2em 0 0.8em; }
nav ol { margin: 0.3em 0; padding-left: 1.5em; }
figure { margin: 0.8em 0 1.2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 12px; margin-top: 0.2em; }
.scroll { overflow-x: auto; }
"""


def format_cell(value: Any, digits: int = 4) -> str:
    """The text of a table cell: floats with ``digits`` significant digits, ``None``/NaN empty, the rest ``str``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        number = float(value)
        return "" if math.isnan(number) else f"{number:.{digits}g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _paragraphs(text: str) -> str:
    """Plain text to escaped ``<p>`` elements: a blank line separates paragraphs, a single newline
    is kept as a line break."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", text) if b.strip()]
    return "\n".join("<p>" + html.escape(b).replace("\n", "<br>\n") + "</p>" for b in blocks)


def _table_html(table: TableBlock) -> str:
    """A table (cut to ``max_rows``) with its title and notes about the cut and the full CSV."""
    parts = [f"<h3>{html.escape(table.title)}</h3>"] if table.title else []
    if not table.rows:
        parts.append('<p class="note">(no rows)</p>')
        return "\n".join(parts)
    columns = list(table.rows[0].keys())
    shown = table.rows if table.max_rows is None else table.rows[:table.max_rows]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = []
    for row in shown:
        cells = []
        for column in columns:
            value = row.get(column)
            css = ' class="num"' if _is_number(value) else ""
            cells.append(f"<td{css}>{html.escape(format_cell(value, table.digits))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    parts.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>\n<tbody>\n'
                 + "\n".join(body) + "\n</tbody></table></div>")
    notes = []
    csv_link = f'<a href="{html.escape(table.csv, quote=True)}">{html.escape(table.csv)}</a>' if table.csv else None
    if len(shown) < len(table.rows):
        where = f", full table in {csv_link}" if csv_link else ""
        notes.append(f"first {len(shown)} of {len(table.rows)} rows{where}")
    elif csv_link:
        notes.append(f"also in {csv_link}")
    if notes:
        parts.append(f'<p class="note">{"; ".join(notes)}</p>')
    return "\n".join(parts)


def png_data_uri(path: Path) -> str:
    """The PNG file as a ``data:`` URI; a missing file or one that is not a PNG raises, naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report figure not found: {path}")
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"report figure is not a PNG file: {path}")
    return DATA_URI_PREFIX + base64.b64encode(data).decode("ascii")


def _figure_html(figure: Figure) -> str:
    caption = html.escape(figure.caption)
    alt = html.escape(figure.caption or Path(figure.path).name, quote=True)
    return (f'<figure><img src="{png_data_uri(figure.path)}" alt="{alt}">'
            + (f"<figcaption>{caption}</figcaption>" if caption else "") + "</figure>")


def render_html(title: str, sections: Sequence[Section], meta: Mapping[str, str] | None = None) -> str:
    """The report's HTML text (see :func:`write_html`)."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
           f"<h1>{html.escape(title)}</h1>"]
    if meta:
        rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in meta.items())
        out.append(f'<table class="meta">{rows}</table>')
    anchors = [f"section-{i + 1}" for i in range(len(sections))]
    if sections:
        items = "".join(f'<li><a href="#{a}">{html.escape(s.title)}</a></li>' for a, s in zip(anchors, sections))
        out.append(f"<nav><h2>Contents</h2><ol>{items}</ol></nav>")
    for anchor, section in zip(anchors, sections):
        out.append(f'<section id="{anchor}">')
        out.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            out.append(_paragraphs(section.text))
        out.extend(_table_html(t) for t in section.tables)
        out.extend(_figure_html(f) for f in section.figures)
        out.append("</section>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)


def write_html(path: Path, title: str, sections: Sequence[Section], meta: Mapping[str, str] = {}) -> Path:
    """Write the report to ``path``: one self-contained HTML file (figures embedded, inline CSS, no
    external reference) with ``meta`` as a key/value block at the top and a table of contents.

    Every figure is read and checked before anything is written; the file is written to a temporary
    file beside ``path`` and renamed, so a reader never sees half a report and a failed call leaves
    an earlier report in place.

    Raises:
        FileNotFoundError / ValueError: a figure file is missing / is not a PNG (the message names it).
    """
    path = Path(path)
    text = render_html(title, sections, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the report from the rest of the group
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class _ImageSources(HTMLParser):
    """Collects the ``src`` of every ``<img>``."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")


def image_sources(html_text: str) -> list[str]:
    """The ``src`` of every ``<img>`` of an HTML text, in order (entities decoded)."""
    parser = _ImageSources()
    parser.feed(html_text)
    parser.close()
    return parser.sources


def embedded_images(html_text: str) -> list[bytes]:
    """The decoded bytes of every ``<img>`` of a report, in order.

    Raises:
        ValueError: an ``<img>`` whose source is not a base64 PNG ``data:`` URI (the report would
            not be self-contained); the message shows the start of that source.
    """
    images = []
    for src in image_sources(html_text):
        if not src.startswith(DATA_URI_PREFIX):
            raise ValueError(f"<img> not embedded as a PNG data URI: {src[:80]!r}")
        images.append(base64.b64decode(src[len(DATA_URI_PREFIX):], validate=True))
    return images
