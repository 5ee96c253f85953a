"""torch.ao quantization: FX graph mode static int8 and QAT, dynamic int8, the int8 module
skeleton that a saved state dict loads into, and what a converted model holds (its proof).

torch.ao is deprecated upstream and warns on every call; ``quiet`` silences those warnings,
none of which a user of autocompress can act on.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import Counter
from typing import Iterator

import torch
import torch.ao.nn.quantized as nnq
import torch.ao.nn.quantized.dynamic as nnqd
from torch import nn
from torch.ao.quantization import (QConfig, default_dynamic_qconfig, default_weight_fake_quant, default_weight_observer,
                                   get_default_qat_qconfig_mapping, get_default_qconfig_mapping,
                                   per_channel_dynamic_qconfig)
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

from autocompress.compress.groups import UNIFORM, Layout
from autocompress.compress.quantization.formats import FLOAT_DTYPES, CastInputs
from autocompress.errors import TrialFailed
from autocompress.utils import error_line

ENGINE = "x86"
INT8_MODES = ("dynamic_int8", "static_int8", "qat_int8")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.ao warns on every call (deprecation notice, observer range, uncalibrated
    observers in a skeleton); none of it is actionable for a user of autocompress."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", module=r"torch\.ao\.")
        yield


def use_engine() -> None:
    """int8 kernels are chosen by a process-wide setting; x86 is fbgemm plus oneDNN."""
    if torch.backends.quantized.engine != ENGINE:
        torch.backends.quantized.engine = ENGINE




def qconfig_mapping(*, qat: bool, per_channel: bool, layout: Layout = UNIFORM):
    """The x86 default (per-channel weights, reduce-range activations), or per-tensor weights;
    with ``layout``'s float and per-channel modules set by module name."""
    mapping = get_default_qat_qconfig_mapping(ENGINE) if qat else get_default_qconfig_mapping(ENGINE)
    channel = mapping.global_qconfig
    if not per_channel:
        act = mapping.global_qconfig.activation
        mapping.set_global(QConfig(activation=act, weight=default_weight_fake_quant if qat
                                   else default_weight_observer))
    if layout.only is not None:
        only = QConfig(activation=mapping.global_qconfig.activation, weight=mapping.global_qconfig.weight)
        mapping.set_global(None).set_module_name(layout.only, only)
    for name in layout.alt_modules if layout.alt_format == "per_channel" else ():
        mapping.set_module_name(name, channel)
    for name in layout.float_modules:
        mapping.set_module_name(name, None)
    return mapping


def _dynamic_spec(model: nn.Module, per_channel: bool, layout: Layout) -> dict:
    # LSTM/GRU dynamic kernels take per-tensor weights only
    if layout == UNIFORM:
        return {nn.Linear: per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig,
                nn.LSTM: default_dynamic_qconfig, nn.GRU: default_dynamic_qconfig}
    spec: dict = {}
    for name, m in model.named_modules():
        if type(m) in (nn.Linear, nn.LSTM, nn.GRU) and layout.quantizes(name):
            channel = isinstance(m, nn.Linear) and layout.per_channel(name, per_channel)
            spec[name] = per_channel_dynamic_qconfig if channel else default_dynamic_qconfig
    return spec


