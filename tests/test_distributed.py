"""Scale-out and reliability: many workers on PostgreSQL and on the embedded store, crash-safe
resume with kill -9, broken trials recorded, passwords never printed."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.search.record import read, read_all

from conftest import PG_PASSWORD

runner = CliRunner()

# tiny and fast: an MLP, no fine-tuning, a short latency measurement
FAST = dict(model={"builtin": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
            budget={"trials": 40, "epochs": 0, "train_fraction": 0.05},
            target={"device": "cpu", "batch_size": 1, "threads": 1, "max_time_s": 0.01},
            early_stopping="none", warm_start={"recipes": False})


def _searched(study):
    """The records of every trial but the baseline."""
    return [r for r in read_all(study) if not r.baseline]


def _check_exact(study, n):
    searched = _searched(study)
    assert len(searched) == n, f"{len(searched)} trials, expected {n}"
    assert all(r.state == TrialState.COMPLETE for r in searched)
    assert len({t.number for t in study.get_trials()}) == len(study.get_trials())
    assert all("accuracy" in r.metrics for r in searched)


def test_four_workers_on_postgres_finish_exactly_40_trials(write_study, tmp_path, postgres_url):
    study_file = write_study(name="pg-study", **FAST)
    start = time.time()
    result = runner.invoke(app, ["search", str(study_file), "--out", str(tmp_path / "run"),
                                 "--storage", postgres_url, "--workers", "4"])
    elapsed = time.time() - start
    assert result.exit_code == 0, result.output
    assert PG_PASSWORD not in result.output
    study = optuna.load_study(study_name="pg-study", storage=postgres_url)
    _check_exact(study, 40)
    pids = {r.worker_pid for r in _searched(study)}
    assert None not in pids
    print(f"\n4 workers x PostgreSQL: 40 trials in {elapsed:.1f} s, {len(pids)} workers ran trials")
    assert len(pids) >= 2

    status = runner.invoke(app, ["status", "pg-study", "--storage", postgres_url])
    assert status.exit_code == 0 and "40 complete" in status.output
    assert PG_PASSWORD not in status.output


def test_two_workers_on_the_embedded_store_finish_exactly_20_trials(write_study, tmp_path):
    study_file = write_study(**{**FAST, "budget": {**FAST["budget"], "trials": 20}})
    start = time.time()
    result = runner.invoke(app, ["search", str(study_file), "--out", str(tmp_path / "run"), "--workers", "2"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    _check_exact(study, 20)
    print(f"\n2 workers x SQLite: 20 trials in {time.time() - start:.1f} s")


def test_a_worker_joins_from_the_storage_alone(write_study, tmp_path, postgres_url):
    study_file = write_study(name="joined", **{**FAST, "budget": {**FAST["budget"], "trials": 3}})
    run_dir = tmp_path / "shared"
    assert runner.invoke(app, ["search", str(study_file), "--out", str(run_dir), "--storage", postgres_url,
                               "--trials", "1"]).exit_code == 0
    # another machine: knows only the study name, the URL and a shared path for the baseline
    result = runner.invoke(app, ["worker", "--study", "joined", "--out", str(run_dir)],
                           env={"AUTOCOMPRESS_STORAGE": postgres_url})
    assert result.exit_code == 0, result.output
    _check_exact(optuna.load_study(study_name="joined", storage=postgres_url), 3)
    # it says where it is, one line per trial it ran, and what it did; never the password
    assert "joined study 'joined'" in result.output and PG_PASSWORD not in result.output
    assert len(re.findall(r"^trial \d+ complete: accuracy ", result.output, flags=re.M)) == 2
    assert "ran 2 trial(s); the study has 3 of 3" in result.output


def test_status_finds_a_study_searched_with_storage(write_study, tmp_path, postgres_url):
    study_file = write_study(name="elsewhere", **{**FAST, "budget": {**FAST["budget"], "trials": 2}})
    run_dir = tmp_path / "run"
    assert runner.invoke(app, ["search", str(study_file), "--out", str(run_dir), "--storage", postgres_url]).exit_code == 0
    assert not (run_dir / "study.db").exists()
    assert PG_PASSWORD not in (run_dir / "storage.url").read_text()
    # without the password: one line saying where the study is and how to reach it
    result = runner.invoke(app, ["status", str(run_dir)], env={"AUTOCOMPRESS_STORAGE": None})
    assert result.exit_code == 2 and "--storage" in result.output and "autocompress:***@" in result.output
    assert PG_PASSWORD not in result.output and not (run_dir / "study.db").exists()
    # with it in the environment (as workers get it), or on the command line
    result = runner.invoke(app, ["status", str(run_dir)], env={"AUTOCOMPRESS_STORAGE": postgres_url})
    assert result.exit_code == 0 and "2 complete" in result.output.replace("COMPLETE", "complete"), result.output
    result = runner.invoke(app, ["status", str(run_dir), "--storage", postgres_url])
    assert result.exit_code == 0, result.output


def test_status_finds_a_study_in_another_sqlite_file(write_study, tmp_path):
    study_file = write_study(name="other-file", **{**FAST, "budget": {**FAST["budget"], "trials": 1}})
    run_dir, db = tmp_path / "run", tmp_path / "elsewhere.db"
    assert runner.invoke(app, ["search", str(study_file), "--out", str(run_dir),
                               "--storage", f"sqlite:///{db}"]).exit_code == 0
    result = runner.invoke(app, ["status", str(run_dir)])
    assert result.exit_code == 0 and "other-file" in result.output, result.output
    (run_dir / "storage.url").unlink()    # a run directory that lost track of its storage
    result = runner.invoke(app, ["status", str(run_dir)])
    assert result.exit_code == 2 and "has no study.db" in result.output
    assert not (run_dir / "study.db").exists()


def test_default_store_lies_in_a_run_directory_with_url_characters(tmp_path):
    from autocompress.search.storage import default_storage_url, open_storage

    run_dir = tmp_path / "my runs" / "x#1?a%20"
    run_dir.mkdir(parents=True)
    optuna.create_study(study_name="s", storage=open_storage(default_storage_url(run_dir), heartbeat=False))
    assert [p.name for p in tmp_path.rglob("*.db")] == ["study.db"]
    assert (run_dir / "study.db").is_file()


def test_unreachable_database_is_one_line_without_the_password(write_study, tmp_path):
    url = f"postgresql://someone:{PG_PASSWORD}@127.0.0.1:1/nowhere"
    result = runner.invoke(app, ["search", str(write_study()), "--out", str(tmp_path / "run"), "--storage", url])
    assert result.exit_code == 2
    assert "cannot open" in result.output and "someone:***@" in result.output
    assert PG_PASSWORD not in result.output
    assert not (tmp_path / "run").exists()


def test_storage_urls_are_shown_without_their_password():
    from autocompress.utils import redact_url

    assert redact_url(f"postgresql://someone:{PG_PASSWORD}@db/x") == "postgresql://someone:***@db/x"
    assert redact_url(f"postgresql://:{PG_PASSWORD}@db/x") == "postgresql://:***@db/x"
    assert redact_url("postgresql://someone@db:5432/x") == "postgresql://someone@db:5432/x"
    assert redact_url("sqlite:////tmp/a:b@c/study.db") == "sqlite:////tmp/a:b@c/study.db"


def test_kill_9_during_trials_then_resume(write_study, tmp_path):
    """Kill a worker at random moments, several times; resuming meets the budget, keeps
    every completed trial, and retries the killed ones."""
    budget = 10
    study_file = write_study(
        budget={"trials": budget, "epochs": 3, "train_fraction": 0.5}, early_stopping="none",
        warm_start={"recipes": False}, heartbeat={"interval_s": 1, "grace_s": 3, "max_retry": 5},
        target={"device": "cpu", "batch_size": 1, "threads": 1, "max_time_s": 0.02})
    run_dir = tmp_path / "run"
    url = f"sqlite:///{run_dir / 'study.db'}"
    assert runner.invoke(app, ["search", str(study_file), "--out", str(run_dir), "--trials", "1"]).exit_code == 0
    rng = random.Random(0)
    env = {**os.environ, "AUTOCOMPRESS_STORAGE": url}
    kills = 0
    completed_before = {}
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "autocompress", "worker", "--study", "tiny",
                                 "--out", str(run_dir), "--threads", "1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        study = optuna.load_study(study_name="tiny", storage=url)
        deadline = time.time() + 90
        seen = {t.number for t in study.get_trials()}
        while time.time() < deadline and not any(t.state.name == "RUNNING" and t.number not in seen
                                                 for t in study.get_trials()):
            time.sleep(0.1)
        time.sleep(rng.uniform(0.1, 1.0))  # somewhere inside a trial
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        completed_before.update({r.number: dict(r.metrics) for r in read_all(study, [TrialState.COMPLETE])
                                 if not r.baseline})
    result = runner.invoke(app, ["search", str(study_file), "--out", str(run_dir)])
    assert result.exit_code == 0, result.output

    study = optuna.load_study(study_name="tiny", storage=url)
    trials = study.get_trials()
    records = read_all(study)
    complete = [r for r in records if r.state == TrialState.COMPLETE and not r.baseline]
    # failed by Optuna's heartbeat (the worker was killed): no recorded reason, not counted
    killed = [r for r in records if r.state == TrialState.FAIL and r.fail_reason is None]
    assert len(complete) == budget
    assert not any(r.counted for r in killed)
    assert not [r for r in records if r.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert 2 <= len(killed) <= kills
    retried_from = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    assert {r.number for r in killed} <= retried_from  # every killed trial was retried
    for number, metrics in completed_before.items():  # nothing computed before a kill is lost
        assert read(study.trials[number]).metrics == metrics
    assert torch.load(run_dir / "baseline.pt", weights_only=True)
    leftovers = [p for p in run_dir.rglob("*.tmp") if p.stat().st_size and not p.name.startswith(".")]
    assert not leftovers
    print(f"\nkill -9 x{kills}: {len(killed)} trial(s) killed mid-run and retried; "
          f"{len(complete)} complete")


def test_out_of_memory_in_a_trial_is_recorded_and_the_study_goes_on(write_study, tmp_path, write_text):
    write_text("oom_models.py", """
        import torch
        from torch import nn

        class Hungry(nn.Module):
            def __init__(self, num_classes, in_channels):
                super().__init__()
                self.fc = nn.Linear(64 * in_channels, num_classes)
            def forward(self, x):
                if self.training:
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
                return self.fc(x.flatten(1))

        def build(num_classes, in_channels):
            return Hungry(num_classes, in_channels)
    """)
    study_file = write_study(model={"factory": "oom_models:build"}, baseline={"epochs": 0})
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["search", str(study_file), "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}")
    failed = _searched(study)
    assert len(failed) == 2 and all(r.state == TrialState.FAIL for r in failed)
    assert all("out of memory" in r.fail_reason and r.counted for r in failed)
    status = runner.invoke(app, ["status", str(run_dir)])
    assert "out of memory" in status.output
    sys.modules.pop("oom_models", None)
