"""Quantization: the number format of the deployed model, with real kernels (torch.ao).

- ``fp16`` / ``bf16``: weights cast, inputs cast by a small wrapper (``CastInputs``).
- ``dynamic_int8``: int8 weights of Linear/LSTM layers, activations quantized on the fly.
- ``static_int8``: FX graph mode post-training quantization, calibrated on training batches.
- ``qat_int8``: FX fake-quant during fine-tuning (``prepare_qat_fx``), converted afterwards.

The int8 kernels are the CPU's (x86 engine). ``quantized_layers`` counts the int8 layers of a
converted model: a trial that claims int8 but holds none fails (``check_quantized``), so an
fp32 model can never be recorded as int8. ``quantized_skeleton`` rebuilds the module structure
of a quantized model so that a saved state dict can be loaded into it (export, re-load).
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections import Counter
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from autocompress.errors import TrialFailed
from autocompress.metrics.size import size_mb
from autocompress.compress.base import Technique
from autocompress.utils import error_line, device_of

if TYPE_CHECKING:
    from autocompress.spec.policy import Policy
    from autocompress.trial.run import TrialContext

INT8_MODES = ("dynamic_int8", "static_int8", "qat_int8")
FLOAT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
ENGINE = "x86"


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


# -- helpers shared with export --------------------------------------------------------------

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
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


def qconfig_mapping(*, qat: bool, per_channel: bool):
    """The x86 default (per-channel weights, reduce-range activations), or per-tensor weights."""
    from torch.ao.quantization import (QConfig, default_weight_fake_quant, default_weight_observer,
                                       get_default_qat_qconfig_mapping, get_default_qconfig_mapping)

    mapping = get_default_qat_qconfig_mapping(ENGINE) if qat else get_default_qconfig_mapping(ENGINE)
    if not per_channel:
        act = mapping.global_qconfig.activation
        mapping.set_global(QConfig(activation=act, weight=default_weight_fake_quant if qat
                                   else default_weight_observer))
    return mapping


def _dynamic_spec(per_channel: bool) -> dict:
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    # LSTM/GRU dynamic kernels take per-tensor weights only
    return {nn.Linear: per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig,
            nn.LSTM: default_dynamic_qconfig, nn.GRU: default_dynamic_qconfig}


@contextlib.contextmanager
def _fails_trial(what: str) -> Iterator[None]:
    """Any error in FX tracing/preparing/converting ends the trial with its reason."""
    try:
        yield
    except (TrialFailed, torch.OutOfMemoryError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise TrialFailed(f"{what}: {error_line(exc)}") from None


def prepare_static(model: nn.Module, example: torch.Tensor, *, per_channel: bool) -> nn.Module:
    """FX-trace ``model`` (eval mode) and insert observers. Mutates ``model``'s submodules."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    use_engine()
    with _quiet(), _fails_trial("FX graph mode cannot quantize this model"):
        return prepare_fx(model.eval(), qconfig_mapping(qat=False, per_channel=per_channel), (example,))


def prepare_qat(model: nn.Module, example: torch.Tensor, *, per_channel: bool) -> nn.Module:
    """FX-trace ``model`` (train mode) with fake-quant modules for quantization-aware training."""
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    use_engine()
    with _quiet(), _fails_trial("FX graph mode cannot prepare this model for QAT"):
        return prepare_qat_fx(model.train(), qconfig_mapping(qat=True, per_channel=per_channel), (example,))


def convert(prepared: nn.Module) -> nn.Module:
    from torch.ao.quantization.quantize_fx import convert_fx

    use_engine()
    with _quiet(), _fails_trial("FX int8 conversion failed"):
        return convert_fx(prepared.eval())


def quantize_dynamic(model: nn.Module, *, per_channel: bool) -> nn.Module:
    use_engine()
    with _quiet():
        return torch.ao.quantization.quantize_dynamic(model.eval(), _dynamic_spec(per_channel),
                                                      dtype=torch.qint8, inplace=False)


def quantized_skeleton(model: nn.Module, mode: str, example_inputs: torch.Tensor, *,
                       per_channel: bool = True) -> nn.Module:
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
        return quantize_dynamic(model, per_channel=per_channel)
    if mode == "static_int8":
        return convert(prepare_static(model, example_inputs, per_channel=per_channel))
    if mode == "qat_int8":
        return convert(prepare_qat(model, example_inputs, per_channel=per_channel))
    raise ValueError(f"unknown quantization mode {mode!r}")


# -- proof -------------------------------------------------------------------------------------

def _int8_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    import torch.ao.nn.quantized as nnq
    import torch.ao.nn.quantized.dynamic as nnqd

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


# -- the technique ---------------------------------------------------------------------------

