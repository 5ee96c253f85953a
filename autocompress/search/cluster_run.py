"""The driver of a cluster search (``search --cluster``): Ray places the workers, the Optuna
storage holds the trials, and this process writes the run directory.

Worker 0 creates (or opens) the study and its baseline, on its node (on a GPU when the
study trains on CUDA); the driver writes the run's files under ``runs/<name>/`` and sends
them to every worker. The workers run trials to the budget (``cluster_worker``); the driver
takes each feasible trial's files from Ray's object store, checks their SHA-256 against the
worker's, writes them under ``runs/<name>/trials/<n>/`` and lets the trial complete. So
``report``, ``export`` and ``apply`` work on the driver as after a local search.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autocompress.errors import AutocompressError
from autocompress.search import record
from autocompress.search.budget import budget_used, running
from autocompress.search.cluster import (capacity, check_shared_storage, connect, import_ray, parse_cluster,
                                         workers_to_place)
from autocompress.search.cluster_worker import RUN_FILES, ClusterJob, Shipment, TrialWorker
from autocompress.search.storage import (STORAGE_FILE, STUDY_FILE, check_url, default_run_dir, default_storage_url,
                                         open_storage)
from autocompress.search.study import remove_fresh
from autocompress.spec.config import StudySpec, spec_to_yaml
from autocompress.spec.outputs import check_out_dir
from autocompress.utils import atomic_write_bytes, atomic_write_text, error_line, redact_url

MAX_RESTARTS = 3     # per worker: Ray restarts a dead worker process, and retries its task, this often
POLL_S = 1.0
STRAGGLER_S = 6.0    # once the budget is met and no trial runs, how long workers get to return on their own


class ClusterSearch:
    """One search on a Ray cluster, seen from the driver."""

    def __init__(self, ray: Any, job: ClusterJob, run_dir: Path, *, name: str, storage_note: str | None,
                 log: Callable[[str], None] = print) -> None:
        self.ray, self.job, self.run_dir, self.name, self.log = ray, job, Path(run_dir), name, log
        self.storage_note = storage_note   # the URL without its password, for runs/<name>/storage.url
        self.actors: list[Any] = []
        self.pids: dict[int, int] = {}     # worker -> its process id, as its last answer said
        self.study: optuna.Study | None = None
        self._files_ref = None
        self._runs: dict[Any, int] = {}    # pending run() calls -> worker
        self._polls: dict[Any, int] = {}   # pending take() calls -> worker

    def start(self, workers: int, *, gpus: bool) -> optuna.Study:
        """Start the workers; worker 0 creates or opens the study. A failed creation removes
        what it added to the run directory."""
        fresh = not (self.run_dir / STUDY_FILE).exists()
        kept = {c.name for c in self.run_dir.iterdir()} if self.run_dir.is_dir() else None
        if self.job.storage.startswith("sqlite"):
            self.run_dir.mkdir(parents=True, exist_ok=True)   # the database lives here
        files = {n: (self.run_dir / n).read_bytes() for n in RUN_FILES if (self.run_dir / n).is_file()}
        options = {"num_cpus": self.job.threads, "max_restarts": MAX_RESTARTS, "max_task_retries": MAX_RESTARTS,
                   "max_concurrency": 3, "scheduling_strategy": "SPREAD", **({"num_gpus": 1} if gpus else {})}
        actor = self.ray.remote(**options)(TrialWorker)
        self.actors = [actor.remote(self.job, i) for i in range(workers)]
        for other in self.actors[1:]:
            other.warm.remote()
        try:
            created, lines = self._get(self.actors[0].create.remote(files))
        except BaseException:
            self.stop()
            if fresh:
                remove_fresh(self.run_dir, kept)
            raise
        for line in lines:
            self.log(line)
        for name, data in created.items():
            path = self.run_dir / name
            if not path.is_file() or path.read_bytes() != data:
                atomic_write_bytes(path, data)
        if fresh and self.storage_note:
            atomic_write_text(self.run_dir / STORAGE_FILE, self.storage_note + "\n")
        self._files_ref = self.ray.put(created)
        self.pids = dict(enumerate(self.ray.get([a.pid.remote() for a in self.actors])))
        self.study = optuna.load_study(study_name=self.name, storage=open_storage(self.job.storage, heartbeat=False))
        return self.study

    def run(self, on_poll: Callable[[optuna.Study], None] = lambda study: None) -> None:
        """Run every worker to the end (``on_poll(study)`` about once a second). A worker that
        stops with an error is one logged line; all of them failing before the budget is met is
        an error. Ctrl-C (or any error here) stops the workers and marks their running trials
        interrupted."""
        self._runs = {a.run.remote(self._files_ref): i for i, a in enumerate(self.actors)}
        self._polls = {a.take.remote(POLL_S): i for i, a in enumerate(self.actors)}
        errors: list[str] = []
        last, met_since = 0.0, None
        try:
            while self._runs:
                ready, _ = self.ray.wait([*self._runs, *self._polls], num_returns=1, timeout=POLL_S)
                for ref in ready:
                    if ref in self._polls:
                        self._receive(self._polls.pop(ref), ref)
                    else:
                        errors += self._finished(self._runs.pop(ref), ref)
                if time.monotonic() - last >= POLL_S:
                    on_poll(self.study)
                    last = time.monotonic()
                    met_since = (met_since or last) if self._budget_met() else None
                    if met_since is not None and last - met_since > STRAGGLER_S:
                        break   # a worker still starting (one Ray restarted) need not open the study
        except BaseException:
            self.stop()
            raise
        self.stop()   # the workers still polled (and any still starting)
        on_poll(self.study)
        for err in errors:
            self.log(f"a worker stopped with an error: {err}")
        budget = self.job.n_trials
        if errors and len(errors) == len(self.actors) and budget and budget_used(self.study) < budget:
            raise AutocompressError(f"every worker failed ({errors[0]}); the study is kept, run the same command "
                                    "to resume")

    def close(self) -> None:
        """Disconnect from the cluster (a local Ray instance started for the run stops)."""
        self.ray.shutdown()

    def _budget_met(self) -> bool:
        budget = self.job.n_trials
        return budget is not None and budget_used(self.study) >= budget and not running(self.study)

    def _receive(self, i: int, ref: Any) -> None:
        try:
            pid, shipments = self.ray.get(ref)
        except self.ray.exceptions.RayError:   # the worker is being restarted, or is gone
            time.sleep(0.2)
        else:
            self.pids[i] = pid
            for shipment in shipments:
                write_shipment(self.run_dir, shipment)
                self.actors[i].ack.remote(shipment.number)
        if i in self._runs.values():
            self._polls[self.actors[i].take.remote(POLL_S)] = i

    def _finished(self, i: int, ref: Any) -> list[str]:
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            return [f"worker {i}: {error_line(getattr(exc, 'cause', None) or exc)}"]
        except self.ray.exceptions.RayError as exc:   # its process died more often than Ray restarts it
            return [f"worker {i} died ({error_line(exc, 160)})"]
        return []

    def _get(self, ref: Any) -> Any:
        """A worker's answer; its error as one line (a study-file error as it was raised)."""
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, AutocompressError):
                raise cause from None
            raise AutocompressError(f"worker 0 could not open the study: {error_line(cause or exc)}") from None
        except self.ray.exceptions.RayError as exc:
            raise AutocompressError(f"worker 0 died while opening the study ({error_line(exc, 160)})") from None

    def stop(self) -> None:
        """Stop every worker; their running trials are marked interrupted (not counted, run
        again on resume) instead of waiting out the heartbeat grace period."""
        for ref in [*self._runs, *self._polls]:   # cancelled first: Ray would announce retries of killed tasks
            try:
                self.ray.cancel(ref)
            except Exception:  # noqa: BLE001 (finished meanwhile, or the connection is gone)
                pass
        for actor in self.actors:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 (already gone, or the connection is)
                pass
        if self.study is not None:
            interrupt_trials(self.study, set(self.pids.values()))


