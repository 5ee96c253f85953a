"""The Optuna study: validate, create or resume, train the baseline once, run trials to budget.

``run_study(spec)`` runs (or resumes) a study; running it again continues where it stopped.
What each trial produced is stored through ``search.record``; a trial that breaks is
recorded as FAIL with its reason and the study goes on.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import optuna
import torch
import yaml
from filelock import FileLock
from optuna.trial import FrozenTrial

from autocompress.errors import AutocompressError
from autocompress.search import record
from autocompress.search.budget import BudgetSpent, budget_lock, budgeted_ask, running, wait_for_running
from autocompress.search.candidates import enqueue_filtered
from autocompress.search.checks import (check_augmentation, check_depth, check_devices, check_existing,
                                       check_formats)
from autocompress.search.context import build_inputs, trial_context, with_baseline
from autocompress.search.memory import load_failures, load_previews
from autocompress.search.per_layer import check_per_layer
from autocompress.search.per_layer import needs as per_layer_needs
from autocompress.search.objective import StudyRun, constraint_values, make_objective
from autocompress.search.sampler import Rule, make_sampler
from autocompress.search.storage import (STORAGE_FILE, STUDY_FILE, check_url, default_run_dir, default_storage_url,
                                         open_storage)
from autocompress.search.warm_start import enqueue_warm_starts
from autocompress.spec.config import StudySpec, spec_from_dict, spec_to_yaml
from autocompress.spec.outputs import check_out_dir
from autocompress.spec.space import SearchSpace
from autocompress.trial.context import KnownFailure
from autocompress.trial.sensitivity import load_or_measure
from autocompress.utils import atomic_write_text, optuna_experimental, redact_url

__all__ = ["Placement", "StudyRun", "optimize", "prepare", "remove_fresh", "run_study", "spec_from_storage"]


@dataclass(frozen=True)
class Placement:
    """Where this process runs trials: one worker per GPU, the CPU cores split between local
    workers; ``worker_index`` offsets the sampler seed so workers do not propose the same policies."""
    device: str | None = None       # training device (None: the study's ``device``)
    threads: int | None = None
    worker_index: int = 0
    where: tuple[str, str] = ("", "")   # (node, GPU) a cluster placed the worker on, for measured_on


def prepare(spec: StudySpec, *, out: Path | None = None, storage: str | None = None,
            log: Callable[[str], None] = print, create: bool = True, placement: Placement = Placement()) -> StudyRun:
    """Validate everything that can be validated (devices, run directory, storage URL, data,
    model, checkpoint, existing study) before a run directory is written, then open or create
    the study and baseline."""
    check_devices(spec, placement.device, local_workers=create and placement.device is None)
    run_dir = Path(out) if out else default_run_dir(spec.name)
    check_out_dir(run_dir, "--out" if out else "run directory")
    if storage:
        check_url(storage, "--storage", None)
    elif spec.storage:
        check_url(spec.storage, "storage", spec.source)
    if placement.threads:
        torch.set_num_threads(placement.threads)
    space = spec.load_space()
    data, teacher = build_inputs(spec)
    check_augmentation(spec, space, data, log)
    check_depth(spec, space, teacher, log)
    check_formats(spec, space, log)
    check_per_layer(spec, space, teacher, log)
    if all(k.distribution is None for k in space.knobs):
        log("warning: the search space fixes every knob: each trial runs the same policy (with its own seed)")
    ctx = replace(trial_context(spec, data, teacher, device=placement.device), where=placement.where)
    failures: dict[str, KnownFailure] = {}
    learned = lambda: [Rule(f.knobs, f.reason) for f in failures.values()]  # noqa: E731
    study, url = _open_study(spec, space, run_dir, storage, create=create,
                             sampler=make_sampler(spec, space, learned, worker_offset=placement.worker_index))
    with FileLock(str(run_dir / ".baseline.lock")):  # one worker trains it, the others load it
        ctx = with_baseline(ctx, spec, run_dir, log=log)
        _add_baseline_trial(study, spec, ctx.baseline_metrics)
        needed, formats = per_layer_needs(space)
        if needed:   # measured once, under the same lock: the other workers load it
            ctx = replace(ctx, sensitivity=load_or_measure(ctx, run_dir, formats, say=log))
        if n := enqueue_warm_starts(study, spec, space, log):
            log(f"enqueued {n} warm-start policies")
    record.write_study_info(study, replace(record.study_info(study), baseline_metrics=ctx.baseline_metrics,
                                           data_splits=ctx.data.splits))  # the splits the trials see
    records = record.read_all(study)
    failures.update(load_failures(records))
    ctx = replace(ctx, previews=load_previews(records), failures=failures)
    return StudyRun(spec, space, run_dir, url, study, ctx, log)


def _open_study(spec: StudySpec, space: SearchSpace, run_dir: Path, storage: str | None, *, create: bool,
                sampler: optuna.samplers.BaseSampler) -> tuple[optuna.Study, str]:
    """Open or create the study, writing the run directory only once nothing else can fail;
    a failed creation removes what it added (never a folder the user already had)."""
    fresh_dir = not (run_dir / STUDY_FILE).exists()
    url = storage or spec.storage or default_storage_url(run_dir)
    if url.startswith("sqlite") and fresh_dir and not create:
        raise AutocompressError(f"no study under {run_dir}")
    if not url.startswith("sqlite"):
        check_existing(open_storage(url, heartbeat=False), spec, space)  # an unreachable database fails here
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
                                    sampler=sampler, load_if_exists=True)
        with optuna_experimental():
            study.set_metric_names(spec.metric_names)
    except BaseException:
        if fresh_dir:
            remove_fresh(run_dir, kept)
        raise
    info = record.StudyInfo(model=spec.model.reference, data=spec.data.reference,
                            objectives=tuple(f"{o.direction} {o.metric}" for o in spec.objectives),
                            constraints=tuple(str(c) for c in spec.constraints), sampler=spec.sampler,
                            study_yaml=spec_to_yaml(spec),
                            study_source=str(Path(spec.source).resolve()) if spec.source else None,
                            baseline_metrics=record.study_info(study).baseline_metrics,
                            data_splits=record.study_info(study).data_splits)
    record.write_study_info(study, info)
    return study, url


def spec_from_storage(study_name: str, storage: str) -> StudySpec:
    """The study file as stored with the study: workers on other machines need only its name
    and the storage URL. Relative paths resolve against the original study file's folder."""
    rdb = open_storage(storage, heartbeat=False)
    try:
        study_id = rdb.get_study_id_from_name(study_name)
    except KeyError:
        raise AutocompressError(f"no study named '{study_name}' in {redact_url(storage)}") from None
    info = record.read_study_info(rdb.get_study_user_attrs(study_id))
    if not info.study_yaml:
        raise AutocompressError(f"study '{study_name}' was not created by autocompress (no study_yaml)")
    return spec_from_dict(yaml.safe_load(info.study_yaml), info.study_source or f"{study_name} (from storage)")


def remove_fresh(run_dir: Path, kept: set[str] | None) -> None:
    """Undo a failed creation: the run directory when this run made it, else only the entries
    that were not there before (``kept``)."""
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
    if any(r.baseline for r in record.read_all(study)):
        return
    study.add_trial(record.baseline_trial(metrics, values=[metrics[m] for m in spec.metric_names],
                                          constraints=constraint_values(spec, metrics)))


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
    before = None
    if run.spec.candidates > 1:
        before = lambda: enqueue_filtered(run.study, run.spec, run.space, run.ctx, run.log)  # noqa: E731
    with budgeted_ask(run.study, budget, lock, before):
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
              log: Callable[[str], None] = print) -> StudyRun:
    """Run or resume the study described by ``spec``; returns the run (study, run dir, ...).

    Example:
        >>> from autocompress import load_study_spec, run_study
        >>> run = run_study(load_study_spec("studies/digits_cnn.yaml"))  # doctest: +SKIP
    """
    run = prepare(spec, out=out, storage=storage, log=log)
    log(f"study '{spec.name}' in {run.run_dir} (storage {redact_url(run.storage_url)})")
    optimize(run, n_trials=n_trials, timeout=timeout)
    return run
