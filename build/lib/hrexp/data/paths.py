"""Paths from configs and annotation files, resolved one way everywhere."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_path(value: str | Path | None, base: str | Path | None = None) -> Path | None:
    """``value`` relative to ``base`` (when given) unless absolute, made absolute and normalised.

    ``~`` is expanded; None or ``""`` (an unset option) gives None; without ``base`` a relative path is
    relative to the working directory. ``normpath`` folds ``..`` without resolving symlinks, so a
    linked data folder keeps its name.
    """
    if value is None or value == "":
        return None
    path = Path(value).expanduser()
    if not path.is_absolute() and base not in (None, ""):
        path = Path(base).expanduser() / path
    return Path(os.path.normpath(path.absolute()))
