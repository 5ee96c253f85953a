"""Multi-objective early stopping: rule ``dominated`` and rule ``halving``.

After epoch ``e`` (from ``grace_epochs`` on), a trial stops when at least ``min_dominators``
earlier trials with the same number format (and the same runtime when a runtime-dependent
cost is an objective and the costs are not both deployed-form previews), whose cost
objectives (measured on their compressed, untrained structure, which fine-tuning does not
change) are as good or better, had a validation accuracy at least ``margin`` higher at the
same epoch. It is the promotion test of multi-objective successive halving (MO-ASHA,
Schmucker et al. 2021) with epochs as rungs, reduced to epsilon-dominance so that one rule
serves any number of cost objectives. Which costs the preview measures, which differ between
runtimes and how noisy they are comes from the metric registry.

Rule ``halving`` is asynchronous successive halving with a multi-objective promotion rule:
the rungs are epochs ``min_epochs * eta**k`` below the trial's last epoch; at a rung a trial
goes on only if fewer than ``1/eta`` of the trials that reached that rung (with comparable
costs, as above) come before it in NSGA-II's order of (val accuracy at that rung, previewed
cost objectives): non-dominated front first, then crowding distance. Short fine-tunes for
many, the full budget for the promising: the epochs it saves buy more trials within a compute
budget.
"""

from __future__ import annotations

from typing import Callable

import optuna
from optuna.trial import TrialState

from autocompress.metrics.registry import METRICS, previewed_costs, quality_names
from autocompress.search.record import TrialRecord, read_all
from autocompress.spec.config import StudySpec
from autocompress.training.loop import Epoch
from autocompress.trial.plan import TrialPlan
from autocompress.trial.result import Preview, Screen


def early_stop_func(spec: StudySpec, study: optuna.Study, plan: TrialPlan, *, epochs: int
                    ) -> Callable[[int, Epoch, Preview], Screen] | None:
    es = spec.early_stopping
    if es.rule == "none" or not plan.pipeline.structure_final_after_compress:
        return None  # a structure that still changes while training dips accuracy on purpose
    comparable = _comparable(spec, plan)
    if es.rule == "halving":
        return _halving(spec, study, comparable, epochs=epochs)

    def on_epoch(epoch: int, row: Epoch, preview: Preview) -> Screen:
        if epoch < max(1, es.grace_epochs) or epoch >= epochs:
            return Screen()  # stopping after the last epoch would save nothing
        acc = row.val_accuracy
        found = {r.number: comparable(r, preview) for r in read_all(study, (TrialState.COMPLETE, TrialState.PRUNED))
                 if not r.baseline and len(r.history) >= epoch and r.history[epoch - 1].val_accuracy >= acc + es.margin}
        clear = [n for n, how in found.items() if how == "clear"]
        better = [n for n, how in found.items() if how]
        if len(better) < es.min_dominators:
            return Screen()
        reason = (f"dominated at epoch {epoch}: val accuracy {acc:.4f}, trial(s) "
                  f"{', '.join(map(str, better[:5]))} reached >= {acc + es.margin:.4f} at equal or lower cost")
        # a dominance that rests on a latency within its noise: measure this trial's again first
        return Screen(reason, borderline=len(clear) < es.min_dominators and not preview.remeasured)

    return on_epoch


def rungs(min_epochs: int, eta: int, epochs: int) -> list[int]:
    """The epochs at which successive halving judges a trial: ``min_epochs * eta**k`` < ``epochs``."""
    out, r = [], max(1, min_epochs)
    while r < epochs:
        out.append(r)
        r *= eta
    return out


def fronts(points: list[tuple[float, ...]]) -> list[int]:
    """Non-dominated sorting: each point's front index (0 = not dominated), all objectives minimized."""
    left, rank, level = set(range(len(points))), [0] * len(points), 0
    while left:
        front = {i for i in left if not any(_dominates(points[j], points[i]) for j in left if j != i)}
        for i in front:
            rank[i] = level
        left -= front
        level += 1
    return rank


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def crowding(points: list[tuple[float, ...]]) -> list[float]:
    """NSGA-II's crowding distance of each point within ``points`` (one front): the sum over
    objectives of the normalized gap between its neighbours; the extremes get infinity."""
    n = len(points)
    dist = [0.0] * n
    for m in range(len(points[0]) if points else 0):
        order = sorted(range(n), key=lambda i: points[i][m])
        lo, hi = points[order[0]][m], points[order[-1]][m]
        dist[order[0]] = dist[order[-1]] = float("inf")
        for prev, i, nxt in zip(order, order[1:], order[2:]):
            dist[i] += (points[nxt][m] - points[prev][m]) / (hi - lo) if hi > lo else 0.0
    return [round(d, 9) for d in dist]   # equal gaps tie, whatever the float rounding


