"""The Optuna study: sampler, storage, baseline, budget, resume, one objective per trial.

``run_study(spec)`` runs (or resumes) a study; running it again continues where it stopped.
Every metric, the policy, the proof of compression and phase timings go into each trial's
user attributes; a trial that breaks is recorded as FAIL with its reason and the study
goes on.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import FrozenTrial

from autocompress.trial.baseline import prepare_baseline
from autocompress.search.budget import (ATTR_BASELINE, ATTR_INTERRUPTED, ATTR_REASON, BudgetSpent, budget_lock,
                                 budgeted_ask, running, wait_for_running)
from autocompress.search.checks import check_augmentation, check_existing, check_forward
from autocompress.spec.config import StudySpec, spec_to_yaml
from autocompress.search.efficiency import (early_stop_func, enqueue_warm_starts, load_cheap_cache, load_known_failures,
                                     prescreen_func, remember_failure)
from autocompress.errors import AutocompressError, TrialFailed
from autocompress.spec.space import SearchSpace
from autocompress.search.storage import STORAGE_FILE, STUDY_FILE, check_url, default_run_dir, default_storage_url, open_storage
from autocompress.trial.run import Stopped, TargetSettings, TrialContext, TrialResult, cost_key, run_trial, structure_key
from autocompress.utils import atomic_write_text, error_line, optuna_experimental, redact_url, resolve_device, seed_everything
from autocompress.zoo import build_data, build_model

log = logging.getLogger("autocompress")

# user attribute names (the report and export read them)
ATTR_POLICY = "policy"
ATTR_METRICS = "metrics"


# -- sampler and constraints ---------------------------------------------------------------
def constraint_values(spec: StudySpec, metrics: dict[str, float]) -> dict[str, float]:
    """The trial's constraint values as Optuna reads them (``Trial.set_constraint``; > 0 is a
    violation). Keys are the constraints' positions, as in studies that stored them as a list.
    A metric not measured yet (pre-screened before training) cannot be judged: 0."""
    return {str(i): c.violation(metrics[c.metric]) if c.metric in metrics else 0.0
            for i, c in enumerate(spec.constraints)}


def _set_constraints(trial: optuna.Trial, spec: StudySpec, metrics: dict[str, float]) -> None:
    for key, value in constraint_values(spec, metrics).items():
        trial.set_constraint(key, value)


def make_sampler(spec: StudySpec, *, worker_offset: int = 0) -> optuna.samplers.BaseSampler:
    """Every sampler reads the constraint values each trial sets (``_set_constraints``)."""
    seed = spec.seed + worker_offset
    if spec.sampler == "nsga2":
        pop = max(4, min(20, (spec.budget.trials or 40) // 4))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    if spec.sampler == "tpe":
        with optuna_experimental():  # group=True
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                              n_startup_trials=min(10, max(3, (spec.budget.trials or 30) // 3)))
    if spec.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


# -- the run ---------------------------------------------------------------------------------
@dataclass
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


def prepare(spec: StudySpec, *, out: Path | None = None, storage: str | None = None,
            log: Callable[[str], None] = print, create: bool = True, device: str | None = None,
            threads: int | None = None, worker_index: int = 0) -> StudyRun:
    """Validate everything that can be validated (data, model, checkpoint, storage, existing
    study) before a run directory is written, then open or create the study and baseline.

    ``device``/``threads`` pin this process (one worker per GPU; CPU cores split between
    local workers); ``worker_index`` offsets the sampler seed so workers do not propose the
    same policies.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    space = spec.load_space()
    run_dir = Path(out) if out else default_run_dir(spec.name)
    url = storage or spec.storage
    if url:
        check_url(url, "storage", spec.source)
    data, teacher = build_inputs(spec)
    check_augmentation(spec, space, data, log)
    if all(k.distribution is None for k in space.knobs):
        log("warning: the search space fixes every knob: each trial runs the same policy (with its own seed)")

    fresh_dir = not (run_dir / STUDY_FILE).exists()
    url = url or default_storage_url(run_dir)
    if url.startswith("sqlite") and fresh_dir and not create:
        raise AutocompressError(f"no study under {run_dir}")
    if not url.startswith("sqlite"):
        rdb = open_storage(url, heartbeat=False)  # fail on an unreachable database before touching the disk
        check_existing(rdb, spec, space)
    # What was in --out before: a failed creation removes only what it added, never a user's folder.
    kept = {child.name for child in run_dir.iterdir()} if run_dir.is_dir() else None
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        hb = spec.heartbeat
        rdb = open_storage(url, heartbeat_s=hb.interval_s, grace_s=hb.grace_s, max_retry=hb.max_retry)
        check_existing(rdb, spec, space)
        if fresh_dir:
            if storage and storage != spec.storage:  # so status/report/export find it again
                atomic_write_text(run_dir / STORAGE_FILE, redact_url(storage) + "\n")
            atomic_write_text(run_dir / STUDY_FILE, spec_to_yaml(spec))
        study = optuna.create_study(study_name=spec.name, storage=rdb, directions=spec.directions,
                                    sampler=make_sampler(spec, worker_offset=worker_index),
                                    load_if_exists=True)
        with optuna_experimental():
            study.set_metric_names(spec.metric_names)
    except BaseException:
        if fresh_dir:
            _remove_fresh(run_dir, kept)
        raise
    for key, value in (("model", spec.model.reference), ("data", spec.data.reference),
                       ("objectives", [f"{o.direction} {o.metric}" for o in spec.objectives]),
                       ("constraints", [str(c) for c in spec.constraints]), ("sampler", spec.sampler),
                       ("study_yaml", spec_to_yaml(spec)),
                       ("study_source", str(Path(spec.source).resolve()) if spec.source else None)):
        study.set_user_attr(key, value)

    ctx = make_context(spec, data, teacher, device=device)
    from filelock import FileLock

    with FileLock(str(run_dir / ".baseline.lock")):  # one worker trains it, the others load it
        ctx.baseline_metrics = prepare_baseline(teacher, ctx, spec, run_dir, log=log)
        _add_baseline_trial(study, spec, ctx.baseline_metrics)
        n = enqueue_warm_starts(study, spec, space, log)
        if n:
            log(f"enqueued {n} warm-start policies")
    teacher.eval().requires_grad_(False)
    study.set_user_attr("baseline_metrics", ctx.baseline_metrics)
    ctx.data = data.subset_train(spec.budget.train_fraction, spec.seed)
    ctx.cheap_cache = load_cheap_cache(study)
    ctx.known_failures = load_known_failures(study)
    return StudyRun(spec, space, run_dir, url, study, ctx, log)


