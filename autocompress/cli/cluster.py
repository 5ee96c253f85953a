"""``search --cluster``: the study's workers on a Ray cluster, this process the driver.

Everything that can be refused is refused before anything is written: Ray missing, an
address nobody answers on, an SQLite file the cluster's other nodes cannot open, more
``--workers`` than the cluster can place.
"""

from __future__ import annotations

from pathlib import Path

from autocompress.cli.app import console, out_console, say
from autocompress.cli.read import print_placements, print_summary
from autocompress.errors import AutocompressError
from autocompress.spec.config import StudySpec


def search_on_cluster(o, spec: StudySpec, timeout_s: float | None) -> None:  # noqa: ANN001 (SearchOptions)
    from autocompress.cli.progress import SearchProgress
    from autocompress.search.budget import budget_used
    from autocompress.search.cluster import (capacity, check_shared_storage, connect, import_ray, parse_cluster,
                                             workers_to_place)
    from autocompress.search.cluster_run import ClusterSearch
    from autocompress.search.storage import check_url, default_run_dir, default_storage_url
    from autocompress.spec.outputs import check_out_dir
    from autocompress.utils import redact_url

    cluster = parse_cluster(o.cluster)
    import_ray()
    run_dir = Path(o.out) if o.out else default_run_dir(spec.name)
    check_out_dir(run_dir, "--out" if o.out else "run directory")
    url = o.storage or spec.storage or default_storage_url(run_dir)
    where = (None, "--storage") if o.storage else (spec.source, "storage") if spec.storage else (None, "storage")
    check_url(url, where[1], where[0])
    check_shared_storage(cluster, url, where)
    ray = connect(cluster, verbose=bool(o.verbose))
    try:
        cpus = o.cpus_per_worker or 1
        cap = capacity(ray, cpus, client=cluster.client)
        check_shared_storage(cluster, url, where, only_this_node=cap.only_this_node)
        workers = workers_to_place(o.workers, cap)
        budget = o.trials or spec.budget.trials
        search = ClusterSearch(ray, _job(spec, url, budget, timeout_s, o), run_dir, name=spec.name,
                               storage_note=redact_url(o.storage) if o.storage and o.storage != spec.storage else None)
        say(f"study '{spec.name}' in {run_dir} (storage {redact_url(url)})")
        say(f"cluster {cluster.address}: {workers} worker(s); it can place {cap.describe()}")
        study = search.start(workers, gpus=cap.gpus, log=say)
        with SearchProgress(study, budget=budget, timeout=timeout_s or spec.budget.timeout, console=console,
                            placed=True) as bar:
            errors = search.run(bar.on_trial_end)
    finally:
        ray.shutdown()
    for err in errors:
        console.print(f"a worker stopped with an error: {err}", highlight=False)
    if errors and len(errors) == workers and budget and budget_used(study) < budget:
        raise AutocompressError(f"every worker failed ({errors[0]}); the study is kept, run the same command to resume")
    print_summary(study, spec.name)
    print_placements(study)
    out_console.print(f"results: {run_dir}  ({budget_used(study)} trials; next: autocompress status {run_dir})",
                      highlight=False)


def _job(spec: StudySpec, url: str, budget: int | None, timeout_s: float | None, o):  # noqa: ANN001, ANN202
    from autocompress.search.cluster_worker import ClusterJob
    from autocompress.spec.config import spec_to_yaml

    return ClusterJob(study_yaml=spec_to_yaml(spec), source=str(Path(spec.source).resolve()) if spec.source else None,
                      storage=url, n_trials=budget, timeout=timeout_s, threads=o.cpus_per_worker or 1,
                      worker_dir=o.worker_dir)
