"""One worker of a cluster search, run by Ray as an actor on some node.

It has a run directory of its own on its node (nothing is shared with the driver but the
Optuna storage): the driver sends the run's files (study file, baseline checkpoint), the
worker opens the study and runs trials to the budget like ``autocompress worker``. Each
feasible trial's files go back to the driver through Ray's object store (``take``), and the
trial is marked complete only once the driver has written them (``ack``): a worker killed
before that leaves a trial that the heartbeat fails and Optuna retries, never a complete
trial whose files are lost.

The actor runs ``run`` in one thread and answers ``take``/``ack`` in others
(``max_concurrency``); Ray restarts a dead worker process and retries its task.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from autocompress.search import record
from autocompress.search.cluster import import_ray
from autocompress.search.context import build_inputs
from autocompress.search.objective import StudyRun
from autocompress.search.storage import STUDY_FILE
from autocompress.search.study import Placement, optimize, prepare
from autocompress.spec.config import StudySpec, spec_from_dict
from autocompress.trial.baseline import BASELINE_FILE, BASELINE_METRICS_FILE
from autocompress.trial.sensitivity import FILE as SENSITIVITY_FILE
from autocompress.utils import atomic_write_bytes

# what every worker needs of the run directory (the sensitivity pass where the space has per-layer knobs)
RUN_FILES = (STUDY_FILE, BASELINE_FILE, BASELINE_METRICS_FILE, SENSITIVITY_FILE)
ACK_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ClusterJob:
    """What every worker of one cluster search is given (through Ray, never a command line:
    the storage URL may hold a password)."""
    study_yaml: str              # the resolved study, search space inlined
    source: str | None           # the study file on the driver: relative paths in it resolve against its folder
    storage: str
    n_trials: int | None = None
    timeout: float | None = None
    threads: int = 1             # the CPUs the worker holds
    worker_dir: str | None = None  # where workers keep their run directories on their nodes (None: a temp folder)
    run_id: str = ""             # names a worker's temp folder, so a worker Ray restarts finds its predecessor's


@dataclass(frozen=True)
class Shipment:
    """A feasible trial's files, sent to the driver: ``folder`` is relative to the run directory."""
    number: int
    folder: str
    files: dict[str, bytes]
    sha256: dict[str, str]       # as the worker computed them when it saved the files


class TrialWorker:
    """The actor's class (``ray.remote`` is applied by the driver, so importing this module
    does not need Ray)."""

    def __init__(self, job: ClusterJob, index: int) -> None:
        self.job, self.index = job, index
        self._cond = threading.Condition()
        self._outbox: list[Shipment] = []
        self._acked: set[int] = set()
        self._run: StudyRun | None = None
        self._log: list[str] = []
        self._temporary = job.worker_dir is None
        name = f"{_spec(job).name}-worker{index}"
        parent = Path(tempfile.gettempdir()) / f"autocompress-{job.run_id}" if self._temporary else Path(job.worker_dir)
        self.run_dir = parent / name
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chdir(self.run_dir)  # the worker's working directory is its own, on its node

    def warm(self) -> None:
        """Build the study's data and model once, discarding them: the imports and file reads
        a worker needs happen while worker 0 creates the study."""
        build_inputs(_spec(self.job))

    def create(self, files: dict[str, bytes]) -> tuple[dict[str, bytes], list[str]]:
        """Create (or open) the study and its baseline; returns the run's files and the log."""
        run = self._open(files, create=True)
        here = f"{self.run_dir}{os.sep}"   # the driver's user knows this folder as the run directory
        log = [line.replace(here, f"(worker {self.index}'s run directory){os.sep}") for line in self._log]
        return {n: (run.run_dir / n).read_bytes() for n in RUN_FILES if (run.run_dir / n).is_file()}, log

    def run(self, files: dict[str, bytes]) -> int:
        """Run trials until the study's budget is met; returns how many this worker ran."""
        run = self._run or self._open(files, create=False)
        run.trial_callbacks.append(self._ship)
        ran: list[int] = []
        optimize(run, n_trials=self.job.n_trials, timeout=self.job.timeout,
                 on_trial_end=lambda study, trial: ran.append(trial.number))
        if self._temporary:   # (a worker stopped by Ctrl-C on the driver leaves its folder, as any temp file)
            os.chdir(tempfile.gettempdir())
            shutil.rmtree(self.run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.run_dir.parent.rmdir()   # the last worker of the run on this node
        return len(ran)

    def pid(self) -> int:
        return os.getpid()

    def take(self, wait_s: float) -> tuple[int, list[Shipment]]:
        """The shipments waiting for the driver (after up to ``wait_s`` for one), with this
        process's id (the driver interrupts this worker's trials by it on Ctrl-C)."""
        with self._cond:
            self._cond.wait_for(lambda: self._outbox, timeout=wait_s)
            out, self._outbox = self._outbox, []
        return os.getpid(), out

    def ack(self, number: int) -> None:
        """The driver has written trial ``number``'s files."""
        with self._cond:
            self._acked.add(number)
            self._cond.notify_all()

    def _open(self, files: dict[str, bytes], *, create: bool) -> StudyRun:
        ray = import_ray()
        for name, data in files.items():
            atomic_write_bytes(self.run_dir / name, data)
        spec = _spec(self.job)
        gpus = [str(g) for g in ray.get_gpu_ids()]
        placement = Placement(device=_device(spec, bool(gpus)), threads=self.job.threads, worker_index=self.index,
                              where=(ray.util.get_node_ip_address(), ",".join(gpus)))
        self._run = prepare(spec, out=self.run_dir, storage=self.job.storage, log=self._log.append, create=create,
                            placement=placement)
        return self._run

    def _ship(self, trial, result) -> None:  # noqa: ANN001 (an optuna.Trial and its result, inside the objective)
        folder, hashes = record.model_files(trial)
        if folder is None:
            return
        files = {rel: (self.run_dir / folder / rel).read_bytes() for rel in hashes}
        with self._cond:
            self._outbox.append(Shipment(trial.number, folder, files, hashes))
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: trial.number in self._acked, timeout=ACK_TIMEOUT_S):
                raise RuntimeError(f"the driver did not take trial {trial.number}'s files within {ACK_TIMEOUT_S:.0f} s")


def _spec(job: ClusterJob) -> StudySpec:
    return spec_from_dict(yaml.safe_load(job.study_yaml), job.source or "study (from the driver)")


def _device(spec: StudySpec, has_gpu: bool) -> str:
    """Ray shows a worker only its own GPU (CUDA_VISIBLE_DEVICES): that one is cuda:0."""
    import torch

    if has_gpu and spec.device != "cpu" and torch.cuda.is_available():
        return "cuda:0"
    return spec.device
