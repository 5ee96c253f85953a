"""Hypervolume over trials and knob importances: the study's progress, computed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optuna
import pandas as pd
from optuna._hypervolume import compute_hypervolume
from optuna.trial import TrialState

from autocompress.report.front import Front
from autocompress.search.record import TrialRecord

MIN_TRIALS_FOR_IMPORTANCE = 4
HV_MARGIN = 0.1          # reference point: 10% beyond the worst observed value of each objective


@dataclass(frozen=True)
class Importances:
    by_objective: dict[str, dict[str, float]]   # metric -> {knob: importance}, empty when skipped
    note: str = ""                              # why they are missing, if they are


def _signs(directions: list[str]) -> np.ndarray:
    return np.array([1.0 if d == "minimize" else -1.0 for d in directions])


def hypervolume_history(records: list[TrialRecord], front: Front) -> tuple[pd.DataFrame, list[float]]:
    """Hypervolume of the feasible front after each trial, in trial order.

    Every objective is scaled so 0 is the best and 1 the worst value observed among feasible
    complete trials (baseline included); the reference point is ``1 + HV_MARGIN`` on every
    axis and the result is divided by the reference box, so it lies in [0, 1]. Returns the
    frame and the reference point in metric units.
    """
    done = [r for r in records
            if r.state == TrialState.COMPLETE and r.feasible and r.values and all(math.isfinite(v) for v in r.values)]
    if not done:
        return pd.DataFrame(columns=["number", "hypervolume"]), []
    signs = _signs(front.directions)
    losses = np.array([t.values for t in done], dtype=float) * signs   # all minimized
    best, worst = losses.min(axis=0), losses.max(axis=0)
    span = np.where(worst - best > 0, worst - best, 1.0)
    scaled = (losses - best) / span
    ref = np.full(len(signs), 1.0 + HV_MARGIN)
    box = float(np.prod(ref))
    rows, seen = [], []
    for t, point in zip(done, scaled):
        seen.append(point)
        hv = compute_hypervolume(np.array(seen), ref) / box
        rows.append({"number": t.number, "hypervolume": float(hv)})
    reference = list((best + (1.0 + HV_MARGIN) * span) * signs)
    return pd.DataFrame(rows), [float(r) for r in reference]


def param_importances(study: optuna.Study, records: list[TrialRecord], *, seed: int = 0) -> Importances:
    """Optuna's fANOVA importance of every sampled knob, one objective at a time.

    The baseline has no sampled knobs, so the importances are computed on a copy of the study
    without it. Fewer than ``MIN_TRIALS_FOR_IMPORTANCE`` complete trials: skipped, with a note.
    """
    searched = {r.number for r in records if not r.baseline and r.state == TrialState.COMPLETE and r.params}
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.number in searched]
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        return Importances({}, f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials with "
                               f"sampled knobs (has {len(done)})")
    names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        copy = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(level)
    copy.add_trials(done)
    out: dict[str, dict[str, float]] = {}
    notes = []
    for i, name in enumerate(names):
        if len({t.values[i] for t in done}) < 2:
            out[name] = {}
            notes.append(f"{name}: the same in every trial")
            continue
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
            out[name] = dict(optuna.importance.get_param_importances(
                copy, evaluator=evaluator, target=lambda t, i=i: t.values[i]))
        except (RuntimeError, ValueError) as exc:  # e.g. a knob took a single value
            out[name] = {}
            notes.append(f"{name}: {str(exc).splitlines()[0][:160]}")
    if all(not v for v in out.values()) and not notes:
        notes.append("no knob varied across complete trials")
    return Importances(out, "; ".join(notes))
