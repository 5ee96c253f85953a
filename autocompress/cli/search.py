"""``search`` (run or resume a study, optionally with local worker processes) and ``worker``
(join an existing study from any machine)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from autocompress.cli.app import Verbose, command, console, duration, out_console, say, setup_logging
from autocompress.cli.read import print_summary
from autocompress.errors import AutocompressError, ConfigError

OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default: runs/<study name>).")]


@dataclass(frozen=True)
class SearchOptions:
    study_file: Annotated[Path, typer.Argument(help="Study definition (YAML): model, data, space, objectives.")]
    out: OutOpt = None
    storage: Annotated[Optional[str], typer.Option(help="Optuna storage URL (default: the study file's, else "
                                                        "SQLite under the run directory).")] = None
    trials: Annotated[Optional[int], typer.Option(min=1, help="Total trial budget (overrides budget.trials).")] = None
    timeout: Annotated[Optional[str], typer.Option(help="Wall-time budget of this run, e.g. 20m "
                                                        "(overrides budget.timeout).")] = None
    workers: Annotated[Optional[int], typer.Option(
        min=1, max=256, help="Worker processes on this machine, one per GPU (default: one per entry of the study's "
                             "devices:, else 1); on a CPU the cores are split between them. With --cluster: "
                             "workers on the cluster (default: as many as it can place).")] = None
    cluster: Annotated[Optional[str], typer.Option(help=(
        "Run the workers on a Ray cluster, one per GPU: 'ray' (a local Ray instance started for the run), 'auto' "
        "(RAY_ADDRESS, else the cluster running here), 'ray://host:port' or a head node's host:port. "
        "Needs pip install 'autocompress[ray]'."))] = None
    cpus_per_worker: Annotated[Optional[int], typer.Option(
        min=1, help="With --cluster: CPUs each worker holds (and its torch threads); on a cluster without GPUs "
                    "this decides how many workers fit. Default 1.")] = None
    worker_dir: Annotated[Optional[str], typer.Option(
        help="With --cluster: the folder on each node where workers keep their own run directories (default: a "
             "temporary folder, removed when the worker ends).")] = None
    verbose: Verbose = 0


@command(SearchOptions)
def search(o: SearchOptions) -> None:
    """Run a study, or resume it: trials already finished count toward the budget."""
    setup_logging(o.verbose)
    from autocompress.cli.progress import SearchProgress
    from autocompress.search.budget import budget_used
    from autocompress.search.study import optimize, prepare
    from autocompress.spec.config import load_study_spec

    timeout_s = duration(o.timeout, "--timeout")
    if o.cluster is None:
        for name, value in (("--cpus-per-worker", o.cpus_per_worker), ("--worker-dir", o.worker_dir)):
            if value is not None:
                raise ConfigError(None, name, "only with --cluster")
    spec = load_study_spec(o.study_file)
    if o.cluster is not None:
        from autocompress.cli.cluster import search_on_cluster

        return search_on_cluster(o, spec, timeout_s)
    run = prepare(spec, out=o.out, storage=o.storage, log=say)
    budget = o.trials or spec.budget.trials
    workers = o.workers or (len(spec.devices) if spec.devices else 1)
    with SearchProgress(run.study, budget=budget, timeout=timeout_s or spec.budget.timeout, console=console) as bar:
        if workers == 1:
            optimize(run, n_trials=budget, timeout=timeout_s, on_trial_end=bar.on_trial_end)
        else:
            _supervise(run, workers, budget, timeout_s, bar)
    print_summary(run.study, spec.name)
    out_console.print(f"results: {run.run_dir}  ({budget_used(run.study)} trials; "
                      f"next: autocompress status {run.run_dir})", highlight=False)


def _supervise(run, workers: int, budget: int | None, timeout_s: float | None, bar) -> None:  # noqa: ANN001
    """This process supervises; every worker is its own process on its own device."""
    from autocompress.search.budget import budget_used
    from autocompress.search.workers import WorkerJob, start_workers, stop_workers

    job = WorkerJob(study=run.spec.name, storage=run.storage_url, out=run.run_dir, n_trials=budget, timeout=timeout_s)
    procs = start_workers(job, workers=workers, training_device=run.spec.device, first_index=0,
                          devices=run.spec.devices)
    say(f"started {workers} workers")
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            bar.on_trial_end(run.study)
    finally:
        errors = stop_workers(procs, wait=all(p.poll() is not None for p in procs))
        for err in errors:
            console.print(f"a worker stopped with an error: {err}", highlight=False)
    bar.on_trial_end(run.study)
    if errors and len(errors) == len(procs) and budget and budget_used(run.study) < budget:
        raise AutocompressError(f"every worker failed ({errors[0]}); the study is kept, "
                                "run the same command to resume")


@dataclass(frozen=True)
class WorkerOptions:
    study: Annotated[str, typer.Option("--study", help="Study name.")]
    storage: Annotated[str, typer.Option(envvar="AUTOCOMPRESS_STORAGE", help=(
        "Storage URL shared by all workers (e.g. postgresql://user@host/db); or the AUTOCOMPRESS_STORAGE "
        "variable, which keeps a password out of ps."))]
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory for the baseline checkpoint "
                                                                    "(a path all workers see; default runs/<name>).")] = None
    device: Annotated[Optional[str], typer.Option(help="Training device of this worker, e.g. cuda:1.")] = None
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads of this worker.")] = None
    trials: Annotated[Optional[int], typer.Option(min=1, help="Total trial budget (default: the study's).")] = None
    timeout: Annotated[Optional[str], typer.Option(help="Stop starting trials after this long, e.g. 2h.")] = None
    worker_index: Annotated[int, typer.Option(min=0, help="Offsets the sampler seed so workers differ.")] = 0
    verbose: Verbose = 0


@command(WorkerOptions)
def worker(o: WorkerOptions) -> None:
    """Join an existing study (created by 'search') and run trials until its budget is met."""
    setup_logging(o.verbose)
    from autocompress.search.budget import budget_used
    from autocompress.search.record import read
    from autocompress.search.storage import check_url
    from autocompress.search.study import Placement, optimize, prepare, spec_from_storage
    from autocompress.utils import redact_url

    timeout_s = duration(o.timeout, "--timeout")  # every option is checked before the study is touched
    from_env = o.storage == os.environ.get("AUTOCOMPRESS_STORAGE")
    check_url(o.storage, "AUTOCOMPRESS_STORAGE" if from_env else "--storage", None)
    spec = spec_from_storage(o.study, o.storage)
    run = prepare(spec, out=o.out, storage=o.storage, log=say if o.verbose else (lambda m: None), create=False,
                  placement=Placement(device=o.device, threads=o.threads, worker_index=o.worker_index))
    say(f"worker {o.worker_index} (pid {os.getpid()}, training on {run.ctx.device}) joined study '{spec.name}' "
        f"in {redact_url(o.storage)}")
    mine: list[int] = []

    def one_line(study, trial) -> None:  # noqa: ANN001 (an Optuna callback)
        mine.append(trial.number)
        values = ", ".join(f"{m} {v:.4g}" for m, v in zip(spec.metric_names, trial.values or []))
        say(f"trial {trial.number} {trial.state.name.lower()}: {values or read(trial).reason}")

    optimize(run, n_trials=o.trials, timeout=timeout_s, on_trial_end=one_line)
    budget = o.trials or spec.budget.trials
    say(f"worker {o.worker_index} ran {len(mine)} trial(s); the study has {budget_used(run.study)}"
        + (f" of {budget}" if budget else ""))