def build_inputs(spec: StudySpec) -> tuple[Any, Any]:
    """The study's data and its model (untrained, or loaded from the checkpoint), checked to
    fit each other. Shared by ``prepare``, export (re-running a trial) and apply."""
    data = build_data(spec.data, seed=spec.seed, source=spec.source)
    seed_everything(spec.seed)  # the baseline's initial weights
    teacher = build_model(spec.model, num_classes=data.num_classes, input_shape=data.input_shape,
                          source=spec.source)
    check_forward(teacher, data, spec)
    return data, teacher


def make_context(spec: StudySpec, data: Any, teacher: Any, *, device: str | None = None) -> TrialContext:
    """The context the study's trials run in, before the baseline is trained or loaded into
    ``teacher`` (``autocompress.trial.baseline.prepare_baseline``)."""
    target = TargetSettings(device=spec.target.device, batch_size=spec.target.batch_size,
                            threads=spec.target.threads, max_time_s=spec.target.max_time_s,
                            throughput_batch_size=spec.target.throughput_batch_size)
    return TrialContext(data=data, teacher=teacher, baseline_metrics={}, device=resolve_device(device or spec.device),
                        target=target, epochs=spec.budget.epochs, seed=spec.seed)


def spec_from_storage(study_name: str, storage: str) -> StudySpec:
    """The study file as stored with the study: workers on other machines need only its name
    and the storage URL. Relative paths resolve against the original study file's folder."""
    import yaml

    from autocompress.spec.config import spec_from_dict

    rdb = open_storage(storage, heartbeat=False)
    try:
        study_id = rdb.get_study_id_from_name(study_name)
    except KeyError:
        raise AutocompressError(f"no study named '{study_name}' in {redact_url(storage)}") from None
    attrs = rdb.get_study_user_attrs(study_id)
    if "study_yaml" not in attrs:
        raise AutocompressError(f"study '{study_name}' was not created by autocompress (no study_yaml)")
    source = attrs.get("study_source") or f"{study_name} (from storage)"
    return spec_from_dict(yaml.safe_load(attrs["study_yaml"]), source)


def _remove_fresh(run_dir: Path, kept: set[str] | None) -> None:
    """Undo a failed creation: the run directory when this run made it, else only the entries
    that were not there before (``kept``)."""
    import shutil

    if kept is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for child in run_dir.iterdir():
        if child.name in kept:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _add_baseline_trial(study: optuna.Study, spec: StudySpec, metrics: dict[str, float]) -> None:
    if any(t.user_attrs.get(ATTR_BASELINE) for t in study.get_trials(deepcopy=False)):
        return
    from autocompress.spec.policy import Policy

    study.add_trial(optuna.trial.create_trial(
        values=[metrics[m] for m in spec.metric_names],
        user_attrs={ATTR_BASELINE: True, ATTR_METRICS: metrics, ATTR_POLICY: Policy().to_dict(),
                    "policy_summary": "baseline (no compression)"},
        constraints=constraint_values(spec, metrics) or None,
    ))


