"""Choose one trial to export: by number, or by rules over the feasible Pareto front.

Rules are extra constraints (``max_accuracy_drop``, ``min_accuracy``) plus an optional metric
to minimize. Among feasible, complete, compressed trials (the baseline is not a candidate)
that meet the rules, the non-dominated ones form the front (over the study's objectives, plus
the minimized metric when it is not one of them). Then the point with the smallest metric is
taken, or, with no metric, the knee: the point nearest the ideal point once every objective
is scaled to [0, 1] across the front.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import optuna
from optuna.trial import TrialState

from autocompress.errors import AutocompressError, ConfigError, suggest
from autocompress.metrics.registry import METRICS, objective_names
from autocompress.report.front import dominates, objectives
from autocompress.search.record import TrialRecord, read_all, study_info

MAX_LISTED = 3


@dataclass(frozen=True)
class Rule:
    trial: int | None = None
    max_accuracy_drop: float | None = None
    min_accuracy: float | None = None
    minimize: str | None = None

    def filters(self) -> list[tuple[str, str, float]]:
        out = []
        if self.max_accuracy_drop is not None:
            out.append(("accuracy_drop", "<=", self.max_accuracy_drop))
        if self.min_accuracy is not None:
            out.append(("accuracy", ">=", self.min_accuracy))
        return out

    def describe(self) -> str:
        if self.trial is not None:
            return f"trial {self.trial} (--trial)"
        conds = " and ".join(f"{m} {op} {b:g}" for m, op, b in self.filters())
        where = f"feasible Pareto front{' with ' + conds if conds else ''}"
        if self.minimize:
            return f"smallest {self.minimize} on the {where}"
        return f"knee of the {where} (nearest the ideal point, objectives scaled to [0, 1]; the default rule)"


@dataclass(frozen=True)
class Choice:
    trial: TrialRecord
    rule: str                 # the rule that picked it, in words
    front_size: int           # points it was chosen among
    notes: tuple[str, ...] = ()


def _metric(t: TrialRecord, name: str) -> float:
    v = t.metrics.get(name)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _violation(value: float, op: str, bound: float) -> float:
    if math.isnan(value):
        return math.inf
    return max(0.0, value - bound) if op == "<=" else max(0.0, bound - value)


def _describe(t: TrialRecord, names: Sequence[str]) -> str:
    vals = ", ".join(f"{n} {_metric(t, n):.4g}" for n in dict.fromkeys(names))
    return f"trial {t.number} ({vals})"


def _values(t: TrialRecord, names: list[str], objective_names: list[str]) -> list[float]:
    out = []
    for n in names:
        if n in objective_names and t.values:
            out.append(t.values[objective_names.index(n)])
        else:
            out.append(_metric(t, n))
    return out


def front_of(trials: list[TrialRecord], names: list[str], directions: list[str],
             objective_names: list[str]) -> list[TrialRecord]:
    """Non-dominated ``trials`` over ``names`` (NaN counts as worst)."""
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    vals = {t.number: [v if not math.isnan(v) else s * math.inf
                       for v, s in zip(_values(t, names, objective_names), signs)] for t in trials}
    return [t for t in trials
            if not any(dominates(vals[o.number], vals[t.number], signs) for o in trials if o is not t)]


def knee(trials: list[TrialRecord], names: list[str], directions: list[str],
         objective_names: list[str]) -> TrialRecord:
    """The point nearest the ideal point, every objective scaled to [0, 1] over ``trials``."""
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    losses = np.array([_values(t, names, objective_names) for t in trials], dtype=float) * signs
    losses = np.where(np.isnan(losses), np.nanmax(losses, axis=0, initial=0.0), losses)
    lo, hi = losses.min(axis=0), losses.max(axis=0)
    scaled = (losses - lo) / np.where(hi > lo, hi - lo, 1.0)
    dist = np.linalg.norm(scaled, axis=1)
    best = min(range(len(trials)), key=lambda i: (round(float(dist[i]), 12), trials[i].number))
    return trials[best]


def choose(study: optuna.Study, rule: Rule) -> Choice:
    """Apply ``rule``; raises ``AutocompressError`` naming the closest points when none fits."""
    names, directions = objectives(study)
    records = read_all(study)
    done = [r for r in records if r.state == TrialState.COMPLETE and not r.baseline]
    if rule.trial is not None:
        return _by_number(study, rule, records, done, (names, directions))
    if rule.minimize is not None and rule.minimize not in METRICS and rule.minimize not in names:
        raise ConfigError(None, "--minimize",
                          f"unknown metric '{rule.minimize}' {suggest(rule.minimize, objective_names())}")
    if not done:
        raise AutocompressError(f"study '{study.study_name}' has no complete compressed trial yet")
    ok = [t for t in done if t.feasible]
    if not ok:
        closest = sorted(done, key=lambda t: (sum(max(0.0, c) for c in t.constraints),
                                              t.number))[:MAX_LISTED]
        constraints = ", ".join(study_info(study).constraints) or "the constraints"
        raise AutocompressError(f"no complete trial meets {constraints}; closest: "
                                + "; ".join(_describe(t, names) for t in closest))
    filters = rule.filters()
    passing = [t for t in ok if all(_violation(_metric(t, m), op, b) == 0 for m, op, b in filters)]
    if not passing:
        shown = [m for m, _, _ in filters] + names
        closest = sorted(ok, key=lambda t: (sum(_violation(_metric(t, m), op, b) for m, op, b in filters),
                                            t.number))[:MAX_LISTED]
        conds = " and ".join(f"{m} {op} {b:g}" for m, op, b in filters)
        raise AutocompressError(f"no feasible trial has {conds}; closest: "
                                + "; ".join(_describe(t, shown) for t in closest))
    keys, dirs = list(names), list(directions)
    if rule.minimize is not None and rule.minimize not in keys:
        keys.append(rule.minimize)
        dirs.append("minimize")
    front = front_of(passing, keys, dirs, names)
    if rule.minimize is not None:
        def score(t: TrialRecord) -> float:
            v = _values(t, [rule.minimize], names)[0]
            return math.inf if math.isnan(v) else v

        best = min(score(t) for t in front)
        tied = [t for t in front if score(t) == best]
        chosen = tied[0] if len(tied) == 1 else knee(tied, names, directions, names)
    else:
        chosen = knee(front, names, directions, names)
    return Choice(chosen, rule.describe(), len(front))


def _by_number(study: optuna.Study, rule: Rule, records: list[TrialRecord], done: list[TrialRecord],
               objective: tuple[list[str], list[str]]) -> Choice:
    names, directions = objective
    t = next((r for r in records if r.number == rule.trial), None)
    if t is None:
        raise AutocompressError(f"study '{study.study_name}' has no trial {rule.trial} "
                                f"(trials 0..{len(records) - 1})")
    if t.baseline:
        raise AutocompressError(f"trial {t.number} is the baseline (no compression): nothing to export")
    if t.state != TrialState.COMPLETE:
        raise AutocompressError(f"trial {t.number} is {t.state.name}, not COMPLETE"
                                + (f" ({t.reason})" if t.reason else "") + ": it has no model to export")
    notes = []
    if not t.feasible:
        notes.append("this trial breaks a constraint of the study")
    front = front_of([d for d in done if d.feasible], names, directions, names)
    if t not in front:
        notes.append("this trial is not on the feasible Pareto front")
    return Choice(t, rule.describe(), len(front), tuple(notes))
