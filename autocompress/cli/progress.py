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
    def __init__(self, run, *, budget: int | None, timeout: float | None, console: Console) -> None:
        self.run = run
        self.budget = budget
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=False,
        )
        self.done0 = budget_used(run.study)
        self.reported = {t.number for t in run.study.get_trials(deepcopy=False)
                         if t.state in (TrialState.FAIL, TrialState.PRUNED)}
        # a budget already met (re-running a finished study) shows as done, not as 8/6
        total = max(budget, self.done0) if budget is not None else None
        self.task = self.progress.add_task("trials", total=total, completed=self.done0,
                                           info=self._info(run.study))

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
        for r in read_all(study, (TrialState.FAIL, TrialState.PRUNED)):
            if r.number in self.reported:
                continue
            self.reported.add(r.number)
            if r.state == TrialState.FAIL and r.fail_reason:
                self.progress.console.print(f"trial {r.number} failed: {r.fail_reason}", highlight=False)
            elif r.state == TrialState.PRUNED:
                self.progress.console.print(f"trial {r.number} pruned: {r.reason}", highlight=False)
        self.progress.update(self.task, completed=budget_used(study), info=self._info(study))
