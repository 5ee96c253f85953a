"""Can Optuna's own MaxTrialsCallback give N workers an exact trial budget? (docs/ARCHITECTURE.md,
"Exact budget".)

N processes share one RDB storage; each runs ``study.optimize`` with trials of random length
(sleeps, no model), stopped either by ``MaxTrialsCallback(budget)`` or by autocompress's
``budgeted_ask`` (trials created under the budget lock). Prints how many trials each way
finished, over a few repetitions.

    python benchmarks/optuna_budget.py --workers 4 --budget 20 --repeats 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import tempfile
import time
from pathlib import Path

import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState


def _objective(trial: optuna.Trial) -> float:
    time.sleep(random.uniform(0.05, 0.3))
    return trial.suggest_float("x", 0, 1)


def _worker(url: str, budget: int, mode: str, seed: int) -> None:
    from autocompress.search.budget import BudgetSpent, budget_lock, budgeted_ask

    random.seed(seed)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="b", storage=url)
    if mode == "callback":
        study.optimize(_objective, n_trials=10 * budget, callbacks=[MaxTrialsCallback(budget, states=None)])
        return
    run_dir = Path(url.removeprefix("sqlite:///")).parent
    with budgeted_ask(study, budget, lambda: budget_lock(study, url, run_dir)):
        while True:
            try:
                study.optimize(_objective, n_trials=1)
            except BudgetSpent:
                return


def finished_trials(workers: int, budget: int, mode: str, seed: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/b.db"
        optuna.create_study(study_name="b", storage=url)
        procs = [mp.Process(target=_worker, args=(url, budget, mode, seed * 100 + i)) for i in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        return len(optuna.load_study(study_name="b", storage=url).get_trials(states=(TrialState.COMPLETE,)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--budget", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for mode in ("callback", "lock"):
        counts = [finished_trials(a.workers, a.budget, mode, seed) for seed in range(a.repeats)]
        label = "MaxTrialsCallback" if mode == "callback" else "budget lock (autocompress)"
        print(f"{label:28s} {a.workers} workers, budget {a.budget}: finished {counts}")


if __name__ == "__main__":
    main()
