"""The evaluation report's HTML file: self-contained (figures embedded byte for byte, no external
reference), escaped, tables cut and formatted as documented; and its Chromium screenshot."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from hrexp.reports import screenshot as screenshot_module
from hrexp.reports.eval_plots import png_size
from hrexp.reports.html_report import Figure, Section, TableBlock, embedded_images, image_sources, write_html

EVIL = "<script>alert('x')</script>"


class Tables(HTMLParser):
    """Every ``<table>`` of an HTML text as rows of cell texts (header row included), every element id
    and every in-page link."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.ids: list[str] = []
        self.links: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "a" and attrs.get("href", "").startswith("#"):
            self.links.append(attrs["href"][1:])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (12, 8)) -> Path:
    """A small solid-colour PNG (each figure's bytes differ)."""
    ok, data = cv2.imencode(".png", np.full((size[1], size[0], 3), color, np.uint8))
    assert ok
    path.write_bytes(data.tobytes())
    return path


@pytest.fixture
def figures(tmp_path) -> list[Path]:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    return [png(tmp_path / f"fig{i}.png", c, (10 + i, 6)) for i, c in enumerate(colors)]


def report(tmp_path: Path, figures: list[Path], long_rows: int = 80) -> tuple[Path, str]:
    sections = [
        Section("Summary", f"First paragraph {EVIL}\nsame paragraph.\n\nSecond paragraph.", tables=[
            TableBlock("metrics", [
                {"metric": "NME", "value": 0.0123456, "n": 5, "note": EVIL},
                {"metric": "SDR@2", "value": float("nan"), "n": None, "note": "none"},
                {"metric": "big", "value": 1234567.0, "n": np.int64(7)},  # no "note": empty cell
                {"metric": "np", "value": np.float32(2.0 / 3.0), "n": 0, "note": ""},
            ], csv="metrics.csv", digits=3),
        ], figures=[Figure(figures[0], f"caption {EVIL}"), Figure(figures[1])]),
        Section(f"Gallery {EVIL}", tables=[
            TableBlock("per image", [{"image": f"img{i}", "error": i / 3} for i in range(long_rows)],
                       csv="per_image.csv"),
        ], figures=[Figure(figures[2], "worst")]),
    ]
    path = write_html(tmp_path / "out" / "report.html", f"Report {EVIL}", sections,
                      {"checkpoint": "best.ckpt", "split": f"test {EVIL}"})
    return path, path.read_text(encoding="utf-8")


def test_figures_are_embedded_byte_for_byte(tmp_path, figures):
    path, text = report(tmp_path, figures)
    assert path == tmp_path / "out" / "report.html"
    sources = image_sources(text)
    assert len(sources) == 3
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert embedded_images(text) == [f.read_bytes() for f in figures]


def test_an_image_that_is_not_embedded_is_detected():
    text = '<p><img src="data:image/png;base64,iVBORw0KGgo="><img src="fig.png"></p>'
    assert image_sources(text)[1] == "fig.png"
    with pytest.raises(ValueError, match="fig.png"):
        embedded_images(text)


def test_self_contained_and_escaped(tmp_path, figures):
    _, text = report(tmp_path, figures)
    without_images = text
    for source in image_sources(text):
        without_images = without_images.replace(source, "")
    lowered = without_images.lower()
    for external in ("http://", "https://", "<script", "<link", "@import", "url("):
        assert external not in lowered, external
    assert "&lt;script&gt;" in text  # the text is shown, not run
    # the title, the meta block, a section title, a paragraph, a cell and a caption each carried EVIL
    assert text.count("&lt;script&gt;alert(") >= 6


def test_contents_link_to_every_section(tmp_path, figures):
    _, text = report(tmp_path, figures)
    parsed = Tables()
    parsed.feed(text)
    assert len(parsed.links) == 2
    assert all(link in parsed.ids for link in parsed.links)
    assert text.index('href="#' + parsed.links[0]) < text.index('id="' + parsed.links[0])


def test_tables_cut_and_formatted(tmp_path, figures):
    _, text = report(tmp_path, figures)
    parsed = Tables()
    parsed.feed(text)
    meta, metrics, per_image = parsed.tables
    assert meta == [["checkpoint", "best.ckpt"], ["split", f"test {EVIL}"]]
    assert metrics[0] == ["metric", "value", "n", "note"]
    assert metrics[1] == ["NME", "0.0123", "5", EVIL]  # 3 significant digits
    assert metrics[2] == ["SDR@2", "", "", "none"]  # NaN and None: empty
    assert metrics[3] == ["big", "1.23e+06", "7", ""]  # missing key: empty
    assert metrics[4] == ["np", "0.667", "0", ""]
    assert per_image[0] == ["image", "error"]
    assert len(per_image) == 1 + 50  # cut to the default max_rows
    assert per_image[-1] == ["img49", "16.33"]  # default 4 digits
    assert "first 50 of 80 rows" in text and "per_image.csv" in text


def test_short_table_is_not_cut(tmp_path, figures):
    _, text = report(tmp_path, figures, long_rows=50)
    parsed = Tables()
    parsed.feed(text)
    assert len(parsed.tables[2]) == 1 + 50
    assert "first 50" not in text


@pytest.mark.parametrize("kind", ["missing", "not png"])
def test_bad_figure_raises_naming_it_and_keeps_the_old_report(tmp_path, figures, kind):
    path, before = report(tmp_path, figures)
    bad = tmp_path / "nope.png"
    if kind == "not png":
        bad.write_bytes(b"GIF89a not a png at all")
    error = FileNotFoundError if kind == "missing" else ValueError
    with pytest.raises(error, match="nope.png"):
        write_html(path, "again", [Section("s", figures=[Figure(figures[0]), Figure(bad)])])
    assert path.read_text(encoding="utf-8") == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]  # no temporary file left


def test_screenshot_without_chromium_names_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(screenshot_module, "find_chromium", lambda: None)
    html = tmp_path / "r.html"
    html.write_text("<p>hi</p>")
    with pytest.raises(FileNotFoundError, match="apt-get install chromium"):
        screenshot_module.screenshot(html, tmp_path / "r.png")
    with pytest.raises(SystemExit) as exit_info:
        screenshot_module.main([str(html), str(tmp_path / "r.png")])
    assert exit_info.value.code == 1
    assert "chromium" in capsys.readouterr().err


@pytest.mark.skipif(screenshot_module.find_chromium() is None,
                    reason="no Chromium on PATH (Debian package `chromium`): screenshot not tested")
def test_screenshot_has_the_requested_size(tmp_path, figures):
    path, _ = report(tmp_path, figures)
    shot = screenshot_module.screenshot(path, tmp_path / "shot" / "report.png", width=800, height=600)
    assert png_size(shot) == (800, 600)
    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.std() > 0  # the page was drawn, not a blank window
