"""Pre-screening, multi-objective early stopping and warm starts."""

from __future__ import annotations

import optuna
import pytest
import torch

from autocompress.spec.config import spec_from_dict
from autocompress.search.efficiency import (RECIPES, early_stop_func, enqueue_warm_starts, prescreen_func,
                                     warm_start_params)
from autocompress.spec.policy import Policy, PruningPolicy, QuantizationPolicy, RuntimePolicy
from autocompress.spec.space import load_space
from autocompress.trial.run import Stopped, TargetSettings, run_trial, structure_key

from conftest import tiny_study


def _spec(**overrides):
    return spec_from_dict(tiny_study(**overrides), "study.yaml")


def _done(study, acc_curve, cheap, mode="none", policy=None):
    policy = policy or Policy(quantization=QuantizationPolicy(mode=mode))
    study.add_trial(optuna.trial.create_trial(
        values=[acc_curve[-1]] + [cheap.get("latency_ms", 1.0)] * (len(study.directions) - 1),
        user_attrs={"history": [{"epoch": i + 1, "val_accuracy": a} for i, a in enumerate(acc_curve)],
                    "cheap_metrics": cheap, "policy": policy.to_dict(), "structure_key": structure_key(policy)}))


def test_dominated_trial_is_stopped_and_others_are_kept():
    spec = _spec(early_stopping={"rule": "dominated", "grace_epochs": 1, "margin": 0.02})
    study = optuna.create_study(directions=spec.directions)
    _done(study, [0.90, 0.95, 0.97], {"latency_ms": 0.5, "size_mb": 1.0})
    rule = early_stop_func(spec, study, Policy(), epochs=3)

    # same cost, far lower accuracy at epoch 1 -> stopped, naming the dominating trial
    reason = rule(1, {"val_accuracy": 0.50}, {"latency_ms": 0.5, "size_mb": 1.0})
    assert reason and "dominated at epoch 1" in reason and "0" in reason
    # within the margin -> kept
    assert rule(1, {"val_accuracy": 0.89}, {"latency_ms": 0.5}) is None
    # cheaper than every finished trial -> nothing dominates it, kept however bad it is
    assert rule(1, {"val_accuracy": 0.10}, {"latency_ms": 0.1}) is None
    # the last epoch is never cut (nothing left to save)
    assert rule(3, {"val_accuracy": 0.10}, {"latency_ms": 0.5}) is None
    # a different number format is not comparable
    int8 = early_stop_func(spec, study, Policy(quantization=QuantizationPolicy(mode="static_int8")), epochs=3)
    assert int8(1, {"val_accuracy": 0.10}, {"latency_ms": 0.5}) is None


def test_a_trial_in_another_runtime_does_not_dominate_on_latency():
    # eager and ONNX Runtime share the structure's cheap (eager) latency, but not the final one
    onnx = Policy(runtime=RuntimePolicy(backend="onnxruntime"))
    spec = _spec(early_stopping={"rule": "dominated", "margin": 0.02})       # accuracy + latency_ms
    study = optuna.create_study(directions=spec.directions)
    _done(study, [0.9, 0.95, 0.97], {"latency_ms": 0.5, "flops": 1e6})        # an eager trial
    cheap = {"latency_ms": 0.5, "flops": 1e6}
    assert early_stop_func(spec, study, onnx, epochs=3)(1, {"val_accuracy": 0.1}, cheap) is None
    assert early_stop_func(spec, study, Policy(), epochs=3)(1, {"val_accuracy": 0.1}, cheap)
    # with FLOPs as the only cost, the runtime does not matter
    flops = _spec(early_stopping={"rule": "dominated", "margin": 0.02},
                  objectives=[{"metric": "accuracy", "direction": "maximize"}, {"metric": "flops", "direction": "minimize"}])
    assert early_stop_func(flops, study, onnx, epochs=3)(1, {"val_accuracy": 0.1}, cheap)
    # costs measured on both deployed forms (runtime included) are final: comparable across runtimes
    previewed = optuna.create_study(directions=spec.directions)
    _done(previewed, [0.9, 0.95, 0.97], {"latency_ms": 0.5, "flops": 1e6, "deployed": 1.0})
    rule = early_stop_func(spec, previewed, onnx, epochs=3)
    assert rule(1, {"val_accuracy": 0.1}, {**cheap, "deployed": 1.0})
    assert rule(1, {"val_accuracy": 0.1}, {**cheap, "deployed": 1.0, "latency_ms": 0.2}) is None  # faster