@dataclass(frozen=True)
class ClusterOptions:
    """How a study runs on a cluster (``search --cluster``'s options)."""
    cluster: str = "ray"              # ray | auto | ray://host:port | a head node's host:port
    workers: int | None = None        # None: as many as the cluster can place
    cpus_per_worker: int = 1
    worker_dir: str | None = None     # where workers keep their run directories on their nodes (None: a temp folder)
    n_trials: int | None = None       # None: the study's budget.trials
    timeout: float | None = None      # None: the study's budget.timeout
    ray_logs: bool = False            # show the workers' own logs (Ray forwards them)


def open_cluster_search(spec: StudySpec, options: ClusterOptions, *, out: Path | None = None,
                        storage: str | None = None, log: Callable[[str], None] = print) -> ClusterSearch:
    """Check everything that can be refused (Ray missing, the address, an SQLite file the
    cluster cannot open, more workers than it can place) before anything is written, connect,
    and start the workers with the study created or opened (``ClusterSearch.study``)."""
    cluster = parse_cluster(options.cluster)
    import_ray()
    run_dir = Path(out) if out else default_run_dir(spec.name)
    check_out_dir(run_dir, "--out" if out else "run directory")
    url = storage or spec.storage or default_storage_url(run_dir)
    where = (None, "--storage") if storage else (spec.source, "storage") if spec.storage else (None, "storage")
    check_url(url, where[1], where[0])
    check_shared_storage(cluster, url, where)
    ray = connect(cluster, verbose=options.ray_logs)
    try:
        cap = capacity(ray, options.cpus_per_worker, client=cluster.client)
        check_shared_storage(cluster, url, where, only_this_node=cap.only_this_node)
        workers = workers_to_place(options.workers, cap)
        log(f"study '{spec.name}' in {run_dir} (storage {redact_url(url)})")
        log(f"cluster {cluster.address}: {workers} worker(s); it can place {cap.describe()}")
        source = str(Path(spec.source).resolve()) if spec.source else None
        job = ClusterJob(study_yaml=spec_to_yaml(spec), source=source,
                         storage=url, n_trials=options.n_trials or spec.budget.trials, timeout=options.timeout,
                         threads=options.cpus_per_worker, worker_dir=options.worker_dir, run_id=uuid.uuid4().hex[:12])
        search = ClusterSearch(ray, job, run_dir, name=spec.name, log=log,
                               storage_note=redact_url(storage) if storage and storage != spec.storage else None)
        search.start(workers, gpus=cap.gpus)
    except BaseException:
        ray.shutdown()
        raise
    return search


