"""Techniques declare what they do; plans and the sampler ask the declarations."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution

from autocompress.compress import pipeline
from autocompress.compress.quantization import number_format
from autocompress.metrics.registry import METRICS
from autocompress.search.sampler import CompatibleSampler, Rule, static_rules
from autocompress.spec.policy import Policy
from autocompress.spec.space import load_space
from autocompress.trial.plan import TrialPlan, describe


def policy(**sections) -> Policy:
    return Policy.from_dict(sections)


def test_gradual_pruning_declares_a_structure_that_changes_while_training():
    gradual = pipeline(policy(pruning={"method": "gradual"}))
    structured = pipeline(policy(pruning={"method": "structured"}))
    assert not gradual.structure_final_after_compress and structured.structure_final_after_compress
    assert gradual.structural_sections == structured.structural_sections == ("pruning",)
    assert pipeline(Policy()).structural_sections == () and pipeline(Policy()).classes == ()


def test_qat_with_gradual_pruning_conflicts_from_the_declarations_alone():
    both = pipeline(policy(pruning={"method": "gradual"}, quantization={"mode": "qat_int8"}))
    assert both.rewrites_graph_before_finetune
    assert "gradual pruning cannot be combined with qat_int8 quantization" in both.conflict()
    assert pipeline(policy(pruning={"method": "structured"}, quantization={"mode": "qat_int8"})).conflict() is None
    assert pipeline(policy(pruning={"method": "gradual"}, quantization={"mode": "static_int8"})).conflict() is None


@pytest.mark.parametrize("mode, integer, cuda_ok", [("none", False, True), ("fp16", False, True),
                                                     ("bf16", False, True), ("dynamic_int8", True, False),
                                                     ("static_int8", True, False), ("qat_int8", True, False)])
def test_number_formats_declare_the_devices_with_kernels(mode, integer, cuda_ok):
    fmt = pipeline(policy(quantization={"mode": mode, "per_channel": False})).number_format
    assert fmt.integer is integer and fmt.name == mode
    assert fmt.unsupported_on("cpu") is None
    assert (fmt.unsupported_on("cuda:0") is None) is cuda_ok
    assert fmt.key == (f"{mode}/per-tensor" if integer else mode)


def test_plan_keys_and_final_metrics_follow_declarations():
    eager = TrialPlan(policy(pruning={"method": "structured", "ratio": 0.5}, quantization={"mode": "static_int8"}))
    gradual = TrialPlan(policy(pruning={"method": "gradual", "ratio": 0.5}))
    compiled = TrialPlan(policy(pruning={"method": "structured", "ratio": 0.5}, runtime={"backend": "compile"}))
    assert eager.previews_deployment and not gradual.previews_deployment and not compiled.previews_deployment
    # cost per inference is the latency priced: final with it
    assert eager.final_after_compress() == {"flops", "params", "latency_ms", "size_mb", "cost_usd_per_1k"}
    assert compiled.final_after_compress() == {"flops", "params"}
    assert gradual.final_after_compress() == set()
    assert eager.runtime_key == "eager:static_int8/per-channel"
    assert eager.cost_key == f"{eager.structure_key} {eager.runtime_key}" and compiled.cost_key == compiled.structure_key
    # the same structure whatever the training knobs
    other = TrialPlan(policy(pruning={"method": "structured", "ratio": 0.5}, training={"lr": 0.05}))
    assert other.structure_key == eager.structure_key
    assert dict(eager.failure_key.knobs) == {"runtime.backend": "eager", "quantization.mode": "static_int8",
                                             "quantization.per_channel": True, "quantization.backend": "torch_ao"}


def test_final_metrics_come_from_the_registry():
    # every metric a plan calls final is one the registry says is previewed and settled by then
    for name in TrialPlan(policy(pruning={"method": "structured"})).final_after_compress():
        assert METRICS[name].previewed and METRICS[name].final_at in ("structure", "deployment")


def test_describe_joins_the_techniques_summaries():
    p = policy(pruning={"method": "structured", "criterion": "l2", "ratio": 0.35},
               quantization={"mode": "static_int8"}, distillation={"method": "soft", "alpha": 0.5},
               runtime={"backend": "onnxruntime"})
    assert describe(p) == "structured l2 35% + KD a=0.50 T=4.0 + static_int8 + onnxruntime"
    assert describe(Policy()) == "no compression"


# -- the sampler keeps off combinations that cannot run -----------------------------------------------
SPACE = {
    "pruning": {"method": {"choices": ["none", "structured", "gradual"]}},
    "quantization": {"mode": {"choices": ["none", "static_int8", "qat_int8"]}},
    "runtime": {"backend": {"choices": ["eager", "onnxruntime"]}},
}


def test_static_rules_come_from_declarations():
    space = load_space(SPACE)
    cpu = static_rules(space, "cpu")
    assert [r.knobs for r in cpu] == [(("pruning.method", "gradual"), ("quantization.mode", "qat_int8"))]
    cuda = {r.knobs for r in static_rules(space, "cuda")}
    assert (("quantization.mode", "static_int8"),) in cuda and (("quantization.mode", "qat_int8"),) in cuda
    # a pair is not listed again when one of its values is already refused alone
    assert not any(len(k) == 2 and ("quantization.mode", "qat_int8") in k for k in cuda)


def _sampled(space, rules, sampler, n=60):
    study = optuna.create_study(sampler=CompatibleSampler(sampler, space, lambda: rules, seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(space.sample(trial).to_flat())
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("base", [optuna.samplers.RandomSampler(seed=1),
                                  optuna.samplers.TPESampler(seed=1, multivariate=True, group=True,
                                                             n_startup_trials=5)])
def test_sampler_never_proposes_a_forbidden_combination(base):
    space = load_space(SPACE)
    learned = Rule((("runtime.backend", "onnxruntime"), ("quantization.mode", "static_int8"),
                    ("quantization.per_channel", True)), "no int8 in this runtime")
    rules = [*static_rules(space, "cpu"), learned]
    policies = _sampled(space, rules, base)
    pairs = {(p["pruning.method"], p["quantization.mode"], p["runtime.backend"]) for p in policies}
    assert not any(m == "gradual" and q == "qat_int8" for m, q, _ in pairs)
    assert not any(q == "static_int8" and b == "onnxruntime" for _, q, b in pairs)
    # the rest of the space is still explored
    assert {"gradual", "structured"} <= {m for m, _, _ in pairs} and {"onnxruntime"} <= {b for _, _, b in pairs}


def test_without_rules_the_forbidden_combinations_do_occur():
    # the control for the test above: the same sampler, no rules
    policies = _sampled(load_space(SPACE), [], optuna.samplers.RandomSampler(seed=1))
    assert any(p["pruning.method"] == "gradual" and p["quantization.mode"] == "qat_int8" for p in policies)


def test_a_knob_whose_every_choice_is_forbidden_keeps_the_base_value():
    space = load_space({"quantization": {"mode": {"choices": ["static_int8"]}}})
    sampler = CompatibleSampler(optuna.samplers.RandomSampler(seed=0), space,
                                lambda: [Rule((("quantization.mode", "static_int8"),), "no")], seed=0)
    study = optuna.create_study(sampler=sampler)
    trial = study.ask()
    assert trial.suggest_categorical("quantization.mode", ["static_int8"]) == "static_int8"


def test_rule_needs_every_other_knob_known_and_equal():
    rule = Rule((("a", 1), ("b", 2)), "why")
    assert rule.forbids("a", 1, {"b": 2}) and not rule.forbids("a", 1, {"b": 3})
    assert not rule.forbids("a", 1, {}) and not rule.forbids("a", 0, {"b": 2})
    assert isinstance(CategoricalDistribution([1]), CategoricalDistribution)


def test_number_format_of_an_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown quantization mode"):
        number_format("int3", True)