def promoted(me: tuple[float, ...], others: list[tuple[float, ...]], eta: int) -> bool:
    """Whether a trial at a rung goes on: fewer than ``(len(others) + 1) / eta`` of the rung's
    trials come strictly before it in NSGA-II's order (front index, then crowding distance,
    larger first), so a rung keeps about 1/eta of its trials however many share the first
    front. A rung with fewer than ``eta`` trials promotes all."""
    points = [me, *others]
    if len(points) < eta:
        return True
    rank = fronts(points)
    members = [i for i, r in enumerate(rank) if r == rank[0]]
    crowd = dict(zip(members, crowding([points[i] for i in members])))
    ahead = sum(r < rank[0] or (r == rank[0] and crowd[i] > crowd[0]) for i, r in enumerate(rank) if i)
    return ahead < len(points) / eta


def _halving(spec: StudySpec, study: optuna.Study, comparable: Callable[[TrialRecord, Preview], str], *,
             epochs: int) -> Callable[[int, Epoch, Preview], Screen]:
    es = spec.early_stopping
    at = set(rungs(es.min_epochs, es.eta, epochs))
    costs = [m for m in previewed_costs() if m in spec.metric_names]
    sign = {o.metric: 1.0 if o.direction == "minimize" else -1.0 for o in spec.objectives}

    def point(acc: float, preview: Preview) -> tuple[float, ...] | None:
        values = [preview.metrics.get(m) for m in costs]
        if any(v is None for v in values):
            return None
        return (-acc, *(sign[m] * v for m, v in zip(costs, values)))

    def on_epoch(epoch: int, row: Epoch, preview: Preview) -> Screen:
        me = point(row.val_accuracy, preview)
        if epoch not in at or me is None:
            return Screen()
        others = [p for r in read_all(study, (TrialState.COMPLETE, TrialState.PRUNED))
                  if not r.baseline and len(r.history) >= epoch and comparable(r, preview, basis_only=True)
                  and (p := point(r.history[epoch - 1].val_accuracy, r.preview)) is not None]
        if promoted(me, others, es.eta):
            return Screen()
        return Screen(f"not promoted at epoch {epoch} (successive halving, eta {es.eta}): val accuracy "
                      f"{row.val_accuracy:.4f} and its costs lie behind the best 1/{es.eta} of the "
                      f"{len(others) + 1} trials at this rung")

    return on_epoch


def _comparable(spec: StudySpec, plan: TrialPlan) -> Callable[[TrialRecord, Preview], str]:
    """Whether another trial's costs are known to be as good as or better than this one's."""
    objectives = set(spec.metric_names)
    costs = [m for m in previewed_costs() if m in objectives]
    # Costs the untrained structure cannot tell (batch-N throughput, peak memory, energy): only a
    # trial of the very same structure, format and runtime is known to cost the same.
    unjudged = objectives - set(costs) - quality_names()
    # The runtime changes latency and size (ONNX Runtime can be several times faster than
    # eager on the same structure) but never accuracy (predictions are re-checked).
    same_runtime = bool(unjudged) or any(METRICS[m].runtime_dependent for m in costs)
    same_structure = plan.structure_key if unjudged else None
    fmt, runtime = plan.pipeline.number_format.name, plan.runtime.name

    def comparable(other: TrialRecord, preview: Preview, *, basis_only: bool = False) -> str:
        """"clear" (costs as good or better), "within noise" (only within a cost's noise), or "";
        ``basis_only``: "same basis" where the costs may be compared at all, whatever they are."""
        if other.policy is None or other.preview is None:
            return ""
        theirs = TrialPlan(other.policy)
        if theirs.pipeline.number_format.name != fmt:
            return ""
        previewed = other.preview.deployed and preview.deployed   # final costs: comparable across runtimes
        if same_runtime and not previewed and theirs.runtime.name != runtime:
            return ""
        if same_structure is not None and other.structure_key != same_structure:
            return ""
        if basis_only:
            return "same basis"
        mine, them = preview.metrics, other.preview.metrics
        if not all(m in them and m in mine and METRICS[m].better(them[m], mine[m]) for m in costs):
            return ""
        return "clear" if all(them[m] <= mine[m] for m in costs) else "within noise"

    return comparable
