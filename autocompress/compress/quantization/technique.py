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

import copy
from typing import Any

import torch
from torch import nn

from autocompress.compress.base import Declaration, Technique
from autocompress.compress.groups import UNIFORM, Layout, layer_groups
from autocompress.compress.quantization.formats import FLOAT_DTYPES, CastInputs, number_format
from autocompress.compress.quantization.torchao_modes import quantize_linear, static_pt2e, why_missing
from autocompress.compress.quantization.torch_ao import (INT8_MODES, check_quantized, convert, fails_trial,
                                                         float_layers, prepare_qat, prepare_static, quiet,
                                                         quantize_dynamic, weight_dtypes)
from autocompress.compress.sensitivity import layout_refusal, per_group, quantization_layout
from autocompress.errors import TrialFailed
from autocompress.metrics.size import size_mb
from autocompress.spec.policy import Policy
from autocompress.utils import device_of, error_line
from autocompress.zoo.data import make_loader


def select(policy: Policy) -> type[Technique] | None:
    return None if policy.quantization.mode == "none" else Quantization


class Quantization(Technique):
    name = "quantization"

    @classmethod
    def declare(cls, policy: Policy) -> Declaration:
        q = policy.quantization
        fmt = number_format(q.mode, q.per_channel, q.backend)
        torchao = fmt.backend == "torchao"
        scales = f" ({'per-channel' if q.per_channel else 'per-tensor'} weights)" if fmt.per_channel is not None else ""
        per_layer = (f" top{q.keep_float_top_k} {q.top_k_format}" if q.keep_float_top_k else "") + (
            f" float {','.join(q.keep_float)}" if q.keep_float else "")
        return Declaration(label=f"{q.mode} quantization", summary=q.mode + (" (torchao)" if torchao and
                                                                            q.mode == "static_int8" else "") + per_layer,
                           number_format=fmt, rewrites_graph_before_finetune=q.mode == "qat_int8",
                           card_line=f"quantization: {fmt.label}{scales}{per_layer}" + (
                               "; fast under torch.compile" if fmt.fast_under == {"compile"} else ""))

    def __init__(self, policy, ctx, pipeline) -> None:
        super().__init__(policy, ctx, pipeline)
        self.q = policy.quantization
        self.mode = self.q.mode
        self.format = pipeline.number_format
        self._steps = 0
        self._float_size_mb: float | None = None  # QAT: before fake-quant modules were added
        self._proof: dict[str, Any] = {"mode": self.mode}
        self.layout = UNIFORM

    def _resolve_layout(self, model: nn.Module) -> None:
        """Per-layer precision: which groups stay in float or take ``top_k_format``."""
        q = self.q
        if q.keep_float_top_k == 0 and not q.keep_float:
            return
        if (why := layout_refusal(q)) is not None:
            raise TrialFailed(why)
        self.layout = quantization_layout(model, q, self.ctx.sensitivity)
        groups = layer_groups(model)
        self._proof["per_layer"] = per_group(groups, self.layout, self.mode)
        self._proof["layout"] = self.layout.to_dict()
        if q.keep_float_top_k:
            self._proof["sensitivity_rank"] = self.ctx.sensitivity.ranking(self.mode)[:max(3, q.keep_float_top_k)]

    # Checks that cost little run before any training, so a trial that cannot apply ends early.
    # (Whether the target device has kernels for the format is declared: ``NumberFormat.devices``.)
    def compress(self, model: nn.Module) -> nn.Module:
        device = torch.device(self.ctx.target_device)
        self._resolve_layout(model)
        if self.format.backend == "torchao":
            return self._check_torchao(model, device)
        if self.mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrialFailed(f"bf16 is not supported by {torch.cuda.get_device_name(device)}")
        if self.mode == "dynamic_int8" and not any(isinstance(m, (nn.Linear, nn.LSTM, nn.GRU))
                                                   for m in model.modules()):
            raise TrialFailed("dynamic int8 changes nothing in this model: it quantizes "
                              "Linear/LSTM/GRU layers only, and the model has none")
        if self.mode == "static_int8":
            with fails_trial("FX cannot trace this model for static int8"):
                torch.fx.symbolic_trace(model)
        if self.mode in FLOAT_DTYPES:
            self._probe(CastInputs(copy.deepcopy(model).to(FLOAT_DTYPES[self.mode]), FLOAT_DTYPES[self.mode]))
        return model

    def before_finetune(self, model: nn.Module) -> nn.Module:
        if self.mode != "qat_int8":
            return model
        example = self.ctx.example_batch().to(device_of(model))
        self._float_size_mb = size_mb(model)
        return prepare_qat(model, example, per_channel=self.q.per_channel, layout=self.layout)

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
        if self.format.backend == "torchao":
            return self._torchao(model, size_before)
        if self.mode in FLOAT_DTYPES:
            dtype = FLOAT_DTYPES[self.mode]
            out: nn.Module = CastInputs(model.to(dtype), dtype).eval()
            self._probe(out)
        elif self.mode == "dynamic_int8":
            skipped = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
            out = quantize_dynamic(model, per_channel=self.q.per_channel, layout=self.layout)
            if skipped:   # its out_proj is a NonDynamicallyQuantizableLinear, which torch.ao leaves in float
                self._proof["float_by_design"] = {f"{n}.out_proj": "nn.MultiheadAttention's output projection: "
                                                  "torch.ao's dynamic int8 leaves it in float" for n in skipped}
        elif self.mode == "static_int8":
            prepared = prepare_static(model, self.ctx.example_batch(), per_channel=self.q.per_channel,
                                      layout=self.layout)
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

    @property
    def _ao_layout(self) -> Layout | None:
        return None if self.layout == UNIFORM else self.layout

    def _check_torchao(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Before training: torchao is there and has the mode, the GPU can run fp8, and (on a copy)
        the mode changes at least one layer of this model."""
        if (missing := why_missing(self.mode)) is not None:
            raise TrialFailed(missing)
        if self.mode == "fp8_dynamic" and device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9):
            raise TrialFailed(f"fp8_dynamic needs fp8 kernels (compute capability 8.9 or more); "
                              f"{torch.cuda.get_device_name(device)} has {torch.cuda.get_device_capability(device)}")
        if self.mode != "static_int8":
            quantize_linear(copy.deepcopy(model).cpu().eval(), self.mode, self._ao_layout)   # TrialFailed when nothing changes
        return model

    def _torchao(self, model: nn.Module, size_before: float) -> nn.Module:
        if self.mode == "static_int8":
            out, proof = static_pt2e(model, self.ctx.example_batch(), lambda forward: self._calibrate(forward, eval_mode=False))
        else:
            out, proof = quantize_linear(model, self.mode, self._ao_layout)
        self._proof.update({**proof, "size_before_mb": round(size_before, 6), "size_after_mb": round(size_mb(out), 6),
                            "fast_under": sorted(self.format.fast_under)})
        return out

    @torch.no_grad()
    def _calibrate(self, prepared: nn.Module, eval_mode: bool = True) -> int:
        if eval_mode:   # an exported PT2E graph was put in eval mode by torchao itself
            prepared.eval()
        loader = make_loader(self.ctx.data.train, self.policy.training.batch_size, shuffle=True,
                             seed=self.ctx.seed)
        seen = 0
        with quiet():
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
        device = self.ctx.target_device
        model = model.to(device).eval()
        try:
            out = model(self.ctx.example_batch().to(device))
        except (torch.OutOfMemoryError, MemoryError):
            raise
        except Exception as exc:
            raise TrialFailed(f"{self.mode} does not run on {device}: {error_line(exc)}") from None
        if not torch.isfinite(out).all():
            raise TrialFailed(f"{self.mode} overflows on this model (non-finite outputs)")


