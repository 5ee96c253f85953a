"""The ``autocompress`` command: thin commands over library calls, one error boundary.

Domain errors (bad study file, unknown study, unreachable storage) print one line and exit 2.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import typer
import typer.core
from rich.console import Console
from rich.table import Table

from autocompress.errors import AutocompressError

class _OneLineUsageErrors(typer.core.TyperGroup):
    """Usage errors (an unknown option, a value of the wrong type) as one line, exit code 2."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except Exception as exc:  # typer ships its own copy of click: match its classes by name
            names = {c.__name__ for c in type(exc).__mro__}
            if "UsageError" in names:
                ctx = getattr(exc, "ctx", None)
                where = ctx.command_path if ctx is not None else "autocompress"
                console.print(f"[bold red]error:[/] {where}: {exc.format_message()}", highlight=False,
                              soft_wrap=True)
                sys.exit(2)
            if "Abort" in names:
                sys.exit(130)
            raise
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        return rv


app = typer.Typer(cls=_OneLineUsageErrors, add_completion=False, no_args_is_help=True,
                  pretty_exceptions_enable=False,
                  help="Search compression policies (pruning, quantization, distillation) with Optuna.")
# Piped or captured output has no terminal width; rich would wrap lines and tables at 80 columns.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
out_console = Console(width=None if sys.stdout.isatty() else 160)


def _setup_logging(verbose: int) -> None:
    import optuna

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("autocompress").setLevel(level)
    # Optuna logs every failed trial with a traceback at WARNING; we print one line per failure.
    optuna.logging.set_verbosity(optuna.logging.ERROR if verbose == 0 else optuna.logging.INFO)
    for noisy in ("nni", "nni.compression"):
        logging.getLogger(noisy).setLevel(logging.ERROR if verbose < 2 else logging.INFO)
    if verbose == 0:
        warnings.filterwarnings("ignore")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _guard(fn):  # the one error boundary
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AutocompressError as exc:
            _fail(str(exc))
        except KeyboardInterrupt:
            console.print("\ninterrupted: the study is saved; run the same command to resume")
            raise typer.Exit(code=130)

    return wrapper


VerboseOpt = typer.Option(0, "--verbose", "-v", count=True, help="More logs (-v info, -vv debug).")


@app.command()
@_guard
def search(
    study_file: Path = typer.Argument(..., help="Study definition (YAML): model, data, space, objectives."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<study name>)."),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default: the study file's, "
                                                     "else SQLite under the run directory)."),
    trials: Optional[int] = typer.Option(None, min=1, help="Total trial budget (overrides budget.trials)."),
    timeout: Optional[str] = typer.Option(None, help="Wall-time budget of this run, e.g. 20m (overrides budget.timeout)."),
    workers: Optional[int] = typer.Option(None, min=1, max=256, help="Worker processes on this machine, one per GPU "
                                                                  "(default: one per entry of the study's devices:, "
                                                                  "else 1); on a CPU the cores are split between them."),
    verbose: int = VerboseOpt,
) -> None:
    """Run a study, or resume it: trials already finished count toward the budget."""
    _setup_logging(verbose)
    from autocompress.search.budget import budget_used
    from autocompress.spec.config import load_study_spec
    from autocompress.cli.progress import SearchProgress
    from autocompress.search.study import optimize, prepare
    from autocompress.search.workers import start_workers, stop_workers

    spec = load_study_spec(study_file)
    timeout_s = _duration(timeout, "--timeout")
    run = prepare(spec, out=out, storage=storage, log=_say)
    budget = trials or spec.budget.trials
    workers = workers or (len(spec.devices) if spec.devices else 1)
    with SearchProgress(run, budget=budget, timeout=timeout_s or spec.budget.timeout, console=console) as bar:
        if workers == 1:
            optimize(run, n_trials=budget, timeout=timeout_s, on_trial_end=bar.on_trial_end)
        else:  # this process supervises; every worker is its own process on its own device
            procs = start_workers(study=spec.name, storage=run.storage_url, out=run.run_dir, workers=workers,
                                  training_device=spec.device, n_trials=budget, timeout=timeout_s, first_index=0,
                                  devices=spec.devices)
            _say(f"started {workers} workers")
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
    _print_summary(run.study, spec.name)
    out_console.print(f"results: {run.run_dir}  ({budget_used(run.study)} trials; "
                      f"next: autocompress status {run.run_dir})", highlight=False)


