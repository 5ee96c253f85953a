"""``export`` (a point of the front as a bundle) and ``apply`` (a policy re-trained at full budget)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from autocompress.cli.app import (StorageOpt, StudyArg, Verbose, command, console, out_console, print_artifacts, say,
                                  setup_logging)
from autocompress.errors import ConfigError


@dataclass(frozen=True)
class ExportOptions:
    study: StudyArg
    trial: Annotated[Optional[int], typer.Option(min=0, help="Export this trial (default: chosen by the rules).")] = None
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="Rule: accuracy_drop <= X.")] = None
    min_accuracy: Annotated[Optional[float], typer.Option(help="Rule: accuracy >= X.")] = None
    minimize: Annotated[Optional[str], typer.Option(help="Rule: the point with the smallest METRIC "
                                                         "(default: the knee of the front).")] = None
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder (default: <run dir>/export).")] = None
    storage: StorageOpt = None
    verbose: Verbose = 0


@command(ExportOptions, "export")
def export_cmd(o: ExportOptions) -> None:
    """Pick a point of the feasible Pareto front and write policy.yaml, the model, metrics, a card."""
    setup_logging(o.verbose)
    from autocompress.bundle.export import export_study
    from autocompress.report.select import Rule
    from autocompress.search.results import load_results
    from autocompress.search.storage import check_url
    from autocompress.spec.outputs import check_out_dir

    if o.trial is not None and any(v is not None for v in (o.max_accuracy_drop, o.min_accuracy, o.minimize)):
        raise ConfigError(None, "--trial", "give either --trial or selection rules, not both")
    if o.out is not None:
        check_out_dir(o.out, "--out")
    if o.storage is not None:
        check_url(o.storage, "--storage", None)
    rule = Rule(trial=o.trial, max_accuracy_drop=o.max_accuracy_drop, min_accuracy=o.min_accuracy, minimize=o.minimize)
    res = export_study(load_results(o.study, storage=o.storage), rule=rule, out=o.out, say=say)
    for note in res.notes:
        console.print(f"note: {note}", highlight=False)
    print_artifacts(res.artifacts)
    out_console.print(f"exported trial {res.trial} to {res.out}", highlight=False)


@dataclass(frozen=True)
class ApplyOptions:
    policy_file: Annotated[Path, typer.Argument(help="An exported policy.yaml (or a plain policy with --study).")]
    epochs: Annotated[Optional[int], typer.Option(min=0, help="Fine-tuning epochs (default: the study's "
                                                              "budget.epochs).")] = None
    study: Annotated[Optional[Path], typer.Option("--study", help="Study file whose model, data and target to use "
                                                                  "instead of the ones the policy names.")] = None
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Folder (default: <run dir>/apply for an exported "
                                                                    "policy, else apply/ beside the policy file).")] = None
    verbose: Verbose = 0


@command(ApplyOptions, "apply")
def apply_cmd(o: ApplyOptions) -> None:
    """Re-train a policy on the whole training split and write the same bundle as export."""
    setup_logging(o.verbose)
    from autocompress.bundle.apply import apply_policy
    from autocompress.metrics.registry import format_value

    res = apply_policy(o.policy_file, epochs=o.epochs, out=o.out, study_file=o.study, say=say)
    print_artifacts(res.artifacts)
    m = {name: format_value(name, res.metrics.get(name)) for name in ("accuracy", "test_accuracy", "latency_ms", "size_mb")}
    out_console.print(f"applied: accuracy {m['accuracy']} (test {m['test_accuracy']}), latency {m['latency_ms']} ms, "
                      f"size {m['size_mb']} MB -> {res.out}", highlight=False)
