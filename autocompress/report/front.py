"""The trials of a study as records, and its feasible Pareto front."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import optuna
from optuna.trial import TrialState

from autocompress.search.record import TrialRecord, read_all


@dataclass(frozen=True)
class Front:
    metric_names: list[str]
    directions: list[str]
    trials: list[TrialRecord]          # non-dominated feasible COMPLETE trials, by first objective
    baseline: TrialRecord | None


def dominates(a: Sequence[float], b: Sequence[float], signs: Sequence[float]) -> bool:
    better_or_equal = all(s * x <= s * y for x, y, s in zip(a, b, signs))
    return better_or_equal and any(s * x < s * y for x, y, s in zip(a, b, signs))


def objectives(study: optuna.Study) -> tuple[list[str], list[str]]:
    """The study's objective names (Optuna's metric names) and directions."""
    directions = [d.name.lower() for d in study.directions]
    return list(study.metric_names or [f"objective_{i}" for i in range(len(directions))]), directions


def pareto_front(study: optuna.Study, records: list[TrialRecord] | None = None) -> Front:
    """Feasible non-dominated COMPLETE trials (the baseline included when it is on the front)."""
    names, directions = objectives(study)
    records = read_all(study) if records is None else records
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    done = [r for r in records if r.state == TrialState.COMPLETE and r.feasible and r.values]
    front = [r for r in done if not any(dominates(o.values, r.values, signs) for o in done if o is not r)]
    unique: dict[tuple, TrialRecord] = {}   # equal points: keep the earliest
    for r in sorted(front, key=lambda r: r.number):
        unique.setdefault(tuple(r.values), r)
    baseline = next((r for r in records if r.baseline), None)
    ordered = sorted(unique.values(), key=lambda r: signs[0] * r.values[0])
    return Front(names, directions, ordered, baseline)


def state_counts(records: list[TrialRecord]) -> dict[str, int]:
    counts = {s: 0 for s in ("complete", "running", "waiting", "pruned", "fail")}
    for r in records:
        if not r.baseline:
            counts[r.state.name.lower()] = counts.get(r.state.name.lower(), 0) + 1
    return counts
