"""What is measured is what ships: the artifact a trial timed and sized is the file it saves
and the file export writes, byte for byte, for every runtime; ratios to the baseline are
measured side by side and printed with their rounds and spread."""

from __future__ import annotations

import hashlib
import re

import pytest
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.metrics.latency import Ratio, measure_side_by_side
from autocompress.search.record import read_all
from autocompress.search.results import load_results

runner = CliRunner()
RUNTIMES = ["eager", "torchscript", "onnxruntime"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny study whose trials cover every runtime that writes a file (compile's artifact is
    the state dict, like eager's; compiling costs tens of seconds here)."""
    import yaml

    from conftest import tiny_study

    root = tmp_path_factory.mktemp("deploy")
    space = {"quantization": {"mode": {"choices": ["none", "static_int8"]}},
             "runtime": {"backend": {"choices": RUNTIMES}}, "training": {"lr": 0.003}}
    study = tiny_study(search_space=space, budget={"trials": 8, "epochs": 1, "train_fraction": 0.2},
                       warm_start={"recipes": False, "policies": [
                           {"runtime": {"backend": b}, "quantization": {"mode": "static_int8"}} for b in RUNTIMES]})
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    out = root / "run"
    result = runner.invoke(app, ["search", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_exported_bytes_are_the_measured_bytes_for_every_runtime(searched, tmp_path):
    records = [r for r in read_all(load_results(str(searched)).study) if r.model_dir]
    covered = set()
    for r in records:
        shipped = r.proof["runtime"]
        covered.add(shipped["backend"])
        saved = searched / r.model_dir / shipped["file"]
        # the trial saved the very bytes it measured
        assert _sha(saved) == shipped["artifact_sha256"]
        assert len(saved.read_bytes()) / 1e6 == pytest.approx(r.metrics["size_mb"], abs=1e-9)
        out = tmp_path / f"export-{r.number}"
        result = runner.invoke(app, ["export", str(searched), "--trial", str(r.number), "--out", str(out)])
        assert result.exit_code == 0, result.output
        # ... and export wrote them again, unchanged, under the same name
        assert _sha(out / shipped["file"]) == shipped["artifact_sha256"]
        card = (out / "README.md").read_text()
        assert f"ok: the artifact the trial measured (sha256 {shipped['artifact_sha256'][:16]}" in card
    assert covered == set(RUNTIMES)


def test_ratios_printed_for_front_points_carry_rounds_and_spread(searched, tmp_path):
    records = read_all(load_results(str(searched)).study)
    searched_trials = [r for r in records if r.model_dir]
    assert all(r.metrics["speedup_rounds"] == 5 and r.metrics["speedup_iqr"] >= 0 for r in searched_trials)
    status = runner.invoke(app, ["status", str(searched)])
    assert status.exit_code == 0
    assert re.search(r"\dx ±[\d.]+", status.output) and "median of the per-round ratios" in status.output
    report = runner.invoke(app, ["report", str(searched), "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 0, report.output
    html = (tmp_path / "r.html").read_text()
    speedups = re.findall(r"speedup [\d.]+x ±[\d.e-]+ \((\d+) rounds\)", html)
    assert speedups and set(speedups) == {"5"}
    # no latency ratio divides two figures measured apart: every latency change cell is a speedup
    assert not re.search(r"latency_ms</td><td>[^<]*</td><td>[^<]*</td><td><span[^>]*>x[\d.]+ \([+-]", html)


def test_side_by_side_ratio_is_the_median_of_per_round_ratios():
    import torch

    small, big = torch.nn.Linear(32, 32), torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(8)])
    stats = measure_side_by_side({"small": small, "big": big}, torch.randn(2, 32), max_time_s=0.1)
    assert len(stats["small"].per_round) == len(stats["big"].per_round) == 5
    ratio = Ratio.of(list(stats["big"].per_round), list(stats["small"].per_round))
    per_round = sorted(b / s for b, s in zip(stats["big"].per_round, stats["small"].per_round))
    assert ratio.median == per_round[2] and ratio.iqr == pytest.approx(per_round[3] - per_round[1])
    assert ratio.rounds == 5


def test_ratio_of_known_rounds():
    r = Ratio.of([2.0, 4.0, 6.0, 8.0, 10.0], [1.0, 2.0, 2.0, 2.0, 2.0])
    assert (r.median, r.iqr, r.rounds) == (3.0, 2.0, 5)


def test_a_search_can_compile_more_models_of_one_class_than_dynamos_recompile_limit(monkeypatch):
    import functools

    import torch
    import torch._dynamo

    from autocompress.deploy.runtimes import deploy

    # Inductor takes seconds per model: Dynamo's own "eager" backend shows the same cache behaviour
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    limit = torch._dynamo.config.recompile_limit
    for i in range(limit + 2):   # a new model of the same class each time, as trials make them
        model = torch.nn.Sequential(torch.nn.Linear(4 + i, 3))
        shipped = deploy(model, "compile", torch.randn(2, 4 + i))
        assert shipped.module(torch.randn(2, 4 + i)).shape == (2, 3)
