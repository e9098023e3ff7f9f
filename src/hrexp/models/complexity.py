"""Model size and compute: parameters and multiply-accumulates (MACs) from torch's FLOP counter.

Convention: torch.utils.flop_counter counts a multiply-add as 2 FLOPs (convolutions, matmuls);
hrexp reports **multiply-adds** (MACs = FLOPs / 2) in units of 1e9. The HRNet papers' "GFLOPs"
columns are multiply-adds divided by 1024**3 (their model summary's unit), about 7% smaller.
Element-wise ops (BatchNorm in eval, ReLU, additions, nearest/bilinear upsampling) are not counted,
as in the papers' figures.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(module: nn.Module) -> int:
    """All parameters (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def count_macs(module: nn.Module, input_size: tuple[int, ...] = (1, 3, 256, 192)) -> int:
    """Multiply-adds of one forward pass on a zero input of ``input_size`` (batch included)."""
    was_training = module.training
    module.eval()
    try:
        x = torch.zeros(input_size)
        with FlopCounterMode(display=False) as counter:
            module(x)
        return counter.get_total_flops() // 2
    finally:
        module.train(was_training)
