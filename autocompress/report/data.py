"""What a report shows, computed (no rendering here): the trials frame, the front, the
study summary, hypervolume over trials, parameter importances, failures.

``report_data(study, spec)`` returns a ``ReportData``; ``report.html`` only draws it, and the
tests check this object, not pixels. Metric columns, units and formats come from the metric
registry (``metrics.registry.METRICS``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from autocompress.metrics.registry import METRICS
from autocompress.report.analysis import Importances, hypervolume_history, param_importances
from autocompress.report.front import Front, pareto_front
from autocompress.search.record import TrialRecord, read_all, study_info
from autocompress.trial.sensitivity import FILE as SENSITIVITY_FILE

# Units shown next to every measured number, in registry order (the metric names carry most).
UNITS: dict[str, str] = {name: m.unit for name, m in METRICS.items()}
METRIC_COLUMNS = list(UNITS)


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
    sensitivity: dict[str, Any] | None = None   # the study's sensitivity pass (report.sensitivity), if any

    @property
    def metric_names(self) -> list[str]:
        return self.front.metric_names

    @property
    def directions(self) -> list[str]:
        return self.front.directions


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def trial_row(r: TrialRecord, front: Front, on_front: set[int]) -> dict[str, Any]:
    """One trial as one row: state, feasibility, front membership, metrics, sampled knobs."""
    row: dict[str, Any] = {"number": r.number, "state": r.label, "baseline": r.baseline,
                           "feasible": r.feasible if r.state == TrialState.COMPLETE else None,
                           "on_front": r.number in on_front, "policy": r.policy_summary}
    row.update({name: _number(r.metrics.get(name)) for name in METRIC_COLUMNS})
    for i, name in enumerate(front.metric_names):  # objectives as Optuna recorded them
        if row.get(name) is None:
            row[name] = r.values[i] if r.values else None
    row.update(sorted(r.params.items()))
    row["reason"] = r.reason
    row["started"] = r.started.isoformat(timespec="seconds") if r.started else None
    row["duration_s"] = round((r.finished - r.started).total_seconds(), 2) if r.started and r.finished else None
    return row


def trials_frame(records: list[TrialRecord], front: Front) -> pd.DataFrame:
    """Every trial as one row (the CSV/Parquet table)."""
    on_front = {r.number for r in front.trials}
    frame = pd.DataFrame([trial_row(r, front, on_front) for r in records])
    return frame.sort_values("number").reset_index(drop=True) if not frame.empty else frame


def study_summary(study: optuna.Study, spec: dict[str, Any], records: list[TrialRecord],
                  run_dir: Any = None) -> dict[str, Any]:
    """Model, data (and each split's size and origin), baseline, objectives, constraints,
    budget, sampler, devices, dates."""
    info = study_info(study)
    searched = [r for r in records if not r.baseline]
    starts, ends = [r.started for r in searched if r.started], [r.finished for r in searched if r.finished]
    counts: dict[str, int] = {}
    for r in searched:
        counts[r.state.name.lower()] = counts.get(r.state.name.lower(), 0) + 1
    names, directions = pareto_front(study, records).metric_names, [d.name.lower() for d in study.directions]
    return {
        "study": study.study_name, "run_dir": str(run_dir) if run_dir else None,
        "description": spec.get("description") or "",
        "model": info.model or _reference(spec.get("model")), "data": info.data or _reference(spec.get("data")),
        "data_splits": [dataclasses.asdict(s) for s in info.data_splits],  # name, size, origin; [] in older studies
        "objectives": [f"{d} {n}" for n, d in zip(names, directions)],
        "constraints": list(info.constraints or spec.get("constraints") or []),
        "budget": spec.get("budget") or {}, "target": spec.get("target") or {},
        "sampler": info.sampler or spec.get("sampler") or type(study.sampler).__name__,
        "seed": spec.get("seed"), "baseline_metrics": dict(info.baseline_metrics),
        "devices": sorted({_device_label(r.measured_on) for r in records if r.measured_on}),
        "started": min(starts).isoformat(timespec="seconds") if starts else None,
        "finished": max(ends).isoformat(timespec="seconds") if ends else None,
        "counts": counts,
    }


def _device_label(m: Any) -> str:
    label = f"{m.device} ({m.device_name})" if m.device_name and m.device_name != m.device else str(m.device)
    return f"{label}, {m.threads} thread(s), batch {m.batch_size}, torch {m.torch}"


def _reference(section: Any) -> str:
    if not isinstance(section, dict):
        return ""
    for key, value in section.items():
        if value not in (None, {}, []) and key not in ("kwargs", "checkpoint"):
            return f"{key}:{value}" if isinstance(value, str) else key
    return ""


def front_point(r: TrialRecord) -> dict[str, Any]:
    """Everything known about one trial: policy, metrics, proof of compression, where measured."""
    return {
        "number": r.number, "baseline": r.baseline, "summary": r.policy_summary,
        "policy": r.policy.to_dict() if r.policy else {}, "params": dict(r.params), "metrics": dict(r.metrics),
        "proof": dict(r.proof), "measured_on": dataclasses.asdict(r.measured_on) if r.measured_on else {},
        "timings": dict(r.timings), "history": [dataclasses.asdict(e) for e in r.history],
        "epochs_run": r.epochs_run,
        "stopped_early": r.stop.reason if r.stop and r.stop.stage == "early_stopping" else "",
    }


def failures(records: list[TrialRecord]) -> list[dict[str, Any]]:
    """FAIL and PRUNED trials with why."""
    out = []
    for r in records:
        if r.state not in (TrialState.FAIL, TrialState.PRUNED):
            continue
        reason = r.reason or ("interrupted (re-queued)" if r.state == TrialState.FAIL else "pruned")
        out.append({"number": r.number, "state": r.state.name, "policy": r.policy_summary, "reason": reason})
    return out


def _sensitivity(run_dir: Any) -> dict[str, Any] | None:
    """The study's sensitivity pass (``trial.sensitivity``), where it has one."""
    path = Path(run_dir) / SENSITIVITY_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return None


def report_data(study: optuna.Study, spec: dict[str, Any] | None = None, *, run_dir: Any = None) -> ReportData:
    """Compute everything the report shows (``run_dir``: where the study lives, for hints)."""
    spec = spec or {}
    records = read_all(study)
    front = pareto_front(study, records)
    hv, reference = hypervolume_history(records, front)
    points = list(front.trials)
    if front.baseline is not None and front.baseline not in points:
        points.insert(0, front.baseline)
    return ReportData(
        study_name=study.study_name, summary=study_summary(study, spec, records, run_dir),
        trials=trials_frame(records, front), front=front, hypervolume=hv, hv_reference=reference,
        importances=param_importances(study, records, seed=int(spec.get("seed") or 0)),
        front_points=[front_point(r) for r in points], failures=failures(records), sensitivity=_sensitivity(run_dir))
