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


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("override, field", [
    ({"budget": {"trials": 2, "timeout": INF}}, "budget.timeout"),
    ({"budget": {"trials": 2, "timeout": NAN}}, "budget.timeout"),
    ({"budget": {"trials": 2, "train_fraction": NAN}}, "budget.train_fraction"),
    ({"baseline": {"lr": NAN}}, "baseline.lr"),
    ({"baseline": {"weight_decay": INF}}, "baseline.weight_decay"),
    ({"target": {"max_time_s": NAN}}, "target.max_time_s"),
    ({"early_stopping": {"margin": NAN}}, "early_stopping.margin"),
    ({"constraints": [{"metric": "accuracy_drop", "op": "<=", "bound": INF}]}, "constraints[0].bound"),
    ({"constraints": ["accuracy_drop <= .nan"]}, "constraints"),
    ({"constraints": ["accuracy_drop <= -.inf"]}, "constraints"),
    ({"constraints": ["latency_ms <= 1e400"]}, "constraints"),
    ({"search_space": {"training": {"lr": {"low": 1e-3, "high": INF}}}}, "training.lr.high"),
    ({"warm_start": {"policies": [{"training": {"lr": NAN}}]}}, "warm_start.policies[0].training.lr"),
])
def test_numbers_that_are_not_finite_are_refused(write_study, override, field):
    with pytest.raises(ConfigError) as err:
        load_study_spec(write_study(**override))
    assert err.value.field == field, str(err.value)
    assert "finite" in str(err.value)


@pytest.mark.parametrize("policy, field, words", [
    ({"quantization": {"mode": "int3"}}, "warm_start.policies[0].quantization.mode", "invalid value 'int3'"),
    ({"pruning": {"ratio": 1.2}}, "warm_start.policies[0].pruning.ratio", "outside the valid range"),
    ({"training": {"batch_size": "big"}}, "warm_start.policies[0].training.batch_size", "expected an integer"),
    ({"pruning": {"protect": [1]}}, "warm_start.policies[0].pruning.protect", "list of strings"),
    ({"prunning": {}}, "warm_start.policies[0].prunning", "did you mean 'pruning'"),
])
def test_warm_start_policies_are_checked_like_the_space(write_study, policy, field, words):
    with pytest.raises(ConfigError) as err:
        load_study_spec(write_study(warm_start={"policies": [policy]}))
    assert err.value.field == field and words in str(err.value), str(err.value)


@pytest.mark.parametrize("text, words", [
    ("name: a\nname: b\n", "line 2: duplicate key 'name' (first on line 1)"),
    ("name: a\nbudget: {trials: 2, trials: 3}\n", "line 2: duplicate key 'trials'"),
    ("hello\n", "expected a mapping"),
    ("3.5\n", "expected a mapping"),
    ("name: a\n\tseed: 1\n", "indent with spaces, not tabs"),
])
def test_yaml_of_any_shape(write_text, text, words):
    with pytest.raises(ConfigError) as err:
        load_study_spec(write_text("bad.yaml", text))
    assert words in str(err.value) and "bad.yaml: " in str(err.value), str(err.value)


def test_yaml_merge_keys_may_be_overridden(write_text):
    from autocompress.spec.yamlfile import read_yaml

    path = write_text("merge.yaml", "base: &b {lr: 0.1, epochs: 1}\nrun:\n  <<: *b\n  lr: 0.2\n")
    assert read_yaml(path, "file")["run"] == {"lr": 0.2, "epochs": 1}


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


def _eager(ctx):
    from autocompress.deploy.runtimes import deploy

    return deploy(ctx.teacher, "eager", ctx.example_batch(), threads=1)


def test_batch_1_latency_and_batch_n_throughput_are_both_measured(digits_ctx, monkeypatch):
    from dataclasses import replace

    import autocompress.trial.measure as measure

    side, runs = [], []
    real_side, real = measure.measure_side_by_side, measure.measure_latency

    def recorded_side(*args, **kwargs):
        side.append((args, kwargs, real_side(*args, **kwargs)))
        return side[-1][2]

    def recorded(*args, **kwargs):
        runs.append(real(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(measure, "measure_side_by_side", recorded_side)
    monkeypatch.setattr(measure, "measure_latency", recorded)
    # without a throughput batch size: batch-1 latency side by side with the baseline, no throughput
    m = measure.deployed_metrics(_eager(digits_ctx), digits_ctx)
    (args, kwargs, stats), = side
    assert "throughput_sps" not in m and runs == [] and kwargs["batch_size"] == 1
    assert set(args[0]) == {"trial", "baseline"} and args[0]["baseline"] is digits_ctx.teacher
    assert m["latency_ms"] == stats["trial"].median_ms and m["latency_runs"] == float(stats["trial"].runs)
    per_round = sorted(b / t for b, t in zip(stats["baseline"].per_round, stats["trial"].per_round))
    assert m["speedup"] == pytest.approx(per_round[2]) and m["speedup_rounds"] == 5.0
    side.clear()
    ctx = replace(digits_ctx, target=replace(digits_ctx.target, throughput_batch_size=32))
    m = measure.deployed_metrics(_eager(ctx), ctx)
    big, = runs
    assert big.batch_size == 32 and side[0][1]["batch_size"] == 1
    assert m["throughput_sps"] == pytest.approx(32 / (big.median_ms / 1e3))


def test_an_accuracy_drop_equal_to_its_bound_meets_the_constraint(digits_ctx, monkeypatch):
    from dataclasses import replace

    import autocompress.trial.measure as measure
    from autocompress.spec.config import Constraint

    monkeypatch.setattr(measure, "evaluate", lambda *a, **k: 0.35)
    ctx = replace(digits_ctx, baseline_metrics={**digits_ctx.baseline_metrics, "accuracy": 0.4})
    drop = measure.deployed_metrics(_eager(ctx), ctx)["accuracy_drop"]
    assert drop == 0.05
    assert Constraint.parse("accuracy_drop <= 0.05").violation(drop) <= 0