def make_objective(run: StudyRun) -> Callable[[optuna.Trial], list[float]]:
    spec, ctx = run.spec, run.ctx

    def objective(trial: optuna.Trial) -> list[float]:
        started = time.time()
        try:
            policy = run.space.sample(trial)
        except Exception as exc:  # recorded, so the trial counts toward the budget (no endless retries)
            trial.set_user_attr(ATTR_REASON, f"cannot sample the search space: {type(exc).__name__}: {exc}")
            raise
        trial.set_user_attr(ATTR_POLICY, policy.to_dict())
        trial.set_user_attr("policy_summary", policy.describe())
        trial.set_user_attr("worker_pid", os.getpid())
        trial_ctx = replace(ctx, seed=spec.seed + trial.number,
                            prescreen=prescreen_func(spec, policy),
                            on_epoch=early_stop_func(spec, run.study, policy, epochs=ctx.epochs))
        trial.set_user_attr("structure_key", structure_key(policy))
        trial.set_user_attr("cost_key", cost_key(policy))
        result: TrialResult | None = None
        try:
            result = run_trial(policy, trial_ctx, keep_model=True)
        except Stopped as exc:
            trial.set_user_attr(ATTR_METRICS, exc.metrics)
            trial.set_user_attr("cheap_metrics", exc.metrics)
            trial.set_user_attr("history", exc.history)
            trial.set_user_attr("epochs_run", len(exc.history))
            trial.set_user_attr("prescreened" if exc.stage == "prescreen" else "stopped_early", exc.reason)
            _set_constraints(trial, spec, exc.metrics)  # the sampler learns from a broken constraint
            raise optuna.TrialPruned(exc.reason) from None
        except TrialFailed as exc:
            trial.set_user_attr(ATTR_REASON, exc.reason)
            if exc.known_as:
                remember_failure(ctx.known_failures, trial, exc.known_as, exc.reason)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr(ATTR_INTERRUPTED, True)
            raise
        except Exception as exc:  # a technique that cannot apply: record, keep searching
            reason = error_line(exc, 300)
            trial.set_user_attr(ATTR_REASON, reason)
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            raise TrialFailed(reason) from exc
        finally:
            trial.set_user_attr("wall_s", round(time.time() - started, 3))
        _record(trial, result)
        _set_constraints(trial, spec, result.metrics)
        _save_model(run, trial, result)
        for cb in run.trial_callbacks:
            cb(trial, result)
        return [result.metrics[m] for m in spec.metric_names]

    return objective


def _record(trial: optuna.Trial, result: TrialResult) -> None:
    trial.set_user_attr(ATTR_METRICS, result.metrics)
    trial.set_user_attr("proof", result.proof)
    trial.set_user_attr("history", result.history)
    trial.set_user_attr("timings", result.timings)
    trial.set_user_attr("measured_on", result.measured_on)
    trial.set_user_attr("epochs_run", result.epochs_run)
    trial.set_user_attr("cheap_metrics", result.cheap_metrics)


def _save_model(run: StudyRun, trial: optuna.Trial, result: TrialResult) -> None:
    """Keep a feasible trial's model (runs/<name>/trials/<number>/) so export need not retrain."""
    from autocompress.deploy.artifacts import save_trial_model

    saved = save_trial_model(result, run.run_dir / "trials" / str(trial.number), spec=run.spec, ctx=run.ctx)
    if saved is not None:
        trial.set_user_attr("model_dir", f"trials/{trial.number}")
    result.model = None


def optimize(run: StudyRun, *, n_trials: int | None = None, timeout: float | None = None,
             on_trial_end: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> None:
    """Run trials until the study's budget (or ``n_trials``/``timeout``) is used up.

    The budget counts finished trials already in the storage, so a resumed study runs only
    what is missing, and several workers on one study stop together.
    """
    budget = n_trials if n_trials is not None else run.spec.budget.trials
    timeout = timeout if timeout is not None else run.spec.budget.timeout
    objective = make_objective(run)
    start = time.monotonic()
    callbacks = [on_trial_end] if on_trial_end else []
    lock = lambda: budget_lock(run.study, run.storage_url, run.run_dir)  # noqa: E731
    with budgeted_ask(run.study, budget, lock):
        while timeout is None or time.monotonic() - start < timeout:
            try:
                run.study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=callbacks)
            except BudgetSpent:
                if not running(run.study):
                    break
                # Other workers' trials are running; if one died, its trial is failed after
                # the heartbeat grace period and re-enqueued, and this worker runs it.
                wait_for_running(run.study, poll_s=min(5.0, run.spec.heartbeat.interval_s))


def run_study(spec: StudySpec, *, out: Path | None = None, storage: str | None = None,
              n_trials: int | None = None, timeout: float | None = None,
              log: Callable[[str], None] = print,
              on_trial_end: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> StudyRun:
    """Run or resume the study described by ``spec``; returns the run (study, run dir, ...).

    Example:
        >>> from autocompress import load_study_spec, run_study
        >>> run = run_study(load_study_spec("studies/digits_cnn.yaml"))  # doctest: +SKIP
    """
    run = prepare(spec, out=out, storage=storage, log=log)
    log(f"study '{spec.name}' in {run.run_dir} (storage {redact_url(run.storage_url)})")
    optimize(run, n_trials=n_trials, timeout=timeout, on_trial_end=on_trial_end)
    return run
