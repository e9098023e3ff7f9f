"""Which numeric precision a run computes in: ``trainer.precision=auto`` and eval's ``precision=checkpoint``.

``auto`` picks ``bf16-mixed`` where the device computes bfloat16 natively (a CUDA GPU that supports it; a
CPU with AVX512-BF16 or AMX, which oneDNN uses: an HRNet step 2.7x faster on this project's CPU) and
``32`` elsewhere (bf16 emulated on an older CPU is slower than fp32). Evaluation follows the training
run's precision unless told otherwise, so that the end-of-run test and ``eval.py`` score a checkpoint
the same way; both print what they used.
"""

from __future__ import annotations

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
