"""Pretrained weights for backbones (``model.pretrained``): read, unwrap, map, load, report.

Accepted values of ``model.pretrained`` (the backbones call :func:`check_pretrained_file`,
:func:`~hrexp.models.hf_cache.resolve_hf_cached_weights` and :func:`load_pretrained` with them):

- ``null`` / ``false``: random init.
- A local ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt`` file, read with
  ``torch.load(map_location="cpu", weights_only=True)`` (tensors and plain containers only: a file
  holding arbitrary pickled objects is refused, never executed), or a ``.safetensors`` file.
  The state dict may be raw or wrapped (``{"state_dict": ...}``, ``{"model": ...}``, Lightning
  checkpoints); known prefixes (``module.``, ``_orig_mod.``, ``model.``, ``backbone.``) are
  stripped, see :func:`strip_known_prefixes`.
- For :class:`~hrexp.models.timm_backbone.TimmBackbone` only: ``true`` (timm's default weights
  for the model), a timm name with a tag (``resnet50.a1_in1k``) or a Hugging Face repo id
  (``timm/resnet50.a1_in1k``, ``hf-hub:`` prefix optional). These are looked up in the local
  Hugging Face cache only (:mod:`hrexp.models.hf_cache`); there is never a download.

Every load logs ONE line on the ``hrexp.models.pretrained`` logger: WARNING when a backbone key
is missing from the file or a file key is unexpected, INFO otherwise, with counts and the first
few names; keys dropped by the key mapping (heads, modules the backbone does not have) are
counted separately, per top-level module. A tensor whose shape differs is an error.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

log = logging.getLogger(__name__)

OPTION = "model.pretrained"
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
WEIGHT_SUFFIXES = (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)
# Containers that checkpoints commonly put the state dict under (Lightning and mmpose use
# "state_dict", plain PyTorch training scripts "model" or "model_state_dict").
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes added by wrappers around the backbone: DDP ("module."), torch.compile ("_orig_mod."),
# a LightningModule or a wrapper attribute ("model."), hrexp's own LightningModule ("backbone.").
KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.")
_NAMES_SHOWN = 5


class LoadReport(NamedTuple):
    """What loading a state dict into a backbone did.

    Attributes:
        missing_keys: Backbone keys absent from the state dict (left at their current values).
        unexpected_keys: Kept keys the backbone does not have.
        dropped_keys: Keys removed before loading by the key mapping (non-backbone parameters).
    """

    missing_keys: list[str]
    unexpected_keys: list[str]
    dropped_keys: list[str]


def is_disabled(pretrained: Any) -> bool:
    """Whether ``pretrained`` means random init (``None``, ``False`` or an empty string)."""
    return pretrained is None or pretrained is False or pretrained == ""


def looks_like_path(value: str | os.PathLike) -> bool:
    """Whether a ``model.pretrained`` string names a file rather than a hub model.

    A value is a path if it has a weights suffix, starts like a path (``/``, ``.``, ``~``) or
    exists. Hub names (``resnet50.a1_in1k``, ``timm/resnet50``) do neither.
    """
    if isinstance(value, os.PathLike):
        return True
    if value.lower().endswith(WEIGHT_SUFFIXES) or value.startswith(("/", ".", "~")):
        return True
    return Path(value).exists()


def check_pretrained_file(path: str | os.PathLike, option: str = OPTION) -> Path:
    """Checks that a weights file exists and has a readable suffix; cheap, so callers run it
    before building the network.

    Args:
        path: The file.
        option: The config option to name in errors.

    Returns:
        The path with ``~`` expanded.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The suffix is not one of :data:`WEIGHT_SUFFIXES`.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(
            f"{option}={str(path)!r}: no such file (looked for {file.absolute()}). Pass an existing "
            f"weights file ({', '.join(WEIGHT_SUFFIXES)}), or {option}=false for random init."
        )
    if file.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(
            f"{option}={str(path)!r}: unknown weights format {file.suffix!r}; expected one of "
            f"{', '.join(WEIGHT_SUFFIXES)}"
        )
    return file


