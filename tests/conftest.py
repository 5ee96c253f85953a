"""Shared fixtures: tiny study files and a small digits trial context."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

# Tiny models train an order of magnitude faster on one thread than on two busy cores.
torch.set_num_threads(1)

TINY_SPACE = {
    "training": {
        "optimizer": {"choices": ["sgd", "adamw"]},
        "lr": {"low": 1e-3, "high": 1e-2, "log": True},
        "momentum": {"low": 0.8, "high": 0.95, "when": {"optimizer": ["sgd"]}},
        "batch_size": 64,
    }
}


def tiny_study(**overrides) -> dict:
    """A study that runs in seconds: digits, 20% of the training split, 1-epoch trials."""
    study = {
        "name": "tiny",
        "model": {"builtin": "digits_cnn", "kwargs": {"width": 8}},
        "data": {"builtin": "digits"},
        "search_space": TINY_SPACE,
        "objectives": [{"metric": "accuracy", "direction": "maximize"},
                       {"metric": "latency_ms", "direction": "minimize"}],
        "constraints": ["accuracy_drop <= 0.5"],
        "budget": {"trials": 2, "epochs": 1, "train_fraction": 0.2},
        "baseline": {"epochs": 1},
        "target": {"device": "cpu", "batch_size": 1, "threads": 1, "max_time_s": 0.05},
        "device": "cpu",
        "sampler": "random",
        "seed": 0,
        "candidates": 1,     # one policy per trial, as sampled (tests of the candidate step set more)
    }
    study.update(overrides)
    return study


@pytest.fixture
def write_study(tmp_path: Path):
    """write_study(**overrides) -> path of a study YAML in tmp_path."""

    def write(filename: str = "study.yaml", **overrides) -> Path:
        path = tmp_path / filename
        path.write_text(yaml.safe_dump(tiny_study(**overrides), sort_keys=False))
        return path

    return write


@pytest.fixture
def write_text(tmp_path: Path):
    def write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture(scope="session")
def digits_bundle():
    from autocompress.zoo.data import digits

    return digits()


@pytest.fixture
def digits_ctx(digits_bundle):
    """A TrialContext with an (untrained) small digits CNN as the teacher."""
    from autocompress.trial.context import TargetSettings, TrialContext
    from autocompress.zoo.models import create_model

    torch.manual_seed(0)
    teacher = create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=8)
    teacher.eval().requires_grad_(False)
    return TrialContext(data=digits_bundle.subset_train(0.3, 0), teacher=teacher,
                        baseline_metrics={"accuracy": 0.1, "size_mb": 0.05},
                        target=TargetSettings(max_time_s=0.05), epochs=1, seed=0)


# -- a throwaway PostgreSQL server -------------------------------------------------------------
PG_HELP = ("PostgreSQL server binaries not found: install Debian's 'postgresql' package "
           "(bash scripts/test does) or set AUTOCOMPRESS_TEST_POSTGRES_URL=postgresql://user:pw@host/db")
PG_PASSWORD = "s3cret-pw"


def _pg_bin() -> Path | None:
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def postgres_server():
    """Base URL (no database) of a PostgreSQL cluster started for this test session with
    initdb/pg_ctl on loopback. In CI it must run; elsewhere it skips with how to run it."""
    import os
    import shutil
    import socket
    import subprocess

    if os.environ.get("AUTOCOMPRESS_TEST_POSTGRES_URL"):
        yield os.environ["AUTOCOMPRESS_TEST_POSTGRES_URL"].rsplit("/", 1)[0]
        return
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail(PG_HELP)
        pytest.skip(PG_HELP)
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="autocompress-pg-"))  # pytest's tmp dirs are root-only
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    pwfile = root / "pw"
    pwfile.write_text(PG_PASSWORD + "\n")
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        shutil.chown(pwfile, "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = lambda *cmd: subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "autocompress", "-A", "scram-sha-256",
        f"--pwfile={pwfile}", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
        f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off", "start")
    try:
        yield f"postgresql://autocompress:{PG_PASSWORD}@127.0.0.1:{port}"
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh database on the session's server, for one test."""
    import re

    import sqlalchemy

    name = "t_" + re.sub(r"\W", "_", request.node.name.lower())[:50]
    engine = sqlalchemy.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return f"{postgres_server}/{name}"
