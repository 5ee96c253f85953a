"""The module structure a quantization mode gives a float model, without calibration: what a
saved state dict of a model quantized the same way loads into (``deploy.artifacts.rebuild``)."""

from __future__ import annotations

import torch
from torch import nn

from autocompress.compress.quantization import torch_ao, torchao_modes
from autocompress.compress.quantization.formats import number_format


def quantized_skeleton(model: nn.Module, mode: str, example_inputs: torch.Tensor, *, per_channel: bool = True,
                       backend: str = "torch_ao", layout: torch_ao.Layout = torch_ao.UNIFORM) -> nn.Module:
    """``model`` (not modified) turned into ``mode``'s structure. Example::

        skeleton = quantized_skeleton(float_model, "static_int8", example)
        load_into(skeleton, torch.load("model.pt", weights_only=True), mode="static_int8")
    """
    if number_format(mode, per_channel, backend).backend == "torchao":
        return torchao_modes.skeleton(model, mode, example_inputs.cpu(), layout if layout != torch_ao.UNIFORM else None)
    return torch_ao.quantized_skeleton(model, mode, example_inputs, per_channel=per_channel, layout=layout)


def load_into(skeleton: nn.Module, state: dict, *, mode: str, backend: str = "torch_ao") -> None:
    """Load a saved state dict; torchao's weights are tensor subclasses that replace the
    skeleton's (``assign``), torch.ao's packed weights load through their modules' own hooks."""
    torchao = number_format(mode, True, backend).backend == "torchao"
    skeleton.load_state_dict(state, strict=True, assign=torchao)