def read_state_dict(path: str | os.PathLike, option: str = OPTION) -> dict[str, torch.Tensor]:
    """Reads a weights file into a flat ``name -> tensor`` dict on the CPU.

    Args:
        path: A ``.safetensors`` file, or a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``,
            ``.ckpt``) holding a state dict, raw or under one of :data:`WRAPPER_KEYS`.
        option: The config option to name in errors.

    Returns:
        The state dict, unwrapped (prefixes are not stripped here).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Unknown suffix; the file holds pickled objects other than tensors and plain
            containers (refused by ``weights_only=True``); it cannot be read; or it holds no
            state dict.
    """
    file = check_pretrained_file(path, option)
    if file.suffix.lower() == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(file), device="cpu")
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{option}={str(path)!r}: not a readable safetensors file: {err}") from err
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses anything but tensors and plain containers: unpickling other
        # objects can run arbitrary code, so the file is not read at all.
        raise ValueError(
            f"{option}={str(path)!r}: refused to load: the file contains pickled Python objects "
            "other than tensors, and it is only read with torch.load(weights_only=True). Re-save "
            "only the weights (torch.save(model.state_dict(), ...) or safetensors) from a trusted "
            f"source. torch says: {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{option}={str(path)!r}: not a readable PyTorch file: {err}") from err
    return unwrap_state_dict(obj, source=f"{option}={str(path)!r}")


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def unwrap_state_dict(obj: Any, source: str = OPTION) -> dict[str, torch.Tensor]:
    """Finds the state dict inside a checkpoint.

    Args:
        obj: A raw state dict, or a mapping with the state dict under one of
            :data:`WRAPPER_KEYS` (nested wrappers too, e.g. ``{"model": {"state_dict": ...}}``).
        source: What to name in errors.

    Returns:
        A plain ``dict`` of tensors.

    Raises:
        ValueError: No mapping of names to tensors was found.
    """
    for _ in range(len(WRAPPER_KEYS) + 1):
        if _is_tensor_dict(obj):
            return dict(obj)
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    found = list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
    raise ValueError(
        f"{source}: no state dict found: expected a mapping of parameter names to tensors, raw or "
        f"under one of {list(WRAPPER_KEYS)}; found {found}"
    )


