"""The number formats a quantization mode deploys in, declared once (``FORMATS``), and the
small wrapper that runs a half-precision model on float32 inputs (``CastInputs``)."""

from __future__ import annotations

import torch
from torch import nn

from autocompress.compress.base import FP32, NumberFormat

FLOAT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

# torch.ao's int8 kernels are the CPU's (fbgemm / oneDNN, x86 engine).
_INT8_DEVICES = frozenset({"cpu"})
_INT8_LABELS = {"dynamic_int8": "int8 (dynamic)", "static_int8": "int8 (static)", "qat_int8": "int8 (QAT)"}


def number_format(mode: str, per_channel: bool) -> NumberFormat:
    """The format quantization ``mode`` deploys in."""
    if mode == "none":
        return FP32
    if mode in FLOAT_DTYPES:
        return NumberFormat(mode, mode)
    if mode in _INT8_LABELS:
        return NumberFormat(mode, _INT8_LABELS[mode], integer=True, per_channel=per_channel, devices=_INT8_DEVICES)
    raise ValueError(f"unknown quantization mode {mode!r}")


class CastInputs(nn.Module):
    """Runs ``model`` (already cast to ``dtype``) on inputs cast to ``dtype``; returns float32,
    so evaluation and latency code need no change."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            x = x.to(self.dtype)
        return self.model(x).float()


