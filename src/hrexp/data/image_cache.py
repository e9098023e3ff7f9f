"""A disk cache of images already reduced to the working resolution.

A full-size X-ray (up to 2400x3800 JPG) takes tens of milliseconds to decode, at every epoch, for a
network input of a few hundred pixels. :func:`~hrexp.data.transforms.warp_image` first reduces such
an image by an integer factor (``INTER_AREA``) anyway; this cache stores that reduced image once, so
later epochs (and other runs at the same input size) read a small array instead of decoding the
original. An entry is keyed by the file's resolved path, byte size and modification time and by the
factor: a changed file gets a new entry, never a stale one. Entries are written atomically (temp file
and rename), so DataLoader workers and parallel runs can share the folder.

Pixels are stored as uint16 (``round(v * 65535)`` of the float image in [0, 1]): a quantisation step
of 1.5e-5, far below 8-bit X-ray precision, at half the size of float32.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np

from hrexp.data.images import load_image
from hrexp.data.transforms import pixel_scaling, reduced_size

VERSION = 1  # part of every key: bump when the stored content changes meaning


class ShrunkImageCache:
    """Images reduced by an integer factor, decoded once and read back from ``folder``.

    Args:
        folder: Cache folder (created on first write); ``data.image_cache`` in the configs.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def key(self, path: Path, factor: int) -> str:
        st = path.stat()
        text = f"{VERSION}|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{factor}"
        return hashlib.sha1(text.encode()).hexdigest()

    def entry(self, path: str | Path, factor: int) -> Path:
        key = self.key(Path(path), factor)
        return self.folder / key[:2] / f"{key}.npy"

    def load(self, path: str | Path, size_hw: tuple[int, int], factor: int) -> tuple[np.ndarray, np.ndarray]:
        """The image of ``path`` (of size ``size_hw``) reduced by ``factor``, and the matrix from original
        to reduced pixels. Decodes and stores it on a miss.

        Raises:
            DataError: The file cannot be decoded (from ``load_image``).
            ValueError: The decoded size differs from ``size_hw`` (the file changed after validation).
        """
        small_hw = reduced_size(size_hw, factor)
        entry = self.entry(path, factor)
        image = None
        if entry.is_file():
            try:
                stored = np.load(entry, allow_pickle=False)
                if stored.shape[:2] == small_hw:
                    image = stored.astype(np.float32) * np.float32(1.0 / 65535.0)
            except (OSError, ValueError):  # a damaged entry is rebuilt
                image = None
        if image is None:
            full = load_image(path)
            if tuple(full.shape[:2]) != tuple(size_hw):
                raise ValueError(f"{path}: decoded size {full.shape[:2]} differs from the validated size {size_hw}")
            image = cv2.resize(full, (small_hw[1], small_hw[0]), interpolation=cv2.INTER_AREA)
            stored = np.round(np.clip(image, 0.0, 1.0) * 65535.0).astype(np.uint16)
            self._write(entry, stored)
            image = stored.astype(np.float32) * np.float32(1.0 / 65535.0)
        return image, pixel_scaling(size_hw, small_hw)

    @staticmethod
    def _write(entry: Path, array: np.ndarray) -> None:
        temp = entry.with_name(f".{entry.stem}.{os.getpid()}.tmp.npy")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            np.save(temp, array, allow_pickle=False)
            os.replace(temp, entry)
        except OSError:  # a full or read-only cache disk costs speed, not the run
            try:
                temp.unlink(missing_ok=True)
            except OSError:
                pass
