"""Trials per hour with 1, 2 and 4 Ray workers against as many local worker processes, and the
scheduling overhead per trial (run on purpose, not in the test suite).

    python benchmarks/ray_throughput.py [--trials 12] [--workers 1 2 4]

The digits study of benchmarks/workers_throughput.py (training-knob space, 2 fine-tune epochs,
random sampler, SQLite storage, baseline trained beforehand) runs through
``autocompress search --workers N`` and through ``autocompress search --cluster auto --workers N``
on a one-node Ray cluster that this script starts (N logical CPUs, one per worker, whatever the
machine has). For each run: the command's wall time (start-up included), trials per hour
between the first trial's start and the last one's end, the scheduling gap (median time from a
worker finishing one trial to starting its next) and the median trial wall time (a Ray worker's
includes sending the trial's files to the driver).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

from autocompress.search.record import read_all

REPO = Path(__file__).resolve().parents[1]


def study_file(tmp: Path, trials: int) -> Path:
    study = {
        "name": "ray-bench", "model": {"builtin": "digits_cnn"}, "data": {"builtin": "digits"},
        "search_space": str(REPO / "search_spaces" / "training_knobs.yaml"),
        "objectives": [{"metric": "accuracy", "direction": "maximize"},
                       {"metric": "latency_ms", "direction": "minimize"}],
        "budget": {"trials": trials, "epochs": 2}, "baseline": {"epochs": 3},
        "early_stopping": "none", "warm_start": {"recipes": False}, "sampler": "random",
    }
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_head(root: Path, cpus: int, env: dict) -> tuple[subprocess.Popen, str]:
    log = root / "head.log"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={free_port()}",
           f"--num-cpus={cpus}", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={root / 'ray'}",
           f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    while not (found := re.search(r"--address='([^']+)'", log.read_text())):
        if proc.poll() is not None:
            raise SystemExit(f"ray start failed:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc, found.group(1)


def measure(run_dir: Path, new: int) -> dict[str, float]:
    """Throughput, scheduling gap and trial time of the last ``new`` trials."""
    study = optuna.load_study(study_name="ray-bench", storage=f"sqlite:///{run_dir / 'study.db'}")
    records = [r for r in read_all(study) if not r.baseline and r.finished][-new:]
    span = (max(r.finished for r in records) - min(r.started for r in records)).total_seconds()
    gaps = []
    for pid in {r.worker_pid for r in records}:
        mine = sorted((r for r in records if r.worker_pid == pid), key=lambda r: r.started)
        gaps += [(b.started - a.finished).total_seconds() for a, b in zip(mine, mine[1:])]
    return {"per_hour": len(records) / span * 3600, "gap_s": statistics.median(gaps) if gaps else float("nan"),
            "trial_s": statistics.median(r.wall_s for r in records if r.wall_s is not None)}


def run(path: Path, out: Path, trials: int, extra: list[str], env: dict) -> dict[str, float]:
    cmd = [sys.executable, "-m", "autocompress", "search", str(path), "--out", str(out)]
    for args in (["--trials", "1"], ["--trials", str(trials + 1), *extra]):   # the first trains the baseline
        start = time.time()
        done = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env)
        if done.returncode:
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-1500:]}{done.stderr[-1500:]}")
    return {"wall_s": time.time() - start, **measure(out, trials)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = ap.parse_args()
    # the cluster's own token, as a driver of a token-authenticated cluster is given it
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    root = Path(tempfile.mkdtemp(prefix="acbench-", dir="/tmp"))  # short: Ray's socket paths are limited
    head, address = start_head(root, max(args.workers), env)
    env["RAY_ADDRESS"] = address
    print("| workers | how | wall (start-up incl.) | trials/hour | scheduling gap | trial time |")
    print("|---:|---|---:|---:|---:|---:|")
    try:
        for n in args.workers:
            for how, extra in (("processes", ["--workers", str(n)]),
                               ("Ray", ["--cluster", "auto", "--workers", str(n)])):
                m = run(study_file(root, args.trials), root / f"{how}{n}", args.trials, extra, env)
                print(f"| {n} | {how} | {m['wall_s']:.1f} s | {m['per_hour']:,.0f} | {m['gap_s']:.2f} s "
                      f"| {m['trial_s']:.2f} s |", flush=True)
    finally:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)


if __name__ == "__main__":
    main()