def test_costs_the_structure_cannot_tell_need_the_same_structure():
    # peak memory is not known before training: only the same structure, format and runtime compare
    spec = _spec(early_stopping={"rule": "dominated", "margin": 0.02},
                 objectives=[{"metric": "accuracy", "direction": "maximize"},
                             {"metric": "peak_memory_mb", "direction": "minimize"}])
    study = optuna.create_study(directions=spec.directions)
    pruned = Policy(pruning=PruningPolicy(method="structured", ratio=0.5))
    _done(study, [0.9, 0.95, 0.97], {"latency_ms": 0.5}, policy=pruned)
    cheap = {"latency_ms": 0.6}
    assert early_stop_func(spec, study, Policy(), epochs=3)(1, {"val_accuracy": 0.1}, cheap) is None
    assert early_stop_func(spec, study, pruned, epochs=3)(1, {"val_accuracy": 0.1}, cheap)


def test_grace_epochs_and_rule_none():
    spec = _spec(early_stopping={"rule": "dominated", "grace_epochs": 2})
    study = optuna.create_study(directions=spec.directions)
    _done(study, [0.9, 0.95, 0.97], {"latency_ms": 0.5})
    rule = early_stop_func(spec, study, Policy(), epochs=3)
    assert rule(1, {"val_accuracy": 0.1}, {"latency_ms": 0.5}) is None
    assert rule(2, {"val_accuracy": 0.1}, {"latency_ms": 0.5})
    assert early_stop_func(_spec(early_stopping="none"), study, Policy(), epochs=3) is None


def test_prescreen_only_uses_metrics_that_are_final():
    spec = _spec(constraints=["params <= 1000", "latency_ms <= 0.1"])
    check = prescreen_func(spec, Policy())
    assert "params" in check({"params": 5000, "latency_ms": 0.05})
    assert check({"params": 500, "latency_ms": 0.05}) is None
    # int8 through ONNX Runtime: its latency was measured on that deployed form, so it is final
    q = prescreen_func(spec, Policy(quantization=QuantizationPolicy(mode="static_int8"),
                                    runtime=RuntimePolicy(backend="onnxruntime")))
    assert "latency_ms" in q({"params": 500, "latency_ms": 9.0})
    # torch.compile is not previewed (compiling costs tens of seconds): only params can be judged
    c = prescreen_func(spec, Policy(runtime=RuntimePolicy(backend="compile")))
    assert c({"params": 500, "latency_ms": 9.0}) is None and "params" in c({"params": 5000, "latency_ms": 9.0})
    # gradual pruning changes the structure during training: nothing is final
    assert prescreen_func(spec, Policy(pruning=PruningPolicy(method="gradual"))) is None


@pytest.mark.parametrize("mode, backend", [("none", "eager"), ("static_int8", "torchscript"),
                                           ("qat_int8", "onnxruntime"), ("fp16", "eager")])
