"""torchao, the successor of torch.ao quantization: weight tensor subclasses through
``quantize_`` (int8 weight-only, int8 dynamic activation + int8 weight, fp8, int4) and static
int8 through the PT2E flow with the x86 Inductor quantizer.

What torchao 0.18 does here (torch 2.14.1, CPU):

- ``quantize_`` replaces the weights of ``nn.Linear`` layers with ``Int8Tensor`` /
  ``Float8Tensor`` / ``Int4Tensor`` subclasses; convolutions have no kernel for them
  (``aten.convolution`` is not implemented for ``Int8Tensor``), so on a convolutional model a
  mode may touch almost nothing: every layer quantized and every layer skipped is listed with
  its reason, and a model where nothing changed fails the trial.
- ``Int4WeightOnlyConfig`` needs GPU kernels (it asks for ``mslk``); fp8 with dynamic
  activations needs a GPU with fp8 support (compute capability 8.9 or more).
- The subclasses serialise with ``torch.save`` and load with ``weights_only=True`` (torchao
  registers them as safe); TorchScript and ONNX cannot carry them.
- PT2E static int8 (``static_pt2e``) exports the model (``torch.export``), inserts observers,
  calibrates and converts: the graph holds int8 weights with quantize/dequantize ops, which
  eager mode runs as reference ops and ``torch.compile`` (Inductor) lowers to int8 kernels.

torchao is imported when a torchao mode is used (``load``): about 2 s on this machine, and it
logs a deprecation line at import that is silenced here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn

from autocompress.errors import TrialFailed
from autocompress.utils import error_line, quiet_torchao_import

# mode -> torchao config class name (resolved on the installed torchao by ``load``)
CONFIGS = {
    "int8_weight_only": "Int8WeightOnlyConfig",
    "int8_dynamic_activation": "Int8DynamicActivationInt8WeightConfig",
    "fp8_weight_only": "Float8WeightOnlyConfig",
    "fp8_dynamic": "Float8DynamicActivationFloat8WeightConfig",
    "int4_weight_only": "Int4WeightOnlyConfig",
}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with quiet_torchao_import(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def load() -> Any:
    """The ``torchao.quantization`` module, or ``ImportError`` with how to install it."""
    with _quiet():
        try:
            import torchao.quantization as tq
        except ImportError as exc:
            raise ImportError(f"torchao is not installed ({exc}): pip install 'torchao==0.18.*'") from None
    return tq


def why_missing(mode: str) -> str | None:
    """Why the installed torchao cannot give ``mode`` (None: it can)."""
    try:
        tq = load()
    except ImportError as exc:
        return str(exc)
    if mode in CONFIGS and not hasattr(tq, CONFIGS[mode]):
        return f"the installed torchao has no {CONFIGS[mode]} (quantization.mode {mode})"
    return None


def quantize_linear(model: nn.Module, mode: str, layout: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` with every ``nn.Linear`` torchao can take quantized to ``mode`` (in place),
    and the proof: the tensor subclass of each quantized layer, each layer skipped and why.
    ``layout`` (``torch_ao.Layout``): layers kept in float, or quantized to another torchao mode."""
    tq = load()
    layers, skipped = {}, {}
    for name, module in list(model.named_modules()):
        if layout is not None and not layout.quantizes(name):
            if isinstance(module, nn.Linear):
                skipped[name] = "Linear: kept in floating point (per-layer policy)"
            continue
        alt = layout is not None and layout.alt_format in CONFIGS and any(
            name == p or name.startswith(p + ".") for p in layout.alt_modules)
        config = getattr(tq, CONFIGS[layout.alt_format if alt else mode])
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            skipped[name] = f"{type(module).__name__}: torchao's {mode} quantizes nn.Linear layers only"
        if not isinstance(module, nn.Linear):
            continue
        try:
            with _quiet():
                tq.quantize_(module, config(), filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
        except Exception as exc:   # noqa: BLE001 - a shape or device torchao refuses: this layer only
            skipped[name] = f"Linear: {error_line(exc, 160)}"
            continue
        kind = type(module.weight).__name__
        if kind in ("Parameter", "Tensor"):
            skipped[name] = "Linear: left in floating point by torchao"
        else:
            layers[name] = kind
    if not layers:
        raise TrialFailed(f"{mode} claimed but torchao quantized no layer of this model "
                          f"({len(skipped)} skipped: {next(iter(skipped.values()), 'no Linear layer')})")
    return model, {"backend": "torchao", "quantized_layers": layers, "skipped_layers": skipped}


class Exported(nn.Module):
    """A ``torch.export``-ed graph behind the module interface. Such graphs refuse
    ``train()``/``eval()`` (their mode was fixed when exported); the wrapper keeps its own flag,
    so the engine's evaluation and deployment code can treat it like any model. It ships as an
    exported program (``to_bytes``, ``model.pt2``): its activation scales are constants of the
    graph, which no state dict carries."""
    file_name = "model.pt2"

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True) -> "Exported":
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def to_bytes(self, example: torch.Tensor) -> bytes:
        buffer = io.BytesIO()
        with _quiet():
            batch = torch.export.Dim("batch")
            torch.export.save(torch.export.export(self.graph, (example,), dynamic_shapes=({0: batch},)), buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Exported":
        with _quiet():
            return cls(torch.export.load(io.BytesIO(data)).module())


def static_pt2e(model: nn.Module, example: torch.Tensor, calibrate: Callable[[nn.Module], int]
                ) -> tuple[nn.Module, dict[str, Any]]:
    """Static int8 through PT2E and the x86 Inductor quantizer; ``calibrate(forward)`` runs
    the calibration batches through ``forward`` and returns the samples seen."""
    load()
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    try:
        with _quiet():
            batch = torch.export.Dim("batch")
            exported = torch.export.export(model.eval(), (example,), dynamic_shapes=({0: batch},)).module()
            quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
            prepared = move_exported_model_to_eval(prepare_pt2e(exported, quantizer))
            samples = calibrate(prepared)
            converted = convert_pt2e(prepared)
    except (TrialFailed, torch.OutOfMemoryError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:   # noqa: BLE001 - torch.export or the quantizer refuses this model
        raise TrialFailed(f"torchao PT2E cannot quantize this model: {error_line(exc)}") from None
    _drop_unused_parameters(converted)
    ops = sorted({str(n.target) for n in converted.graph.nodes if "quantize" in str(n.target)})
    return Exported(converted), {"backend": "torchao", "flow": "pt2e (x86 Inductor quantizer)", "calibration_samples": samples,
                       "quantized_ops": ops, "int8_tensors": sum(1 for t in converted.state_dict().values()
                                                                 if t.dtype == torch.int8)}


def _drop_unused_parameters(graph: torch.fx.GraphModule) -> None:
    """The float weights the converted graph no longer reads (it reads their int8 copies)."""
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    for name, _ in list(graph.named_parameters()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(graph.get_submodule(owner) if owner else graph, attr)


def skeleton(model: nn.Module, mode: str, example: torch.Tensor, layout: Any = None) -> nn.Module:
    """The module structure ``mode`` gives the float ``model`` (values meaningless), for loading
    a saved state dict (``load_state_dict(..., assign=True)``)."""
    model = copy.deepcopy(model).cpu().eval()
    if mode in CONFIGS:
        return quantize_linear(model, mode, layout)[0]
    return static_pt2e(model, example, lambda prepared: int(prepared(example) is not None))[0]
