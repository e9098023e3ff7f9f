"""The evaluation report as Markdown (``report.md``): the same sections as ``report.html``, its tables as
Markdown tables and its figures as links to the PNGs beside it (for a wiki, a pull request, a terminal)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hrexp.reports.formats import markdown
from hrexp.reports.html_report import Section


def render_markdown(title: str, sections: Sequence[Section], meta: Mapping[str, str] | None = None,
                    base: Path | None = None) -> str:
    """The report as Markdown; figure links relative to ``base`` (the report's folder)."""
    out = [f"# {title}", ""]
    out += [f"- **{key}**: {value}" for key, value in (meta or {}).items()]
    for section in sections:
        out += ["", f"## {section.title}", ""]
        if section.text:
            out += [section.text, ""]
        for table in section.tables:
            rows = list(table.rows)
            shown = rows if table.max_rows is None else rows[:table.max_rows]
            note = (f"First {len(shown)} of {len(rows)} rows" if len(shown) < len(rows) else "") + \
                (f"{'; full' if len(shown) < len(rows) else 'Also in'} `{table.csv}`" if table.csv else "")
            out += [f"### {table.title}", "", markdown(list(rows[0]) if rows else [], shown, footnote=note)]
        for figure in section.figures:
            link = Path(figure.path)
            if base is not None and link.is_relative_to(base):
                link = link.relative_to(base)
            out += [f"![{figure.caption}]({link.as_posix()})", ""]
    return "\n".join(out).rstrip() + "\n"


def write_markdown(path: Path, title: str, sections: Sequence[Section], meta: Mapping[str, str] | None = None) -> Path:
    """Write :func:`render_markdown` to ``path`` (figure links relative to its folder)."""
    path = Path(path)
    path.write_text(render_markdown(title, sections, meta, base=path.parent.resolve()), encoding="utf-8")
    return path
