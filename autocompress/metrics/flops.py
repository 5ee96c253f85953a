"""FLOPs of one forward pass with ``torch.utils.flop_counter.FlopCounterMode``."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()  # not inference_mode: the flop counter refuses QAT's grad-requiring fake-quant weights there
def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs for ONE sample (the example batch's total divided by its size).

    Counted on a floating-point model: quantized kernels are not counted by the flop counter,
    so call this before the int8 conversion (the structure, hence the count, is the same).
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(example)
    model.train(was_training)
    return int(counter.get_total_flops() // max(1, example.shape[0]))
