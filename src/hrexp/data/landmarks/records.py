"""In-memory landmark annotations, independent of the file format they were read from.

Every reader turns its format into a :class:`LandmarkSet`; everything downstream (validation,
splitting, datasets) only sees these records. Coordinates follow the design contract: ``(x, y)`` in
original-image pixels with the centre of pixel ``(0, 0)`` at ``(0.0, 0.0)``; a missing landmark is
NaN with ``visible = False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np


@dataclass
class LandmarkRecord:
    """One annotated image.

    Attributes:
        image_path: Absolute path of the image.
        keypoints: float64 ``[K, 2]`` in original pixels, NaN where missing.
        visible: bool ``[K]``; True when the landmark is annotated.
        spacing: Pixel spacing in mm per pixel, None when unknown.
        source: Where the record came from, for error messages (``"file.csv:row 12"``).
        size: ``(height, width)`` of the image, filled by validation (or by a reader that had to
            read it anyway).
    """

    image_path: Path
    keypoints: np.ndarray
    visible: np.ndarray
    spacing: float | None
    source: str
    size: tuple[int, int] | None = None

    @property
    def num_keypoints(self) -> int:
        """Number of landmarks K."""
        return int(self.keypoints.shape[0])


@dataclass
class LandmarkSet:
    """The records of one annotation file (or of one split of it).

    Attributes:
        names: The K landmark names, in index order.
        records: One record per annotated image (or per COCO annotation).
        flip_pairs: Index pairs swapped by a horizontal flip; empty unless the dataset defines them.
        source: The annotation file path (with a split suffix for subsets).
    """

    names: list[str]
    records: list[LandmarkRecord]
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)
    source: str = ""

    @property
    def num_keypoints(self) -> int:
        """Number of landmarks K."""
        return len(self.names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> LandmarkRecord:
        return self.records[index]

    def subset(self, indices: Sequence[int], source: str | None = None) -> "LandmarkSet":
        """A new set holding the records at ``indices`` (records are shared, not copied)."""
        return replace(
            self,
            records=[self.records[i] for i in indices],
            flip_pairs=list(self.flip_pairs),
            names=list(self.names),
            source=self.source if source is None else source,
        )
