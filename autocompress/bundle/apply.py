"""Re-train a chosen policy at full budget: ``autocompress apply policy.yaml --epochs N``.

It is the search's own path, not a copy: the study's data and baseline (``study.build_inputs``,
``baseline.prepare_baseline``), the same ``run_trial``, then the same bundle as export
(``export.write_bundle``). Differences from the search trial: all of the training split,
``--epochs`` epochs, no early stopping. The policy file is either an exported ``policy.yaml``
(which names its study) or a plain policy (``pruning: ...`` sections) plus ``--study``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from autocompress.bundle.bundle import Bundle
from autocompress.bundle.export import source_of, spec_document
from autocompress.bundle.write import write_bundle
from autocompress.deploy.artifacts import structure_for
from autocompress.errors import AutocompressError, ConfigError, TrialFailed
from autocompress.search.checks import check_devices
from autocompress.search.context import study_context
from autocompress.spec.config import StudySpec, load_study_spec, spec_from_dict
from autocompress.spec.outputs import check_out_dir
from autocompress.spec.policy import Policy
from autocompress.spec.validate import policy_from_user
from autocompress.spec.yamlfile import read_yaml
from autocompress.trial.baseline import BASELINE_FILE
from autocompress.trial.plan import describe
from autocompress.trial.run import run_trial
from autocompress.utils import error_line


@dataclass(frozen=True)
class PolicyFile:
    policy: Policy
    spec: StudySpec | None           # the study named by the file, None for a plain policy
    seed: int | None
    study_name: str | None = None
    trial: int | None = None
    run_dir: Path | None = None


def read_policy_file(path: Path, *, with_study: bool = True) -> PolicyFile:
    """An exported ``policy.yaml`` or a plain policy YAML; errors name the file and field.
    ``with_study=False`` (``apply --study``): the study the file names is not read."""
    path = Path(path)
    source = str(path)
    doc = read_yaml(path, "policy file")
    if not isinstance(doc, dict):
        raise ConfigError(source, None, "expected a mapping (an exported policy.yaml, or policy sections)")
    exported = "policy" in doc
    policy = policy_from_user(doc["policy"] if exported else doc, source, "policy" if exported else None)
    if not exported:
        return PolicyFile(policy, None, None)
    study = doc.get("study") if isinstance(doc.get("study"), dict) else {}
    seed = doc.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ConfigError(source, "seed", f"expected a non-negative integer, got {seed!r}")
    run_dir = Path(study["run_dir"]) if isinstance(study.get("run_dir"), str) else None
    if not with_study:
        return PolicyFile(policy, None, seed, study.get("name"), study.get("trial"), run_dir)
    if not isinstance(study.get("spec"), dict):
        raise ConfigError(source, "study.spec", "missing: the exported policy does not name its study "
                                                "(pass --study STUDY.yaml)")
    # relative paths in the study (checkpoint, data root) stay relative to the original study file
    origin = study.get("source") if study.get("source") and Path(study["source"]).exists() else source
    try:
        spec = spec_from_dict(study["spec"], origin)
    except ConfigError as exc:
        where = f"{exc.field}: " if exc.field else ""
        raise ConfigError(source, "study.spec", f"{where}{exc.message}") from None
    return PolicyFile(policy, spec, seed, study.get("name"), study.get("trial"), run_dir)


@dataclass(frozen=True)
class ApplyResult:
    out: Path
    metrics: dict[str, float]
    artifacts: dict[str, str]
    provenance: str


def apply_policy(policy_file: Path, *, epochs: int | None = None, out: Path | None = None,
                 study_file: Path | None = None, say: Callable[[str], None] = lambda m: None) -> ApplyResult:
    """Re-train the policy in ``policy_file`` for ``epochs`` on the whole training split and
    write the bundle (policy.yaml, model, metrics.json, README.md) to ``out``.

    Example:
        >>> apply_policy(Path("runs/digits-cnn/export/policy.yaml"), epochs=30)  # doctest: +SKIP
    """
    pf = read_policy_file(Path(policy_file), with_study=study_file is None)
    spec = load_study_spec(study_file) if study_file is not None else pf.spec
    if spec is None:
        raise ConfigError(str(policy_file), None, "a plain policy names no study: pass --study STUDY.yaml "
                                                  "(model, data and target to apply it to)")
    if epochs is not None and epochs < 0:
        raise ConfigError(None, "--epochs", "must be 0 or more")
    check_devices(spec, local_workers=False)  # the study's devices, on the machine that applies it
    if out is not None:
        check_out_dir(out, "--out")
    else:
        home = pf.run_dir if pf.run_dir is not None and pf.run_dir.is_dir() else Path(policy_file).parent
        out = home / "apply"
        check_out_dir(out, "output folder")
    out = Path(out)
    reuse = study_file is None and pf.run_dir is not None and (pf.run_dir / BASELINE_FILE).is_file()
    baseline_dir = pf.run_dir if reuse else out
    epochs = spec.budget.epochs if epochs is None else epochs
    seed = spec.seed if pf.seed is None else pf.seed
    say(f"applying '{describe(pf.policy)}' to {spec.model.reference} on {spec.data.reference}: "
        f"{epochs} epoch(s), full training split, seed {seed}")
    ctx = study_context(spec, baseline_dir=baseline_dir, epochs=epochs, train_fraction=1.0, say=say,
                        policies=[pf.policy])
    try:
        result = run_trial(pf.policy, replace(ctx, seed=seed), keep_model=True)
    except TrialFailed as exc:
        raise AutocompressError(f"the policy cannot be applied: {exc.reason}") from None
    except Exception as exc:  # as in the search, where it fails the trial: a technique that cannot apply
        raise AutocompressError(f"the policy cannot be applied: {error_line(exc)}") from None
    origin = f"study '{pf.study_name}', trial {pf.trial}" if pf.study_name else str(policy_file)
    provenance = (f"autocompress apply: {result.epochs_run} epoch(s) of fine-tuning on the whole training split, "
                  f"seed {seed}, policy from {origin}; measured right after training")
    bundle = Bundle(model=result.model, structure=structure_for(result.model, spec, ctx.data, pf.policy, result.proof),
                    policy=pf.policy, seed=seed, epochs=epochs, train_fraction=1.0,
                    study_name=pf.study_name or spec.name, study_spec=spec_document(spec),
                    study_source=source_of(spec),
                    run_dir=str(pf.run_dir) if pf.run_dir else None, trial=pf.trial, metrics=dict(result.metrics),
                    baseline_metrics=ctx.baseline_metrics, measured_on=dataclasses.asdict(result.measured_on), provenance=provenance,
                    rule="autocompress apply", proof=dict(result.proof),
                    measured=(result.deployment.file_name, result.deployment.artifact) if result.deployment else None,
                    history=[dataclasses.asdict(e) for e in result.history])
    artifacts = write_bundle(bundle, out)
    return ApplyResult(out, result.metrics, artifacts, provenance)
