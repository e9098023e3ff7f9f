"""The data an eval run scores: the checkpoint's own, some of its keys changed, or another data group.

* ``eval.py ckpt_path=X``: the data config stored in the checkpoint, as it was trained;
* ``eval.py ckpt_path=X data.test_csv=Y`` (any ``data.<key>=value``): that stored config with this command's
  keys applied, the rest kept;
* ``eval.py ckpt_path=X data=landmarks_csv data.csv=... data.test_csv=...``: another data group whole. What the
  trained network depends on is taken from the checkpoint (:data:`MODEL_KEYS` and the family's input size,
  ``input_size_option``); a different value given on the command line is a :class:`ConfigError` naming both. How
  the network saw its images and how its files were laid out (:data:`LAYOUT_KEYS`) is taken from the checkpoint
  too where the command does not give it: the command's value wins.

The first two need a ``data`` node that accepts any key, which Hydra's struct mode refuses in a YAML config:
eval.yaml's default is ``data=checkpoint``, a node registered in Hydra's ConfigStore with struct off
(:mod:`hrexp.utils.config_store`, by :func:`hrexp.startup.startup` before any config is composed). A whole group
given replaces it, struct as every group (a mistyped key fails in Hydra).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, NoReturn

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from hrexp.data.datamodule import class_default
from hrexp.errors import ConfigError
from hrexp.utils.config_store import CHECKPOINT_DATA, CHECKPOINT_DATA_TARGET

#: Data options the trained network depends on (besides the family's input size, ``input_size_option``):
#: taken from the checkpoint, and a different value given is refused. ``refine_scale``: the coarse-to-fine
#: refiner cuts its patches from the original at that scale; ``num_classes``: the segmentation head's outputs.
MODEL_KEYS = ("refine_scale", "num_classes")
#: How the network saw its images (``keep_aspect``: padded or stretched fit; ``padding``: pose box enlargement;
#: ``eval_max_size`` / ``size_divisor``: segmentation evaluation size and padding) and how its files were laid
#: out (``image_column`` / ``spacing_column`` of a landmark CSV; ``class_names``): taken from the checkpoint
#: when the command does not give them. Not taken: which files (``csv``, ``test_csv``, ``root``, ...), and facts
#: about the images such as ``pixel_spacing`` (a value that does not hold for the new images would give wrong
#: millimetres silently; without it the reader says that the spacing is unknown).
LAYOUT_KEYS = ("keep_aspect", "padding", "eval_max_size", "size_divisor", "image_column", "spacing_column",
               "class_names")

_WHY = {"refine_scale": "the refiner's patches are cut from the original image at this scale",
        "num_classes": "its head has one output per class"}


def checkpoint_data_outside_eval(**_: Any) -> NoReturn:
    """What ``data=checkpoint`` builds outside eval (a training run): an error that says so."""
    raise ConfigError(f"data={CHECKPOINT_DATA} is eval.py's default (the checkpoint's own data); this command "
                      "needs a data option, e.g. data=landmarks_csv data.csv=...")


@dataclass
class EvalData:
    """The data config to score on, and how it came about (for the console and ``summary.json``).

    Attributes:
        config: The data config (plain, resolved).
        choice: The data option to report: the group given whole, or None (the checkpoint's).
        given: This command's ``data.<key>`` values.
        from_checkpoint: The checkpoint's values that a whole group took where it said otherwise.
    """

    config: dict[str, Any]
    choice: str | None = None
    given: dict[str, Any] = field(default_factory=dict)
    from_checkpoint: dict[str, Any] = field(default_factory=dict)


def show(value: Any) -> str:
    """A value as it is written on the command line (``[64,32]``, ``null``, ``true``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)


def same(a: Any, b: Any) -> bool:
    """Equal config values; floats to within 0.5 % (``refine_scale=0.333`` is 1/3), whole numbers exactly."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or not all(isinstance(v, (int, float)) for v in (a, b)):
        return a == b
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return math.isclose(float(a), float(b), rel_tol=5e-3)


def data_class(config: Mapping[str, Any]) -> type | None:
    """The datamodule class of a data config (None when its ``_target_`` does not import)."""
    from hydra.utils import get_class

    try:
        return get_class(str(config.get("_target_")))
    except Exception:  # noqa: BLE001 - a class that does not import is named by the build later
        return None


def model_keys(cls: type | None) -> tuple[str, ...]:
    """The data keys the trained network depends on: the family's input size (``input_size_option``) and
    :data:`MODEL_KEYS`."""
    option = str(getattr(cls, "input_size_option", "data.image_size"))
    return (option.split(".", 1)[1] if option.startswith("data.") else option, *MODEL_KEYS)


def stored_value(stored: Mapping[str, Any], cls: type | None, key: str) -> tuple[bool, Any]:
    """``(found, value)`` of ``key`` in the checkpoint's data config, or its class default (older checkpoints
    stored fewer keys)."""
    if key in stored:
        return True, stored[key]
    default = class_default(cls, key) if cls is not None else inspect.Parameter.empty
    if default is inspect.Parameter.empty:
        return False, None
    return True, list(default) if isinstance(default, tuple) else default


def check_model_keys(given: Mapping[str, Any], stored: Mapping[str, Any], cls: type | None, ckpt_path: str) -> None:
    """A model key given with another value than the checkpoint's is refused, naming both.

    Raises:
        ConfigError: e.g. ``data.image_size=[128,64]`` given; the checkpoint was trained at ``[64,32]``.
    """
    keys = model_keys(cls)
    for key in keys:
        if key not in given:
            continue
        found, old = stored_value(stored, cls, key)
        if found and not same(given[key], old):
            why = _WHY.get(key, "its input size" if key == keys[0] else "")
            raise ConfigError(
                f"data.{key}={show(given[key])}: the checkpoint {ckpt_path} was trained with data.{key}={show(old)}, "
                f"which its network depends on{f' ({why})' if why else ''}; leave data.{key} out to take the "
                f"checkpoint's value"
            )


def command_data_keys() -> set[str] | None:
    """The ``data.<key>`` keys this command's overrides set (``data.scale=[..]``, ``+data.x=..``, ``~data.x``); None
    outside a Hydra app (nothing tells what was given from what a group says)."""
    from hrexp.utils.hydra_runtime import hydra_config

    hydra_cfg = hydra_config()
    if hydra_cfg is None:
        return None
    keys = set()
    for line in hydra_cfg.overrides.task:
        key = str(line).split("=", 1)[0].lstrip("+~")
        if key.startswith("data."):
            keys.add(key.split(".")[1])
    return keys


def plain(node: Any, option: str) -> dict[str, Any]:
    """``node`` as a resolved dict (in this command's context, e.g. its ``paths``).

    Raises:
        ConfigError: A required key left ``???`` (``data.csv`` of ``data=landmarks_csv``), by name.
    """
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", None) or "a key"
        raise ConfigError(f"{key}: data={option} needs it (give {key}=...)") from err


def eval_data(stored: Mapping[str, Any], given: DictConfig | None, *, ckpt_path: str, stored_choice: str | None,
              choice: str | None = None, command_keys: set[str] | None = None) -> EvalData | None:
    """The data config of an eval run (see the module docstring); None: the checkpoint's own, untouched.

    Args:
        stored: The checkpoint's data config (today's class paths; resolved here only when data is given).
        given: This command's ``data`` node (``data=checkpoint`` with any ``data.<key>``, or a whole group).
        ckpt_path: The checkpoint, named in errors.
        stored_choice: The checkpoint's data option (``synthetic_spine``), named in errors.
        choice: The data option this command composed (a whole group's name).
        command_keys: The ``data.<key>`` keys given on the command line (:func:`command_data_keys`); None:
            unknown (outside Hydra), and a whole group takes every key from the checkpoint.

    Raises:
        ConfigError: A key the checkpoint's datamodule does not have, a required key missing, or a model key
            (input size, ``refine_scale``, ``num_classes``) given with another value than the checkpoint's.
    """
    if given is None:
        return None
    placeholder = given.get("_target_") in (None, CHECKPOINT_DATA_TARGET)
    if placeholder and not set(given) - {"_target_"}:
        return None
    stored = plain(stored, str(stored_choice)) if OmegaConf.is_config(stored) else dict(stored)
    stored_cls = data_class(stored)
    if placeholder:
        keys = {k: v for k, v in plain(given, CHECKPOINT_DATA).items() if k != "_target_"}
        # The stored keys, not the class's: a format may fix a family argument (the synthetic set its test_csv).
        known = set(stored) - {"_target_"}
        unknown = sorted(set(keys) - known)
        if unknown:
            name = stored_cls.__name__ if stored_cls is not None else stored.get("_target_")
            raise ConfigError(
                f"data.{unknown[0]}: the checkpoint's data (data={stored_choice}, {name}) has no such option; its "
                f"options are {', '.join(sorted(known))}. To score other data give a whole data group, e.g. "
                f"data=landmarks_csv data.csv=... data.test_csv=..."
            )
        check_model_keys(keys, stored, stored_cls, ckpt_path)
        merged = OmegaConf.to_container(OmegaConf.merge(stored, keys))
        return EvalData(merged, None, keys)

    group = plain(given, choice or "...")
    new_options = set(group)  # a group lists its keys (a format may fix some of its family's arguments)
    given_keys = set() if command_keys is None else command_keys & set(group)
    check_model_keys({k: group[k] for k in given_keys}, stored, stored_cls, ckpt_path)
    taken: dict[str, Any] = {}
    for key in (*model_keys(stored_cls), *LAYOUT_KEYS):
        if key not in new_options or key in given_keys:
            continue
        found, old = stored_value(stored, stored_cls, key)
        if not found:
            continue
        if key not in group or not same(group[key], old):
            taken[key] = old
        group[key] = old
    return EvalData(group, choice, {k: group[k] for k in sorted(given_keys)}, taken)