def test_cheap_metrics_preview_the_deployed_form(digits_ctx, mode, backend):
    """Latency and size before training are those of the deployed form (number format and
    runtime of the untrained compressed model): the trial's final size, and its latency."""
    policy = Policy(pruning=PruningPolicy(method="structured", ratio=0.5), quantization=QuantizationPolicy(mode=mode),
                    runtime=RuntimePolicy(backend=backend))
    result = run_trial(policy, digits_ctx)
    cheap, final = result.cheap_metrics, result.metrics
    assert cheap["deployed"] == 1.0
    assert cheap["size_mb"] == pytest.approx(final["size_mb"], rel=0.01)      # same tensors, other values
    assert cheap["flops"] == final["flops"] and cheap["params"] == final["params"]
    # measured twice on a shared CPU: same order (the float model run eagerly is 5x off for int8 + TorchScript)
    assert final["latency_ms"] / 3 <= cheap["latency_ms"] <= 3 * final["latency_ms"]
    if mode != "none":   # not the float model's size (on a model this small, headers weigh much)
        assert cheap["size_mb"] < 0.9 * structure_size(digits_ctx, policy)


def structure_size(ctx, policy):
    from autocompress.metrics.size import size_mb
    from autocompress.compress import build_techniques

    model = __import__("copy").deepcopy(ctx.teacher)
    for t in build_techniques(Policy(pruning=policy.pruning), ctx):
        model = t.compress(model)
    return size_mb(model)


def test_prescreen_ends_the_trial_before_any_optimizer_step(digits_ctx, monkeypatch):
    import torch

    steps = []
    monkeypatch.setattr(torch.optim.Optimizer, "zero_grad", lambda self, *a, **k: steps.append(1))
    digits_ctx.prescreen = lambda cheap: "too many params" if cheap["params"] > 10 else None
    with pytest.raises(Stopped) as err:
        run_trial(Policy(), digits_ctx)
    assert err.value.stage == "prescreen" and err.value.metrics["params"] > 10
    assert steps == []
    # the second time the cached cheap metrics decide, before compressing anything
    with pytest.raises(Stopped, match="cached"):
        run_trial(Policy(), digits_ctx)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cheap_and_final_latency_on_a_cuda_target(digits_ctx):
    digits_ctx.target = TargetSettings(device="cuda", max_time_s=0.05)
    result = run_trial(Policy(pruning=PruningPolicy(method="structured", ratio=0.5)), digits_ctx)
    assert result.cheap_metrics["latency_ms"] > 0
    assert result.metrics["latency_ms"] > 0
    assert result.measured_on["device"] == "cuda"


