"""What the study's sensitivity pass measured (``trial.sensitivity`` measures it), and what
per-layer policies make of it: which layer groups stay in float (``quantization_layout``) and
which pruning ratio each layer gets (``sensitivity_ratios``).

Per layer group (``compress.groups``) and candidate format, the pass quantizes only that group
and records how much the task loss rises and the accuracy falls on a calibration subset of the
validation split; per group and pruning ratio, it zeroes that share of each of the group's
layers' output channels (smallest L1 norm first, with the BatchNorm right after them) and
records the same. No fine-tuning in between: it ranks groups, it does not predict accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from autocompress.compress.groups import LayerGroup, Layout, layer_groups
from autocompress.errors import TrialFailed
from autocompress.spec.policy import PruningPolicy, QuantizationPolicy

PRUNE_RATIOS = (0.25, 0.5, 0.75)
TORCHAO_LINEAR = ("int8_weight_only", "int8_dynamic_activation", "fp8_weight_only", "fp8_dynamic", "int4_weight_only")
# the format whose measurement ranks the groups for a mode (QAT converts to the same int8 kernels
# as static int8; torchao's PT2E static int8 has no per-group measurement of its own)
MEASURED_AS = {"qat_int8": "static_int8"}


@dataclass(frozen=True)
class Delta:
    loss: float           # task loss with the change minus without
    accuracy_drop: float  # accuracy without minus with

    def to_list(self) -> list[float]:
        return [round(self.loss, 6), round(self.accuracy_drop, 6)]


@dataclass(frozen=True)
class Sensitivity:
    groups: tuple[str, ...]
    samples: int
    loss: float
    accuracy: float
    quantization: dict[str, dict[str, Delta]] = field(default_factory=dict)   # format -> group -> delta
    pruning: dict[str, dict[str, Delta]] = field(default_factory=dict)        # "0.5" -> group -> delta
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)                     # format -> why not measured

    def ranking(self, mode: str) -> list[str]:
        """Groups that ``mode`` quantizes, most sensitive first (loss rise, then accuracy drop)."""
        fmt = MEASURED_AS.get(mode, mode)
        table = self.quantization.get(fmt)
        if table is None:
            raise TrialFailed(f"the sensitivity pass has no measurement for quantization.mode {mode}"
                              + (f" ({self.skipped[fmt]})" if fmt in self.skipped else ""))
        return sorted(table, key=lambda g: (-table[g].loss, -table[g].accuracy_drop, self.groups.index(g)))

    def prune_scores(self) -> dict[str, float]:
        """Mean loss rise over the measured pruning ratios, per group (0 where nothing to prune)."""
        out = {}
        for g in self.groups:
            vals = [max(t[g].loss, 0.0) for t in self.pruning.values() if g in t]
            out[g] = sum(vals) / len(vals) if vals else 0.0
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"groups": list(self.groups), "samples": self.samples, "loss": self.loss, "accuracy": self.accuracy,
                "seconds": round(self.seconds, 2), "skipped": dict(self.skipped),
                "quantization": {f: {g: d.to_list() for g, d in t.items()} for f, t in self.quantization.items()},
                "pruning": {r: {g: d.to_list() for g, d in t.items()} for r, t in self.pruning.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Sensitivity":
        table = lambda t: {k: {g: Delta(*v) for g, v in inner.items()} for k, inner in t.items()}  # noqa: E731
        return cls(tuple(d["groups"]), int(d["samples"]), float(d["loss"]), float(d["accuracy"]),
                   table(d.get("quantization", {})), table(d.get("pruning", {})), float(d.get("seconds", 0.0)),
                   dict(d.get("skipped", {})))


def needs_pass(q: QuantizationPolicy, p: PruningPolicy) -> bool:
    """Whether a policy reads the sensitivity pass."""
    return (q.mode != "none" and q.keep_float_top_k > 0) or (p.method in ("structured", "gradual")
                                                             and p.allocation == "sensitivity")


def layout_refusal(q: QuantizationPolicy) -> str | None:
    """Why ``q``'s per-layer knobs cannot apply to its mode (None: they can)."""
    if q.keep_float_top_k == 0 and not q.keep_float:
        return None
    if q.mode in ("fp16", "bf16"):
        return f"per-layer precision is for int8/fp8 modes; {q.mode} casts the whole model"
    if q.mode == "static_int8" and q.backend == "torchao":
        return ("per-layer precision is not available for torchao's PT2E static int8 (quantization.backend "
                "torchao); use backend torch_ao")
    alt, torchao = q.top_k_format, q.mode in TORCHAO_LINEAR
    if q.keep_float_top_k and alt == "per_channel" and (torchao or q.per_channel):
        return "quantization.top_k_format per_channel needs a torch.ao int8 mode with per_channel false"
    if q.keep_float_top_k and alt in TORCHAO_LINEAR and not torchao:
        return f"quantization.top_k_format {alt} needs a torchao mode (int8_weight_only ...); quantization.mode is {q.mode}"
    return None


def quantization_layout(model: nn.Module, q: QuantizationPolicy, sensitivity: Sensitivity | None) -> Layout:
    """Which modules stay in float and which take ``top_k_format``, for this model and policy."""
    groups = layer_groups(model)
    floats = [_one_name(model, groups, n) for n in q.keep_float]
    top: list[str] = []
    if q.keep_float_top_k > 0:
        if sensitivity is None:
            raise TrialFailed("quantization.keep_float_top_k needs the study's sensitivity pass, which this "
                              "run does not have")
        ranked = [g for g in sensitivity.ranking(q.mode) if g in {x.name for x in groups} and g not in floats]
        top = ranked[:q.keep_float_top_k]
    if q.top_k_format == "float":
        return Layout(float_modules=tuple(floats + top))
    return Layout(float_modules=tuple(floats), alt_modules=tuple(top), alt_format=q.top_k_format)


def _one_name(model: nn.Module, groups: list[LayerGroup], name: str) -> str:
    if name in {g.name for g in groups} or name in dict(model.named_modules()):
        return name
    raise TrialFailed(f"quantization.keep_float names no layer group or module of this model: {name!r}")


def per_group(groups: list[LayerGroup], layout: Layout, mode: str) -> dict[str, str]:
    """The format each group computes in under ``layout`` (for the proof)."""
    def covers(prefixes: tuple[str, ...], g: LayerGroup) -> str:
        if any(p == g.name or g.name.startswith(p + ".") for p in prefixes):
            return "all"
        return "part" if any(p.startswith(g.name + ".") for p in prefixes) else ""

    def fmt(g: LayerGroup) -> str:
        if covers(layout.float_modules, g) == "all":
            return "float"
        if covers(layout.alt_modules, g) == "all":
            return layout.alt_format
        return mode + (" (part float)" if covers(layout.float_modules, g) else "")
    return {g.name: fmt(g) for g in groups}


def sensitivity_ratios(ratios: dict[str, float], weights: dict[str, int], groups: list[LayerGroup],
                       sensitivity: Sensitivity, cap: float = 0.9) -> dict[str, float]:
    """``ratios`` spread by sensitivity: a layer's ratio scales with 1/sqrt(its group's loss rise
    when pruned), renormalised so that the share of weights removed stays that of ``ratios``
    (each layer's ratio capped at ``cap``)."""
    scores = sensitivity.prune_scores()
    group = {n: next((g.name for g in groups if g.holds(n)), "") for n in ratios}
    positive = [s for s in scores.values() if s > 0]
    floor = min(positive) / 4 if positive else 1.0
    factor = {n: 1.0 / math.sqrt(max(scores.get(group[n], 0.0), floor)) for n in ratios}
    target = sum(ratios[n] * weights[n] for n in ratios)
    out = dict(ratios)
    scale = 1.0
    for _ in range(20):   # renormalise around the capped layers
        out = {n: min(cap, ratios[n] * factor[n] * scale) for n in ratios}
        got = sum(out[n] * weights[n] for n in ratios)
        if got <= 0 or abs(got - target) <= 1e-6 * max(target, 1e-12):
            break
        scale *= target / got
    return out
