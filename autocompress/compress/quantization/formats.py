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
# torchao: tensor subclasses that only eager PyTorch and torch.compile carry, fast under compile
_TORCHAO_RUNTIMES = frozenset({"eager", "compile"})
_TORCHAO = {   # mode -> (label, integer, devices with kernels)
    "int8_weight_only": ("int8 weight-only (torchao)", True, frozenset({"cpu", "cuda"})),
    "int8_dynamic_activation": ("int8 dynamic activation + int8 weight (torchao)", True, frozenset({"cpu", "cuda"})),
    "fp8_weight_only": ("fp8 weight-only (torchao)", False, frozenset({"cpu", "cuda"})),
    "fp8_dynamic": ("fp8 dynamic activation + fp8 weight (torchao)", False, frozenset({"cuda"})),
    "int4_weight_only": ("int4 weight-only (torchao)", True, frozenset({"cuda"})),
}


def number_format(mode: str, per_channel: bool, backend: str = "torch_ao") -> NumberFormat:
    """The format quantization ``mode`` deploys in."""
    if mode == "none":
        return FP32
    if mode in FLOAT_DTYPES:
        return NumberFormat(mode, mode)
    if mode == "static_int8" and backend == "torchao":   # PT2E, x86 Inductor quantizer
        return NumberFormat(mode, "int8 (static, torchao PT2E)", integer=True, devices=_INT8_DEVICES,
                            runtimes=_TORCHAO_RUNTIMES, fast_under=frozenset({"compile"}), backend="torchao")
    if mode in _INT8_LABELS:
        return NumberFormat(mode, _INT8_LABELS[mode], integer=True, per_channel=per_channel, devices=_INT8_DEVICES,
                            backend="torch.ao")
    if mode in _TORCHAO:
        label, integer, devices = _TORCHAO[mode]
        return NumberFormat(mode, label, integer=integer, devices=devices,
                            runtimes=_TORCHAO_RUNTIMES, fast_under=frozenset({"compile"}), backend="torchao")
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


