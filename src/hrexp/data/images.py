"""Reading image files: decoded pixels for the datasets, header sizes for the checks before training."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from hrexp.data.errors import DataError

# What counts as an image file (folder listings, and guessing which CSV column holds image paths).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def load_image(path: str | Path) -> np.ndarray:
    """Decodes an image to float32 in [0, 1]: ``[H, W]`` for gray, ``[H, W, 3]`` RGB otherwise.

    ``IMREAD_UNCHANGED`` keeps gray images single-channel (warping one channel is 3x cheaper; the
    transform replicates it after the warp) and keeps 16-bit X-rays at full depth; it also ignores
    EXIF orientation, like the PIL header read that validation used for the size.

    Raises:
        DataError: The file cannot be decoded.
    """
    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: cannot decode the image (missing, truncated or not an image)")
    if image.ndim == 3:
        channels = image.shape[2]
        if channels == 1:
            image = image[:, :, 0]
        elif channels == 2:  # gray + alpha
            image = image[:, :, 0]
        elif channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        else:
            image = cv2.cvtColor(image[:, :, :4], cv2.COLOR_BGRA2RGB)
    if image.dtype == np.uint8:
        return image.astype(np.float32) * (1.0 / 255.0)
    if image.dtype == np.uint16:
        return image.astype(np.float32) * (1.0 / 65535.0)
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32)
    raise DataError(f"{path}: unsupported pixel type {image.dtype}")


# A JPEG ends with the EOI marker, a PNG with its IEND chunk: a file cut short (an interrupted copy)
# lacks them. OpenCV would decode such a file without an error, grey below the cut.
_END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
_TAIL_BYTES = 4096  # some writers append padding or metadata after the marker


def read_image_size(path: Path) -> tuple[int, int]:
    """Reads ``(height, width)`` from the image header (no pixel decoding), after checking that a
    JPEG or PNG file is whole (its end marker is there).

    Raises:
        FileNotFoundError: The file does not exist.
        OSError / UnidentifiedImageError: The file is not a readable image, or is truncated (the
            message says so).
    """
    with Image.open(path) as image:
        width, height = image.size
        marker = _END_MARKERS.get(image.format or "")
    if marker is not None:
        with open(path, "rb") as fh:
            fh.seek(max(0, Path(path).stat().st_size - _TAIL_BYTES))
            if marker not in fh.read():
                raise OSError(f"the {Image.registered_extensions().get(Path(path).suffix.lower(), 'image')} file is "
                              f"truncated (no end marker): the file was cut short")
    return int(height), int(width)
