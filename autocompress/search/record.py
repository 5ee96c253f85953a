"""The trial record: what a trial produced, as one frozen dataclass, and the one module that
converts it to and from Optuna's user attributes.

Every user-attribute name lives here; the study, budget, early stopping, report, export and
status read ``TrialRecord``s (``read``, ``read_all``) and write through the ``write_*``
functions. Older studies stay readable: a preview stored with its ``deployed`` flag inside
``cheap_metrics`` and a failure key stored as a string are read as well.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from autocompress.errors import FailureKey
from autocompress.spec.policy import Policy
from autocompress.training.loop import Epoch
from autocompress.trial.result import MeasuredOn, Preview, Stopped, TrialResult
from autocompress.zoo.splits import Split

# Optuna user attributes of a trial (the storage's names; optuna-dashboard shows them as they are).
_BASELINE, _POLICY, _SUMMARY, _METRICS = "baseline", "policy", "policy_summary", "metrics"
_PROOF, _HISTORY, _TIMINGS, _MEASURED_ON = "proof", "history", "timings", "measured_on"
_EPOCHS_RUN, _PREVIEW, _PREVIEW_DEPLOYED = "epochs_run", "cheap_metrics", "preview_deployed"
_PREVIEW_REMEASURED = "preview_remeasured"
_PRESCREENED, _STOPPED_EARLY = "prescreened", "stopped_early"
_FAIL_REASON, _TRACEBACK, _INTERRUPTED, _KNOWN_AS = "fail_reason", "traceback", "interrupted", "failure_known_as"
_WARM_START, _STRUCTURE_KEY, _COST_KEY = "warm_start", "structure_key", "cost_key"
_CANDIDATES = "candidate_filter"
_WORKER_PID, _WALL_S, _MODEL_DIR, _MODEL_FILES = "worker_pid", "wall_s", "model_dir", "model_files_sha256"
_STOP_ATTRS = {"prescreen": _PRESCREENED, "early_stopping": _STOPPED_EARLY}


@dataclass(frozen=True)
class Stop:
    """Why a trial was ended on purpose: ``stage`` "prescreen" or "early_stopping"."""
    stage: str
    reason: str


@dataclass(frozen=True)
class TrialRecord:
    number: int
    state: TrialState
    baseline: bool = False
    values: tuple[float, ...] | None = None
    constraints: tuple[float, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    policy: Policy | None = None
    policy_summary: str = ""
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    proof: Mapping[str, Any] = field(default_factory=dict)
    history: tuple[Epoch, ...] = ()
    timings: Mapping[str, float] = field(default_factory=dict)
    measured_on: MeasuredOn | None = None
    preview: Preview | None = None
    epochs_run: int | None = None
    fail_reason: str | None = None
    traceback: str | None = None
    stop: Stop | None = None
    interrupted: bool = False
    known_as: FailureKey | None = None
    warm_start: str | None = None
    candidates: Mapping[str, float] | None = None   # the candidate step that chose it (search.candidates)
    structure_key: str | None = None
    cost_key: str | None = None
    model_dir: str | None = None
    model_files: Mapping[str, str] = field(default_factory=dict)   # path in model_dir -> SHA-256
    worker_pid: int | None = None
    wall_s: float | None = None
    started: datetime | None = None
    finished: datetime | None = None

    @property
    def label(self) -> str:
        """The state as tables show it: the baseline is "BASELINE"."""
        return "BASELINE" if self.baseline else self.state.name

    @property
    def feasible(self) -> bool:
        return all(c <= 0 for c in self.constraints)

    @property
    def reason(self) -> str:
        """Why it failed, was pre-screened or was stopped early ("" otherwise)."""
        return self.fail_reason or (self.stop.reason if self.stop else "")

    @property
    def counted(self) -> bool:
        """Whether it used up budget: finished and not the baseline. An interrupted attempt
        (Ctrl-C) and a trial failed by Optuna's heartbeat (its worker died; it never reached
        ``write_failure``, and Optuna re-queues it) do not count: they run again."""
        if self.baseline or self.interrupted:
            return False
        if self.state == TrialState.FAIL:
            return self.fail_reason is not None
        return self.state in (TrialState.COMPLETE, TrialState.PRUNED)


def read(t: FrozenTrial) -> TrialRecord:
    """The record of one Optuna trial."""
    a = t.user_attrs
    return TrialRecord(
        number=t.number, state=t.state, baseline=bool(a.get(_BASELINE)),
        values=tuple(t.values) if t.values else None,
        constraints=tuple(t.constraints.values()),
        params=dict(t.params), policy=Policy.from_dict(a[_POLICY]) if a.get(_POLICY) else None,
        policy_summary=a.get(_SUMMARY, ""), metrics=dict(a.get(_METRICS) or {}), proof=dict(a.get(_PROOF) or {}),
        history=tuple(_read_epoch(row) for row in a.get(_HISTORY) or ()),
        timings=dict(a.get(_TIMINGS) or {}),
        measured_on=_read_measured_on(a.get(_MEASURED_ON)),
        preview=_read_preview(a), epochs_run=a.get(_EPOCHS_RUN), fail_reason=a.get(_FAIL_REASON),
        traceback=a.get(_TRACEBACK), stop=_read_stop(a), interrupted=bool(a.get(_INTERRUPTED)),
        known_as=_read_key(a.get(_KNOWN_AS)), warm_start=a.get(_WARM_START),
        candidates=a.get(_CANDIDATES),
        structure_key=a.get(_STRUCTURE_KEY), cost_key=a.get(_COST_KEY), model_dir=a.get(_MODEL_DIR),
        model_files=dict(a.get(_MODEL_FILES) or {}),
        worker_pid=a.get(_WORKER_PID), wall_s=a.get(_WALL_S), started=t.datetime_start, finished=t.datetime_complete)


def read_all(study: optuna.Study, states: Iterable[TrialState] | None = None) -> list[TrialRecord]:
    """Every trial of ``study`` (in number order), or those in ``states``."""
    trials = study.get_trials(deepcopy=False, states=tuple(states) if states is not None else None)
    return [read(t) for t in sorted(trials, key=lambda t: t.number)]


def _read_epoch(row: Mapping[str, Any]) -> Epoch:
    return Epoch(epoch=int(row["epoch"]), train_loss=row.get("train_loss", math.nan),
                 val_accuracy=row["val_accuracy"], lr=row.get("lr", math.nan))


def _read_measured_on(raw: Any) -> MeasuredOn | None:
    if not isinstance(raw, dict) or "device" not in raw:
        return None
    known = {f.name for f in dataclasses.fields(MeasuredOn)}
    return MeasuredOn(**{k: v for k, v in raw.items() if k in known})


def _read_preview(a: Mapping[str, Any]) -> Preview | None:
    raw = a.get(_PREVIEW)
    if not raw:
        return None
    metrics = {k: v for k, v in raw.items() if k != "deployed"}
    deployed = a.get(_PREVIEW_DEPLOYED, bool(raw.get("deployed")))  # older studies kept the flag inside
    return Preview(metrics, deployed=bool(deployed), remeasured=bool(a.get(_PREVIEW_REMEASURED)))


def _read_stop(a: Mapping[str, Any]) -> Stop | None:
    for stage, attr in _STOP_ATTRS.items():
        if a.get(attr):
            return Stop(stage, a[attr])
    return None


def _read_key(raw: Any) -> FailureKey | None:
    if not isinstance(raw, dict):  # older studies stored only the key's name: their knobs are unknown
        return None
    return FailureKey(raw["key"], tuple((k, v) for k, v in raw["knobs"]))


# -- writing, as a trial runs --------------------------------------------------------------------
def write_start(trial: optuna.Trial, policy: Policy, *, summary: str, keys: tuple[str, str], pid: int) -> None:
    """What is known when a trial starts: its policy and cache keys (structure, cost)."""
    for attr, value in ((_POLICY, policy.to_dict()), (_SUMMARY, summary), (_WORKER_PID, pid),
                        (_STRUCTURE_KEY, keys[0]), (_COST_KEY, keys[1])):
        trial.set_user_attr(attr, value)


def write_result(trial: optuna.Trial, result: TrialResult) -> None:
    for attr, value in ((_METRICS, dict(result.metrics)), (_PROOF, dict(result.proof)),
                        (_HISTORY, [dataclasses.asdict(e) for e in result.history]),
                        (_TIMINGS, dict(result.timings)), (_MEASURED_ON, dataclasses.asdict(result.measured_on)),
                        (_EPOCHS_RUN, result.epochs_run)):
        trial.set_user_attr(attr, value)
    _write_preview(trial, result.preview)


def write_stop(trial: optuna.Trial, stopped: Stopped) -> None:
    trial.set_user_attr(_METRICS, dict(stopped.preview.metrics))
    trial.set_user_attr(_HISTORY, [dataclasses.asdict(e) for e in stopped.history])
    trial.set_user_attr(_EPOCHS_RUN, len(stopped.history))
    trial.set_user_attr(_STOP_ATTRS[stopped.stage], stopped.reason)
    _write_preview(trial, stopped.preview)


def _write_preview(trial: optuna.Trial, preview: Preview) -> None:
    trial.set_user_attr(_PREVIEW, dict(preview.metrics))
    trial.set_user_attr(_PREVIEW_DEPLOYED, preview.deployed)
    if preview.remeasured:
        trial.set_user_attr(_PREVIEW_REMEASURED, True)


def write_failure(trial: optuna.Trial, reason: str, *, traceback: str | None = None,
                  known_as: FailureKey | None = None) -> None:
    """A failed trial's reason (a failure always has one, so it always counts)."""
    trial.set_user_attr(_FAIL_REASON, reason or "failed without a message")
    if traceback:
        trial.set_user_attr(_TRACEBACK, traceback[-4000:])
    if known_as is not None:
        trial.set_user_attr(_KNOWN_AS, {"key": known_as.key, "knobs": [list(kv) for kv in known_as.knobs]})


