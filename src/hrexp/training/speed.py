"""Speed switches that change how the model runs, never what it computes: channels_last and torch.compile;
and, under mixed precision, which part stays in float32 (float32_output: the heatmap heads' output conv).

The other switches of the GPU fast path are the Trainer's own (``trainer.precision=bf16-mixed``,
``trainer.benchmark=true`` for cudnn.benchmark) or the data's (``data.pin_memory``,
``data.num_workers``; workers persist across epochs). ``trainer=gpu_fast`` turns the set on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from hrexp.training.precision import AUTO, input_is_small

log = logging.getLogger(__name__)

# torch.compile keyword arguments a config may set (speed.compile={mode: max-autotune, ...}).
COMPILE_KEYS = ("mode", "backend", "fullgraph", "dynamic", "options")


@dataclass
class SpeedOptions:
    """How the network runs.

    Args:
        channels_last: keep conv weights and input images in NHWC memory order, which tensor cores
            (and oneDNN on a CPU) run without transposing. Same numbers up to float rounding. ``auto``:
            on for inputs of ``MIN_BF16_SIDE`` (128) px or more on their shorter side (:meth:`resolve`;
            oneDNN's bf16 kernels returned NaN in NHWC on HRNet's feature maps of a 64x32 input).
        compile: ``torch.compile`` the backbone and the head, in place (``nn.Module.compile``: the
            state-dict keys stay the same, so checkpoints load into an uncompiled model). ``false``,
            ``true`` (torch's defaults) or a mapping of torch.compile's keyword arguments
            (``mode``, ``backend``, ``fullgraph``, ``dynamic``, ``options``). The first steps
            compile (seconds on a GPU, minutes for a training step on a CPU).
        float32_output: under mixed precision, compute the heatmap heads' output conv in float32
            (``hrexp.models.heads.output_in_float32``): a bfloat16 heatmap's quantised peak costs the
            sub-pixel decoders accuracy, for a step cost too small to measure. ``false``: all in bf16.
    """

    channels_last: bool | str = False
    compile: bool | Mapping[str, Any] = False
    float32_output: bool = True
    compile_kwargs: dict[str, Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.channels_last, bool) and self.channels_last != AUTO:
            raise ValueError(f"speed.channels_last={self.channels_last!r}: expected true, false or auto")
        if not isinstance(self.float32_output, bool):
            raise ValueError(f"speed.float32_output={self.float32_output!r}: expected true or false")
        if isinstance(self.compile, bool):
            self.compile_kwargs = {}
        elif isinstance(self.compile, Mapping):
            unknown = sorted(set(self.compile) - set(COMPILE_KEYS))
            if unknown:
                raise ValueError(f"speed.compile has unknown keys {unknown}: torch.compile takes {list(COMPILE_KEYS)}")
            self.compile_kwargs = dict(self.compile)
        else:
            raise ValueError(f"speed.compile={self.compile!r}: expected true, false or a mapping of torch.compile "
                             f"arguments {list(COMPILE_KEYS)}")

    def resolve(self, input_size: Sequence[int] | None) -> "SpeedOptions":
        """``channels_last=auto`` decided for a network input (height, width): on unless the input is small
        (``hrexp.training.precision.input_is_small``) or unknown (``None``). In place; returns self."""
        if self.channels_last == AUTO:
            self.channels_last = input_size is not None and not input_is_small(input_size)
        return self

    @property
    def compiling(self) -> bool:
        return self.compile is not False

    def apply(self, backbone: nn.Module, head: nn.Module | None) -> None:
        """Convert the parameters' memory order, set the head's output precision and compile, in place (before
        the optimizer is built)."""
        if head is not None and hasattr(head, "float32_output"):
            head.float32_output = self.float32_output
        if self.channels_last is True:
            for part in (backbone, head):
                if part is not None:
                    part.to(memory_format=torch.channels_last)
        if self.compiling:
            log.info("torch.compile of the backbone and the head (%s)", self.compile_kwargs or "torch's defaults")
            for part in (backbone, head):
                if part is not None:
                    part.compile(**self.compile_kwargs)

    def images(self, images: torch.Tensor) -> torch.Tensor:
        """The input batch in the memory order the weights use."""
        if self.channels_last is True and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images
