"""``search --cluster``: the study's workers on a Ray cluster, this process the driver
(``search.cluster_run``); here only the progress bar and the summary."""

from __future__ import annotations

from autocompress.cli.app import console, out_console, say
from autocompress.cli.read import print_placements, print_summary
from autocompress.spec.config import StudySpec


def search_on_cluster(o, spec: StudySpec, timeout_s: float | None) -> None:  # noqa: ANN001 (SearchOptions)
    from autocompress.cli.progress import SearchProgress
    from autocompress.search.budget import budget_used
    from autocompress.search.cluster_run import ClusterOptions, open_cluster_search

    options = ClusterOptions(cluster=o.cluster, workers=o.workers, cpus_per_worker=o.cpus_per_worker or 1,
                             worker_dir=o.worker_dir, n_trials=o.trials, timeout=timeout_s, ray_logs=bool(o.verbose))
    search = open_cluster_search(spec, options, out=o.out, storage=o.storage, log=say)
    try:
        with SearchProgress(search.study, budget=search.job.n_trials, timeout=timeout_s or spec.budget.timeout,
                            console=console, placed=True) as bar:
            search.run(bar.on_trial_end)
    finally:
        search.close()
    print_summary(search.study, spec.name)
    print_placements(search.study)
    out_console.print(f"results: {search.run_dir}  ({budget_used(search.study)} trials; "
                      f"next: autocompress status {search.run_dir})", highlight=False)
