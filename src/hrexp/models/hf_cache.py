"""Timm weights in the local Hugging Face cache, for ``model.pretrained`` of
:class:`~hrexp.models.timm_backbone.TimmBackbone`: ``true`` (timm's default weights for the
model), a timm name with a tag (``resnet50.a1_in1k``) or a Hugging Face repo id
(``timm/resnet50.a1_in1k``, ``hf-hub:`` prefix optional). :func:`resolve_hf_cached_weights`
finds the file; there is never a download. Reading and loading it is
:mod:`hrexp.models.pretrained`'s job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hrexp.models.pretrained import OPTION

# File names timm's Hugging Face repos use, safest format first.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _as_option(value: Any) -> str:
    """A value as written in the YAML config (``true``, not ``True``; strings quoted)."""
    return str(value).lower() if isinstance(value, bool) or value is None else repr(value)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time.

    huggingface_hub computes ``constants.HF_HUB_CACHE`` once, at import; reading the variables
    again honours changes made since (tests, notebooks). Order as in huggingface_hub:
    ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``, its default.
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_repo_for(
    pretrained: bool | str, model_name: str, option: str = OPTION
) -> tuple[str, tuple[str, ...]]:
    """Which Hugging Face repo (and files in it) ``model.pretrained`` names for a timm model.

    Args:
        pretrained: ``True`` (the default weights of ``model_name``), a timm name with a tag
            (``resnet50.a1_in1k``), or a repo id (``timm/resnet50.a1_in1k``, ``hf-hub:`` prefix
            optional, ``@revision`` suffix allowed).
        model_name: The timm model being built.
        option: The config option to name in errors.

    Returns:
        The repo id (with any ``@revision``) and the file names to look for, in order.

    Raises:
        ValueError: The name is not a timm model name of the same architecture, or timm knows no
            Hugging Face weights for it.
    """
    from timm.models import get_pretrained_cfg
    from timm.models._registry import get_arch_name

    shown = f"{option}={_as_option(pretrained)}"
    if isinstance(pretrained, str):
        name = pretrained.removeprefix("hf-hub:")
        if "/" in name:
            return name, HF_WEIGHT_FILES
    else:
        name = model_name
    if get_arch_name(name) != get_arch_name(model_name):
        raise ValueError(
            f"{shown}: names weights of architecture {get_arch_name(name)!r}, but "
            f"the model is {model_name!r}; use a tag of the same architecture (e.g. "
            f"{get_arch_name(model_name)}.<tag>), a Hugging Face repo id or a local file"
        )
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except RuntimeError as err:
        raise ValueError(
            f"{shown}: timm knows no such pretrained weights: {err}"
        ) from err
    if not cfg.hf_hub_id:
        raise ValueError(
            f"{shown}: timm has no Hugging Face weights for {name!r} (only "
            f"{cfg.url or cfg.file or 'none'}); pass a local weights file instead: "
            f"{option}=/path/to/weights.safetensors"
        )
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES
    return cfg.hf_hub_id, files


def resolve_hf_cached_weights(pretrained: bool | str, model_name: str, option: str = OPTION) -> Path:
    """Finds timm weights in the local Hugging Face cache, never touching the network.

    Args:
        pretrained: See :func:`hf_repo_for`.
        model_name: The timm model being built.
        option: The config option to name in errors.

    Returns:
        The cached weights file.

    Raises:
        FileNotFoundError: The weights are not in the cache; the message names the cache folder
            and how to pass a local file instead.
        ValueError: See :func:`hf_repo_for`.
    """
    from huggingface_hub import try_to_load_from_cache

    repo, files = hf_repo_for(pretrained, model_name, option)
    repo_id, _, revision = repo.partition("@")
    cache = hf_cache_dir()
    for filename in files:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision or None)
        if isinstance(found, str):  # else None, or a marker that the file is known to be absent
            return Path(found)
    raise FileNotFoundError(
        f"{option}={_as_option(pretrained)}: no weights for timm model {model_name!r} in the local "
        f"Hugging Face cache: looked for {' or '.join(files)} of repo {repo!r} in {cache} (set by "
        "HF_HUB_CACHE / HF_HOME). There is no hub access here (HF_HUB_OFFLINE), so nothing is "
        "downloaded. Copy the repo into that cache from a machine with internet (e.g. "
        f"`hf download {repo_id}`), or pass a local weights file instead: "
        f"{option}=/path/to/weights.safetensors (.pth / .pt also work)."
    )
