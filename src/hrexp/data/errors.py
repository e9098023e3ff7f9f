"""The one error type of bad input data, and the collector that reports a file's errors together.

Every data failure is a :class:`DataError` whose message names the file and the row (1-based data
row, COCO annotation id/index, image/mask pair) or field, and what was expected. Row errors of a
file are collected and the first :data:`MAX_REPORTED` are reported together.
"""

from __future__ import annotations

from pathlib import Path

from hrexp.errors import UserError

MAX_REPORTED = 10


class DataError(UserError, ValueError):
    """Bad or inconsistent input data; the message names the file and the row or field."""


class ErrorCollector:
    """Collects the errors of one file and raises them together as one :class:`DataError`.

    Args:
        source: The file the errors belong to (named once at the top of the message).
    """

    def __init__(self, source: str | Path):
        self.source = str(source)
        self.errors: list[str] = []

    def add(self, where: str, message: str) -> None:
        """Records one error; ``where`` is e.g. ``"row 3"`` or ``"annotation id 7 (index 2)"``."""
        self.errors.append(f"{where}: {message}")

    def __bool__(self) -> bool:
        return bool(self.errors)

    def raise_if_any(self) -> None:
        """Raises a DataError listing the first errors, if any were collected."""
        if not self.errors:
            return
        n = len(self.errors)
        shown = self.errors[:MAX_REPORTED]
        lines = [f"{self.source}: {n} error{'s' if n > 1 else ''} in the data:"]
        lines += [f"  {self.source}: {e}" for e in shown]
        if n > len(shown):
            lines.append(f"  ... and {n - len(shown)} more")
        raise DataError("\n".join(lines))
