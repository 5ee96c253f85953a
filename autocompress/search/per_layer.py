"""Per-layer knobs at the study level: whether the space needs the sensitivity pass and for which
formats (``needs``), and the checks made before anything is written (``check_per_layer``): names
of layers or groups that do not exist, ``keep_float_top_k`` larger than the model's number of
layer groups, a ``top_k_format`` the target device cannot run. Each is one ``ConfigError``."""

from __future__ import annotations

from typing import Any, Callable

from optuna.distributions import CategoricalDistribution
from torch import nn

from autocompress.compress.groups import layer_groups
from autocompress.compress.quantization import number_format
from autocompress.compress.quantization.torchao_modes import CONFIGS, why_missing
from autocompress.compress.sensitivity import MEASURED_AS, layout_refusal
from autocompress.errors import ConfigError, suggest
from autocompress.spec.config import StudySpec
from autocompress.spec.policy import Policy, QuantizationPolicy
from autocompress.spec.space import SearchSpace

NOT_RANKED = ("none", "fp16", "bf16")


def values(space: SearchSpace, name: str) -> list[Any]:
    """Every value the knob ``name`` can take (a range: its ends)."""
    knob = next((k for k in space.knobs if k.name == name), None)
    if knob is None:
        return [Policy().to_flat()[name]]
    d = knob.distribution
    if d is None:
        return [knob.value]
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    return [d.low, d.high]


def needs(space: SearchSpace) -> tuple[bool, list[str]]:
    """Whether some policy of ``space`` reads the sensitivity pass, and the formats it ranks by."""
    ranked = max(int(v) for v in values(space, "quantization.keep_float_top_k")) > 0
    formats = list(dict.fromkeys(MEASURED_AS.get(m, m) for m in values(space, "quantization.mode")
                                 if m not in NOT_RANKED)) if ranked else []
    pruned = {"structured", "gradual"} & set(values(space, "pruning.method"))
    by_sensitivity = bool(pruned) and "sensitivity" in values(space, "pruning.allocation")
    return bool(formats) or by_sensitivity, formats


def check_per_layer(spec: StudySpec, space: SearchSpace, teacher: nn.Module, log: Callable[[str], None]) -> None:
    groups = layer_groups(teacher)
    group_names = [g.name for g in groups]
    modules = set(dict(teacher.named_modules()))
    for name in ("quantization.keep_float", "pruning.protect"):
        for names in values(space, name):
            for n in names:
                if n not in modules:
                    raise ConfigError(spec.source, f"search_space.{name}",
                                      f"{n!r} names no layer group or module of the model "
                                      f"{suggest(n, group_names + sorted(modules - {''}))}")
    k = max(int(v) for v in values(space, "quantization.keep_float_top_k"))
    if k > len(groups):
        raise ConfigError(spec.source, "search_space.quantization.keep_float_top_k",
                          f"{k} is more than the model's {len(groups)} layer groups ({', '.join(group_names)})")
    if k == 0:
        return
    combos = [Policy(quantization=QuantizationPolicy(mode=m, per_channel=c, backend=b, keep_float_top_k=k,
                                                     top_k_format=f)).quantization
              for m in values(space, "quantization.mode") if m != "none"
              for c in values(space, "quantization.per_channel") for b in values(space, "quantization.backend")
              for f in values(space, "quantization.top_k_format")]
    for fmt in values(space, "quantization.top_k_format"):
        mine = [q for q in combos if q.top_k_format == fmt]
        if mine and all(layout_refusal(q) for q in mine):
            raise ConfigError(spec.source, "search_space.quantization.top_k_format",
                              f"{fmt!r} pairs with no quantization.mode of the space: {layout_refusal(mine[0])}")
        if fmt in ("float", "per_channel"):
            continue
        reason = (why_missing(fmt) if fmt in CONFIGS else None) or \
            number_format(fmt, True, "torch_ao").unsupported_on(spec.target.device)
        if reason:
            raise ConfigError(spec.source, "search_space.quantization.top_k_format",
                              f"{fmt!r} cannot run on target {spec.target.device}: {reason}")
    log(f"per-layer knobs: {len(groups)} layer groups ({', '.join(group_names[:6])}"
        f"{', ...' if len(groups) > 6 else ''})")