class Quantization(Technique):
    name = "quantization"

    def __init__(self, policy: "Policy", ctx: "TrialContext") -> None:
        super().__init__(policy, ctx)
        self.q = policy.quantization
        self.mode = self.q.mode
        self._steps = 0
        self._float_size_mb: float | None = None  # QAT: before fake-quant modules were added
        self._proof: dict[str, Any] = {"mode": self.mode}

    # Checks that cost little run before any training, so a trial that cannot apply ends early.
    def compress(self, model: nn.Module) -> nn.Module:
        device = torch.device(self.ctx.target.device)
        if self.mode in INT8_MODES and device.type != "cpu":
            raise TrialFailed(f"int8 kernels run on the CPU only; the target device is {device} "
                              "(use fp16/bf16 there, or a CPU target)")
        if self.mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrialFailed(f"bf16 is not supported by {torch.cuda.get_device_name(device)}")
        if self.mode == "dynamic_int8" and not any(isinstance(m, (nn.Linear, nn.LSTM, nn.GRU))
                                                   for m in model.modules()):
            raise TrialFailed("dynamic int8 changes nothing in this model: it quantizes "
                              "Linear/LSTM/GRU layers only, and the model has none")
        if self.mode == "static_int8":
            with _fails_trial("FX cannot trace this model for static int8"):
                torch.fx.symbolic_trace(model)
        if self.mode in FLOAT_DTYPES:
            self._probe(CastInputs(copy.deepcopy(model).to(FLOAT_DTYPES[self.mode]), FLOAT_DTYPES[self.mode]))
        return model

    def before_finetune(self, model: nn.Module) -> nn.Module:
        if self.mode != "qat_int8":
            return model
        example = self.ctx.example_batch().to(device_of(model))
        self._float_size_mb = size_mb(model)
        return prepare_qat(model, example, per_channel=self.q.per_channel)

    def on_step_end(self, model: nn.Module, step: int) -> None:
        self._steps = step

    def after_finetune(self, model: nn.Module) -> nn.Module:
        if self.mode == "qat_int8":
            # Training is over. Parameters that still require grad break FLOP counting of the
            # fake-quant model under inference mode (ModuleTracker hooks the weight_fake_quant
            # call, whose input is a parameter).
            model.requires_grad_(False)
        return model

    def post_training(self, model: nn.Module) -> nn.Module:
        if self.mode == "none":
            return model
        model = model.cpu().eval()
        size_before = self._float_size_mb or size_mb(model)
        if self.mode in FLOAT_DTYPES:
            dtype = FLOAT_DTYPES[self.mode]
            out: nn.Module = CastInputs(model.to(dtype), dtype).eval()
            self._probe(out)
        elif self.mode == "dynamic_int8":
            out = quantize_dynamic(model, per_channel=self.q.per_channel)
        elif self.mode == "static_int8":
            prepared = prepare_static(model, self.ctx.example_batch(), per_channel=self.q.per_channel)
            self._proof["calibration_samples"] = self._calibrate(prepared)
            out = convert(prepared)
        elif self.mode == "qat_int8":
            if self._steps == 0:  # no fine-tuning step ran: the observers have seen nothing
                self._proof["calibration_samples"] = self._calibrate(model)
            out = convert(model)
        else:
            raise TrialFailed(f"unknown quantization mode {self.mode!r}")
        layers = check_quantized(out, self.mode)
        self._proof.update({
            "quantized_layers": layers,
            "float_layers_left": float_layers(out),
            "weight_dtypes": weight_dtypes(out),
            "engine": torch.backends.quantized.engine if self.mode in INT8_MODES else None,
            "per_channel": self.q.per_channel if self.mode in INT8_MODES else None,
            "size_before_mb": round(size_before, 6),
            "size_after_mb": round(size_mb(out), 6),
        })
        return out

    def proof(self) -> dict[str, Any]:
        return {"quantization": dict(self._proof)}

    @torch.no_grad()
    def _calibrate(self, prepared: nn.Module) -> int:
        from autocompress.training.loop import make_loader

        prepared.eval()
        loader = make_loader(self.ctx.data.train, self.policy.training.batch_size, shuffle=True,
                             seed=self.ctx.seed)
        seen = 0
        with _quiet():
            for i, (x, _) in enumerate(loader):
                if i >= self.q.calibration_batches:
                    break
                prepared(x)
                seen += x.shape[0]
        return seen

    @torch.no_grad()
    def _probe(self, model: nn.Module) -> None:
        """Run one small batch on the target device: a kernel missing for the dtype, or an
        overflow to inf/nan, ends the trial here with the reason."""
        device = self.ctx.target.device
        model = model.to(device).eval()
        try:
            out = model(self.ctx.example_batch().to(device))
        except (torch.OutOfMemoryError, MemoryError):
            raise
        except Exception as exc:
            raise TrialFailed(f"{self.mode} does not run on {device}: {error_line(exc)}") from None
        if not torch.isfinite(out).all():
            raise TrialFailed(f"{self.mode} overflows on this model (non-finite outputs)")


def build(policy: "Policy", ctx: "TrialContext") -> Technique | None:
    if policy.quantization.mode == "none":
        return None
    return Quantization(policy, ctx)
