"""The trials of a study as rows, and its feasible Pareto front."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState


@dataclass(frozen=True)
class Front:
    metric_names: list[str]
    directions: list[str]
    trials: list[FrozenTrial]          # non-dominated feasible COMPLETE trials, by first objective
    baseline: FrozenTrial | None


def feasible(trial: FrozenTrial) -> bool:
    return all(c <= 0 for c in trial.constraints.values())


def _dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float]) -> bool:
    better_or_equal = all(s * x <= s * y for x, y, s in zip(a, b, signs))
    return better_or_equal and any(s * x < s * y for x, y, s in zip(a, b, signs))


def pareto_front(study: optuna.Study) -> Front:
    """Feasible non-dominated COMPLETE trials (the baseline included when it is on the front)."""
    directions = [d.name.lower() for d in study.directions]
    names = study.metric_names or [f"objective_{i}" for i in range(len(directions))]
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if feasible(t)]
    front = [t for t in done if not any(_dominates(o.values, t.values, signs) for o in done if o is not t)]
    # equal points: keep the earliest
    unique: dict[tuple, FrozenTrial] = {}
    for t in sorted(front, key=lambda t: t.number):
        unique.setdefault(tuple(t.values), t)
    baseline = next((t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("baseline")), None)
    ordered = sorted(unique.values(), key=lambda t: signs[0] * t.values[0])
    return Front(list(names), directions, ordered, baseline)


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts = {s: 0 for s in ("complete", "running", "waiting", "pruned", "fail")}
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("baseline"):
            continue
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    m = t.user_attrs.get("metrics", {})
    return {
        "number": t.number,
        "state": "BASELINE" if t.user_attrs.get("baseline") else t.state.name,
        "policy": t.user_attrs.get("policy_summary", ""),
        "accuracy": m.get("accuracy"),
        "accuracy_drop": m.get("accuracy_drop"),
        "latency_ms": m.get("latency_ms"),
        "size_mb": m.get("size_mb"),
        "flops": m.get("flops"),
        "params": m.get("params"),
        "feasible": feasible(t),
        "reason": t.user_attrs.get("fail_reason") or t.user_attrs.get("prescreened") or "",
    }
