"""Study-file validation: one clear error naming the file and field path."""

from __future__ import annotations

import pytest
import yaml

from autocompress.spec.config import Constraint, load_study_spec, parse_duration
from autocompress.errors import ConfigError

from conftest import tiny_study


def test_valid_study_loads(write_study):
    spec = load_study_spec(write_study())
    assert spec.name == "tiny"
    assert spec.metric_names == ["accuracy", "latency_ms"]
    assert spec.directions == ["maximize", "minimize"]
    assert str(spec.constraints[0]) == "accuracy_drop <= 0.5"
    assert spec.load_space().distributions()


def test_demo_study_and_spaces_validate():
    from conftest import REPO

    for path in sorted((REPO / "studies").glob("*.yaml")):
        spec = load_study_spec(path)
        assert spec.load_space().searched, path


def test_search_space_path_is_relative_to_the_study_file(tmp_path, write_text):
    write_text("space.yaml", "training: {lr: {low: 0.001, high: 0.01}}\n")
    raw = tiny_study(search_space="space.yaml")
    (tmp_path / "sub").mkdir()
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert "training.lr" in load_study_spec(path).load_space().distributions()


@pytest.mark.parametrize("override, field, words", [
    ({"objectives": [{"metric": "latncy_ms", "direction": "minimize"}]}, "objectives[0].metric",
     "did you mean 'latency_ms'"),
    ({"objectives": [{"metric": "accuracy", "direction": "up"}]}, "objectives[0].direction", "maximize"),
    ({"objectives": []}, "objectives", "at least 1"),
    ({"sampler": "bayes"}, "sampler", "nsga2"),
    ({"budget": {"trials": -3}}, "budget.trials", "greater than 0"),
    ({"budget": {"trials": "many"}}, "budget.trials", "integer"),
    ({"budget": {"timeout": "soon"}}, "budget.timeout", "cannot parse duration"),
    ({"budget": {"trials": None}}, "budget", "give trials, timeout or both"),
    ({"constraints": ["accuracy_drop < 0.1"]}, "constraints", "cannot parse"),
    ({"constraints": ["speed <= 3"]}, "constraints", "unknown metric"),
    ({"model": {"builtin": "a", "torchvision": "b"}}, "model", "exactly one"),
    ({"model": {"builtin": "digits_cnn", "colour": 1}}, "model.colour", "unknown field"),
    ({"modle": {"builtin": "digits_cnn"}}, "modle", "unknown field"),
    ({"name": "has space"}, "name", "letters"),
    ({"target": {"device": "tpu"}}, "target.device", "unknown device"),
    ({"search_space": {"pruning": {"ratio": {"low": 0.9, "high": 0.1}}}}, "pruning.ratio", "greater than high"),
    ({"search_space": "missing.yaml"}, None, "search space file not found"),
])
def test_bad_study_fields(write_study, override, field, words):
    path = write_study(**override)
    with pytest.raises(ConfigError) as err:
        load_study_spec(path)
    message = str(err.value)
    assert words in message, message
    if field is not None:
        assert err.value.field == field, message
    assert str(path) in message or "missing.yaml" in message


@pytest.mark.parametrize("text, words", [
    ("", "empty study file"),
    ("name: [unclosed\n", "invalid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
])
def test_bad_study_files(write_text, text, words):
    path = write_text("bad.yaml", text)
    with pytest.raises(ConfigError, match=words):
        load_study_spec(path)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_study_spec(tmp_path / "none.yaml")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError):
        load_study_spec(binary)


def test_durations_and_constraints():
    assert parse_duration("20m") == 1200
    assert parse_duration("1h30m") == 5400
    assert parse_duration(90) == 90
    c = Constraint.parse("latency_ms <= 0.5")
    assert c.violation(0.4) < 0 < c.violation(0.6)
    c = Constraint.parse("accuracy >= 0.9")
    assert c.violation(0.95) < 0 < c.violation(0.8)


def test_throughput_objective_needs_its_batch_size(write_study):
    objectives = [{"metric": "accuracy", "direction": "maximize"},
                  {"metric": "throughput_sps", "direction": "maximize"}]
    with pytest.raises(ConfigError, match="throughput_batch_size"):
        load_study_spec(write_study(objectives=objectives))
    spec = load_study_spec(write_study(objectives=objectives,
                                       target={"device": "cpu", "batch_size": 1, "throughput_batch_size": 32}))
    assert spec.target.throughput_batch_size == 32


def test_batch_1_latency_and_batch_n_throughput_are_both_measured(digits_ctx, monkeypatch):
    from dataclasses import replace

    import autocompress.trial.measure as measure

    runs = []
    real = measure.measure_latency

    def recorded(*args, **kwargs):
        stats = real(*args, **kwargs)
        runs.append(stats)
        return stats

    monkeypatch.setattr(measure, "measure_latency", recorded)
    model = digits_ctx.teacher
    # without a throughput batch size: one batch-1 run, no throughput
    m = measure.deployed_metrics(model, digits_ctx)
    assert "throughput_sps" not in m and [r.batch_size for r in runs] == [1]
    runs.clear()
    ctx = replace(digits_ctx, target=replace(digits_ctx.target, throughput_batch_size=32))
    m = measure.deployed_metrics(model, ctx)
    one, big = runs
    assert (one.batch_size, big.batch_size) == (1, 32)
    # latency is the batch-1 run's median; throughput is 32 samples per batch-32 median
    assert m["latency_ms"] == one.median_ms and m["latency_runs"] == float(one.runs)
    assert m["throughput_sps"] == pytest.approx(32 / (big.median_ms / 1e3))


def test_an_accuracy_drop_equal_to_its_bound_meets_the_constraint(digits_ctx, monkeypatch):
    from dataclasses import replace

    import autocompress.trial.measure as measure
    from autocompress.spec.config import Constraint

    monkeypatch.setattr(measure, "evaluate", lambda *a, **k: 0.35)
    ctx = replace(digits_ctx, baseline_metrics={**digits_ctx.baseline_metrics, "accuracy": 0.4})
    drop = measure.deployed_metrics(ctx.teacher, ctx)["accuracy_drop"]
    assert drop == 0.05
    assert Constraint.parse("accuracy_drop <= 0.05").violation(drop) <= 0
