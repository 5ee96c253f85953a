"""Spending fine-tune compute where the front can still improve.

- **Pre-screening**: a hard constraint on a metric that no later stage can change for this
  policy (FLOPs and params after a one-shot prune; latency and size measured on the deployed
  form, ``trial.cost_metrics``) is checked on the compressed, untrained model; a trial that
  already breaks it ends before any training. Cheap metrics are cached by the
  policy's structural part, number format and runtime (``trial.cost_key``).
- **Multi-objective early stopping** (rule ``dominated``): after epoch ``e`` (from
  ``grace_epochs`` on), a trial stops when at least ``min_dominators`` earlier trials with the
  same number format (and the same runtime when latency or size is an objective and the costs
  are not both deployed-form previews), whose cost
  objectives (measured on their compressed, untrained structure, which fine-tuning does not
  change) are as good or better, had a validation
  accuracy at least ``margin`` higher at the same epoch. It is the promotion test of
  multi-objective successive halving (MO-ASHA, Schmucker et al. 2021) with epochs as rungs,
  reduced to epsilon-dominance so that one rule serves any number of cost objectives.
- **Warm starts**: standard recipes and the user's own policies are enqueued first.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autocompress.spec.config import StudySpec
from autocompress.spec.policy import Policy
from autocompress.spec.space import SearchSpace
from autocompress.trial.run import previews_deployment, structure_key

log = logging.getLogger("autocompress")

# Costs measured on the compressed, untrained model (``cheap_metrics``); fine-tuning leaves them as they are.
COST_METRICS = ("latency_ms", "size_mb", "size_compressed_mb", "flops", "params", "nonzero_params")
RUNTIME_COSTS = {"latency_ms", "size_mb", "size_compressed_mb"}   # differ between runtimes
ACCURACY_METRICS = {"accuracy", "accuracy_drop", "test_accuracy"}
_NOISY = {"latency_ms": 0.05}  # relative tolerance of measured (noisy) metrics

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
}


# -- pre-screening ---------------------------------------------------------------------------
def final_after_compress(policy: Policy) -> set[str]:
    """Metrics whose value the compressed, untrained model already has for this policy."""
    if policy.pruning.method == "gradual":
        return set()  # the structure changes during fine-tuning
    final = {"flops", "params"}
    if previews_deployment(policy):  # latency and size were measured on the deployed form
        final |= {"latency_ms", "size_mb"}
    return final


def prescreen_func(spec: StudySpec, policy: Policy) -> Callable[[dict[str, float]], str | None] | None:
    if not spec.prescreen:
        return None
    final = final_after_compress(policy)
    cons = [c for c in spec.constraints if c.metric in final]
    if not cons:
        return None

    def check(cheap: dict[str, float]) -> str | None:
        for c in cons:
            value = cheap.get(c.metric)
            if value is None:
                continue
            slack = _NOISY.get(c.metric, 0.0) * abs(c.bound)
            if c.violation(value) > slack:
                return f"{c.metric} = {value:.4g} already breaks '{c}' before training"
        return None

    return check


# -- early stopping --------------------------------------------------------------------------
def early_stop_func(spec: StudySpec, study: optuna.Study, policy: Policy, *, epochs: int
                    ) -> Callable[[int, dict[str, float], dict[str, float]], str | None] | None:
    es = spec.early_stopping
    if es.rule == "none" or policy.pruning.method == "gradual":
        return None  # gradual pruning dips accuracy on purpose until its last pruning step
    objectives = {o.metric for o in spec.objectives}
    costs = [m for m in COST_METRICS if m in objectives]
    # Costs the untrained structure cannot tell (batch-N throughput, peak memory): only a
    # trial of the very same structure, format and runtime is known to cost the same.
    unjudged = objectives - set(COST_METRICS) - ACCURACY_METRICS
    mode, backend = policy.quantization.mode, policy.runtime.backend
    # The runtime changes latency and size (ONNX Runtime can be several times faster than
    # eager on the same structure) but never accuracy (predictions are re-checked).
    same_runtime = bool(unjudged or objectives & RUNTIME_COSTS)
    same_structure = structure_key(policy) if unjudged else None

    def comparable(t: optuna.trial.FrozenTrial, cheap: dict[str, float]) -> bool:
        other_policy = t.user_attrs.get("policy", {})
        if other_policy.get("quantization", {}).get("mode", "none") != mode:
            return False
        other = t.user_attrs.get("cheap_metrics")
        if not other:
            return False
        # two deployed-form previews are final costs, comparable across runtimes
        previewed = bool(other.get("deployed")) and bool(cheap.get("deployed"))
        if same_runtime and not previewed and other_policy.get("runtime", {}).get("backend", "eager") != backend:
            return False
        if same_structure is not None and t.user_attrs.get("structure_key") != same_structure:
            return False
        return all(m in other and m in cheap and other[m] <= cheap[m] * (1 + _NOISY.get(m, 1e-9))
                   for m in costs)

    def on_epoch(epoch: int, row: dict[str, float], cheap: dict[str, float]) -> str | None:
        if epoch < max(1, es.grace_epochs) or epoch >= epochs:
            return None  # stopping after the last epoch would save nothing
        acc = row["val_accuracy"]
        better = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            hist = t.user_attrs.get("history") or []
            if t.user_attrs.get("baseline") or len(hist) < epoch or not comparable(t, cheap):
                continue
            if hist[epoch - 1]["val_accuracy"] >= acc + es.margin:
                better.append(t.number)
        if len(better) >= es.min_dominators:
            return (f"dominated at epoch {epoch}: val accuracy {acc:.4f}, trial(s) "
                    f"{', '.join(map(str, better[:5]))} reached >= {acc + es.margin:.4f} at equal or lower cost")
        return None

    return on_epoch


# -- warm starts ---------------------------------------------------------------------------------
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
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return isinstance(value, (int, float)) and not isinstance(value, bool) and dist.low <= value <= dist.high


def enqueue_warm_starts(study: optuna.Study, spec: StudySpec, space: SearchSpace,
                        say: Callable[[str], None]) -> int:
    """Enqueue the warm-start policies once per study; returns how many were enqueued."""
    if any("warm_start" in t.user_attrs for t in study.get_trials(deepcopy=False)):
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
        study.enqueue_trial(params, user_attrs={"warm_start": name}, skip_if_exists=True)
        count += 1
    return count


def load_cheap_cache(study: optuna.Study) -> dict[str, dict[str, float]]:
    cache: dict[str, dict[str, float]] = {}
    for t in study.get_trials(deepcopy=False):
        key, cheap = t.user_attrs.get("cost_key"), t.user_attrs.get("cheap_metrics")
        if key and cheap:
            cache.setdefault(key, cheap)
    return cache


ATTR_KNOWN_AS = "failure_known_as"


def remember_failure(known: dict[str, str], trial: optuna.Trial, key: str, reason: str) -> None:
    """A runtime conversion that failed for ``key`` fails every later trial with that key
    before any training, with this trial's reason (``TrialContext.known_failures``)."""
    trial.set_user_attr(ATTR_KNOWN_AS, key)
    known.setdefault(key, f"{reason} (as trial {trial.number} found; ended before training)")


def load_known_failures(study: optuna.Study) -> dict[str, str]:
    """``remember_failure``'s memory rebuilt from the storage (on resume, and for workers): the
    first trial per key is the one that found it."""
    known: dict[str, str] = {}
    for t in sorted(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)), key=lambda t: t.number):
        key = t.user_attrs.get(ATTR_KNOWN_AS)
        if key and key not in known:
            known[key] = f"{t.user_attrs.get('fail_reason', 'failed')} (as trial {t.number} found; ended before training)"
    return known
