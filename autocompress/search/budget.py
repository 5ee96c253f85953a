"""The trial budget, shared by every worker of a study.

Each new trial is created (``study.ask``, which pops a waiting retry or warm start first)
under a lock held across workers — a PostgreSQL advisory lock for PostgreSQL, a file lock
beside the database file for SQLite — after counting finished and running trials. So N
workers finish exactly the budget, with no trial run twice or lost. Trials of a worker that
died are failed by Optuna's heartbeat after the grace period and re-enqueued by
``RetryHeartbeatStaleTrialCallback``; they do not use up budget. Why Optuna's own
``MaxTrialsCallback`` cannot replace the lock: docs/ARCHITECTURE.md, "Exact budget".
"""
from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path
from typing import Callable, Iterator

import optuna
from filelock import FileLock
from optuna.trial import TrialState
from sqlalchemy import text
from sqlalchemy.engine import make_url

from autocompress.search.record import read_all

def budget_used(study: optuna.Study) -> int:
    """Finished searched trials (``TrialRecord.counted``): what the budget is measured in."""
    return sum(1 for r in read_all(study) if r.counted)


def started(study: optuna.Study) -> int:
    """Finished trials plus running ones (the budget they take is spoken for)."""
    return sum(1 for r in read_all(study) if r.counted or (r.state == TrialState.RUNNING and not r.baseline))


def running(study: optuna.Study) -> int:
    return sum(1 for r in read_all(study, (TrialState.RUNNING,)) if not r.baseline)


class BudgetSpent(Exception):
    """No budget left for another trial."""


@contextlib.contextmanager
def budget_lock(study: optuna.Study, storage_url: str, run_dir: Path) -> Iterator[None]:
    """A lock all workers of the study share while they create a trial."""
    if storage_url.startswith("postgresql"):
        storage = study._storage
        engine = getattr(storage, "_backend", storage).engine  # Optuna wraps RDBStorage in a cache
        key = int.from_bytes(hashlib.sha1(f"autocompress:{study.study_name}".encode()).digest()[:7], "big")
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    with FileLock(str(_lock_file(storage_url, run_dir))):
        yield


def _lock_file(storage_url: str, run_dir: Path) -> Path:
    """Next to the SQLite file: workers of a local cluster each have their own run directory,
    but they share the database (the default database lies in the run directory itself)."""
    database = make_url(storage_url).database if storage_url.startswith("sqlite") else None
    folder = Path(database).parent if database and database != ":memory:" else run_dir
    return folder / ".budget.lock"


@contextlib.contextmanager
def budgeted_ask(study: optuna.Study, budget: int | None, lock,
                 before: Callable[[], object] | None = None) -> Iterator[None]:
    """Inside this block ``study.ask()`` (which ``study.optimize`` calls) creates a trial only
    while the budget has room, atomically across workers, and raises BudgetSpent otherwise.
    ``before`` runs under the lock once the budget has room, right before the trial is created
    (candidate filtering enqueues the trial there)."""
    original = study.ask

    def ask(*args, **kwargs):
        with lock():
            if budget is not None and started(study) >= budget:
                raise BudgetSpent()
            if before is not None:
                before()
            return original(*args, **kwargs)

    study.ask = ask  # instance attribute: only this study object, only inside the block
    try:
        yield
    finally:
        del study.ask


def wait_for_running(study: optuna.Study, poll_s: float) -> None:
    """Sleep while trials of other workers run; fail the stale ones (dead workers) so that
    Optuna re-enqueues them. Returns when none runs any more."""
    while running(study):
        time.sleep(poll_s)
        optuna.storages.fail_stale_trials(study)
