"""Which numeric precision a run computes in: ``trainer.precision=auto`` (the default), the precision of
validation during the fit (``val_precision``), and the inference precision of the end-of-run test
(``test_precision``) and of ``eval.py`` (``precision``).

``auto`` picks ``bf16-mixed`` where the device computes bfloat16 natively (a CUDA GPU that supports it; a
CPU with AVX512-BF16 or AMX, which oneDNN uses: an HRNet step up to 2.7x faster on this project's CPU) and
the input is at least ``MIN_BF16_SIDE`` px on its shorter side; ``32`` elsewhere. Emulated bf16 on an older
CPU is slower than fp32, and oneDNN's bf16 kernels (torch 2.14.1) returned NaN on HRNet's smallest feature
maps at a 64x32 input, never at 128 px or more (docs/results/bf16_check.table.md).

Measuring stays in ``32`` by default, whatever the training precision: validation (and so the checkpoint
chosen on it), the end-of-run test and ``eval.py`` agree. On the ISBI cephalograms bf16 inference cost
0.04-0.08 mm of MRE and 2-4 points of SDR@2mm on each of four checkpoints, where bf16 training cost nothing
measurable (docs/results/precision_table.table.md). ``checkpoint`` (test, eval) or ``fit`` (validation)
score in the training run's precision instead. Each prints what it used.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Any, ContextManager, Sequence

import torch
from lightning.pytorch.plugins.precision import DoublePrecision, MixedPrecision, Precision

from hrexp.errors import ConfigError

AUTO = "auto"
CHECKPOINT = "checkpoint"
FIT = "fit"
# The shorter input side from which ``auto`` trusts bf16 on a CPU (scripts/bf16_check.py: NaN at 64x32,
# finite at 128x64 and more).
MIN_BF16_SIDE = 128


def input_is_small(input_size: Sequence[int] | None) -> bool:
    """Whether an input (height, width) is under ``MIN_BF16_SIDE`` on its shorter side (``None``: unknown, no)."""
    return input_size is not None and min(int(v) for v in input_size) < MIN_BF16_SIDE


# Overrides the detection of native bf16 (1 / 0): for a CPU that oneDNN misjudges, or to check on one machine
# what ``auto`` does on another.
NATIVE_BF16_ENV = "HREXP_NATIVE_BF16"


def native_bf16(accelerator: str = "auto") -> bool:
    """Whether the device a Trainer with ``accelerator`` runs on computes bfloat16 natively (the environment
    variable ``HREXP_NATIVE_BF16=1`` / ``0`` overrides the answer)."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise ConfigError(f"{NATIVE_BF16_ENV}={forced!r}: expected 1 (native bf16) or 0 (not), or unset (ask the device)")
    if str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    if str(accelerator) not in ("auto", "cpu"):
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the oneDNN query
        return False


def resolve_precision(value: object, accelerator: str = "auto", stored: object = None,
                      option: str = "trainer.precision",
                      input_size: Sequence[int] | None = None) -> tuple[object, str]:
    """``(precision for lightning.Trainer, why)``.

    Args:
        value: ``auto``, ``checkpoint`` (``stored``: the training run's) or a Lightning precision (kept).
        accelerator: the Trainer's accelerator option (``auto``, ``cpu``, ``gpu``).
        stored: the training run's ``trainer.precision``, for ``checkpoint``.
        option: the option's name, for messages.
        input_size: the network input (height, width), for ``auto`` on a CPU; ``None``: not known.
    """
    text = str(value)
    if text == CHECKPOINT:
        if stored is None:
            return "32", "checkpoint: the training run did not record its precision; 32"
        chosen, _ = resolve_precision(stored, accelerator, option=option, input_size=input_size)
        return chosen, f"checkpoint: the training run's ({stored}{'' if str(stored) == str(chosen) else f' -> {chosen}'})"
    if text == AUTO:
        if not native_bf16(accelerator):
            return "32", "auto: no native bfloat16 on this device"
        on_gpu = str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        if not on_gpu and input_is_small(input_size):
            assert input_size is not None
            return "32", (f"auto: the {input_size[0]}x{input_size[1]} input is under {MIN_BF16_SIDE} px, where "
                          "oneDNN's bf16 kernels returned NaN (docs/results/bf16_check.table.md)")
        return "bf16-mixed", "auto: the device computes bfloat16 natively"
    if text in ("", "None"):
        raise ConfigError(f"{option}={value!r}: expected auto, 32, bf16-mixed, 16-mixed, 64 ...")
    return value, "as configured"  # as given: Lightning checks it and names it in its message


def precision_plugin(precision: object, device_type: str, option: str = "test_precision") -> Any:
    """Lightning's precision plugin for an inference ``precision`` on ``device_type`` (``cpu`` / ``cuda``):
    what ``Trainer(precision=...)`` would build, so that the end-of-run test can score in another precision
    than the fit (``trainer.strategy.precision_plugin = ...``)."""
    text = str(precision)
    if text in ("32", "32-true"):
        return Precision()
    if text in ("64", "64-true"):
        return DoublePrecision()
    if text in ("bf16-mixed", "bf16"):
        return MixedPrecision("bf16-mixed", device=device_type)
    if text in ("16-mixed", "16"):
        if device_type == "cpu":  # as Lightning does: no fp16 autocast on a CPU
            return MixedPrecision("bf16-mixed", device="cpu")
        return MixedPrecision("16-mixed", device=device_type, scaler=None)
    raise ConfigError(f"{option}={precision!r}: expected checkpoint, auto, 32, bf16-mixed, 16-mixed or 64")


class MixedPrecisionFloat32Validation(MixedPrecision):
    """Lightning's mixed precision for training steps; validation without autocast (float32), so that the
    values the fit logs and chooses checkpoints on are the ones ``eval.py`` computes."""

    def val_step_context(self) -> ContextManager:
        return nullcontext()


def fit_precision_plugin(precision: object, device_type: str, val_precision: object = "32") -> Any:
    """The precision plugin of a fit in ``precision`` (resolved), with validation in ``val_precision``:
    ``32`` (float32 whatever the training precision; the default) or ``fit`` (the training precision).
    ``None`` where Lightning's own plugin for ``precision`` already does that (no mixed precision)."""
    text = str(val_precision)
    if text not in ("32", FIT):
        raise ConfigError(f"val_precision={val_precision!r}: expected 32 (validate in float32, as eval.py scores) "
                          "or fit (the training precision)")
    plugin = precision_plugin(precision, device_type, option="trainer.precision")
    if text == FIT or not isinstance(plugin, MixedPrecision):
        return None
    return MixedPrecisionFloat32Validation(plugin.precision, device=plugin.device, scaler=plugin.scaler)
