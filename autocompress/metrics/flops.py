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
    The fused attention fast path is off while counting: in eval mode under no_grad,
    nn.TransformerEncoderLayer and nn.MultiheadAttention run one fused op
    (aten._transformer_encoder_layer_fwd) that the flop counter does not know, and would count
    only the few ops around it.
    """
    was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(example)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    return int(counter.get_total_flops() // max(1, example.shape[0]))