def write_interrupted(trial: optuna.Trial) -> None:
    trial.set_user_attr(_INTERRUPTED, True)


def write_wall(trial: optuna.Trial, seconds: float) -> None:
    trial.set_user_attr(_WALL_S, round(seconds, 3))


def write_model_dir(trial: optuna.Trial, folder: str, hashes: Mapping[str, str]) -> None:
    """Where the trial's model files are (relative to the run directory) and their SHA-256."""
    trial.set_user_attr(_MODEL_DIR, folder)
    trial.set_user_attr(_MODEL_FILES, dict(hashes))


def model_files(trial: optuna.Trial) -> tuple[str | None, dict[str, str]]:
    """What ``write_model_dir`` recorded for a running trial: (folder or None, hashes)."""
    attrs = trial.user_attrs
    return attrs.get(_MODEL_DIR), dict(attrs.get(_MODEL_FILES) or {})


def baseline_trial(metrics: Mapping[str, float], *, values: list[float], constraints: Mapping[str, float]
                   ) -> FrozenTrial:
    """The baseline as a COMPLETE trial without params, so the front shows where the user started."""
    return optuna.trial.create_trial(
        values=values, constraints=dict(constraints) or None,
        user_attrs={_BASELINE: True, _METRICS: dict(metrics), _POLICY: Policy().to_dict(),
                    _SUMMARY: "baseline (no compression)"})


