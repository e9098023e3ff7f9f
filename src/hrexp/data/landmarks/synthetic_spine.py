"""Synthetic AP spine X-rays with exact vertebra-corner landmarks: the default, offline data set.

The images are drawn by :mod:`hrexp.data.landmarks.synthetic_spine_render` (vertebra-like blocks
along a random spinal curve on an X-ray-like background; the landmarks are the 4 exact corners of
every block, named ``V01_tl, V01_tr, V01_bl, V01_br, V02_tl, ...``). This module builds the data
set on disk.

The output folder is a cache: ``build_synthetic_spine`` writes ``images/{train,test}/*.png``,
``train.csv``, ``test.csv`` (the wide CSV format, read back by the ordinary CSV reader) and a
``manifest.json`` (generator version + parameters). A call with the same parameters reuses the
files; changed parameters rebuild. The build goes to a temporary sibling folder that is renamed
into place at the end, so an interrupted build never leaves a half-written cache.

Every image is drawn from its own generator seeded by ``(seed, split, index)``, so the result is
deterministic and image ``i`` does not depend on how many images are requested.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from hrexp.data.errors import DataError
from hrexp.data.landmarks.csv_reader import write_landmarks_csv
from hrexp.data.landmarks.records import LandmarkRecord, LandmarkSet
from hrexp.data.landmarks.synthetic_spine_render import render_spine_image, synthetic_landmark_names

log = logging.getLogger(__name__)

# Bump whenever the rendering (synthetic_spine_render) changes, so old caches are rebuilt.
GENERATOR_VERSION = 1
MANIFEST = "manifest.json"


def _manifest(params: dict) -> dict:
    # "generator" identifies a cache of this data set (not a module path): changing it would make
    # every existing cache look foreign, so it stays as is.
    return {"generator": "hrexp.data.synthetic_spine", "version": GENERATOR_VERSION, "params": params}


def _read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_complete(folder: Path, manifest: dict) -> bool:
    return (
        _read_manifest(folder) == manifest
        and (folder / "train.csv").is_file()
        and (folder / "test.csv").is_file()
    )


def _render_split(folder: Path, split: str, count: int, params: dict) -> None:
    split_code = {"train": 0, "test": 1}[split]
    image_dir = folder / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    records = []
    names = synthetic_landmark_names(params["num_vertebrae"])
    for i in range(count):
        rng = np.random.default_rng([params["seed"], split_code, i])
        image, keypoints = render_spine_image(rng, params["image_size"], params["num_vertebrae"])
        path = image_dir / f"{split}_{i:05d}.png"
        if not cv2.imwrite(str(path), image):
            raise OSError(f"cannot write {path}")
        records.append(
            LandmarkRecord(
                image_path=path.absolute(),
                keypoints=keypoints,
                visible=np.ones(len(keypoints), dtype=bool),
                spacing=params["pixel_spacing"],
                source=f"synthetic {split} {i}",
            )
        )
    write_landmarks_csv(
        folder / f"{split}.csv", LandmarkSet(names=names, records=records), relative_to=folder.absolute()
    )


def _params(num_train: int = 240, num_test: int = 60, seed: int = 0, image_size: Sequence[int] = (512, 256),
            num_vertebrae: int = 10, pixel_spacing: float = 0.5) -> dict:
    return {
        "num_train": int(num_train),
        "num_test": int(num_test),
        "seed": int(seed),
        "image_size": [int(image_size[0]), int(image_size[1])],
        "num_vertebrae": int(num_vertebrae),
        "pixel_spacing": float(pixel_spacing),
    }


def synthetic_spine_folder(cache_dir: str | Path, **params) -> Path:
    """The folder of one parameter set inside ``cache_dir``: ``v<version>-<hash of the parameters>``.

    Each parameter set has a folder of its own, so runs with different sets (a sweep over
    ``data.num_train``, a test beside a training run) never rebuild a folder another run is reading.
    """
    params = _params(**params)  # build_synthetic_spine's arguments after out_dir
    digest = hashlib.sha1(json.dumps(_manifest(params), sort_keys=True).encode()).hexdigest()[:12]
    return Path(cache_dir) / f"v{GENERATOR_VERSION}-{digest}"


def build_synthetic_spine(
    out_dir: str | Path,
    num_train: int = 240,
    num_test: int = 60,
    seed: int = 0,
    image_size: Sequence[int] = (512, 256),
    num_vertebrae: int = 10,
    pixel_spacing: float = 0.5,
) -> Path:
    """Builds (or reuses) the synthetic spine data set in ``out_dir``.

    Args:
        out_dir: Cache folder; created, reused when its manifest matches, rebuilt otherwise.
        num_train: Training images (``train.csv``).
        num_test: Test images (``test.csv``).
        seed: Seed of the whole data set.
        image_size: Original image ``(height, width)``.
        num_vertebrae: Blocks per image (landmarks = 4 x this).
        pixel_spacing: Value of the ``pixel_spacing`` column (mm per pixel).

    Returns:
        ``out_dir`` (absolute).

    Raises:
        DataError: ``out_dir`` exists, is not empty and is not a synthetic-spine cache (refusing
            to delete someone's files).
    """
    out_dir = Path(out_dir).expanduser().absolute()
    params = _params(num_train, num_test, seed, image_size, num_vertebrae, pixel_spacing)
    if params["num_train"] < 1 or params["num_test"] < 0 or params["num_vertebrae"] < 1:
        raise ValueError(f"need num_train >= 1, num_test >= 0, num_vertebrae >= 1, got {params}")
    manifest = _manifest(params)
    if _is_complete(out_dir, manifest):
        return out_dir
    if out_dir.exists():
        old = _read_manifest(out_dir)
        is_ours = isinstance(old, dict) and old.get("generator") == manifest["generator"]
        if not is_ours and any(out_dir.iterdir()):
            raise DataError(
                f"{out_dir}: exists and is not a synthetic-spine cache (no matching {MANIFEST}); "
                f"refusing to overwrite it: choose another cache_dir"
            )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    log.info("building synthetic spine data in %s (%s)", out_dir, params)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _render_split(tmp, "train", params["num_train"], params)
        _render_split(tmp, "test", params["num_test"], params)
        # The manifest goes last: a folder with a manifest is a complete folder.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        trash = None
        if out_dir.exists():
            trash = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out_dir, trash)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            # Another process finished the same build first: keep its result if it matches.
            if not _is_complete(out_dir, manifest):
                raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("synthetic spine data built in %.1f s", time.perf_counter() - started)
    return out_dir
