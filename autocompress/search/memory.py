"""What trials learn for each other, rebuilt from the storage (on resume, and for workers):
the previews of structures already measured, and runtime failures that every policy with the
same knob values meets on this model (``trial.context.KnownFailure``)."""

from __future__ import annotations

from autocompress.errors import FailureKey
from autocompress.search.record import TrialRecord
from autocompress.trial.context import KnownFailure
from autocompress.trial.result import Preview


def load_previews(records: list[TrialRecord]) -> dict[str, Preview]:
    """Previews by cost key; the first trial with a key measured it."""
    cache: dict[str, Preview] = {}
    for r in records:
        if r.cost_key and r.preview is not None:
            cache.setdefault(r.cost_key, r.preview)
    return cache


def failure_reason(reason: str, number: int) -> str:
    return f"{reason} (as trial {number} found; ended before training)"


def remember_failure(failures: dict[str, KnownFailure], number: int, key: FailureKey, reason: str) -> None:
    """Trial ``number`` met a failure every later trial with ``key``'s knob values would meet."""
    failures.setdefault(key.key, KnownFailure(key.knobs, failure_reason(reason, number)))


def load_failures(records: list[TrialRecord]) -> dict[str, KnownFailure]:
    """``remember_failure``'s memory: the first trial per key is the one that found it."""
    failures: dict[str, KnownFailure] = {}
    for r in records:
        if r.known_as is not None and r.fail_reason is not None:
            remember_failure(failures, r.number, r.known_as, r.fail_reason)
    return failures