def strip_known_prefixes(
    state_dict: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Removes wrapper prefixes (:data:`KNOWN_PREFIXES`) from state-dict keys.

    A prefix shared by every key is stripped (repeatedly: ``module.model.x`` -> ``x``). When only
    some keys start with ``backbone.`` (a checkpoint of a whole model, e.g. hrexp's Lightning
    checkpoints with ``backbone.*`` and ``task.*``), those are kept without the prefix and the
    others are dropped.

    Args:
        state_dict: Keys as stored in the file.

    Returns:
        The renamed state dict, and the dropped keys (with the shared prefixes already
        stripped when they were dropped).
    """
    state = dict(state_dict)
    dropped: list[str] = []
    changed = True
    while changed and state:
        changed = False
        for prefix in KNOWN_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
            elif prefix == "backbone." and any(k.startswith(prefix) for k in state):
                dropped += [k for k in state if not k.startswith(prefix)]
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                changed = True
    return state, dropped


def _first(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_NAMES_SHOWN])
    return f" ({shown}{', ...' if len(names) > _NAMES_SHOWN else ''})" if names else ""


def _by_module(names: Iterable[str]) -> str:
    counts = Counter(name.split(".")[0] for name in names)
    return ", ".join(f"{module}: {n}" for module, n in counts.most_common())


def load_state_dict_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    drop_prefixes: tuple[str, ...] = (),
    drop_absent_modules: bool = False,
    option: str = OPTION,
) -> LoadReport:
    """Maps a state dict's keys onto ``module``, checks shapes, loads non-strictly and logs one line.

    Key mapping, in order:
    1. :func:`strip_known_prefixes` (keys outside ``backbone.`` are dropped);
    2. keys starting with one of ``drop_prefixes`` are dropped (e.g. HRNet's heads);
    3. a key absent from ``module`` whose first ``.`` written as ``_`` is present is renamed
       (timm's feature wrappers flatten ``stages.0`` into ``stages_0``);
    4. with ``drop_absent_modules``, keys whose top-level module has no parameters or buffers in
       ``module`` are dropped (what timm's ``features_only`` removed: classifier, unused stages).
    Everything else that ``module`` lacks is unexpected.

    Args:
        module: The network to load into.
        state_dict: Unwrapped state dict (see :func:`unwrap_state_dict`).
        source: What to name in the log line and errors (the file, the hub entry).
        drop_prefixes: Key prefixes that are not part of the backbone.
        drop_absent_modules: Apply rule 4.
        option: The config option to name in errors.

    Returns:
        The :class:`LoadReport`.

    Raises:
        RuntimeError: A tensor's shape differs from the backbone's (the first such key and both
            shapes are named), or no key of the file matches the backbone at all.
    """
    state, dropped = strip_known_prefixes(state_dict)
    target = module.state_dict()
    present_modules = {k.split(".")[0] for k in target}
    kept: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(drop_prefixes):
            dropped.append(key)
            continue
        if key not in target and key.replace(".", "_", 1) in target:
            key = key.replace(".", "_", 1)
        if drop_absent_modules and key.split(".")[0] not in present_modules:
            dropped.append(key)
            continue
        kept[key] = value

    # In the model's order (files may be sorted by name, as safetensors are): the first mismatch
    # named is then the earliest layer that differs.
    mismatched = [k for k in target if k in kept and kept[k].shape != target[k].shape]
    if mismatched:
        key = mismatched[0]
        raise RuntimeError(
            f"{option}: {source} does not fit {type(module).__name__}: shape mismatch for {key!r}: "
            f"file {tuple(kept[key].shape)}, model {tuple(target[key].shape)} "
            f"({len(mismatched)} mismatched tensors in all; a different width or variant?)"
        )
    if not any(k in target for k in kept):
        raise RuntimeError(
            f"{option}: none of the {len(kept)} tensors of {source} matches a key of "
            f"{type(module).__name__} ({len(dropped)} more dropped by the key mapping); is it a "
            f"checkpoint of this architecture? File keys{_first(kept)}; model keys{_first(target)}"
        )

    result = module.load_state_dict(kept, strict=False)
    report = LoadReport(list(result.missing_keys), list(result.unexpected_keys), dropped)
    loaded = len(target) - len(report.missing_keys)
    level = logging.WARNING if report.missing_keys or report.unexpected_keys else logging.INFO
    log.log(
        level,
        "%s: %s <- %s: loaded %d of %d tensors; missing %d%s; unexpected %d%s; dropped by key "
        "mapping %d%s",
        option,
        type(module).__name__,
        source,
        loaded,
        len(target),
        len(report.missing_keys),
        _first(report.missing_keys),
        len(report.unexpected_keys),
        _first(report.unexpected_keys),
        len(dropped),
        f" ({_by_module(dropped)})" if dropped else "",
    )
    return report


def load_pretrained(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    source: str | None = None,
    drop_prefixes: tuple[str, ...] = (),
    drop_absent_modules: bool = False,
    option: str = OPTION,
) -> LoadReport:
    """Reads a weights file and loads it into ``module`` (see :func:`load_state_dict_into`).

    Args:
        module: The network to load into.
        path: The weights file (see :func:`read_state_dict`).
        source: What to name in the log line; defaults to the path.
        drop_prefixes: Key prefixes that are not part of the backbone.
        drop_absent_modules: Drop keys of top-level modules the backbone does not have.
        option: The config option to name in errors.

    Returns:
        The :class:`LoadReport`.
    """
    state_dict = read_state_dict(path, option)
    return load_state_dict_into(
        module,
        state_dict,
        source=source or str(path),
        drop_prefixes=drop_prefixes,
        drop_absent_modules=drop_absent_modules,
        option=option,
    )