@contextlib.contextmanager
def fails_trial(what: str) -> Iterator[None]:
    """Any error in FX tracing/preparing/converting ends the trial with its reason."""
    try:
        yield
    except (TrialFailed, torch.OutOfMemoryError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise TrialFailed(f"{what}: {error_line(exc)}") from None


def prepare_static(model: nn.Module, example: torch.Tensor, *, per_channel: bool, layout: Layout = UNIFORM) -> nn.Module:
    """FX-trace ``model`` (eval mode) and insert observers. Mutates ``model``'s submodules."""
    use_engine()
    with quiet(), fails_trial("FX graph mode cannot quantize this model"):
        return prepare_fx(model.eval(), qconfig_mapping(qat=False, per_channel=per_channel, layout=layout), (example,))


def prepare_qat(model: nn.Module, example: torch.Tensor, *, per_channel: bool, layout: Layout = UNIFORM) -> nn.Module:
    """FX-trace ``model`` (train mode) with fake-quant modules for quantization-aware training."""
    use_engine()
    with quiet(), fails_trial("FX graph mode cannot prepare this model for QAT"):
        return prepare_qat_fx(model.train(), qconfig_mapping(qat=True, per_channel=per_channel, layout=layout),
                              (example,))


def convert(prepared: nn.Module) -> nn.Module:
    use_engine()
    with quiet(), fails_trial("FX int8 conversion failed"):
        return convert_fx(prepared.eval())


def quantize_dynamic(model: nn.Module, *, per_channel: bool, layout: Layout = UNIFORM) -> nn.Module:
    use_engine()
    with quiet():
        return torch.ao.quantization.quantize_dynamic(model.eval(), _dynamic_spec(model, per_channel, layout),
                                                      dtype=torch.qint8, inplace=False)


def quantized_skeleton(model: nn.Module, mode: str, example_inputs: torch.Tensor, *,
                       per_channel: bool = True, layout: Layout = UNIFORM) -> nn.Module:
    """The module structure ``mode`` turns the float ``model`` into, without calibration.

    Loading the state dict of a model quantized the same way then restores weights, scales and
    zero points exactly. ``model`` itself is not modified. Example::

        skeleton = quantized_skeleton(float_model, "static_int8", example)
        skeleton.load_state_dict(torch.load("model_int8.pt", weights_only=True))
    """
    model = copy.deepcopy(model).cpu()
    example_inputs = example_inputs.cpu()
    if mode == "none":
        return model.eval()
    if mode in FLOAT_DTYPES:
        return CastInputs(model.to(FLOAT_DTYPES[mode]), FLOAT_DTYPES[mode]).eval()
    if mode == "dynamic_int8":
        return quantize_dynamic(model, per_channel=per_channel, layout=layout)
    if mode == "static_int8":
        return convert(prepare_static(model, example_inputs, per_channel=per_channel, layout=layout))
    if mode == "qat_int8":
        return convert(prepare_qat(model, example_inputs, per_channel=per_channel, layout=layout))
    raise ValueError(f"unknown quantization mode {mode!r}")


# -- proof -------------------------------------------------------------------------------------

def _int8_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    dynamic = (nnqd.Linear, nnqd.LSTM, nnqd.GRU, nnqd.LSTMCell, nnqd.GRUCell, nnqd.RNNCell,
               nnqd.Conv1d, nnqd.Conv2d, nnqd.Conv3d)
    static = (nnq.Conv1d, nnq.Conv2d, nnq.Conv3d, nnq.ConvTranspose1d, nnq.ConvTranspose2d,
              nnq.ConvTranspose3d, nnq.Linear, nnq.LSTM, nnq.Embedding, nnq.EmbeddingBag)
    return dynamic, static


FLOAT_COMPUTE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.ConvTranspose3d, nn.Linear, nn.LSTM, nn.GRU)


def quantized_layers(model: nn.Module) -> dict[str, int]:
    """Counts of int8 compute layers by kind, e.g. ``{"int8 ConvReLU2d": 9, "dynamic int8 Linear": 1}``."""
    dynamic, static = _int8_classes()
    counts: Counter[str] = Counter()
    for m in model.modules():
        if isinstance(m, dynamic):  # before static: the dynamic Linear subclasses the static one
            counts[f"dynamic int8 {type(m).__name__}"] += 1
        elif isinstance(m, static):
            counts[f"int8 {type(m).__name__}"] += 1
    return dict(sorted(counts.items()))


def float_layers(model: nn.Module) -> int:
    """Conv/Linear/RNN layers still computing in floating point (quantized ones excluded)."""
    dynamic, static = _int8_classes()
    return sum(1 for m in model.modules()
               if isinstance(m, FLOAT_COMPUTE) and not isinstance(m, dynamic + static))


def weight_dtypes(model: nn.Module) -> list[str]:
    """The dtypes of the stored weights (quantized layers report their packed weight)."""
    seen: set[str] = set()
    dynamic, static = _int8_classes()
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, dynamic + static) and callable(w):
            with contextlib.suppress(Exception):
                seen.add(str(w().dtype))
        elif isinstance(w, torch.Tensor):
            seen.add(str(w.dtype))
    return sorted(seen)


def check_quantized(model: nn.Module, mode: str) -> dict[str, int]:
    """Raise ``TrialFailed`` when a model that claims ``mode`` does not compute in it."""
    if mode in INT8_MODES:
        layers = quantized_layers(model)
        if not layers:
            raise TrialFailed(f"{mode} claimed but the converted model holds no int8 layer: "
                              "it would run fp32 kernels")
        return layers
    if mode in FLOAT_DTYPES:
        want = FLOAT_DTYPES[mode]
        wrong = {str(p.dtype) for p in model.parameters() if p.is_floating_point() and p.dtype != want}
        if wrong:
            raise TrialFailed(f"{mode} claimed but parameters are {sorted(wrong)}")
    return {}


