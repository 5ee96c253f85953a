"""``status``, ``report`` and ``devices``: reading a study, and what this machine has."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from autocompress.cli.app import StorageOpt, StudyArg, Verbose, command, out_console, setup_logging


def print_summary(study, name: str) -> None:  # noqa: ANN001 (an optuna.Study; imported lazily)
    """The feasible Pareto front as a table: the objectives, then the registry's summary metrics."""
    from autocompress.metrics.registry import METRICS, format_measured, summary_names
    from autocompress.report.front import pareto_front

    front = pareto_front(study)
    rows = list(front.trials)
    if not rows and front.baseline is None:
        out_console.print(f"{name}: no complete trial yet", highlight=False)
        return
    if front.baseline is not None and front.baseline not in rows:
        rows.insert(0, front.baseline)
    columns = summary_names(front.metric_names)
    table = Table(title=f"Pareto front of {name} ({len(front.trials)} points; objectives: "
                        + ", ".join(f"{d} {m}" for m, d in zip(front.metric_names, front.directions)) + ")")
    table.add_column("trial", justify="right")
    table.add_column("policy", justify="left", overflow="fold")
    for c in columns:
        table.add_column(METRICS[c].head, justify="right", overflow="fold")
    for r in rows:
        cells = [format_measured(c, r.metrics, compact=True) for c in columns]
        table.add_row(f"{r.number}{'*' if r.baseline else ''}", r.policy_summary, *cells)
    out_console.print(table)
    if front.baseline is not None:
        out_console.print("* baseline (the uncompressed model)", highlight=False)
    if "speedup" in columns:
        out_console.print("speedup: baseline latency / the point's, both timed in turn in one process; median of the "
                          "per-round ratios ± their IQR", highlight=False)


def print_placements(study) -> None:  # noqa: ANN001 (an optuna.Study)
    """Which node and GPU of a cluster ran which complete trials (nothing off a cluster)."""
    from autocompress.search.record import read_all

    by_place: dict[str, list[int]] = {}
    for r in read_all(study):
        if r.measured_on is not None and r.measured_on.placed_on:
            by_place.setdefault(r.measured_on.placed_on, []).append(r.number)
    for place, numbers in sorted(by_place.items()):
        out_console.print(f"{place}: {len(numbers)} trial(s) ({', '.join(map(str, numbers))})", highlight=False)


@dataclass(frozen=True)
class StatusOptions:
    study: StudyArg
    storage: StorageOpt = None
    verbose: Verbose = 0


@command(StatusOptions)
def status(o: StatusOptions) -> None:
    """Trials complete / running / failed / pruned, and the current Pareto front."""
    setup_logging(o.verbose)
    from autocompress.report.front import state_counts
    from autocompress.search.record import read_all
    from autocompress.search.results import load_results
    from autocompress.search.storage import check_url

    if o.storage is not None:
        check_url(o.storage, "--storage", None)
    res = load_results(o.study, storage=o.storage)
    records = read_all(res.study)
    counts = state_counts(records)
    out_console.print(f"study {res.study.study_name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
                      highlight=False)
    for r in [r for r in records if r.fail_reason][-5:]:
        out_console.print(f"  trial {r.number} failed: {r.fail_reason}", highlight=False)
    print_summary(res.study, res.study.study_name)
    print_placements(res.study)


@dataclass(frozen=True)
class ReportOptions:
    study: StudyArg
    storage: StorageOpt = None
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="HTML file (default: <run dir>/report.html).")] = None
    csv: Annotated[Optional[Path], typer.Option(help="Also write the trials table as CSV.")] = None
    parquet: Annotated[Optional[Path], typer.Option(help="Also write the trials table as Parquet.")] = None
    verbose: Verbose = 0


@command(ReportOptions)
def report(o: ReportOptions) -> None:
    """Write one self-contained HTML report: Pareto front, hypervolume, importances, trials."""
    setup_logging(o.verbose)
    from autocompress.report import write_report
    from autocompress.search.results import load_results
    from autocompress.search.storage import check_url
    from autocompress.spec.outputs import check_out_file

    for option, path in (("--out", o.out), ("--csv", o.csv), ("--parquet", o.parquet)):
        if path is not None:
            check_out_file(path, option)  # all of them before the first is written
    if o.storage is not None:
        check_url(o.storage, "--storage", None)
    path = write_report(load_results(o.study, storage=o.storage), out=o.out, csv=o.csv, parquet=o.parquet)
    out_console.print(f"report: {path}" + "".join(f"\ntable: {p}" for p in (o.csv, o.parquet) if p), highlight=False)


@dataclass(frozen=True)
class DevicesOptions:
    pass


@command(DevicesOptions)
def devices(o: DevicesOptions) -> None:
    """The devices trials can run on here: CUDA GPUs, Apple MPS, CPU cores."""
    from autocompress.devices import discover

    table = Table(title="devices")
    for col in ("device", "kind", "description", "memory GiB", "cores"):
        table.add_column(col)
    for d in discover():
        table.add_row(*(str(v) if v is not None else "-" for v in dataclasses.astuple(d)))
    out_console.print(table)
