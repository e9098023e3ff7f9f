"""Which numeric precision a run computes in: ``trainer.precision=auto``, and the inference precision of the
end-of-run test (``test_precision``) and of ``eval.py`` (``precision``).

``auto`` picks ``bf16-mixed`` where the device computes bfloat16 natively (a CUDA GPU that supports it; a
CPU with AVX512-BF16 or AMX, which oneDNN uses: an HRNet step 2.7x faster on this project's CPU) and
``32`` elsewhere (bf16 emulated on an older CPU is slower than fp32). Inference defaults to ``32`` in
both the end-of-run test and ``eval.py``, so they agree, whatever the training precision: on the ISBI
cephalograms bf16 inference cost 0.04-0.08 mm of MRE and 2-4 points of SDR@2mm on each of four
checkpoints, where bf16 training cost nothing measurable (docs/results/precision_table.table.md).
``checkpoint`` scores in the training run's precision instead. Both print what they used.
"""

from __future__ import annotations

from typing import Any

import torch

from hrexp.errors import ConfigError

AUTO = "auto"
CHECKPOINT = "checkpoint"


def native_bf16(accelerator: str = "auto") -> bool:
    """Whether the device a Trainer with ``accelerator`` runs on computes bfloat16 natively."""
    if str(accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    if str(accelerator) not in ("auto", "cpu"):
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the oneDNN query
        return False


def resolve_precision(value: object, accelerator: str = "auto", stored: object = None,
                      option: str = "trainer.precision") -> tuple[object, str]:
    """``(precision for lightning.Trainer, why)``.

    Args:
        value: ``auto``, ``checkpoint`` (``stored``: the training run's) or a Lightning precision (kept).
        accelerator: the Trainer's accelerator option (``auto``, ``cpu``, ``gpu``).
        stored: the training run's ``trainer.precision``, for ``checkpoint``.
        option: the option's name, for messages.
    """
    text = str(value)
    if text == CHECKPOINT:
        if stored is None:
            return "32", "checkpoint: the training run did not record its precision; 32"
        chosen, _ = resolve_precision(stored, accelerator, option=option)
        return chosen, f"checkpoint: the training run's ({stored}{'' if str(stored) == str(chosen) else f' -> {chosen}'})"
    if text == AUTO:
        if native_bf16(accelerator):
            return "bf16-mixed", "auto: the device computes bfloat16 natively"
        return "32", "auto: no native bfloat16 on this device"
    if text in ("", "None"):
        raise ConfigError(f"{option}={value!r}: expected auto, 32, bf16-mixed, 16-mixed, 64 ...")
    return value, "as configured"  # as given: Lightning checks it and names it in its message


def precision_plugin(precision: object, device_type: str) -> Any:
    """Lightning's precision plugin for an inference ``precision`` on ``device_type`` (``cpu`` / ``cuda``):
    what ``Trainer(precision=...)`` would build, so that the end-of-run test can score in another precision
    than the fit (``trainer.strategy.precision_plugin = ...``)."""
    from lightning.pytorch.plugins.precision import DoublePrecision, MixedPrecision, Precision

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
    raise ConfigError(f"test_precision={precision!r}: expected checkpoint, auto, 32, bf16-mixed, 16-mixed or 64")
