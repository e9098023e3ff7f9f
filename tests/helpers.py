"""What many tests share: the real-data location, image writers, seeding, and running the scripts.

Fixtures live in ``conftest.py``; in-process training helpers in ``fit_helpers.py``; two-rank DDP in
``ddp_helpers.py``.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HREXP_SHARED_DATA", ROOT.parent / "shared" / "data"))
# Set by CI (.ci/run): a test that needs the shared data then fails where it would skip (conftest.py too).
REQUIRE_SHARED_DATA = os.environ.get("HREXP_REQUIRE_SHARED_DATA", "") not in ("", "0")

# Small but real: the scratch HRNet-W32, the synthetic spine data built by the datamodule, 2 epochs.
TINY = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=2",
    "trainer.num_sanity_val_steps=0",
    "data.num_train=20",
    "data.num_test=4",
    "data.original_size=[128,64]",
    "data.image_size=[64,32]",
    "data.batch_size=4",
    "seed=0",
]


def shared_path(*parts: str) -> Path:
    """A path inside ../shared/data; skips the calling test with a clear reason when it is absent (fails
    instead with HREXP_REQUIRE_SHARED_DATA=1)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        reason = f"real data not found at {path} (set HREXP_SHARED_DATA to the shared/data folder)"
        if REQUIRE_SHARED_DATA:
            pytest.fail(f"{reason}; HREXP_REQUIRE_SHARED_DATA=1 (CI) makes this a failure, not a skip", pytrace=False)
        pytest.skip(reason)
    return path


def write_image(path: str | Path, image: np.ndarray | None = None, *, height: int = 20, width: int = 30,
                value: int = 128) -> Path:
    """Write ``image`` (or a ``height`` x ``width`` gray image of ``value``) with OpenCV; parents are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image is None:
        image = np.full((height, width), value, np.uint8)
    assert cv2.imwrite(str(path), image), f"cv2 could not write {path}"
    return path


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (what a test needs for repeatable random inputs)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_script(script: str, args: list[str], cache_dir: Path, check: bool = True, timeout: float = 600,
               env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a repository script (``train.py``, ``eval.py``) or a module (``-m hrexp.compare``) in a subprocess."""
    full_env = {**os.environ, "HREXP_CACHE_DIR": str(cache_dir), "WANDB_MODE": "offline",
                **(env or {})}
    command = [sys.executable, *(script.split() if script.startswith("-m ") else [str(ROOT / script)]), *args]
    proc = subprocess.run(command, cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc
