"""The compression policy one trial applies: frozen dataclasses, one part per technique.

A ``Policy`` comes out of one sample of the search space. It round-trips to flat
``{"section.knob": value}`` params (what Optuna stores) and to YAML (what export writes).
Each field's ``metadata["choices"]`` lists the valid values of a categorical knob; the
search-space loader validates against them, so adding a field here adds a knob.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, get_type_hints

import yaml


def _choice(default: str, *choices: str, doc: str = "") -> Any:
    return field(default=default, metadata={"choices": choices, "doc": doc})


def _knob(default: Any, doc: str = "", **meta: Any) -> Any:
    return field(default=default, metadata={"doc": doc, **meta})


@dataclass(frozen=True)
class PruningPolicy:
    method: str = _choice("none", "none", "weight", "structured", "gradual",
                          doc="weight: unstructured zeros; structured: channels removed; "
                              "gradual: structured sparsity raised during fine-tuning")
    criterion: str = _choice("l1", "l1", "l2", "fpgm", "taylor",
                             doc="importance of a channel (structured/gradual) or weight")
    ratio: float = _knob(0.5, "fraction of weights/channels removed", low=0.0, high=0.95)
    scope: str = _choice("global", "global", "layer",
                         doc="weight pruning: one global threshold or the ratio in every layer")
    ratio_early: float = _knob(-1.0, "ratio for the first half of the prunable layers "
                                     "(AMC-style per-group ratio; -1 = use ratio)", low=-1.0, high=0.95)
    ratio_late: float = _knob(-1.0, "ratio for the second half of the prunable layers "
                                    "(-1 = use ratio)", low=-1.0, high=0.95)
    schedule: str = _choice("agp", "agp", "linear", doc="gradual: how sparsity rises over epochs")
    allocation: str = _choice("uniform", "uniform", "sensitivity", "global",
                              doc="structured/gradual: every layer at its ratio, ratios spread by the study's "
                                  "sensitivity pass (less where pruning hurts more), or one global ranking of "
                                  "channels across layers")
    ratio_stage1: float = _knob(-1.0, "ratio for the first quarter of the layer groups (-1 = use ratio)",
                                low=-1.0, high=0.95)
    ratio_stage2: float = _knob(-1.0, "ratio for the second quarter of the layer groups (-1 = use ratio)",
                                low=-1.0, high=0.95)
    ratio_stage3: float = _knob(-1.0, "ratio for the third quarter of the layer groups (-1 = use ratio)",
                                low=-1.0, high=0.95)
    ratio_stage4: float = _knob(-1.0, "ratio for the last quarter of the layer groups (-1 = use ratio)",
                                low=-1.0, high=0.95)
    head_ratio: float = _knob(0.0, "structured/gradual on transformers: fraction of each attention layer's heads "
                                   "removed (0 = heads kept; `ratio` prunes the FFN neurons)", low=0.0, high=0.95)
    hidden_ratio: float = _knob(0.0, "structured/gradual on transformers: fraction of the hidden size (the residual "
                                     "stream: embeddings, LayerNorms, attention and FFN inputs and outputs) removed, "
                                     "the kept width a multiple of 8 and at least 8 (0 = hidden size kept)",
                                low=0.0, high=0.75)
    protect: tuple[str, ...] = _knob((), "module names never pruned (first conv and classifier "
                                         "are protected automatically)")


@dataclass(frozen=True)
class DepthPolicy:
    layers: int = _knob(0, "transformer layers kept (0 = all)", low=0)
    selection: str = _choice("every_other", "every_other", "first", "last", "importance",
                             doc="which layers stay: evenly spaced (DistilBERT), the first, the last, or "
                                 "those whose removal alone changes the logits most")


@dataclass(frozen=True)
class QuantizationPolicy:
    mode: str = _choice("none", "none", "fp16", "bf16", "dynamic_int8", "static_int8", "qat_int8",
                        "int8_weight_only", "int8_dynamic_activation", "fp8_weight_only", "fp8_dynamic",
                        "int4_weight_only",
                        doc="numeric format of the exported model (int8_weight_only ... int4_weight_only: "
                            "torchao, Linear layers)")
    calibration_batches: int = _knob(8, "static int8: training batches used to calibrate", low=1)
    keep_float_top_k: int = _knob(0, "the k layer groups the study's sensitivity pass ranks most sensitive to "
                                     "this mode stay in top_k_format (0 = every group in mode)", low=0)
    top_k_format: str = _choice("float", "float", "per_channel", "int8_weight_only", "int8_dynamic_activation",
                                "fp8_weight_only",
                                doc="the format of the keep_float_top_k groups: float, per-channel int8 weight "
                                    "scales (torch.ao modes with per_channel false), or another torchao mode")
    keep_float: tuple[str, ...] = _knob((), "layer groups or modules always kept in float")
    per_channel: bool = _knob(True, "per-channel weight scales for int8 (torch.ao)")
    backend: str = _choice("torch_ao", "torch_ao", "torchao",
                           doc="static_int8: torch.ao FX graph mode, or torchao's PT2E flow (x86 Inductor "
                               "quantizer)")


@dataclass(frozen=True)
class DistillationPolicy:
    method: str = _choice("none", "none", "soft", "feature", "soft+feature",
                          doc="soft: soft targets of the teacher; feature: intermediate feature maps")
    alpha: float = _knob(0.0, "weight of the soft-target loss (0 = no distillation)", low=0.0, high=1.0)
    temperature: float = _knob(4.0, "softmax temperature of the soft targets", low=0.05)
    feature_weight: float = _knob(0.0, "weight of the feature-map loss (0 = off)", low=0.0)
    feature_layers: tuple[str, ...] = _knob((), "module names whose outputs are matched "
                                                "(empty = the last feature block)")
    hidden_weight: float = _knob(0.0, "weight of the hidden-state loss per mapped transformer layer "
                                      "(0 = off)", low=0.0)
    attention_weight: float = _knob(0.0, "weight of the attention-map loss (KL of head-averaged attention "
                                         "per mapped transformer layer; 0 = off)", low=0.0)


@dataclass(frozen=True)
class TrainingPolicy:
    optimizer: str = _choice("adamw", "sgd", "adam", "adamw", "rmsprop")
    lr: float = _knob(1e-3, "initial learning rate", low=0.0)
    weight_decay: float = _knob(0.0, "L2 weight decay", low=0.0)
    momentum: float = _knob(0.9, "SGD/RMSprop momentum", low=0.0, high=1.0)
    nesterov: bool = _knob(False, "SGD Nesterov momentum")
    schedule: str = _choice("constant", "constant", "step", "exponential", "linear", "cosine",
                            "cyclic", "onecycle")
    warmup_epochs: float = _knob(0.0, "linear warm-up before the schedule", low=0.0)
    step_size: int = _knob(1, "step schedule: epochs between decays", low=1)
    gamma: float = _knob(0.5, "step/exponential schedule: decay factor", low=0.0, high=1.0)
    cycle_epochs: float = _knob(1.0, "cyclic schedule: epochs per half cycle", low=0.0)
    grad_clip: float = _knob(0.0, "max gradient norm (0 = off)", low=0.0)
    label_smoothing: float = _knob(0.0, "label smoothing of the task loss", low=0.0, high=0.99)
    dropout: float = _knob(0.0, "dropout inserted before the classifier", low=0.0, high=0.95)
    batch_size: int = _knob(64, "fine-tune batch size", low=1)
    amp: str = _choice("off", "off", "bf16", "fp16", doc="autocast during fine-tuning (CUDA)")
    bn_recalibration_batches: int = _knob(0, "after fine-tuning, re-estimate BatchNorm running statistics "
                                             "over this many training batches (0 = off)", low=0)


@dataclass(frozen=True)
class AugmentationPolicy:
    policy: str = _choice("none", "none", "crop", "crop_flip", "rotate_scale", "color", "combined",
                          "trivialaugment", "randaugment", "noise", "time_shift", "time_scale",
                          "token_delete", "token_swap", "token_insert", "token_mask", "synonym")
    mix: str = _choice("none", "none", "mixup", "cutmix")
    mix_alpha: float = _knob(0.2, "mixup/cutmix Beta(alpha, alpha)", low=0.0)
    mix_prob: float = _knob(0.5, "probability of mixing a batch", low=0.0, high=1.0)
    text_rate: float = _knob(0.1, "share of tokens a text augmentation changes", low=0.0, high=0.5)
    synonyms: str = _knob("", "synonym policy: the path of a YAML or TSV table word -> synonyms", path=True)


@dataclass(frozen=True)
class RuntimePolicy:
    backend: str = _choice("eager", "eager", "torchscript", "compile", "onnxruntime",
                           doc="what runs the deployed model (graph optimization); accuracy is "
                               "re-checked and latency measured in it (autocompress/runtimes.py)")


@dataclass(frozen=True)
class Policy:
    depth: DepthPolicy = field(default_factory=DepthPolicy)
    pruning: PruningPolicy = field(default_factory=PruningPolicy)
    quantization: QuantizationPolicy = field(default_factory=QuantizationPolicy)
    distillation: DistillationPolicy = field(default_factory=DistillationPolicy)
    training: TrainingPolicy = field(default_factory=TrainingPolicy)
    augmentation: AugmentationPolicy = field(default_factory=AugmentationPolicy)
    runtime: RuntimePolicy = field(default_factory=RuntimePolicy)

    # -- flat params ---------------------------------------------------------------
    def to_flat(self) -> dict[str, Any]:
        """``{"pruning.method": "structured", ...}`` for every knob."""
        out: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            part = getattr(self, section.name)
            for f in dataclasses.fields(part):
                value = getattr(part, f.name)
                out[f"{section.name}.{f.name}"] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_flat(cls, params: dict[str, Any]) -> "Policy":
        """Build from flat params; knobs not given keep their defaults."""
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            section, _, knob = key.partition(".")
            nested.setdefault(section, {})[knob] = value
        return cls.from_dict(nested)

    # -- nested dicts / YAML -------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        nested: dict[str, dict[str, Any]] = {}
        for key, value in self.to_flat().items():
            section, _, knob = key.partition(".")
            nested.setdefault(section, {})[knob] = value
        return nested

    @classmethod
    def from_dict(cls, nested: dict[str, dict[str, Any]]) -> "Policy":
        sections = section_types()
        unknown = set(nested) - set(sections)
        if unknown:
            raise ValueError(f"unknown policy section(s): {sorted(unknown)}")
        parts = {}
        for name, part_cls in sections.items():
            values = dict(nested.get(name) or {})
            knobs = knob_fields(part_cls)
            bad = set(values) - set(knobs)
            if bad:
                raise ValueError(f"unknown knob(s) in {name}: {sorted(bad)}")
            parts[name] = part_cls(**{k: coerce(knobs[k], v) for k, v in values.items()})
        return cls(**parts)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> "Policy":
        return cls.from_dict(yaml.safe_load(text) or {})


@functools.cache
def section_types() -> dict[str, type]:
    hints = get_type_hints(Policy)
    return {f.name: hints[f.name] for f in dataclasses.fields(Policy)}


@functools.cache
def knob_fields(part_cls: type) -> dict[str, dataclasses.Field]:
    """The knobs of one policy section (resolved once: ``get_type_hints`` is slow)."""
    hints = get_type_hints(part_cls)
    out = {}
    for f in dataclasses.fields(part_cls):
        f.type = hints[f.name]  # resolve postponed annotations once
        out[f.name] = f
    return out


def coerce(f: dataclasses.Field, value: Any) -> Any:
    """Cast a YAML/Optuna value to the field's type (ints for floats, lists for tuples)."""
    t = f.type
    if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if t is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if str(t).startswith("tuple") and isinstance(value, (list, tuple)):
        return tuple(value)
    if str(t).startswith("tuple") and isinstance(value, str):
        return (value,)
    return value
