"""Devices and local workers: N processes on one study finish its budget exactly."""

from __future__ import annotations

import signal
import subprocess
import sys

import optuna
from optuna.trial import TrialState
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.devices import assign, discover
from autocompress.search.record import read_all
from autocompress.search.workers import WorkerJob, ctrl_c_reaches_it, start_workers, stop_workers

runner = CliRunner()


def test_discovery_lists_the_cpu():
    found = discover()
    cpu = found[-1]
    assert cpu.kind == "cpu" and cpu.cores >= 1 and cpu.description
    result = runner.invoke(app, ["devices"])
    assert result.exit_code == 0 and "cpu" in result.output


def test_cpu_threads_are_split_between_workers():
    slots = assign(2, "cpu")
    assert [d for d, _ in slots] == ["cpu", "cpu"]
    total = discover()[-1].cores
    assert all(t == max(1, total // 2) for _, t in slots)


def test_two_local_workers_finish_the_budget_without_duplicates(write_study, tmp_path):
    study_file = write_study(budget={"trials": 4, "epochs": 1, "train_fraction": 0.2})
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["search", str(study_file), "--out", str(run_dir), "--workers", "2"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}")
    records = read_all(study)
    searched = [r for r in records if not r.baseline]
    assert all(r.state == TrialState.COMPLETE for r in searched)
    assert len(searched) == 4  # exactly the budget: trials are created under a lock shared by the workers
    numbers = [r.number for r in records]
    assert len(numbers) == len(set(numbers)) == len(study.get_trials())
    assert sum(1 for r in records if r.baseline) == 1
    pids = {r.worker_pid for r in searched}  # both started before the budget ran out
    assert None not in pids and len(pids) == 2, "both workers ran trials"


def test_study_devices_pin_each_worker():
    assert [d for d, _ in assign(3, "auto", ["cuda:0", "cuda:1"])] == ["cuda:0", "cuda:1", "cuda:0"]


def test_devices_list_is_validated(write_study):
    import pytest

    from autocompress.errors import ConfigError
    from autocompress.spec.config import load_study_spec

    with pytest.raises(ConfigError, match="unknown device 'gpu1'"):
        load_study_spec(write_study(devices=["cpu", "gpu1"]))
    assert load_study_spec(write_study(devices=["cpu", "cpu"])).devices == ["cpu", "cpu"]


def test_a_worker_that_writes_much_to_stderr_does_not_block(tmp_path, monkeypatch):
    import autocompress.search.workers as workers_mod

    noisy = "import sys; sys.stderr.write('warning line\\n' * 20000 + 'boom\\n'); sys.exit(1)"
    monkeypatch.setattr(workers_mod, "worker_command", lambda *a, **k: [sys.executable, "-c", noisy])
    procs = start_workers(WorkerJob(study="x", storage="sqlite://", out=tmp_path), workers=2, training_device="cpu",
                          first_index=0)
    try:
        for p in procs:  # the supervisor only polls while workers run
            p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise AssertionError("a worker blocked on a full stderr pipe")
    assert stop_workers(procs, wait=True) == ["boom", "boom"]


def test_stopped_workers_get_ctrl_c_and_can_record_their_trial(tmp_path):
    import time

    marker = tmp_path / "interrupted"
    code = ("import sys, time\n"   # 'up' written inside the try: a Ctrl-C right after it is caught too
            f"try:\n    open({str(tmp_path / 'up')!r}, 'w').close()\n    time.sleep(60)\n"
            f"except KeyboardInterrupt:\n    open({str(marker)!r}, 'w').close()\n    sys.exit(130)\n")
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)   # as a parent that ignores Ctrl-C would pass it on
    try:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, preexec_fn=ctrl_c_reaches_it)   # as start_workers starts a worker
    finally:
        signal.signal(signal.SIGINT, ignored)
    while not (tmp_path / "up").exists():
        time.sleep(0.05)
    assert stop_workers([proc], wait=False) == []
    assert marker.exists()
