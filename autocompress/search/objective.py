"""One Optuna trial: sample a policy, run it (``trial.run_trial``), record what happened.

Whatever happens is recorded through ``search.record``: a result, a stop (pre-screened or
stopped early, as PRUNED), or a failure with its reason (every failure has one, so every
failure counts toward the budget); the study goes on.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import optuna
from optuna.trial import FrozenTrial

from autocompress.deploy.artifacts import save_trial_model
from autocompress.errors import TrialFailed
from autocompress.search import record
from autocompress.search.early_stopping import early_stop_func
from autocompress.search.memory import remember_failure
from autocompress.search.prescreen import prescreen_func
from autocompress.spec.config import StudySpec
from autocompress.spec.policy import Policy
from autocompress.spec.space import SearchSpace
from autocompress.trial.context import TrialContext
from autocompress.trial.plan import TrialPlan
from autocompress.trial.result import Stopped, TrialResult
from autocompress.trial.run import run_trial
from autocompress.utils import error_line, file_hashes


@dataclass(frozen=True)
class StudyRun:
    """Everything a search needs, built once before any trial."""
    spec: StudySpec
    space: SearchSpace
    run_dir: Path
    storage_url: str
    study: optuna.Study
    ctx: TrialContext
    log: Callable[[str], None] = print
    trial_callbacks: list[Callable[[FrozenTrial, TrialResult | None], None]] = field(default_factory=list)


def constraint_values(spec: StudySpec, metrics: Mapping[str, float | None]) -> dict[str, float]:
    """The trial's constraint values as Optuna reads them (``Trial.set_constraint``; > 0 is a
    violation). Keys are the constraints' positions, as in studies that stored them as a list.
    A metric not measured yet (pre-screened before training) cannot be judged: 0."""
    return {str(i): c.violation(metrics[c.metric]) if metrics.get(c.metric) is not None else 0.0
            for i, c in enumerate(spec.constraints)}


def _set_constraints(trial: optuna.Trial, spec: StudySpec, metrics: Mapping[str, float | None]) -> None:
    for key, value in constraint_values(spec, metrics).items():
        trial.set_constraint(key, value)


def objective_values(spec: StudySpec, metrics: Mapping[str, float | None]) -> list[float]:
    """The objectives' values; a metric that was not measured fails the trial with that reason
    (Optuna would fail it without one)."""
    values = []
    for name in spec.metric_names:
        value = metrics.get(name)
        if value is None or not math.isfinite(value):
            raise TrialFailed(f"objective {name} was not measured ({value}): the trial has no value to optimize")
        values.append(float(value))
    return values


def make_objective(run: StudyRun) -> Callable[[optuna.Trial], list[float]]:
    def objective(trial: optuna.Trial) -> list[float]:
        started = time.time()
        try:
            return _objective(run, trial)
        finally:
            record.write_wall(trial, time.time() - started)

    return objective


def _sample(run: StudyRun, trial: optuna.Trial) -> Policy:
    try:
        return run.space.sample(trial)
    except Exception as exc:  # recorded, so the trial counts toward the budget (no endless retries)
        reason = f"cannot sample the search space: {error_line(exc)}"
        record.write_failure(trial, reason)
        raise TrialFailed(reason) from exc


def _objective(run: StudyRun, trial: optuna.Trial) -> list[float]:
    spec, plan = run.spec, TrialPlan(_sample(run, trial))
    record.write_start(trial, plan.policy, summary=plan.describe(), keys=(plan.structure_key, run.ctx.preview_key(plan)),
                       pid=os.getpid())
    ctx = replace(run.ctx, seed=spec.seed + trial.number, prescreen=prescreen_func(spec, plan),
                  on_epoch=early_stop_func(spec, run.study, plan, epochs=run.ctx.epochs))
    try:
        result = run_trial(plan.policy, ctx, keep_model=True)
        values = objective_values(spec, result.metrics)
    except Stopped as exc:
        record.write_stop(trial, exc)
        _set_constraints(trial, spec, exc.preview.metrics)  # the sampler learns from a broken constraint
        raise optuna.TrialPruned(exc.reason) from None
    except TrialFailed as exc:
        record.write_failure(trial, exc.reason, known_as=exc.known_as)
        if exc.known_as is not None:
            remember_failure(run.ctx.failures, trial.number, exc.known_as, exc.reason)
        raise
    except KeyboardInterrupt:
        record.write_interrupted(trial)
        raise
    except Exception as exc:  # a technique that cannot apply: record, keep searching
        reason = error_line(exc, 300)
        record.write_failure(trial, reason, traceback=traceback.format_exc())
        raise TrialFailed(reason) from exc
    record.write_result(trial, result)
    _set_constraints(trial, spec, result.metrics)
    _save_model(run, trial, result)
    for cb in run.trial_callbacks:
        cb(trial, result)
    return values


def _save_model(run: StudyRun, trial: optuna.Trial, result: TrialResult) -> None:
    """Keep a feasible trial's model (runs/<name>/trials/<number>/) so export need not retrain."""
    if any(v > 0 for v in constraint_values(run.spec, result.metrics).values()):
        return
    folder = f"trials/{trial.number}"
    if save_trial_model(result, run.run_dir / folder, spec=run.spec, data=run.ctx.data) is not None:
        record.write_model_dir(trial, folder, file_hashes(run.run_dir / folder))
