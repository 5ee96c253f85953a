"""Studies on a Ray cluster (``search --cluster``): one local Ray cluster with two logical GPUs,
started for this module with ``ray start --head``; PostgreSQL storage; workers with their own
working and run directories, sharing nothing with the driver but the storage."""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.search.record import read_all
from autocompress.utils import file_hashes

from conftest import PG_PASSWORD

pytestmark = pytest.mark.xdist_group("ray")  # one Ray cluster per test session, not one per xdist process
runner = CliRunner()
RAY_HELP = "Ray is not installed: pip install -e '.[test]' (or 'autocompress[ray]') installs it"
# small and quick: an MLP, a short latency measurement, no early stopping or warm starts
FAST = dict(model={"builtin": "mlp", "kwargs": {"hidden": 16, "depth": 1}}, early_stopping="none",
            target={"device": "cpu", "batch_size": 1, "threads": 1, "max_time_s": 0.01}, warm_start={"recipes": False})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    """The address of a one-node Ray cluster with 2 CPUs and 2 logical GPUs (no real GPU is
    used: Ray only counts them). In CI it must run; elsewhere it skips without Ray."""
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("CI"):
            pytest.fail(RAY_HELP)
        pytest.skip(RAY_HELP)
    root = Path(tempfile.mkdtemp(prefix="acray-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    # the cluster's own token, as a user of a token-authenticated cluster sets it (this process is the driver)
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    log = root / "head.log"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={_free_port()}",
           "--num-cpus=2", "--num-gpus=2", "--include-dashboard=false", "--disable-usage-stats",
           f"--temp-dir={root / 'ray'}", f"--ray-client-server-port={_free_port()}",
           f"--dashboard-agent-listen-port={_free_port()}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=root)
    try:
        deadline = time.time() + 90
        while not (found := re.search(r"--address='([^']+)'", log.read_text())):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"ray start --head failed: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield found.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)  # ray start --block stops the cluster's processes on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _searched(study):
    return [r for r in read_all(study) if not r.baseline]


def _check_shipped(study, run_dir: Path, worker_dir: Path) -> int:
    """Every feasible complete trial's files are in the driver's run directory with the SHA-256
    its worker recorded, and in that worker's own run directory, which the driver does not share."""
    shipped = 0
    for r in _searched(study):
        if r.state != TrialState.COMPLETE or not r.feasible:
            continue
        assert r.model_dir == f"trials/{r.number}" and r.model_files, f"trial {r.number} has no files"
        assert file_hashes(run_dir / r.model_dir) == r.model_files
        worker_copies = [d / r.model_dir for d in worker_dir.iterdir() if (d / r.model_dir).is_dir()]
        assert worker_copies and file_hashes(worker_copies[-1]) == r.model_files
        shipped += 1
    return shipped


def _kill_one_worker_mid_trial(storage: str, name: str, killed: dict) -> None:
    """SIGKILL the worker process of the first trial seen running, inside that trial;
    ``killed`` gets its number, the pid, and the trials complete before the kill."""
    study, deadline = None, time.time() + 300   # a loaded machine can take minutes to start Ray and the baseline
    while time.time() < deadline:
        try:
            study = study or optuna.load_study(study_name=name, storage=storage)
            running = [r for r in read_all(study, (TrialState.RUNNING,)) if r.worker_pid]
        except KeyError:   # not created yet
            running = []
        if running:
            time.sleep(0.2)  # inside the trial (it trains 2 epochs)
            killed["complete"] = {r.number: dict(r.metrics) for r in _searched(study) if r.state == TrialState.COMPLETE}
            killed["number"], killed["pid"] = running[0].number, running[0].worker_pid
            os.kill(running[0].worker_pid, signal.SIGKILL)
            return
        time.sleep(0.1)


def test_two_ray_workers_meet_the_budget_with_one_killed_and_ship_every_feasible_trial(
        ray_head, write_study, tmp_path, postgres_url, monkeypatch):
    """Two workers (one per logical GPU), PostgreSQL storage, each worker with its own working
    and run directory; one worker process is SIGKILLed mid-trial: Ray restarts it, the heartbeat
    fails its trial, which is retried; exactly the budget completes, nothing complete is lost,
    and every feasible trial's files reach the driver with the hashes the workers computed."""
    budget = 4
    study_file = write_study(name="ray-study", budget={"trials": budget, "epochs": 2, "train_fraction": 0.3},
                             heartbeat={"interval_s": 1, "grace_s": 3, "max_retry": 3}, **FAST)
    driver, nodes = tmp_path / "driver", tmp_path / "nodes"
    driver.mkdir()
    monkeypatch.chdir(driver)
    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    killed: dict = {}
    killer = threading.Thread(target=_kill_one_worker_mid_trial, args=(postgres_url, "ray-study", killed), daemon=True)
    killer.start()
    result = runner.invoke(app, ["search", str(study_file), "--cluster", "auto", "--storage", postgres_url,
                                 "--out", "run", "--worker-dir", str(nodes), "--timeout", "6m"])
    killer.join(timeout=5)
    assert result.exit_code == 0, result.output
    assert PG_PASSWORD not in result.output
    assert "2 worker(s); it can place 2 worker(s) (one per GPU) on 1 node(s)" in " ".join(result.output.split())
    assert "pid" in killed, "no trial was seen running"

    study = optuna.load_study(study_name="ray-study", storage=postgres_url)
    records = {r.number: r for r in _searched(study)}
    assert len({t.number for t in study.get_trials()}) == len(study.get_trials())
    assert sum(r.counted for r in records.values()) == budget
    assert sum(r.state == TrialState.COMPLETE for r in records.values()) == budget
    assert not [r for r in records.values() if r.state in (TrialState.RUNNING, TrialState.WAITING)]
    victim = records[killed["number"]]   # failed by the heartbeat: no recorded reason, not counted, retried
    assert victim.state == TrialState.FAIL and victim.fail_reason is None and not victim.counted
    assert victim.number in {n for t in study.get_trials() for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    for number, metrics in killed["complete"].items():  # nothing complete before the kill is lost
        assert dict(records[number].metrics) == metrics
    assert _check_shipped(study, driver / "run", nodes) == budget
    assert (driver / "run" / "baseline.pt").is_file() and not (driver / "run" / "study.db").exists()

    complete = [r for r in records.values() if r.state == TrialState.COMPLETE]
    assert {r.measured_on.placed_on for r in complete} <= {f"node {complete[0].measured_on.node} GPU {g}" for g in "01"}
    assert re.search(r"^trial \d+ complete on node \S+ GPU [01]: accuracy", result.output, flags=re.M)
    assert len({r.worker_pid for r in records.values()}) >= 2
    places = sorted(r.measured_on.placed_on for r in complete)
    print(f"\nkilled pid {killed['pid']} in trial {victim.number} (retried); complete trials by place: {places}")


def test_cluster_input_errors_are_one_line_and_write_nothing(ray_head, write_study, tmp_path, monkeypatch):
    study_file = write_study(name="ray-bad")
    out = tmp_path / "run"
    pg = f"postgresql://someone:{PG_PASSWORD}@127.0.0.1:1/x"
    cases = [
        (["--cluster", "ray://127.0.0.1:1", "--storage", pg], "cannot reach the Ray cluster"),
        (["--cluster", "ray://127.0.0.1:1"], "SQLite file on this machine, which workers on other nodes"),
        (["--cluster", ray_head, "--storage", pg, "--workers", "3"],
         "--workers: 3 workers, but the cluster can place 2"),
        (["--cluster", "nowhere"], "--cluster: 'nowhere' is not a cluster"),
        (["--cpus-per-worker", "2"], "--cpus-per-worker: only with --cluster"),
    ]
    for args, expected in cases:
        result = runner.invoke(app, ["search", str(study_file), "--out", str(out), *args])
        assert result.exit_code == 2, (args, result.output)
        assert expected in result.output and len(result.output.strip().splitlines()) == 1, result.output
        assert PG_PASSWORD not in result.output and not out.exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    result = runner.invoke(app, ["search", str(study_file), "--out", str(out), "--cluster", "ray"])
    assert result.exit_code == 2 and "pip install 'autocompress[ray]'" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


# -- the driver's pieces, without a cluster ------------------------------------------------------
def test_shipped_files_are_checked_before_they_are_written(tmp_path):
    import hashlib

    from autocompress.errors import AutocompressError
    from autocompress.search.cluster_run import write_shipment
    from autocompress.search.cluster_worker import Shipment

    data = b"weights"
    digest = hashlib.sha256(data).hexdigest()
    write_shipment(tmp_path, Shipment(3, "trials/3", {"model.pt": data}, {"model.pt": digest}))
    assert (tmp_path / "trials" / "3" / "model.pt").read_bytes() == data
    with pytest.raises(AutocompressError, match="another SHA-256"):
        write_shipment(tmp_path, Shipment(4, "trials/4", {"model.pt": b"changed"}, {"model.pt": digest}))
    with pytest.raises(AutocompressError, match="outside the run directory"):
        write_shipment(tmp_path, Shipment(5, "trials/5", {"../../x.pt": data}, {"../../x.pt": digest}))
    assert not (tmp_path / "trials" / "4").exists() and not (tmp_path / "x.pt").exists()


def test_ctrl_c_marks_the_stopped_workers_trials_interrupted(tmp_path):
    from autocompress.search.cluster_run import interrupt_trials
    from autocompress.search.record import write_start
    from autocompress.spec.policy import Policy

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", directions=["maximize"])
    for pid in (111, 222):
        write_start(study.ask(), Policy(), summary="", keys=("s", "c"), pid=pid)
    interrupt_trials(study, {111, 333})
    mine, other = read_all(study)
    assert mine.state == TrialState.FAIL and mine.interrupted and not mine.counted  # run again on resume
    assert other.state == TrialState.RUNNING  # another driver's worker: left to its heartbeat


def test_cluster_capacity_counts_what_each_node_can_place():
    from types import SimpleNamespace

    from autocompress.search.cluster import capacity

    def fake(*nodes):
        listed = [{"NodeID": f"n{i}", "Alive": alive, "Resources": res} for i, (res, alive) in enumerate(nodes)]
        return SimpleNamespace(nodes=lambda: listed,
                               get_runtime_context=lambda: SimpleNamespace(get_node_id=lambda: "n0"))

    gpu_nodes = fake(({"GPU": 4, "CPU": 8}, True), ({"GPU": 2, "CPU": 1}, True), ({"CPU": 64}, True),
                     ({"GPU": 8, "CPU": 8}, False))
    assert capacity(gpu_nodes, 2, client=False).workers == 4          # one per GPU, each with 2 CPUs
    assert capacity(gpu_nodes, 1, client=False).workers == 5
    cap = capacity(fake(({"CPU": 8}, True), ({"CPU": 3}, True)), 4, client=False)
    assert (cap.workers, cap.gpus, cap.only_this_node) == (2, False, False)
    assert capacity(fake(({"CPU": 2}, True)), 1, client=False).only_this_node
    assert not capacity(fake(({"CPU": 2}, True)), 1, client=True).only_this_node


def test_local_cluster_workers_share_the_budget_lock_beside_the_sqlite_file(tmp_path):
    from autocompress.search.budget import _lock_file

    run_dir = tmp_path / "worker-run"
    assert _lock_file(f"sqlite:///{tmp_path}/driver/study.db", run_dir) == tmp_path / "driver" / ".budget.lock"
    assert _lock_file("sqlite://", run_dir) == run_dir / ".budget.lock"


def test_sqlite_is_refused_only_where_the_cluster_cannot_open_it():
    from autocompress.errors import ConfigError
    from autocompress.search.cluster import check_shared_storage, parse_cluster

    sqlite, where = "sqlite:////tmp/run/study.db", (None, "storage")
    check_shared_storage(parse_cluster("ray"), sqlite, where)                        # a local instance
    check_shared_storage(parse_cluster("auto"), sqlite, where)                       # not known before connecting
    check_shared_storage(parse_cluster("auto"), sqlite, where, only_this_node=True)  # a cluster of this machine alone
    with pytest.raises(ConfigError, match="^storage: .*other nodes of the cluster auto"):
        check_shared_storage(parse_cluster("auto"), sqlite, where, only_this_node=False)
    with pytest.raises(ConfigError, match="cannot open"):
        check_shared_storage(parse_cluster("ray://head:10001"), sqlite, where)     # a Ray client is off the cluster
    check_shared_storage(parse_cluster("ray://head:10001"), "postgresql://u@db/x", where)