def run_on_cluster(spec: StudySpec, options: ClusterOptions = ClusterOptions(), *, out: Path | None = None,
                   storage: str | None = None, log: Callable[[str], None] = print) -> optuna.Study:
    """Run (or resume) the study on a Ray cluster; returns the study.

    Example:
        >>> from autocompress import ClusterOptions, load_study_spec, run_on_cluster
        >>> study = run_on_cluster(load_study_spec("studies/digits_cnn.yaml"), ClusterOptions("ray"))  # doctest: +SKIP
    """
    search = open_cluster_search(spec, options, out=out, storage=storage, log=log)
    try:
        search.run()
    finally:
        search.close()
    return search.study


def interrupt_trials(study: optuna.Study, pids: set[int]) -> None:
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if record.read(frozen).worker_pid in pids:
            trial = optuna.trial.Trial(study, frozen._trial_id)
            try:
                record.write_interrupted(trial)
                study.tell(trial, state=TrialState.FAIL)
            except (RuntimeError, ValueError):   # it finished meanwhile
                pass


def write_shipment(run_dir: Path, shipment: Shipment) -> None:
    """Write a trial's files where the search would have written them, each checked against
    the SHA-256 its worker computed."""
    folder = PurePosixPath(shipment.folder)
    for rel, data in shipment.files.items():
        parts = folder.parts + PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or folder.is_absolute():
            raise AutocompressError(f"trial {shipment.number}: refusing to write {shipment.folder}/{rel} "
                                    "outside the run directory")
        if hashlib.sha256(data).hexdigest() != shipment.sha256.get(rel):
            raise AutocompressError(f"trial {shipment.number}: {shipment.folder}/{rel} arrived with another "
                                    "SHA-256 than its worker computed")
        atomic_write_bytes(run_dir.joinpath(*parts), data)
