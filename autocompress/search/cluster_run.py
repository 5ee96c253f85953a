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
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from autocompress.errors import AutocompressError
from autocompress.search import record
from autocompress.search.budget import budget_used, running
from autocompress.search.cluster_worker import RUN_FILES, ClusterJob, Shipment, TrialWorker
from autocompress.search.storage import STORAGE_FILE, STUDY_FILE, open_storage
from autocompress.search.study import remove_fresh
from autocompress.utils import atomic_write_bytes, atomic_write_text, error_line

MAX_RESTARTS = 3     # per worker: Ray restarts a dead worker process, and retries its task, this often
POLL_S = 1.0
STRAGGLER_S = 6.0    # once the budget is met and no trial runs, how long workers get to return on their own


class ClusterSearch:
    """One search on a Ray cluster, seen from the driver."""

    def __init__(self, ray: Any, job: ClusterJob, run_dir: Path, *, name: str, storage_note: str | None) -> None:
        self.ray, self.job, self.run_dir, self.name = ray, job, Path(run_dir), name
        self.storage_note = storage_note   # the URL without its password, for runs/<name>/storage.url
        self.actors: list[Any] = []
        self.pids: dict[int, int] = {}     # worker -> its process id, as its last answer said
        self.study: optuna.Study | None = None
        self._files_ref = None
        self._runs: dict[Any, int] = {}    # pending run() calls -> worker
        self._polls: dict[Any, int] = {}   # pending take() calls -> worker

    def start(self, workers: int, *, gpus: bool, log: Callable[[str], None]) -> optuna.Study:
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
            log(line)
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

    def run(self, on_poll: Callable[[optuna.Study], None]) -> list[str]:
        """Run every worker to the end; returns one line per worker that stopped with an error.
        Ctrl-C (or any error here) stops the workers and marks their running trials interrupted."""
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
        return errors

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
