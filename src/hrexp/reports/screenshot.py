"""A PNG screenshot of an HTML report, taken with headless Chromium.

Used to look at a report without a browser at hand (a review, a test, a CI artefact). Chromium is
an optional system program (Debian package ``chromium``); nothing else in hrexp needs it.

CLI: ``python -m hrexp.reports.screenshot report.html out.png [--width 1280] [--height 2000]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MISSING = ("no Chromium found on PATH (looked for " + ", ".join(CHROMIUM_NAMES)
           + "); install it, e.g. `apt-get install chromium` on Debian")


def find_chromium() -> str | None:
    """The path of the first Chromium-like browser on ``PATH``, or ``None``."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html_path: Path, png_path: Path, width: int = 1280, height: int = 2000, timeout: float = 120.0,
               chromium: str | None = None) -> Path:
    """Render ``html_path`` in headless Chromium and save the top ``width x height`` pixels as ``png_path``.

    A fresh profile folder per call lets several screenshots run at once (Chromium locks its
    profile) and keeps the user's own profile out of it.

    Raises:
        FileNotFoundError: no Chromium (the message names the Debian package), or no ``html_path``.
        RuntimeError: Chromium failed, timed out or wrote no PNG (its last output is in the message).
    """
    browser = chromium or find_chromium()
    if browser is None:
        raise FileNotFoundError(MISSING)
    html_path, png_path = Path(html_path).resolve(), Path(png_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"no HTML file to screenshot: {html_path}")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.unlink(missing_ok=True)  # so a PNG afterwards is this run's
    with tempfile.TemporaryDirectory(prefix="hrexp-chromium-") as profile:
        command = [browser, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                   "--no-first-run", "--no-default-browser-check", "--force-device-scale-factor=1",
                   f"--user-data-dir={profile}", f"--screenshot={png_path}",
                   f"--window-size={int(width)},{int(height)}",
                   html_path.as_uri()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(f"Chromium took over {timeout:g} s to screenshot {html_path}") from error
    if not png_path.is_file():
        tail = (done.stderr or done.stdout or "").strip()[-2000:]
        raise RuntimeError(f"Chromium (exit {done.returncode}) wrote no screenshot of {html_path}:\n{tail}")
    return png_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hrexp.reports.screenshot",
                                     description="Screenshot an HTML report with headless Chromium.")
    parser.add_argument("html", type=Path, help="the HTML file")
    parser.add_argument("png", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="window width in pixels (default 1280)")
    parser.add_argument("--height", type=int, default=2000, help="window height in pixels (default 2000)")
    args = parser.parse_args(argv)
    try:
        print(screenshot(args.html, args.png, args.width, args.height))
    except (FileNotFoundError, RuntimeError) as error:
        parser.exit(1, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
