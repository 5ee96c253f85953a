"""Warm starts: the standard recipes and the user's own policies, enqueued once right after
the baseline so the front is never worse than these (``warm_start`` in the study file). A
recipe the search space cannot express is skipped (the per-layer one where the space has no
per-layer knobs)."""

from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.distributions import CategoricalDistribution

from autocompress.search.record import read_all, warm_start_attrs
from autocompress.spec.config import StudySpec
from autocompress.spec.policy import Policy
from autocompress.spec.space import SearchSpace

# The seed article's standard recipes: the front should never be worse than these.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "structured-l1-50+static-int8+kd-t4": {
        "pruning": {"method": "structured", "criterion": "l1", "ratio": 0.5},
        "quantization": {"mode": "static_int8"},
        "distillation": {"method": "soft", "alpha": 0.5, "temperature": 4.0},
    },
    "static-int8": {"quantization": {"mode": "static_int8"}},
    "weight-50+kd-t4": {
        "pruning": {"method": "weight", "ratio": 0.5},
        "distillation": {"method": "soft", "alpha": 0.5, "temperature": 4.0},
    },
    "structured-fpgm-30+qat-int8": {
        "pruning": {"method": "structured", "criterion": "fpgm", "ratio": 0.3},
        "quantization": {"mode": "qat_int8"},
    },
    # from the study's sensitivity pass (enqueued only where the space has the per-layer knobs)
    "structured-l1-50-by-sensitivity+static-int8-top1-float": {
        "pruning": {"method": "structured", "criterion": "l1", "ratio": 0.5, "allocation": "sensitivity"},
        "quantization": {"mode": "static_int8", "keep_float_top_k": 1},
    },
}



def warm_start_params(space: SearchSpace, nested: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The Optuna params that make ``space`` sample this policy, or None when the space
    cannot express it (a knob fixed to another value, or a value outside a range)."""
    wanted = Policy.from_dict(nested).to_flat()
    given = {f"{sec}.{k}" for sec, knobs in nested.items() for k in knobs}
    defaults = Policy().to_flat()
    in_space = {k.name for k in space.knobs}
    if any(name not in in_space and wanted[name] != defaults[name] for name in given):
        return None  # the space cannot turn this technique on
    params: dict[str, Any] = {}
    values: dict[str, Any] = {}
    for knob in space.knobs:
        if not knob.active(values):
            continue
        value = wanted[knob.name]
        if knob.distribution is None:
            if knob.name in given and knob.value != value:
                return None
            values[knob.name] = knob.value
            continue
        if knob.name not in given:
            values[knob.name] = None  # left to the sampler
            continue
        if not _in_distribution(knob.distribution, value):
            return None
        params[knob.name] = value
        values[knob.name] = value
    return params


def _in_distribution(dist: Any, value: Any) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return isinstance(value, (int, float)) and not isinstance(value, bool) and dist.low <= value <= dist.high


def enqueue_warm_starts(study: optuna.Study, spec: StudySpec, space: SearchSpace,
                        say: Callable[[str], None]) -> int:
    """Enqueue the warm-start policies once per study; returns how many were enqueued."""
    if any(r.warm_start for r in read_all(study)):
        return 0
    candidates = dict(RECIPES) if spec.warm_start.recipes else {}
    candidates.update({f"user-{i}": p for i, p in enumerate(spec.warm_start.policies)})
    count = 0
    for name, nested in candidates.items():
        params = warm_start_params(space, nested)
        if params is None:
            if name.startswith("user-"):
                say(f"warm start {name} cannot be expressed in this search space; skipped")
            continue
        study.enqueue_trial(params, user_attrs=warm_start_attrs(name), skip_if_exists=True)
        count += 1
    return count
