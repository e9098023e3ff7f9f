"""``ReportContext``: what a task's ``report`` hook may use besides the per-sample results.

The run folder to write into, the report options, the split's dataset and names, and the network, to
draw chosen samples again (galleries, heatmap overlays, feature maps) without keeping any image or map
of the whole split in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from hrexp.reports.drawing import denormalise


@dataclass
class ReportOptions:
    """``report.*`` of ``eval.yaml``.

    Attributes:
        gallery: How many of the worst and of the best images the galleries show.
        heatmaps: Samples (index in the split, or a file name) whose heatmaps are drawn over the input.
        features: Samples whose backbone feature maps are drawn (each branch's mean activation); ``True``
            means the worst image.
        scale: Enlargement of small network inputs in galleries.
    """

    gallery: int = 4
    heatmaps: Sequence[int | str] = ()
    features: bool | Sequence[int | str] = False
    scale: int = 1


@dataclass
class ReportContext:
    """The report's surroundings (see the module doc). ``module`` is the network of the report's
    predictions (an ensemble's first member draws heatmaps and features)."""

    out_dir: Path
    module: Any
    datamodule: Any
    split: str
    options: ReportOptions = field(default_factory=ReportOptions)
    metrics: Mapping[str, float] = field(default_factory=dict)
    # What the report chose (gallery indices, ...), written to report.json beside report.html.
    facts: dict[str, Any] = field(default_factory=dict)
    # A conformal calibration (hrexp.conformal.calibration.Calibration) whose regions the report measures.
    calibration: Any = None
    # the nominal levels its tables show (eval.yaml's conformal.levels; empty: the calibration's own)
    calibration_levels: tuple[float, ...] = ()

    @property
    def dataset(self) -> Any:
        return self.datamodule.datasets[self.split]

    def records(self) -> Any:
        """The split's records (``LandmarkSet``, ``PoseSplit``, ``SegSet``)."""
        return self.datamodule.splits[self.split]

    def image_name(self, index: int) -> str:
        """A short name of sample ``index``: its image file's name (and instance for pose), else its index."""
        split = self.records()
        for attribute in ("records", "instances"):
            items = getattr(split, attribute, None)
            if items is not None:
                item = items[index]
                name = Path(item.image_path).name
                return f"{name} #{index}" if attribute == "instances" else name
        pairs = getattr(split, "pairs", None)
        if pairs is not None:
            return str(pairs[index][0])
        return f"{self.split} sample {index}"

    def resolve(self, chosen: Sequence[int | str], count: int) -> list[int]:
        """Sample indices from indices or file names given in an option (unknown names are refused)."""
        names = {self.image_name(i).split(" #")[0]: i for i in range(count)}
        out = []
        for item in chosen:
            if isinstance(item, (int, np.integer)) or str(item).isdigit():
                index = int(item)
                if not 0 <= index < count:
                    raise ValueError(f"report option: sample {index} is not in the {self.split} split (0..{count - 1})")
                out.append(index)
            elif str(item) in names:
                out.append(names[str(item)])
            else:
                raise ValueError(f"report option: no image named {item!r} in the {self.split} split")
        return out

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        """The samples ``indices`` of the split as one batch (the datamodule's collate), on the module's device."""
        dataset = self.dataset
        collate = self.datamodule.collate_fn(self.split) or torch.utils.data.default_collate
        batch = collate([dataset[i] for i in indices])
        device = self.module.device
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    @torch.no_grad()
    def run(self, indices: Sequence[int]) -> tuple[dict[str, Any], list[torch.Tensor], torch.Tensor]:
        """The batch of ``indices``, the backbone's features and the task's outputs (eval mode)."""
        batch = self.batch(indices)
        self.module.eval()
        features = self.module.backbone(self.module.speed.images(batch["image"]))
        return batch, list(features), self.module.task(features)

    def drawing_scale(self, batch: Mapping[str, Any], height: int = 320) -> int:
        """An integer enlargement that draws a small network input at about ``height`` pixels (else 1)."""
        return max(int(self.options.scale), round(height / int(batch["image"].shape[-2])), 1)

    def pictures(self, batch: Mapping[str, Any]) -> list[np.ndarray]:
        """The batch's network inputs as ``[H, W, 3]`` uint8 RGB."""
        return [denormalise(image) for image in batch["image"]]
