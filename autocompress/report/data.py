"""What a report shows, computed (no rendering here): the trials frame, the front, the
study summary, hypervolume over trials, parameter importances, failures.

``report_data(study, spec)`` returns a ``ReportData``; ``report.html`` only draws it, and the
tests check this object, not pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from autocompress.report.front import Front, feasible, pareto_front

# Units shown next to every measured number (the metric names already carry most of them).
UNITS: dict[str, str] = {
    "accuracy": "fraction", "test_accuracy": "fraction", "accuracy_drop": "fraction",
    "latency_ms": "ms", "latency_iqr_ms": "ms", "size_mb": "MB", "size_compressed_mb": "MB",
    "flops": "FLOPs/sample", "params": "count", "nonzero_params": "count",
}
METRIC_COLUMNS = list(UNITS)
MIN_TRIALS_FOR_IMPORTANCE = 4
HV_MARGIN = 0.1          # reference point: 10% beyond the worst observed value of each objective


@dataclass(frozen=True)
class Importances:
    by_objective: dict[str, dict[str, float]]   # metric -> {knob: importance}, empty when skipped
    note: str = ""                              # why they are missing, if they are


@dataclass(frozen=True)
class ReportData:
    study_name: str
    summary: dict[str, Any]
    trials: pd.DataFrame                        # one row per trial, baseline included
    front: Front
    hypervolume: pd.DataFrame                   # columns: number, hypervolume (normalized, 0..1)
    hv_reference: list[float]                   # the reference point, in metric units
    importances: Importances
    front_points: list[dict[str, Any]] = field(default_factory=list)  # details of every front point
    failures: list[dict[str, Any]] = field(default_factory=list)      # FAIL / PRUNED trials and why

    @property
    def metric_names(self) -> list[str]:
        return self.front.metric_names

    @property
    def directions(self) -> list[str]:
        return self.front.directions


def is_baseline(t: FrozenTrial) -> bool:
    return bool(t.user_attrs.get("baseline"))


def trials_frame(study: optuna.Study, front: Front | None = None) -> pd.DataFrame:
    """Every trial as one row: state, feasibility, front membership, metrics, sampled knobs."""
    front = front or pareto_front(study)
    on_front = {t.number for t in front.trials}
    rows = []
    for t in study.get_trials(deepcopy=False):
        m = t.user_attrs.get("metrics") or {}
        done = t.state == TrialState.COMPLETE
        row: dict[str, Any] = {
            "number": t.number,
            "state": "BASELINE" if is_baseline(t) else t.state.name,
            "baseline": is_baseline(t),
            "feasible": feasible(t) if done else None,
            "on_front": t.number in on_front,
            "policy": t.user_attrs.get("policy_summary", ""),
        }
        for name in METRIC_COLUMNS:
            v = m.get(name)
            row[name] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
        for i, name in enumerate(front.metric_names):  # objectives as Optuna recorded them
            if name not in row or row[name] is None:
                row[name] = t.values[i] if t.values else None
        for key, value in sorted(t.params.items()):
            row[key] = value
        row["reason"] = _reason(t) or ""
        row["started"] = t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None
        row["duration_s"] = (round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
                             if t.datetime_start and t.datetime_complete else None)
        rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values("number").reset_index(drop=True)
    return frame


def _signs(directions: list[str]) -> np.ndarray:
    return np.array([1.0 if d == "minimize" else -1.0 for d in directions])


def hypervolume_history(study: optuna.Study, front: Front) -> tuple[pd.DataFrame, list[float]]:
    """Hypervolume of the feasible front after each trial, in trial order.

    Every objective is scaled so 0 is the best and 1 the worst value observed among feasible
    complete trials (baseline included); the reference point is ``1 + HV_MARGIN`` on every
    axis and the result is divided by the reference box, so it lies in [0, 1]. Returns the
    frame and the reference point in metric units.
    """
    from optuna._hypervolume import compute_hypervolume

    done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if feasible(t) and t.values and all(math.isfinite(v) for v in t.values)),
                  key=lambda t: t.number)
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


def param_importances(study: optuna.Study, *, seed: int = 0) -> Importances:
    """Optuna's fANOVA importance of every sampled knob, one objective at a time.

    The baseline has no sampled knobs, so the importances are computed on a copy of the study
    without it. Fewer than ``MIN_TRIALS_FOR_IMPORTANCE`` complete trials: skipped, with a note.
    """
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not is_baseline(t) and t.params]
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


def study_summary(study: optuna.Study, spec: dict[str, Any], run_dir: Any = None) -> dict[str, Any]:
    """Model, data, baseline, objectives, constraints, budget, sampler, devices, dates."""
    attrs = study.user_attrs
    trials = study.get_trials(deepcopy=False)
    devices = sorted({_device_label(t.user_attrs["measured_on"]) for t in trials
                      if t.user_attrs.get("measured_on")})
    starts = [t.datetime_start for t in trials if t.datetime_start and not is_baseline(t)]
    ends = [t.datetime_complete for t in trials if t.datetime_complete and not is_baseline(t)]
    counts: dict[str, int] = {}
    for t in trials:
        if not is_baseline(t):
            counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    directions = [d.name.lower() for d in study.directions]
    names = study.metric_names or [f"objective_{i}" for i in range(len(directions))]
    return {
        "study": study.study_name,
        "run_dir": str(run_dir) if run_dir else None,
        "description": spec.get("description") or "",
        "model": attrs.get("model") or _reference(spec.get("model")),
        "data": attrs.get("data") or _reference(spec.get("data")),
        "objectives": [f"{d} {n}" for n, d in zip(names, directions)],
        "constraints": list(attrs.get("constraints") or spec.get("constraints") or []),
        "budget": spec.get("budget") or {},
        "target": spec.get("target") or {},
        "sampler": attrs.get("sampler") or spec.get("sampler") or type(study.sampler).__name__,
        "seed": spec.get("seed"),
        "baseline_metrics": attrs.get("baseline_metrics") or {},
        "devices": devices,
        "started": min(starts).isoformat(timespec="seconds") if starts else None,
        "finished": max(ends).isoformat(timespec="seconds") if ends else None,
        "counts": counts,
    }


def _device_label(m: dict[str, Any]) -> str:
    name = m.get("device_name") or ""
    dev = m.get("device", "?")
    label = f"{dev} ({name})" if name and name != dev else str(dev)
    return f"{label}, {m.get('threads', '?')} thread(s), batch {m.get('batch_size', '?')}, torch {m.get('torch', '?')}"


def _reference(section: Any) -> str:
    if not isinstance(section, dict):
        return ""
    for key, value in section.items():
        if value not in (None, {}, []) and key not in ("kwargs", "checkpoint"):
            return f"{key}:{value}" if isinstance(value, str) else key
    return ""


def front_point(t: FrozenTrial) -> dict[str, Any]:
    """Everything known about one trial: policy, metrics, proof of compression, where measured."""
    a = t.user_attrs
    return {
        "number": t.number,
        "baseline": is_baseline(t),
        "summary": a.get("policy_summary", ""),
        "policy": a.get("policy") or {},
        "params": dict(t.params),
        "metrics": a.get("metrics") or {},
        "proof": a.get("proof") or {},
        "measured_on": a.get("measured_on") or {},
        "timings": a.get("timings") or {},
        "history": a.get("history") or [],
        "epochs_run": a.get("epochs_run"),
        "stopped_early": a.get("stopped_early") or "",
    }


def _reason(t: FrozenTrial) -> str | None:
    """Why a trial failed, was pre-screened or was stopped early."""
    a = t.user_attrs
    return a.get("fail_reason") or a.get("prescreened") or a.get("stopped_early")


def failures(study: optuna.Study) -> list[dict[str, Any]]:
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL, TrialState.PRUNED)):
        reason = _reason(t)
        if not reason:
            reason = "interrupted (re-queued)" if t.state == TrialState.FAIL else "pruned"
        out.append({"number": t.number, "state": t.state.name, "policy": t.user_attrs.get("policy_summary", ""),
                    "reason": reason})
    return out


def report_data(study: optuna.Study, spec: dict[str, Any] | None = None, *, run_dir: Any = None) -> ReportData:
    """Compute everything the report shows (``run_dir``: where the study lives, for hints)."""
    spec = spec or {}
    front = pareto_front(study)
    hv, reference = hypervolume_history(study, front)
    points = list(front.trials)
    if front.baseline is not None and front.baseline not in points:
        points.insert(0, front.baseline)
    return ReportData(
        study_name=study.study_name,
        summary=study_summary(study, spec, run_dir),
        trials=trials_frame(study, front),
        front=front,
        hypervolume=hv,
        hv_reference=reference,
        importances=param_importances(study, seed=int(spec.get("seed") or 0)),
        front_points=[front_point(t) for t in points],
        failures=failures(study),
    )
