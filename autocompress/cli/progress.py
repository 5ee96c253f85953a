"""The live progress bar of a search: trials done / budget, elapsed, ETA, front size, and the
best value of each objective on the front so far."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from autocompress.report.front import pareto_front
from autocompress.search.budget import budget_used
from autocompress.search.record import read_all


class SearchProgress:
    """``placed``: also one line per complete trial with the node and GPU that ran it (a
    cluster search, whose trials run on other machines)."""

    def __init__(self, study: optuna.Study, *, budget: int | None, timeout: float | None, console: Console,
                 placed: bool = False) -> None:
        self.budget = budget
        self.placed = placed
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=False,
        )
        self.done0 = budget_used(study)
        self.reported = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        # a budget already met (re-running a finished study) shows as done, not as 8/6
        total = max(budget, self.done0) if budget is not None else None
        self.task = self.progress.add_task("trials", total=total, completed=self.done0,
                                           info=self._info(study))

    def __enter__(self) -> "SearchProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    @staticmethod
    def _info(study: optuna.Study) -> str:
        front = pareto_front(study)
        parts = [f"front {len(front.trials)}"]
        searched = [r for r in front.trials if not r.baseline]
        for i, (name, direction) in enumerate(zip(front.metric_names, front.directions)):
            if searched:
                values = [t.values[i] for t in searched]
                parts.append(f"best {name} {max(values) if direction == 'maximize' else min(values):.4g}")
        return " | ".join(parts)

    def on_trial_end(self, study: optuna.Study, trial: FrozenTrial | None = None) -> None:
        """Optuna callback (or a poll, when workers run in other processes): new failures
        get one line each, the bar and its info are refreshed from the storage."""
        for r in read_all(study, (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
            if r.number in self.reported or r.baseline:
                continue
            self.reported.add(r.number)
            if r.state == TrialState.FAIL and r.fail_reason:
                self.progress.console.print(f"trial {r.number} failed: {r.fail_reason}", highlight=False)
            elif r.state == TrialState.PRUNED:
                self.progress.console.print(f"trial {r.number} pruned: {r.reason}", highlight=False)
            elif r.state == TrialState.COMPLETE and self.placed and r.measured_on:
                values = ", ".join(f"{m} {v:.4g}" for m, v in zip(study.metric_names or (), r.values or ()))
                self.progress.console.print(f"trial {r.number} complete on {r.measured_on.placed_on or r.measured_on.host}"
                                            f": {values}", highlight=False)
        self.progress.update(self.task, completed=budget_used(study), info=self._info(study))