@app.command()
@_guard
def worker(
    study: str = typer.Option(..., "--study", help="Study name."),
    storage: str = typer.Option(..., envvar="AUTOCOMPRESS_STORAGE",
                                help="Storage URL shared by all workers (e.g. postgresql://user@host/db); "
                                     "or the AUTOCOMPRESS_STORAGE variable, which keeps a password out of ps."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory for the baseline checkpoint "
                                                                 "(a path all workers see; default runs/<name>)."),
    device: Optional[str] = typer.Option(None, help="Training device of this worker, e.g. cuda:1."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads of this worker."),
    trials: Optional[int] = typer.Option(None, min=1, help="Total trial budget (default: the study's)."),
    timeout: Optional[str] = typer.Option(None, help="Stop starting trials after this long, e.g. 2h."),
    worker_index: int = typer.Option(0, min=0, help="Offsets the sampler seed so workers differ."),
    verbose: int = VerboseOpt,
) -> None:
    """Join an existing study (created by 'search') and run trials until its budget is met."""
    _setup_logging(verbose)
    from autocompress.search.study import optimize, prepare, spec_from_storage

    import os

    from autocompress.search.budget import budget_used
    from autocompress.utils import redact_url

    spec = spec_from_storage(study, storage)
    run = prepare(spec, out=out, storage=storage, log=_say if verbose else (lambda m: None), create=False,
                  device=device, threads=threads, worker_index=worker_index)
    _say(f"worker {worker_index} (pid {os.getpid()}, training on {run.ctx.device}) joined study '{spec.name}' "
         f"in {redact_url(storage)}")
    mine: list[int] = []

    def one_line(study, trial) -> None:  # noqa: ANN001 (an Optuna callback)
        mine.append(trial.number)
        reason = (trial.user_attrs.get("fail_reason") or trial.user_attrs.get("prescreened")
                  or trial.user_attrs.get("stopped_early"))
        values = ", ".join(f"{m} {v:.4g}" for m, v in zip(spec.metric_names, trial.values or []))
        _say(f"trial {trial.number} {trial.state.name.lower()}: {values or reason or ''}")

    optimize(run, n_trials=trials, timeout=_duration(timeout, "--timeout"), on_trial_end=one_line)
    budget = trials or spec.budget.trials
    _say(f"worker {worker_index} ran {len(mine)} trial(s); the study has {budget_used(run.study)}"
         + (f" of {budget}" if budget else ""))


@app.command()
@_guard
def devices() -> None:
    """The devices trials can run on here: CUDA GPUs, Apple MPS, CPU cores."""
    from autocompress.devices import discover

    table = Table(title="devices")
    for col in ("device", "kind", "description", "memory GiB", "cores"):
        table.add_column(col)
    for d in discover():
        table.add_row(d.name, d.kind, d.description, _fmt(d.memory_gb), _fmt(d.cores))
    out_console.print(table)


def _say(message: str) -> None:
    console.print(message, highlight=False)


def _duration(value: Optional[str], option: str) -> Optional[float]:
    from autocompress.spec.config import parse_duration
    from autocompress.errors import ConfigError

    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(None, option, str(exc)) from None


@app.command()
@_guard
def status(
    study: str = typer.Argument(..., help="Study name (runs/<name>) or run directory."),
    storage: Optional[str] = typer.Option(None, help="Storage URL, when the study is not in a local run directory."),
    verbose: int = VerboseOpt,
) -> None:
    """Trials complete / running / failed / pruned, and the current Pareto front."""
    _setup_logging(verbose)
    from autocompress.report.front import state_counts
    from autocompress.search.results import load_results

    res = load_results(study, storage=storage)
    counts = state_counts(res.study)
    out_console.print(f"study {res.study.study_name}: " + ", ".join(f"{v} {k}" for k, v in counts.items()),
                      highlight=False)
    failed = [t for t in res.study.get_trials(deepcopy=False) if t.user_attrs.get("fail_reason")]
    for t in failed[-5:]:
        out_console.print(f"  trial {t.number} failed: {t.user_attrs['fail_reason']}", highlight=False)
    _print_summary(res.study, res.study.study_name)


def _print_summary(study, name: str) -> None:
    from autocompress.report.front import pareto_front, trial_row

    front = pareto_front(study)
    table = Table(title=f"Pareto front of {name} ({len(front.trials)} points; objectives: "
                        + ", ".join(f"{d} {m}" for m, d in zip(front.metric_names, front.directions)) + ")")
    cols = ["number", "policy", "accuracy", "accuracy_drop", "latency_ms", "size_mb", "flops", "params"]
    heads = ["trial", "policy", "acc", "drop", "lat ms", "MB", "FLOPs", "params"]
    for c, h in zip(cols, heads):
        table.add_column(h, justify="left" if c == "policy" else "right", overflow="fold")
    rows = list(front.trials)
    if not rows and front.baseline is None:
        out_console.print(f"{name}: no complete trial yet", highlight=False)
        return
    if front.baseline is not None and front.baseline not in rows:
        rows.insert(0, front.baseline)
    for t in rows:
        r = trial_row(t)
        label = f"{r['number']}{'*' if r['state'] == 'BASELINE' else ''}"
        table.add_row(label, r["policy"], *(_fmt(r[c]) for c in cols[2:]))
    out_console.print(table)
    if front.baseline is not None:
        out_console.print("* baseline (the uncompressed model)", highlight=False)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 1e6:
            return f"{v / 1e6:.2f}M"
        if abs(v) >= 1e4:
            return f"{v / 1e3:.1f}k"
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


@app.command()
@_guard
def report(
    study: str = typer.Argument(..., help="Study name (runs/<name>) or run directory."),
    storage: Optional[str] = typer.Option(None, help="Storage URL, when the study is not in a local run directory."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file (default: <run dir>/report.html)."),
    csv: Optional[Path] = typer.Option(None, help="Also write the trials table as CSV."),
    parquet: Optional[Path] = typer.Option(None, help="Also write the trials table as Parquet."),
    verbose: int = VerboseOpt,
) -> None:
    """Write one self-contained HTML report: Pareto front, hypervolume, importances, trials."""
    _setup_logging(verbose)
    from autocompress.report import write_report
    from autocompress.search.results import load_results

    path = write_report(load_results(study, storage=storage), out=out, csv=csv, parquet=parquet)
    out_console.print(f"report: {path}" + "".join(f"\ntable: {p}" for p in (csv, parquet) if p), highlight=False)


@app.command("export")
@_guard
def export_cmd(
    study: str = typer.Argument(..., help="Study name (runs/<name>) or run directory."),
    trial: Optional[int] = typer.Option(None, min=0, help="Export this trial (default: chosen by the rules)."),
    max_accuracy_drop: Optional[float] = typer.Option(None, help="Rule: accuracy_drop <= X."),
    min_accuracy: Optional[float] = typer.Option(None, help="Rule: accuracy >= X."),
    minimize: Optional[str] = typer.Option(None, help="Rule: the point with the smallest METRIC "
                                                      "(default: the knee of the front)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder (default: <run dir>/export)."),
    storage: Optional[str] = typer.Option(None, help="Storage URL, when the study is not in a local run directory."),
    verbose: int = VerboseOpt,
) -> None:
    """Pick a point of the feasible Pareto front and write policy.yaml, the model, metrics, a card."""
    _setup_logging(verbose)
    from autocompress.bundle.export import export_study
    from autocompress.report.select import Rule
    from autocompress.search.results import load_results

    if trial is not None and any(v is not None for v in (max_accuracy_drop, min_accuracy, minimize)):
        from autocompress.errors import ConfigError

        raise ConfigError(None, "--trial", "give either --trial or selection rules, not both")
    rule = Rule(trial=trial, max_accuracy_drop=max_accuracy_drop, min_accuracy=min_accuracy, minimize=minimize)
    res = export_study(load_results(study, storage=storage), rule=rule, out=out, say=_say)
    for note in res.notes:
        console.print(f"note: {note}", highlight=False)
    _print_artifacts(res.artifacts)
    out_console.print(f"exported trial {res.trial} to {res.out}", highlight=False)


@app.command("apply")
@_guard
def apply_cmd(
    policy_file: Path = typer.Argument(..., help="An exported policy.yaml (or a plain policy with --study)."),
    epochs: Optional[int] = typer.Option(None, min=0, help="Fine-tuning epochs (default: the study's budget.epochs)."),
    study: Optional[Path] = typer.Option(None, "--study", help="Study file whose model, data and target to use "
                                                               "instead of the ones the policy names."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder (default: <run dir>/apply for an exported "
                                                             "policy, else apply/ beside the policy file)."),
    verbose: int = VerboseOpt,
) -> None:
    """Re-train a policy on the whole training split and write the same bundle as export."""
    _setup_logging(verbose)
    from autocompress.bundle.apply import apply_policy

    res = apply_policy(policy_file, epochs=epochs, out=out, study_file=study, say=_say)
    _print_artifacts(res.artifacts)
    m = res.metrics
    out_console.print(f"applied: accuracy {_fmt(m.get('accuracy'))} (test {_fmt(m.get('test_accuracy'))}), "
                      f"latency {_fmt(m.get('latency_ms'))} ms, size {_fmt(m.get('size_mb'))} MB -> {res.out}",
                      highlight=False)


def _print_artifacts(artifacts: dict) -> None:
    for name, status in artifacts.items():
        if not str(status).startswith("ok"):
            console.print(f"note: {name} {status}", highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
