"""Local worker processes: ``search --workers N`` runs N processes on one study and storage,
each pinned to its own device (and its share of the CPU cores)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from autocompress.devices import assign


@dataclass(frozen=True)
class WorkerJob:
    """What every local worker of one search is told: the study, its storage, the run
    directory, and the budget of this run."""
    study: str
    storage: str
    out: Path
    n_trials: int | None = None
    timeout: float | None = None


def worker_command(job: WorkerJob, device: str, threads: int, index: int) -> list[str]:
    # the storage URL travels in the environment, not argv: it may hold a password (ps shows argv)
    cmd = [sys.executable, "-m", "autocompress", "worker", "--study", job.study,
           "--out", str(job.out), "--device", device, "--threads", str(threads), "--worker-index", str(index)]
    if job.n_trials is not None:
        cmd += ["--trials", str(job.n_trials)]
    if job.timeout is not None:
        cmd += ["--timeout", f"{job.timeout}s"]
    return cmd


def ctrl_c_reaches_it() -> None:
    """In a worker, before it starts: Ctrl-C (SIGINT) neither ignored nor blocked, whatever the
    process that starts it inherited, so Python turns it into KeyboardInterrupt and the worker
    can mark its running trial interrupted (``stop_workers``)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def start_workers(job: WorkerJob, *, workers: int, training_device: str, first_index: int = 1,
                  devices: list[str] | None = None) -> list[subprocess.Popen]:
    """Start workers ``first_index..workers-1`` (the calling process is worker 0)."""
    slots = assign(workers, training_device, devices)
    env = {**os.environ, "AUTOCOMPRESS_STORAGE": job.storage}
    procs = []
    for i in range(first_index, workers):
        device, threads = slots[i]
        # stderr goes to an unlinked temp file, not a pipe: nobody reads a pipe while the
        # workers run, and a worker that fills its buffer (64 KiB) would block mid-trial.
        log = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")
        proc = subprocess.Popen(worker_command(job, device, threads, i), stdout=subprocess.DEVNULL, stderr=log,
                                env=env, preexec_fn=ctrl_c_reaches_it)
        proc.stderr_log = log  # type: ignore[attr-defined]
        procs.append(proc)
    return procs


def stop_workers(procs: list[subprocess.Popen], *, wait: bool) -> list[str]:
    """Wait for (or terminate) the workers; returns error lines of those that failed."""
    errors = []
    for p in procs:
        if not wait and p.poll() is None:
            # Ctrl-C, not SIGTERM: the worker marks its running trial interrupted, so a resumed
            # search need not wait out the heartbeat grace period for it
            p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=None if wait else 30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        err = _read_log(p)
        if p.returncode not in (0, None, -15, -2, 130) and err.strip():
            errors.append(err.strip().splitlines()[-1])
    return errors


def _read_log(p: subprocess.Popen) -> str:
    log = getattr(p, "stderr_log", None)
    if log is None:
        return ""
    with log:
        log.seek(0)
        return log.read()
