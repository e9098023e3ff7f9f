"""The run record: one ``results.json`` per run that later comparisons read (not the loggers)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from hrexp.models.complexity import count_parameters


def parameter_counts(module: torch.nn.Module) -> dict[str, int]:
    """All and trainable parameters (they differ when stages are frozen)."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": count_parameters(module), "trainable": trainable}


def _plain(value: Any) -> Any:
    if torch.is_tensor(value):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_plain(record), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path