def warm_start_attrs(name: str) -> dict[str, Any]:
    """User attributes of an enqueued warm-start trial (``study.enqueue_trial(user_attrs=...)``)."""
    return {_WARM_START: name}


def candidate_attrs(summary: Mapping[str, float]) -> dict[str, Any]:
    """User attributes of a trial the candidate step enqueued: how many it drew, kept, and the
    seconds its previews took (they belong to the search's compute)."""
    return {_CANDIDATES: dict(summary)}


# -- the study's own attributes ----------------------------------------------------------------
_STUDY_ATTRS = ("model", "data", "objectives", "constraints", "sampler", "study_yaml", "study_source",
                "baseline_metrics", "data_splits")


@dataclass(frozen=True)
class StudyInfo:
    """What a study stores about itself: the study file (so a worker needs only the name and
    the storage URL), references for resume checks, and the baseline's metrics."""
    model: str | None = None
    data: str | None = None
    objectives: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    sampler: str | None = None
    study_yaml: str | None = None
    study_source: str | None = None
    baseline_metrics: Mapping[str, float] = field(default_factory=dict)
    data_splits: tuple[Split, ...] = ()     # size and origin of train/val/test (empty in older studies)


def write_study_info(study: optuna.Study, info: StudyInfo) -> None:
    for name in _STUDY_ATTRS:
        value = getattr(info, name)
        study.set_user_attr(name, [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
                            if isinstance(value, tuple) else dict(value) if isinstance(value, Mapping) else value)


def read_study_info(attrs: Mapping[str, Any]) -> StudyInfo:
    """From ``study.user_attrs`` (or a storage's ``get_study_user_attrs``)."""
    return StudyInfo(model=attrs.get("model"), data=attrs.get("data"),
                     objectives=tuple(attrs.get("objectives") or ()), constraints=tuple(attrs.get("constraints") or ()),
                     sampler=attrs.get("sampler"), study_yaml=attrs.get("study_yaml"),
                     study_source=attrs.get("study_source"), baseline_metrics=dict(attrs.get("baseline_metrics") or {}),
                     data_splits=tuple(Split(**s) for s in attrs.get("data_splits") or ()))


def study_info(study: optuna.Study) -> StudyInfo:
    return read_study_info(study.user_attrs)
