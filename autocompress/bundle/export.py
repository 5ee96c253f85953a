"""Export one trial of a study as a reproducible bundle (``bundle.Bundle``).

Where the model comes from: the search saves every feasible trial's final model under
``runs/<name>/trials/<number>/`` (``deploy.artifacts.save_trial_model``); a trial without one
(run by a worker on another machine, or infeasible) is re-run from its policy and seed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from autocompress.bundle.bundle import Bundle
from autocompress.bundle.write import write_bundle
from autocompress.deploy.artifacts import MODEL_FILE, STRUCTURE_FILE, load_exported, structure_for
from autocompress.errors import AutocompressError, TrialFailed
from autocompress.report.select import Rule, choose
from autocompress.search.context import study_context
from autocompress.search.record import TrialRecord, study_info
from autocompress.search.results import Results
from autocompress.search.storage import STUDY_FILE
from autocompress.spec.config import StudySpec, spec_from_dict, spec_to_yaml
from autocompress.trial.run import run_trial
from autocompress.utils import error_line


@dataclass(frozen=True)
class ExportResult:
    out: Path
    trial: int
    rule: str
    provenance: str
    artifacts: dict[str, str]
    notes: tuple[str, ...] = ()


def study_spec_of(results: Results) -> StudySpec:
    """The StudySpec of a stored study: as stored with it (paths relative to the original study
    file), else the run folder's ``study.yaml``."""
    info = study_info(results.study)
    local = str(results.run_dir / STUDY_FILE) if results.run_dir else None
    if info.study_yaml:
        return spec_from_dict(yaml.safe_load(info.study_yaml), info.study_source or local)
    if results.spec:
        return spec_from_dict(results.spec, local)
    raise AutocompressError(f"study '{results.study.study_name}' carries no study definition: cannot export")


def export_study(results: Results, *, rule: Rule, out: Path | None = None,
                 say: Callable[[str], None] = lambda m: None) -> ExportResult:
    """Choose a trial by ``rule`` and write its bundle.

    Example:
        >>> from autocompress.search.results import load_results
        >>> rule = Rule(max_accuracy_drop=0.01, minimize="latency_ms")
        >>> export_study(load_results("digits-cnn"), rule=rule)  # doctest: +SKIP
    """
    choice = choose(results.study, rule)
    t, spec, run_dir = choice.trial, study_spec_of(results), results.run_dir
    if out is None:
        if run_dir is None:
            raise AutocompressError("the study has no local run directory: pass --out DIR")
        out = run_dir / "export"
    say(f"chose trial {t.number} ({t.policy_summary}) by: {choice.rule}")
    seed = spec.seed + t.number                       # as the search ran it
    epochs = t.epochs_run if t.epochs_run is not None else spec.budget.epochs
    common = dict(policy=t.policy, seed=seed, epochs=epochs, train_fraction=spec.budget.train_fraction,
                  study_name=results.study.study_name, study_spec=spec_document(spec), study_source=source_of(spec),
                  run_dir=str(run_dir.resolve()) if run_dir else None, trial=t.number,
                  baseline_metrics=dict(study_info(results.study).baseline_metrics), rule=choice.rule,
                  notes=choice.notes)
    saved = run_dir / (t.model_dir or f"trials/{t.number}") if run_dir else None
    if saved is not None and (saved / MODEL_FILE).is_file():
        bundle = _saved_bundle(t, saved, run_dir, common)
    else:
        bundle = _rerun_bundle(t, spec, Path(run_dir or out), common, say)
    artifacts = write_bundle(bundle, Path(out))
    return ExportResult(Path(out), t.number, choice.rule, bundle.provenance, artifacts, choice.notes)


def _saved_bundle(t: TrialRecord, saved: Path, run_dir: Path, common: dict[str, Any]) -> Bundle:
    """The model the trial trained and measured during the search."""
    where = saved.relative_to(run_dir) if saved.is_relative_to(run_dir) else saved.name
    file = (t.proof.get("runtime") or {}).get("file")   # the artifact the trial measured (older trials: none)
    measured = (file, (saved / file).read_bytes()) if file and (saved / file).is_file() else None
    return Bundle(model=load_exported(saved, reads_text=False), structure=json.loads((saved / STRUCTURE_FILE).read_text()),
                  measured=measured,
                  metrics=dict(t.metrics), measured_on=dataclasses.asdict(t.measured_on) if t.measured_on else {},
                  proof=dict(t.proof), history=[dataclasses.asdict(e) for e in t.history],
                  provenance=f"the model trial {t.number} trained and measured during the search (saved under {where})",
                  **common)


def _rerun_bundle(t: TrialRecord, spec: StudySpec, baseline_dir: Path, common: dict[str, Any],
                  say: Callable[[str], None]) -> Bundle:
    """The trial's policy run again with its seed, for as many epochs as it ran (early
    stopping may have ended it before the budget)."""
    say(f"trial {t.number}'s model was not saved by the search: re-running its policy (seed {common['seed']})")
    ctx = study_context(spec, baseline_dir=baseline_dir, epochs=common["epochs"], say=say, policies=[t.policy])
    try:
        res = run_trial(t.policy, replace(ctx, seed=common["seed"]), keep_model=True)
    except TrialFailed as exc:
        raise AutocompressError(f"re-running trial {t.number} failed: {exc.reason}") from None
    except Exception as exc:  # as in the search, where it fails the trial
        raise AutocompressError(f"re-running trial {t.number} failed: {error_line(exc)}") from None
    recorded = t.metrics.get("accuracy")
    return Bundle(model=res.model, structure=structure_for(res.model, spec, ctx.data, t.policy, res.proof),
                  measured=(res.deployment.file_name, res.deployment.artifact) if res.deployment else None,
                  metrics=dict(res.metrics), measured_on=dataclasses.asdict(res.measured_on), proof=dict(res.proof),
                  history=[dataclasses.asdict(e) for e in res.history],
                  provenance=f"re-run of trial {t.number}'s policy with its seed at export time (the search recorded "
                             f"accuracy {recorded if recorded is not None else math.nan:.4f}, this run "
                             f"{res.metrics.get('accuracy', math.nan):.4f})", **common)


def source_of(spec: StudySpec) -> str | None:
    """The study file's absolute path (relative paths in the study resolve against it)."""
    if spec.source and Path(spec.source).exists():
        return str(Path(spec.source).resolve())
    return spec.source


def spec_document(spec: StudySpec) -> dict[str, Any]:
    """The study as a plain dict (search space inlined), for policy.yaml."""
    return yaml.safe_load(spec_to_yaml(spec))
