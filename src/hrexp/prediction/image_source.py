"""The images to predict: the ``input`` option expanded to files, read one by one in the loader.

Only the file LIST is built up front (cheap for any folder size); pixels are decoded in the
DataLoader's workers, one image at a time, so memory does not grow with the folder. A file that
cannot be used (missing, not an image, cut short) does not stop the run: its item says why, the
batch carries it in ``skipped``, and the command lists it in ``skipped.csv``.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from hrexp.data.errors import DataError
from hrexp.data.images import IMAGE_EXTENSIONS, load_image, read_image_size
from hrexp.errors import ConfigError

GLOB_CHARACTERS = "*?["
EXPECTED_INPUT = "an image file, a folder of images, a glob such as 'images/*.png' (** for sub-folders), or a list of these"


@dataclass
class InputFiles:
    """What ``input`` named: the files to read (sorted, each once) and those set aside already."""

    files: list[Path]
    skipped: list[tuple[str, str]]  # (file, reason)


def _is_glob(text: str) -> bool:
    return any(c in text for c in GLOB_CHARACTERS)


def expand_input(spec: str | Sequence[str]) -> InputFiles:
    """The files of ``input``: an image file, a folder (its image files, by extension), a glob, or a list.

    A folder's files of another extension are listed as skipped (so nothing in it goes unmentioned);
    hidden files (``.DS_Store``) are ignored. A glob's matches and named files are all read, whatever
    their extension: the decoder decides. In a list, a name that does not exist is skipped as missing.

    Raises:
        ConfigError: ``input`` is empty, names nothing that exists, or no image file at all.
    """
    entries = [spec] if isinstance(spec, (str, Path)) else list(spec or [])
    entries = [str(e) for e in entries if str(e).strip()]
    if not entries:
        raise ConfigError(f"input={spec!r}: expected {EXPECTED_INPUT}")
    files: list[Path] = []
    skipped: list[tuple[str, str]] = []
    for entry in entries:
        path = Path(entry).expanduser()
        if _is_glob(entry):
            files += [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
        elif path.is_dir():
            for child in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
                if child.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(child)
                else:
                    skipped.append((str(child), f"not an image file name: extension {child.suffix or '(none)'!r} is "
                                                f"none of {list(IMAGE_EXTENSIONS)}"))
        elif path.is_file():
            files.append(path)
        elif len(entries) > 1:
            skipped.append((entry, "missing: no such file or folder"))
        else:
            raise ConfigError(f"input={entry!r}: no such file or folder; expected {EXPECTED_INPUT}")
    unique = list(dict.fromkeys(files))  # a file named twice (a folder and a glob over it) is predicted once
    if not unique:
        found = f" (found only: {', '.join(f for f, _ in skipped[:3])}{' ...' if len(skipped) > 3 else ''})" if skipped else ""
        raise ConfigError(f"input={spec if isinstance(spec, str) else list(entries)!r}: matches no image file{found}; "
                          f"expected {EXPECTED_INPUT}")
    return InputFiles(unique, skipped)


class UnreadableImage(Exception):
    """A file that cannot be predicted; the message is the reason written to ``skipped.csv``."""


def read_original(path: Path) -> np.ndarray:
    """The decoded image (``load_image``: float32 in [0, 1], ``[H, W]`` gray or ``[H, W, 3]`` RGB), checked whole.

    The header is read and a JPEG/PNG's end marker checked first (``read_image_size``, as the datamodules
    validate their data): OpenCV decodes a file cut short without an error, grey below the cut.

    Raises:
        UnreadableImage: missing, not an image, truncated, or a decoded size that differs from the header.
    """
    if not path.is_file():
        raise UnreadableImage("missing: no such file")
    try:
        hw = read_image_size(path)
    except UnidentifiedImageError:
        raise UnreadableImage("not an image: the content is no image format that can be read") from None
    except Image.DecompressionBombError as exc:
        raise UnreadableImage(f"too large to decode safely: {exc}") from None
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "unreadable"
        raise UnreadableImage(f"{reason}: {exc}") from None
    try:
        image = load_image(path)
    except DataError as exc:
        raise UnreadableImage(f"cannot decode: {exc}") from None
    if tuple(image.shape[:2]) != tuple(hw):
        raise UnreadableImage(f"decoded size {image.shape[:2]} differs from the header's (height, width) {hw}")
    return image


def to_picture(image: np.ndarray) -> np.ndarray:
    """A decoded image (float in [0, 1], gray or RGB) as ``[H, W, 3]`` uint8 RGB, for drawing."""
    picture = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(picture[:, :, None], 3, axis=2) if picture.ndim == 2 else picture


# prepare(image, path) -> the network samples of one image (one per person box for pose; may be none)
Prepare = Callable[[np.ndarray, Path], list[dict[str, Any]]]


class ImageFiles(Dataset):
    """One item per file: its samples prepared for the network, or the reason it is skipped.

    Args:
        files: The files (from :func:`expand_input`).
        prepare: The family's evaluation-time preprocessing (:mod:`hrexp.prediction.preprocess`).
        keep_picture: Also return the image as uint8 RGB (for overlays).
    """

    def __init__(self, files: Sequence[Path], prepare: Prepare, keep_picture: bool = False):
        self.files = list(files)
        self.prepare = prepare
        self.keep_picture = keep_picture

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.files[index]
        try:
            image = read_original(path)
        except UnreadableImage as exc:
            return {"file": str(path), "index": index, "error": str(exc)}
        return {"file": str(path), "index": index, "size": tuple(int(s) for s in image.shape[:2]),
                "samples": self.prepare(image, path), "picture": to_picture(image) if self.keep_picture else None}


@dataclass
class ImageBatch:
    """A batch of images: the readable ones, their samples collated, and the skipped files.

    ``owner[j]`` is the position in ``images`` of collated sample ``j`` (pose: several per image).
    """

    images: list[dict[str, Any]] = field(default_factory=list)  # file, index, size, picture, num_samples
    inputs: dict[str, Any] | None = None
    owner: list[int] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def collate_images(items: Sequence[dict[str, Any]], collate_samples: Callable[[list], dict[str, Any]]) -> ImageBatch:
    """The DataLoader's collate: every readable image's samples through ``collate_samples``, skipped ones aside.

    Module-level (with ``functools.partial``), so worker processes can pickle it.
    """
    batch = ImageBatch()
    samples: list[dict[str, Any]] = []
    for item in items:
        if "error" in item:
            batch.skipped.append((item["file"], item["error"]))
            continue
        position = len(batch.images)
        batch.images.append({"file": item["file"], "index": item["index"], "size": item["size"],
                             "picture": item["picture"], "num_samples": len(item["samples"])})
        samples += item["samples"]
        batch.owner += [position] * len(item["samples"])
    if samples:
        batch.inputs = collate_samples(samples)
    return batch


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (other values as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def to_cpu(value: Any) -> Any:
    """Predictions on the CPU: tensors moved, lists / tuples / dicts of them walked (a task's ``predict`` may
    give one tensor per image, as the blob task's centres)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value
