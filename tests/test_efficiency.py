"""Pre-screening, multi-objective early stopping, warm starts and the known-failure memory."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace

import optuna
import pytest
import torch

from autocompress.errors import FailureKey
from autocompress.search import record
from autocompress.search.early_stopping import early_stop_func
from autocompress.search.prescreen import prescreen_func
from autocompress.search.warm_start import RECIPES, enqueue_warm_starts, warm_start_params
from autocompress.spec.config import spec_from_dict
from autocompress.spec.policy import Policy, PruningPolicy, QuantizationPolicy, RuntimePolicy
from autocompress.spec.space import load_space
from autocompress.training.loop import Epoch
from autocompress.trial.context import KnownFailure, TargetSettings
from autocompress.trial.plan import TrialPlan
from autocompress.trial.result import Preview, Screen, Stopped
from autocompress.trial.run import run_trial

from conftest import tiny_study


def _spec(**overrides):
    return spec_from_dict(tiny_study(**overrides), "study.yaml")


def _done(study, acc_curve, cheap, mode="none", policy=None, deployed=False):
    """A finished trial as the storage holds it (the storage's attribute names)."""
    policy = policy or Policy(quantization=QuantizationPolicy(mode=mode))
    study.add_trial(optuna.trial.create_trial(
        values=[acc_curve[-1]] + [cheap.get("latency_ms", 1.0)] * (len(study.directions) - 1),
        user_attrs={"history": [{"epoch": i + 1, "val_accuracy": a} for i, a in enumerate(acc_curve)],
                    "cheap_metrics": cheap, "preview_deployed": deployed, "policy": policy.to_dict(),
                    "structure_key": TrialPlan(policy).structure_key}))


def _row(epoch: int, val_accuracy: float) -> Epoch:
    return Epoch(epoch=epoch, train_loss=0.5, val_accuracy=val_accuracy, lr=0.01)


def _reason(fn):
    """The rule's verdict as its reason (None: go on), for assertions that need only that."""
    return None if fn is None else (lambda *args: fn(*args).reason)


def _stop(policy=None):
    return lambda spec, study, epochs=3: _reason(early_stop_func(spec, study, TrialPlan(policy or Policy()),
                                                                 epochs=epochs))


def test_dominated_trial_is_stopped_and_others_are_kept():
    spec = _spec(early_stopping={"rule": "dominated", "grace_epochs": 1, "margin": 0.02})
    study = optuna.create_study(directions=spec.directions)
    _done(study, [0.90, 0.95, 0.97], {"latency_ms": 0.5, "size_mb": 1.0})
    assert record.read_all(study)[0].preview == Preview({"latency_ms": 0.5, "size_mb": 1.0}, deployed=False)
    rule = _stop()(spec, study)

    # same cost, far lower accuracy at epoch 1 -> stopped, naming the dominating trial
    reason = rule(1, _row(1, 0.50), Preview({"latency_ms": 0.5, "size_mb": 1.0}))
    assert reason and "dominated at epoch 1" in reason and "trial(s) 0 " in reason
    # within the margin -> kept
    assert rule(1, _row(1, 0.89), Preview({"latency_ms": 0.5})) is None
    # cheaper than every finished trial -> nothing dominates it, kept however bad it is
    assert rule(1, _row(1, 0.10), Preview({"latency_ms": 0.1})) is None
    # the last epoch is never cut (nothing left to save)
    assert rule(3, _row(3, 0.10), Preview({"latency_ms": 0.5})) is None
    # a different number format is not comparable
    int8 = _stop(Policy(quantization=QuantizationPolicy(mode="static_int8")))(spec, study)
    assert int8(1, _row(1, 0.10), Preview({"latency_ms": 0.5})) is None


def test_a_trial_in_another_runtime_does_not_dominate_on_latency():
    # eager and ONNX Runtime share the structure's float (eager) latency, but not the final one
    onnx = Policy(runtime=RuntimePolicy(backend="onnxruntime"))
    spec = _spec(early_stopping={"rule": "dominated", "margin": 0.02})       # accuracy + latency_ms
    study = optuna.create_study(directions=spec.directions)
    _done(study, [0.9, 0.95, 0.97], {"latency_ms": 0.5, "flops": 1e6})        # an eager trial
    cheap = Preview({"latency_ms": 0.5, "flops": 1e6})
    assert _stop(onnx)(spec, study)(1, _row(1, 0.1), cheap) is None
    assert _stop()(spec, study)(1, _row(1, 0.1), cheap)
    # with FLOPs as the only cost, the runtime does not matter
    flops = _spec(early_stopping={"rule": "dominated", "margin": 0.02},
                  objectives=[{"metric": "accuracy", "direction": "maximize"},
                              {"metric": "flops", "direction": "minimize"}])
    assert _stop(onnx)(flops, study)(1, _row(1, 0.1), cheap)
    # costs measured on both deployed forms (runtime included) are final: comparable across runtimes
    previewed = optuna.create_study(directions=spec.directions)
    _done(previewed, [0.9, 0.95, 0.97], {"latency_ms": 0.5, "flops": 1e6}, deployed=True)
    rule = _stop(onnx)(spec, previewed)
    assert rule(1, _row(1, 0.1), Preview({"latency_ms": 0.5, "flops": 1e6}, deployed=True))
    assert rule(1, _row(1, 0.1), Preview({"latency_ms": 0.2, "flops": 1e6}, deployed=True)) is None  # faster
    # only one side deployed: not comparable across runtimes
    assert rule(1, _row(1, 0.1), Preview({"latency_ms": 0.5, "flops": 1e6}, deployed=False)) is None


@pytest.mark.parametrize("metric", ["peak_memory_mb", "throughput_sps", "energy_mj"])
def test_costs_the_structure_cannot_tell_need_the_same_structure(metric, monkeypatch):
    # peak memory and batch-N throughput are not known before training: only the same
    # structure, format and runtime compare
    from autocompress.errors import ConfigError
    from autocompress.metrics.registry import why_unavailable

    if metric == "energy_mj":   # this machine has no energy counter: a stand-in
        from autocompress.metrics import counters

        from test_energy import Synthetic

        monkeypatch.setattr(counters, "open_counters", lambda device: [Synthetic()])
    direction = "maximize" if metric == "throughput_sps" else "minimize"
    overrides = {"early_stopping": {"rule": "dominated", "margin": 0.02},
                 "objectives": [{"metric": "accuracy", "direction": "maximize"},
                                {"metric": metric, "direction": direction}],
                 "target": {"device": "cpu", "batch_size": 1, "threads": 1, "max_time_s": 0.05,
                            "throughput_batch_size": 8}}
    if (why := why_unavailable(metric, "cpu")) is not None:   # this machine cannot measure it: refused
        with pytest.raises(ConfigError, match=f"{metric} cannot be measured on this machine"):
            _spec(**overrides)
        assert "clear_refs" in why
        return
    spec = _spec(**overrides)
    study = optuna.create_study(directions=spec.directions)
    pruned = Policy(pruning=PruningPolicy(method="structured", ratio=0.5))
    _done(study, [0.9, 0.95, 0.97], {"latency_ms": 0.5}, policy=pruned)
    cheap = Preview({"latency_ms": 0.6})
    assert _stop()(spec, study)(1, _row(1, 0.1), cheap) is None
    assert _stop(pruned)(spec, study)(1, _row(1, 0.1), cheap)


def test_grace_epochs_and_rule_none():
    spec = _spec(early_stopping={"rule": "dominated", "grace_epochs": 2})
    study = optuna.create_study(directions=spec.directions)
    _done(study, [0.9, 0.95, 0.97], {"latency_ms": 0.5})
    rule = _stop()(spec, study)
    assert rule(1, _row(1, 0.1), Preview({"latency_ms": 0.5})) is None
    assert rule(2, _row(2, 0.1), Preview({"latency_ms": 0.5}))
    assert _stop()(_spec(early_stopping="none"), study) is None
    # a structure that still changes while training is never stopped early
    assert _stop(Policy(pruning=PruningPolicy(method="gradual")))(spec, study) is None


def test_prescreen_only_uses_metrics_that_are_final():
    spec = _spec(constraints=["params <= 1000", "latency_ms <= 0.1"])
    check = _reason(prescreen_func(spec, TrialPlan(Policy())))
    assert "params" in check(Preview({"params": 5000, "latency_ms": 0.05}))
    assert check(Preview({"params": 500, "latency_ms": 0.05})) is None
    # int8 through ONNX Runtime: its latency was measured on that deployed form, so it is final
    q = _reason(prescreen_func(spec, TrialPlan(Policy(quantization=QuantizationPolicy(mode="static_int8"),
                                                      runtime=RuntimePolicy(backend="onnxruntime")))))
    assert "latency_ms" in q(Preview({"params": 500, "latency_ms": 9.0}, deployed=True))
    # torch.compile is not previewed (compiling costs tens of seconds): only params can be judged
    c = _reason(prescreen_func(spec, TrialPlan(Policy(runtime=RuntimePolicy(backend="compile")))))
    assert c(Preview({"params": 500, "latency_ms": 9.0})) is None
    assert "params" in c(Preview({"params": 5000, "latency_ms": 9.0}))
    # gradual pruning changes the structure during training: nothing is final
    assert prescreen_func(spec, TrialPlan(Policy(pruning=PruningPolicy(method="gradual")))) is None


def test_a_prescreen_decision_within_noise_asks_to_measure_again():
    spec = _spec(constraints=["latency_ms <= 1.0"])
    check = prescreen_func(spec, TrialPlan(Policy()))
    # clearly beyond the bound (more than the registry's 5% noise): stops at once
    assert check(Preview({"latency_ms": 1.2}, deployed=True)).stops
    # beyond it by less than the noise: not yet, measure again first
    first = check(Preview({"latency_ms": 1.03}, deployed=True))
    assert first.borderline and not first.stops and "latency_ms = 1.03" in first.reason
    # measured again: beyond the bound stops, within it goes on
    assert check(Preview({"latency_ms": 1.01}, deployed=True, remeasured=True)).stops
    assert check(Preview({"latency_ms": 0.99}, deployed=True, remeasured=True)).reason is None
    # an exact metric has no noise: beyond its bound is beyond it
    exact = prescreen_func(_spec(constraints=["params <= 1000"]), TrialPlan(Policy()))
    assert exact(Preview({"params": 1001.0})).stops


def test_an_early_stop_that_rests_on_latency_within_noise_asks_to_measure_again():
    spec = _spec(early_stopping={"rule": "dominated", "margin": 0.02})       # accuracy + latency_ms
    study = optuna.create_study(directions=spec.directions)
    _done(study, [0.9, 0.95, 0.97], {"latency_ms": 0.52, "flops": 1e6}, deployed=True)
    rule = early_stop_func(spec, study, TrialPlan(Policy()), epochs=3)
    # the other trial is 4% slower: dominance only within latency's noise
    first = rule(1, _row(1, 0.1), Preview({"latency_ms": 0.50, "flops": 1e6}, deployed=True))
    assert first.borderline and "dominated at epoch 1" in first.reason
    # measured again: the same tolerance now decides
    assert rule(1, _row(1, 0.1), Preview({"latency_ms": 0.50, "flops": 1e6}, deployed=True, remeasured=True)).stops
    assert rule(1, _row(1, 0.1), Preview({"latency_ms": 0.40, "flops": 1e6}, deployed=True, remeasured=True)).reason is None
    # clearly as fast or faster: stops without measuring again
    assert rule(1, _row(1, 0.1), Preview({"latency_ms": 0.53, "flops": 1e6}, deployed=True)).stops


def test_run_trial_measures_a_borderline_preview_again_before_ending(digits_ctx, monkeypatch):
    from autocompress.trial import run as run_mod

    calls = []

    def measuring(model, plan, ctx, example, *, max_time_s=0.3):
        calls.append(max_time_s)
        return Preview({"latency_ms": 1.0, "params": 1.0}, deployed=True)

    monkeypatch.setattr(run_mod, "preview_costs", measuring)
    asked = []

    def prescreen(preview):
        asked.append(preview.remeasured)
        return Screen("too slow", borderline=True) if not preview.remeasured else Screen("too slow")

    ctx = replace(digits_ctx, prescreen=prescreen, previews={})
    with pytest.raises(Stopped) as stop:
        run_trial(Policy(), ctx)
    assert asked == [False, True] and calls == [0.3, ctx.target.max_time_s]
    assert stop.value.preview.remeasured and ctx.previews[ctx.preview_key(TrialPlan(Policy()))].remeasured


def _spy_measurements(monkeypatch):
    """Record what ``trial.measure`` times (the module's class and parameter dtype) and the
    runtimes it builds, in call order: the preview's come first, then the final ones."""
    import autocompress.trial.measure as measure

    timed, built = [], []
    real_latency, real_side, real_deploy = measure.measure_latency, measure.measure_side_by_side, measure.deploy

    def kind(module):
        return type(module).__name__, next((p.dtype for p in module.parameters()), None)

    def latency(module, *args, **kwargs):
        timed.append((*kind(module), kwargs.get("batch_size")))
        return real_latency(module, *args, **kwargs)

    def side_by_side(models, *args, **kwargs):
        timed.append((*kind(models["trial"]), kwargs.get("batch_size")))
        return real_side(models, *args, **kwargs)

    def deploy(*args, **kwargs):
        built.append(real_deploy(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(measure, "measure_latency", latency)
    monkeypatch.setattr(measure, "measure_side_by_side", side_by_side)
    monkeypatch.setattr(measure, "deploy", deploy)
    return timed, built


def _archive(artifact: bytes) -> dict[str, int]:
    """A TorchScript archive's entries and their stored sizes."""
    return {i.filename: i.compress_size for i in zipfile.ZipFile(io.BytesIO(artifact)).infolist()}


def _tensors(entries: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in entries.items() if k.startswith("archive/constants")}


def _code(artifact: bytes) -> str:
    z = zipfile.ZipFile(io.BytesIO(artifact))
    return "".join(z.read(n).decode() for n in z.namelist() if n.endswith(".py"))


@pytest.mark.parametrize("mode, backend", [("none", "eager"), ("static_int8", "torchscript"),
                                           ("qat_int8", "onnxruntime"), ("fp16", "eager")])
def test_the_preview_is_the_deployed_form(digits_ctx, monkeypatch, mode, backend):
    """Latency and size before training are those of the deployed form (number format and
    runtime of the untrained compressed model): the preview is marked deployed, timed on the
    same runtime and format as the final measurement, its size is the final artifact's size,
    it is cached under the plan's cost key, and the prescreen decides on it."""
    policy = Policy(pruning=PruningPolicy(method="structured", ratio=0.5), quantization=QuantizationPolicy(mode=mode),
                    runtime=RuntimePolicy(backend=backend))
    plan = TrialPlan(policy)
    timed, built = _spy_measurements(monkeypatch)
    result = run_trial(policy, digits_ctx)
    preview, final = result.preview, result.metrics
    assert plan.previews_deployment and preview.deployed
    assert preview.metrics["flops"] == final["flops"] and preview.metrics["params"] == final["params"]

    # timed twice (preview, then final), both times on the deployed form: same runtime module, same dtype
    assert len(timed) == 2 and timed[0] == timed[1], timed
    assert timed[0][1] in ((torch.float16,) if mode == "fp16" else (torch.float32, None))

    # sized like the final model: the bytes of the same kind of artifact, with the same tensors
    assert len(built) == 2 and [d.runtime for d in built] == [backend, backend]
    first, last = (d.artifact for d in built)
    assert preview.metrics["size_mb"] == len(first) / 1e6 and final["size_mb"] == len(last) / 1e6
    assert result.deployment is built[1] and result.proof["runtime"]["artifact_sha256"] == built[1].sha256
    if backend in ("eager", "onnxruntime"):
        assert preview.metrics["size_mb"] == final["size_mb"]
        if backend == "onnxruntime":
            assert b"QuantizeLinear" in first and b"QuantizeLinear" in last
    else:
        a, b = _archive(first), _archive(last)
        assert _tensors(a) == _tensors(b) and _tensors(a)
        assert not any(k.endswith(".debug_pkl") for k in a)   # the debug records are left out
        # the archives differ at most in their code records (TorchScript numbers its classes per process)
        code_bytes = sum(v for k, v in b.items() if k.startswith("archive/code/") or k == "archive/data.pkl")
        assert abs(len(first) - len(last)) <= code_bytes
        assert "quantized" in _code(first) and "quantized" in _code(last)
    if mode != "none":   # not the float model's size (on a model this small, headers weigh much)
        assert preview.metrics["size_mb"] < 0.9 * structure_size(digits_ctx, policy)

    # cached under the preview key, which names the runtime, the number format, the device and threads
    key = digits_ctx.preview_key(plan)
    assert plan.runtime_key in key and "@cpu/1t/b1" in key
    assert digits_ctx.previews == {key: preview}
    # and the prescreen judges that very preview: a second trial stops on it before compressing
    seen = []
    again = replace(digits_ctx, prescreen=lambda p: seen.append(p) or Screen("too big"))
    with pytest.raises(Stopped, match=r"too big \(cached\)") as err:
        run_trial(policy, again)
    assert seen == [preview] and err.value.preview is preview and len(timed) == 2


def structure_size(ctx, policy):
    import copy

    from autocompress.compress import pipeline
    from autocompress.metrics.size import size_mb

    model = copy.deepcopy(ctx.teacher)
    for t in pipeline(Policy(pruning=policy.pruning)).build(ctx):
        model = t.compress(model)
    return size_mb(model)


def test_prescreen_ends_the_trial_before_any_optimizer_step(digits_ctx, monkeypatch):
    steps = []
    monkeypatch.setattr(torch.optim.Optimizer, "zero_grad", lambda self, *a, **k: steps.append(1))
    ctx = replace(digits_ctx, prescreen=lambda p: Screen("too many params" if p.metrics["params"] > 10 else None))
    with pytest.raises(Stopped) as err:
        run_trial(Policy(), ctx)
    assert err.value.stage == "prescreen" and err.value.preview.metrics["params"] > 10
    assert err.value.history == ()
    assert steps == []
    # the second time the cached preview decides, before compressing anything
    with pytest.raises(Stopped, match="cached") as again:
        run_trial(Policy(), ctx)
    assert again.value.preview is err.value.preview and steps == []


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_preview_and_final_latency_on_a_cuda_target(digits_ctx, monkeypatch):
    timed, _ = _spy_measurements(monkeypatch)
    ctx = replace(digits_ctx, target=TargetSettings(device="cuda", max_time_s=0.05))
    result = run_trial(Policy(pruning=PruningPolicy(method="structured", ratio=0.5)), ctx)
    assert result.preview.deployed and result.preview.metrics["latency_ms"] > 0
    assert result.metrics["latency_ms"] > 0
    assert result.measured_on.device == "cuda"
    assert [t[0] for t in timed] == ["Sequential", "Sequential"]


def test_prescreened_trials_are_pruned_in_the_study(write_study, tmp_path):
    from typer.testing import CliRunner

    from autocompress.cli import app

    study_file = write_study(constraints=["params <= 100"])
    result = CliRunner().invoke(app, ["search", str(study_file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    searched = [r for r in record.read_all(study) if not r.baseline]
    assert [r.state.name for r in searched] == ["PRUNED", "PRUNED"]
    for r in searched:
        assert r.stop is not None and r.stop.stage == "prescreen" and "params" in r.stop.reason
        assert r.epochs_run == 0 and r.history == ()
        assert r.preview is not None and r.preview.metrics["params"] > 100
        assert r.constraints[0] > 0  # the sampler sees the violation


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
    expressible = [name for name in RECIPES if "by-sensitivity" not in name]   # SPACE has no per-layer knob
    assert n == len(expressible) + 1
    assert enqueue_warm_starts(study, spec, spec.load_space(), lambda m: None) == 0  # once per study
    space = spec.load_space()
    policies = []
    for _ in range(n):
        trial = study.ask()
        policies.append(space.sample(trial))
        study.tell(trial, [0.0, 0.0])
    names = [r.warm_start for r in record.read_all(study)]
    assert names[:len(expressible)] == expressible and names[-1] == "user-0"
    first = dict(zip(names, policies))
    policy = first["structured-l1-50+static-int8+kd-t4"]
    assert policy.pruning.method == "structured" and policy.quantization.mode == "static_int8"
    assert first["user-0"].pruning.ratio == 0.3


def test_bad_warm_start_policy_is_a_config_error():
    from autocompress.errors import ConfigError

    with pytest.raises(ConfigError, match=r"warm_start.policies\[0\]"):
        _spec(warm_start={"policies": [{"prunning": {}}]})


DYNAMIC_ORT = FailureKey("onnxruntime:dynamic_int8/per-channel",
                         (("runtime.backend", "onnxruntime"), ("quantization.mode", "dynamic_int8"),
                          ("quantization.per_channel", True)))


def _search(study_file, run_dir):
    from typer.testing import CliRunner

    from autocompress.cli import app

    result = CliRunner().invoke(app, ["search", str(study_file), "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{run_dir / 'study.db'}")
    return [r for r in record.read_all(study) if not r.baseline]


def test_a_known_runtime_failure_ends_later_trials_before_training(write_study, tmp_path):
    """dynamic int8 has no ONNX export: the first such trial finds it after fine-tuning and
    records the key with its knobs; every knob is fixed, so the sampler cannot avoid it and
    the next trials end before any training, with its reason; a resumed study remembers."""
    from autocompress.search.memory import load_failures

    space = {"quantization": {"mode": "dynamic_int8"}, "runtime": {"backend": "onnxruntime"},
             "training": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}}}
    study_file = write_study(search_space=space, model={"builtin": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
                             budget={"trials": 3, "epochs": 1, "train_fraction": 0.2},
                             warm_start={"recipes": False})
    first, *later = _search(study_file, tmp_path / "run")
    assert first.state.name == "FAIL" and "does not run int8 torch.ao models" in first.fail_reason
    assert first.known_as == DYNAMIC_ORT
    assert "ended before training" not in first.fail_reason
    assert len(later) == 2
    for r in later:
        assert r.state.name == "FAIL" and r.known_as == first.known_as
        assert r.fail_reason.startswith(first.fail_reason)
        assert f"as trial {first.number} found; ended before training" in r.fail_reason
        assert r.epochs_run is None and r.history == ()
    assert load_failures(record.read_all(optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}"))) == {
        DYNAMIC_ORT.key: KnownFailure(DYNAMIC_ORT.knobs, later[0].fail_reason)}


def test_the_search_stops_proposing_a_known_runtime_failure(write_study, tmp_path):
    """The same failure where the format is searched: the first trial (a warm start) meets
    it; the sampler then stops proposing that format with that runtime, so no later trial
    spends its budget slot on it."""
    space = {"runtime": {"backend": "onnxruntime"},
             "quantization": {"mode": {"choices": ["none", "dynamic_int8"]}},
             "training": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}}}
    study_file = write_study(search_space=space, model={"builtin": "mlp", "kwargs": {"hidden": 16, "depth": 1}},
                             budget={"trials": 4, "epochs": 1, "train_fraction": 0.2},
                             warm_start={"recipes": False, "policies": [{"quantization": {"mode": "dynamic_int8"}}]})
    first, *later = _search(study_file, tmp_path / "run")
    assert first.warm_start == "user-0" and first.params["quantization.mode"] == "dynamic_int8"
    assert first.state.name == "FAIL" and first.known_as == DYNAMIC_ORT
    assert len(later) == 3
    for r in later:
        assert r.params["quantization.mode"] == "none" and r.state.name == "COMPLETE", r


@pytest.mark.parametrize("order", ["fixed runtime first", "fixed runtime last"])
def test_the_sampler_avoids_learned_knob_combinations(order):
    """``CompatibleSampler`` does not complete a combination a learned rule forbids, whichever
    order the study file declares the knobs in (a fixed knob's value is known before sampling)."""
    from autocompress.search.sampler import Rule, make_sampler

    quant, runtime = {"mode": {"choices": ["none", "dynamic_int8"]}}, {"backend": "onnxruntime"}
    space_raw = ({"runtime": runtime, "quantization": quant} if order == "fixed runtime first"
                 else {"quantization": quant, "runtime": runtime})
    spec = _spec(search_space=space_raw)
    space = spec.load_space()

    def proposed(rules):
        study = optuna.create_study(directions=spec.directions, sampler=make_sampler(spec, space, lambda: rules))
        modes = []
        for _ in range(12):
            trial = study.ask()
            modes.append(space.sample(trial).quantization.mode)
            study.tell(trial, [0.0, 0.0])
        return modes

    assert "dynamic_int8" in proposed([])      # the seeded sampler proposes it when nothing forbids it
    assert set(proposed([Rule(DYNAMIC_ORT.knobs, "no ONNX export")])) == {"none"}


def test_known_failures_end_the_trial_before_any_optimizer_step(digits_ctx, monkeypatch):
    from autocompress.errors import TrialFailed

    steps = []
    monkeypatch.setattr(torch.optim.Optimizer, "zero_grad", lambda self, *a, **k: steps.append(1))
    bf16_ort = TrialPlan(Policy(quantization=QuantizationPolicy(mode="bf16"),
                                runtime=RuntimePolicy(backend="onnxruntime")))
    reason = "no bf16 Conv (as trial 3 found; ended before training)"
    ctx = replace(digits_ctx, failures={bf16_ort.runtime_key: KnownFailure(bf16_ort.failure_key.knobs, reason)})
    with pytest.raises(TrialFailed, match="as trial 3 found") as err:
        run_trial(bf16_ort.policy, ctx)
    assert err.value.reason == reason and steps == []
    assert err.value.known_as == FailureKey("onnxruntime:bf16", (("runtime.backend", "onnxruntime"),
                                                                 ("quantization.mode", "bf16")))
    # another format or runtime is not affected
    fp16_ort = TrialPlan(Policy(quantization=QuantizationPolicy(mode="fp16"),
                                runtime=RuntimePolicy(backend="onnxruntime")))
    assert fp16_ort.runtime_key not in ctx.failures
    bf16_eager = TrialPlan(Policy(quantization=QuantizationPolicy(mode="bf16")))
    assert bf16_eager.runtime_key not in ctx.failures