def test_prescreened_trials_are_pruned_in_the_study(write_study, tmp_path):
    from typer.testing import CliRunner

    from autocompress.cli import app

    study_file = write_study(constraints=["params <= 100"])
    result = CliRunner().invoke(app, ["search", str(study_file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    searched = [t for t in study.get_trials() if not t.user_attrs.get("baseline")]
    assert [t.state.name for t in searched] == ["PRUNED", "PRUNED"]
    assert all("params" in t.user_attrs["prescreened"] and t.user_attrs["epochs_run"] == 0 for t in searched)
    assert all(t.constraints["0"] > 0 for t in searched)  # the sampler sees the violation


SPACE = {
    "pruning": {"method": {"choices": ["none", "weight", "structured"]},
                "criterion": {"choices": ["l1", "fpgm"], "when": {"method": ["structured"]}},
                "ratio": {"low": 0.1, "high": 0.8, "when": {"method": ["weight", "structured"]}}},
    "quantization": {"mode": {"choices": ["none", "static_int8", "qat_int8"]}},
    "distillation": {"method": {"choices": ["none", "soft"]},
                     "alpha": {"low": 0.0, "high": 0.9, "when": {"method": ["soft"]}},
                     "temperature": {"low": 1.0, "high": 8.0, "when": {"method": ["soft"]}}},
}


def test_warm_start_params_follow_the_space():
    space = load_space(SPACE)
    params = warm_start_params(space, RECIPES["structured-l1-50+static-int8+kd-t4"])
    assert params == {"pruning.method": "structured", "pruning.criterion": "l1", "pruning.ratio": 0.5,
                      "quantization.mode": "static_int8", "distillation.method": "soft", "distillation.alpha": 0.5,
                      "distillation.temperature": 4.0}
    # a space without quantization cannot express an int8 recipe
    no_quant = load_space({k: v for k, v in SPACE.items() if k != "quantization"})
    assert warm_start_params(no_quant, RECIPES["static-int8"]) is None


def test_warm_starts_come_first_and_are_marked():
    spec = _spec(search_space=SPACE, warm_start={"recipes": True, "policies": [
        {"pruning": {"method": "weight", "ratio": 0.3}}]})
    study = optuna.create_study(directions=spec.directions)
    n = enqueue_warm_starts(study, spec, spec.load_space(), lambda m: None)
    assert n == len(RECIPES) + 1
    assert enqueue_warm_starts(study, spec, spec.load_space(), lambda m: None) == 0  # once per study
    space = spec.load_space()
    first = []
    for _ in range(n):
        trial = study.ask()
        first.append((trial.user_attrs["warm_start"], space.sample(trial)))
        study.tell(trial, [0.0, 0.0])
    names = [name for name, _ in first]
    assert names[:len(RECIPES)] == list(RECIPES) and names[-1] == "user-0"
    policy = dict(first)["structured-l1-50+static-int8+kd-t4"]
    assert policy.pruning.method == "structured" and policy.quantization.mode == "static_int8"
    assert dict(first)["user-0"].pruning.ratio == 0.3


def test_bad_warm_start_policy_is_a_config_error():
    from autocompress.errors import ConfigError

    with pytest.raises(ConfigError, match=r"warm_start.policies\[0\]"):
        _spec(warm_start={"policies": [{"prunning": {}}]})


def test_a_known_runtime_failure_ends_later_trials_before_training(write_study, tmp_path, monkeypatch):
    """dynamic int8 has no ONNX export: the first such trial finds it after fine-tuning, the
    next ones end before any training step, with its reason; a resumed study remembers."""
    from typer.testing import CliRunner

    from autocompress.cli import app
    from autocompress.search.efficiency import ATTR_KNOWN_AS, load_known_failures

    space = {"quantization": {"mode": "dynamic_int8"}, "runtime": {"backend": "onnxruntime"},
             "training": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}}}
    study_file = write_study(search_space=space, model={"builtin": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
                             budget={"trials": 3, "epochs": 1, "train_fraction": 0.2},
                             warm_start={"recipes": False})
    assert CliRunner().invoke(app, ["search", str(study_file), "--out", str(tmp_path / "run")]).exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    first, *later = [t for t in study.get_trials() if not t.user_attrs.get("baseline")]
    assert first.state.name == "FAIL" and "does not run int8 torch.ao models" in first.user_attrs["fail_reason"]
    assert len(later) == 2
    for t in later:
        assert t.state.name == "FAIL" and t.user_attrs[ATTR_KNOWN_AS] == first.user_attrs[ATTR_KNOWN_AS]
        assert f"as trial {first.number} found; ended before training" in t.user_attrs["fail_reason"]
    assert load_known_failures(study) == {
        "onnxruntime:dynamic_int8/per-channel": later[0].user_attrs["fail_reason"]}


def test_known_failures_end_the_trial_before_any_optimizer_step(digits_ctx, monkeypatch):
    import torch

    from autocompress.errors import TrialFailed
    from autocompress.trial.run import runtime_key

    steps = []
    monkeypatch.setattr(torch.optim.Optimizer, "zero_grad", lambda self, *a, **k: steps.append(1))
    bf16_ort = Policy(quantization=QuantizationPolicy(mode="bf16"), runtime=RuntimePolicy(backend="onnxruntime"))
    digits_ctx.known_failures = {runtime_key(bf16_ort): "no bf16 Conv (as trial 3 found; ended before training)"}
    with pytest.raises(TrialFailed, match="as trial 3 found") as err:
        run_trial(bf16_ort, digits_ctx)
    assert err.value.known_as == "onnxruntime:bf16" and steps == []
    # another format or runtime is not affected
    assert runtime_key(Policy(quantization=QuantizationPolicy(mode="fp16"), runtime=RuntimePolicy(backend="onnxruntime"))) \
        not in digits_ctx.known_failures
