"""Keypoint metadata: names, flip pairs, OKS sigmas, skeleton and body halves of a keypoint set.

Nothing in hrexp assumes COCO's 17 person keypoints: a pose dataset's metadata comes from its
annotation file (a COCO category's ``keypoints`` names and ``skeleton``, plus the optional non-standard
fields ``flip_pairs``, ``sigmas`` and ``upper_body``) or from a metadata file (YAML or JSON) with the
same fields, e.g. ``src/hrexp/data/pose/metadata/coco_person.yaml``::

    names: [nose, left_eye, right_eye, ...]
    flip_pairs: [[left_eye, right_eye], ...]   # names (or 0-based indices)
    sigmas: [0.026, 0.025, ...]                # one per keypoint (OKS)
    skeleton: [[left_ankle, left_knee], ...]   # names (or 0-based indices)
    upper_body: [nose, left_eye, ...]          # optional: enables half-body augmentation

Every inconsistency (a pair naming a missing keypoint, a sigma count that differs from the keypoint
count, ...) is a :class:`~hrexp.data.errors.DataError` that names the file and the field, raised
when the datamodule is set up, i.e. before training starts.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from hrexp.data.errors import DataError

METADATA_DIR = Path(__file__).resolve().parent / "metadata"


@dataclass(frozen=True)
class KeypointMeta:
    """What a keypoint task needs to know about a keypoint set.

    Attributes:
        names: The K keypoint names, in index order.
        flip_pairs: 0-based index pairs swapped by a horizontal flip (empty: no flip).
        sigmas: Per-keypoint OKS sigmas (empty when unknown: OKS AP then cannot be computed).
        skeleton: 0-based index pairs joined when drawing.
        upper_body: Indices of the upper-body keypoints (empty: no half-body augmentation).
        source: Where the metadata came from, for messages.
    """

    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    sigmas: tuple[float, ...] = ()
    skeleton: tuple[tuple[int, int], ...] = ()
    upper_body: tuple[int, ...] = ()
    source: str = ""

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    @property
    def lower_body(self) -> tuple[int, ...]:
        """Every keypoint not in :attr:`upper_body` (empty when no halves are defined)."""
        if not self.upper_body:
            return ()
        upper = set(self.upper_body)
        return tuple(i for i in range(self.num_keypoints) if i not in upper)

    def as_dict(self) -> dict[str, Any]:
        """Plain-Python form (for ``dataset_meta`` and run records)."""
        return {
            "num_keypoints": self.num_keypoints,
            "keypoint_names": list(self.names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "sigmas": list(self.sigmas),
            "skeleton": [list(p) for p in self.skeleton],
            "upper_body": list(self.upper_body),
        }


def _index_of(value: Any, names: Sequence[str], where: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{where}: expected a keypoint name or 0-based index, got {value!r}")
    if isinstance(value, int):
        if not 0 <= value < len(names):
            raise DataError(f"{where}: index {value} is outside 0..{len(names) - 1} ({len(names)} keypoints)")
        return value
    if isinstance(value, str):
        if value not in names:
            raise DataError(f"{where}: {value!r} is not a keypoint name; the keypoints are {list(names)}")
        return names.index(value)
    raise DataError(f"{where}: expected a keypoint name or 0-based index, got {value!r}")


def parse_pairs(raw: Any, names: Sequence[str], where: str) -> tuple[tuple[int, int], ...]:
    """Index pairs from pairs of keypoint names or 0-based indices; ``where`` names the field in messages."""
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise DataError(f"{where}: expected a list of pairs, got {type(raw).__name__}")
    out = []
    for n, pair in enumerate(raw):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f"{where}[{n}]: expected a pair of keypoint names or indices, got {pair!r}")
        a, b = (_index_of(p, names, f"{where}[{n}]") for p in pair)
        if a == b:
            raise DataError(f"{where}[{n}]: a pair needs two different keypoints, got {pair!r}")
        out.append((a, b))
    return tuple(out)


def parse_flip_pairs(raw: Any, names: Sequence[str], where: str) -> tuple[tuple[int, int], ...]:
    """Flip pairs (see :func:`parse_pairs`); a keypoint may belong to one pair only."""
    pairs = parse_pairs(raw, names, where)
    used = [i for pair in pairs for i in pair]
    if len(used) != len(set(used)):
        raise DataError(f"{where}: a keypoint appears in more than one pair")
    return pairs


def build_meta(raw: Mapping[str, Any], source: str, index_base: int = 0) -> KeypointMeta:
    """Validate a metadata mapping (from a file or a COCO category) into a :class:`KeypointMeta`.

    Args:
        raw: ``names`` (or COCO's ``keypoints``) and the optional fields of the module docstring.
        source: File (and field) the mapping came from, used in every message.
        index_base: Base of integer indices in ``skeleton`` (COCO categories count from 1).

    Raises:
        DataError: A field that cannot work, named with ``source``.
    """
    names_raw = raw.get("names", raw.get("keypoints"))
    if not isinstance(names_raw, (list, tuple)) or not names_raw:
        raise DataError(f"{source}: field names: expected a non-empty list of keypoint names")
    names = [str(n) for n in names_raw]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"{source}: field names: duplicate keypoint names {duplicates}")

    flip_pairs = parse_flip_pairs(raw.get("flip_pairs"), names, f"{source}: field flip_pairs")

    sigmas_raw = raw.get("sigmas") or []
    if not isinstance(sigmas_raw, (list, tuple)):
        raise DataError(f"{source}: field sigmas: expected a list of numbers")
    if sigmas_raw and len(sigmas_raw) != len(names):
        raise DataError(
            f"{source}: field sigmas: {len(sigmas_raw)} sigmas for {len(names)} keypoints; expected one per keypoint"
        )
    sigmas = []
    for n, s in enumerate(sigmas_raw):
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
            raise DataError(f"{source}: field sigmas[{n}] ({names[n]}): expected a positive number, got {s!r}")
        sigmas.append(float(s))

    skeleton_raw = raw.get("skeleton") or []
    if index_base and skeleton_raw:
        skeleton_raw = [[p - index_base if isinstance(p, int) else p for p in pair] for pair in skeleton_raw]
    skeleton = parse_pairs(skeleton_raw, names, f"{source}: field skeleton")

    upper_raw = raw.get("upper_body") or []
    if not isinstance(upper_raw, (list, tuple)):
        raise DataError(f"{source}: field upper_body: expected a list of keypoint names or indices")
    upper = tuple(sorted({_index_of(v, names, f"{source}: field upper_body") for v in upper_raw}))
    if upper and len(upper) == len(names):
        raise DataError(f"{source}: field upper_body: lists every keypoint, so there is no lower body")
    return KeypointMeta(
        names=tuple(names),
        flip_pairs=flip_pairs,
        sigmas=tuple(sigmas),
        skeleton=skeleton,
        upper_body=upper,
        source=source,
    )


def resolve_metadata_path(value: str | Path) -> Path:
    """A metadata file path, or the name of a file shipped in ``hrexp/data/pose/metadata`` (``coco_person``)."""
    path = Path(value)
    if not path.suffix and path.parent == Path("."):
        shipped = METADATA_DIR / f"{value}.yaml"
        if shipped.is_file():
            return shipped
        available = sorted(p.stem for p in METADATA_DIR.glob("*.yaml"))
        raise DataError(f"metadata={value!r}: no such file, and not a shipped metadata name ({available})")
    if not path.is_file():
        raise DataError(f"metadata={str(value)!r}: metadata file not found")
    return path


def load_meta_file(value: str | Path) -> KeypointMeta:
    """Read and validate a YAML or JSON metadata file (or a shipped one by name)."""
    path = resolve_metadata_path(value)
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh) if path.suffix.lower() == ".json" else yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: not a readable metadata file ({exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: expected a mapping with names, flip_pairs, sigmas, skeleton")
    return build_meta(raw, str(path))


def merge_with_annotations(meta: KeypointMeta | None, category: Mapping[str, Any], source: str) -> KeypointMeta:
    """The metadata of a dataset: the metadata file when given, checked against the annotation file.

    Without a metadata file, the annotation file's category supplies everything (names, skeleton with
    COCO's 1-based indices, and the optional ``flip_pairs`` / ``sigmas`` / ``upper_body`` fields). With
    one, a category that also names its keypoints must name the same ones in the same order.
    """
    category_names = [str(n) for n in (category.get("keypoints") or [])]
    where = f"{source}: field categories[id={category.get('id')}]"
    if meta is None:
        if not category_names:
            raise DataError(
                f"{where}.keypoints: the category names no keypoints, and no metadata file was given; set "
                f"data.metadata to a file with names, flip_pairs, sigmas and skeleton"
            )
        return build_meta(category, where, index_base=1)
    if category_names and category_names != list(meta.names):
        raise DataError(
            f"{where}.keypoints: the annotation file's keypoint names {category_names} differ from "
            f"{meta.source}'s names {list(meta.names)}"
        )
    return meta


def load_meta(value: str | Path | Mapping[str, Any] | None) -> KeypointMeta | None:
    """``data.metadata``: None, a file path, a shipped name, or an inline mapping."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return build_meta(dict(value), "data.metadata")
    return load_meta_file(value)
