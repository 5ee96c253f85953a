"""Search-space files -> Optuna distributions -> Policy, and the Policy round-trips."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from autocompress.errors import ConfigError
from autocompress.spec.policy import Policy, PruningPolicy, QuantizationPolicy
from autocompress.spec.space import load_space
from autocompress.trial.plan import describe

SPACE = {
    "pruning": {
        "method": {"choices": ["none", "weight", "structured"]},
        "criterion": {"choices": ["l1", "fpgm"], "when": {"method": ["structured"]}},
        "ratio": {"low": 0.1, "high": 0.8, "step": 0.05, "when": {"method": ["weight", "structured"]}},
    },
    "quantization": {"mode": {"choices": ["none", "static_int8"]}, "calibration_batches": {"low": 2, "high": 8}},
    "training": {"lr": {"low": 1e-4, "high": 0.1, "log": True}, "batch_size": 32,
                 "optimizer": {"choices": ["sgd", "adamw"]},
                 "momentum": {"low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}}},
}


def test_distributions_map_to_optuna_types():
    space = load_space(SPACE)
    d = space.distributions()
    assert isinstance(d["pruning.method"], CategoricalDistribution)
    assert d["pruning.ratio"] == FloatDistribution(0.1, 0.8, step=0.05)
    assert isinstance(d["quantization.calibration_batches"], IntDistribution)  # int knob -> int range
    assert d["training.lr"].log is True
    assert "training.batch_size" not in d and space.fixed()["training.batch_size"] == 32


def test_conditional_knobs_appear_only_when_active():
    space = load_space(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    seen_methods = set()
    for _ in range(40):
        trial = study.ask()
        policy = space.sample(trial)
        params = trial.params
        method = params["pruning.method"]
        seen_methods.add(method)
        assert ("pruning.criterion" in params) == (method == "structured")
        assert ("pruning.ratio" in params) == (method in ("weight", "structured"))
        assert ("training.momentum" in params) == (params["training.optimizer"] == "sgd")
        assert policy.training.batch_size == 32
        if method == "none":
            assert policy.pruning.ratio == PruningPolicy().ratio  # inactive knob keeps its default
        study.tell(trial, 0.0)
    assert seen_methods == {"none", "weight", "structured"}


def test_resolve_reproduces_the_sampled_policy():
    space = load_space(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    trial = study.ask()
    policy = space.sample(trial)
    assert space.resolve(trial.params) == policy


def test_policy_round_trips_flat_and_yaml():
    p = Policy(pruning=PruningPolicy(method="structured", ratio=0.4, protect=("fc",)),
               quantization=QuantizationPolicy(mode="static_int8", calibration_batches=3))
    assert Policy.from_flat(p.to_flat()) == p
    assert Policy.from_yaml(p.to_yaml()) == p
    assert "structured" in describe(p) and "static_int8" in describe(p)


def test_space_to_dict_reloads_identically():
    space = load_space(SPACE)
    again = load_space(space.to_dict())
    assert again.distributions() == space.distributions()
    assert again.fixed() == space.fixed()
    assert [k.when for k in again.knobs] == [k.when for k in space.knobs]


@pytest.mark.parametrize("raw, field, words", [
    ({"prunning": {}}, "prunning", "did you mean 'pruning'"),
    ({"pruning": {"metod": {"choices": ["none"]}}}, "pruning.metod", "did you mean 'method'"),
    ({"pruning": {"method": {"choices": ["none", "magic"]}}}, "pruning.method.choices[1]", "invalid value 'magic'"),
    ({"pruning": {"ratio": {"low": 0.8, "high": 0.2}}}, "pruning.ratio", "greater than high"),
    ({"pruning": {"ratio": {"low": 0.1}}}, "pruning.ratio", "missing 'high'"),
    ({"pruning": {"ratio": {"low": "a", "high": 0.2}}}, "pruning.ratio.low", "expected a number"),
    ({"training": {"lr": {"low": 0, "high": 0.1, "log": True}}}, "training.lr.low", "log range needs low > 0"),
    ({"training": {"lr": {"low": 0.1, "high": 0.2, "stepp": 0.1}}}, "training.lr.stepp", "unknown key"),
    ({"training": {"batch_size": "big"}}, "training.batch_size", "expected an integer"),
    ({"pruning": {"ratio": {"low": 0.1, "high": 0.5, "when": {"method": ["weight"]}}}},
     "pruning.ratio.when.method", "declared earlier"),
    ({"pruning": {"ratio": 2.0}}, "pruning.ratio", "outside the valid range"),
    ({"pruning": {"method": {"low": 1, "high": 2}}}, "pruning.method", "numeric"),
    ({"pruning": {"method": {"choices": []}}}, "pruning.method.choices", "non-empty"),
    ({"training": "fast"}, "training", "mapping of knobs"),
    # numbers that are not finite
    ({"training": {"lr": {"low": float("nan"), "high": 0.1}}}, "training.lr.low", "finite"),
    ({"training": {"lr": {"low": 1e-3, "high": float("inf")}}}, "training.lr.high", "finite"),
    ({"pruning": {"ratio": {"low": 0.1, "high": 0.5, "step": float("nan")}}}, "pruning.ratio.step", "finite"),
    ({"training": {"lr": float("-inf")}}, "training.lr", "finite"),
    ({"distillation": {"temperature": {"choices": [2.0, float("inf")]}}}, "distillation.temperature.choices[1]",
     "finite"),
    # ranges that cannot be sampled as written
    ({"pruning": {"ratio": {"low": 0.1, "high": 0.2, "step": 0.25}}}, "pruning.ratio.step", "larger than high - low"),
    ({"pruning": {"ratio": {"low": 0.1, "high": 0.5, "step": 0.15}}}, "pruning.ratio.step", "lower high to 0.4"),
    ({"training": {"batch_size": {"low": 8, "high": 64, "step": 10}}}, "training.batch_size.step", "lower high to 58"),
    ({"training": {"batch_size": {"low": 8.5, "high": 64}}}, "training.batch_size.low", "expected an integer"),
    ({"training": {"batch_size": {"low": 8, "high": 64.5}}}, "training.batch_size.high", "expected an integer"),
    ({"training": {"batch_size": {"low": 8, "high": 64, "step": 0.5}}}, "training.batch_size.step", "integer step"),
    ({"training": {"batch_size": {"low": 8, "high": 64, "step": True}}}, "training.batch_size.step", "positive"),
    ({"training": {"optimizer": {"choices": ["sgd", "sgd"]}}}, "training.optimizer.choices[1]", "duplicate choice"),
    ({"training": {"batch_size": {"choices": [32, 32.0]}}}, "training.batch_size.choices[1]", "duplicate choice"),
    ({"training": {"lr": {"low": 0.0, "high": 0.0, "log": True}}}, "training.lr.low", "log range needs low > 0"),
    # conditions on values the knob named cannot take
    ({"pruning": {"method": {"choices": ["none", "weight"]},
                  "ratio": {"low": 0.1, "high": 0.5, "when": {"method": ["weigth"]}}}},
     "pruning.ratio.when.method", "did you mean 'weight'"),
    ({"pruning": {"method": "weight", "ratio": {"low": 0.1, "high": 0.5, "when": {"method": ["structured"]}}}},
     "pruning.ratio.when.method", "fixed to 'weight'"),
    ({"pruning": {"method": {"choices": ["none"]}, "ratio": {"low": 0.1, "high": 0.5, "when": {"method": []}}}},
     "pruning.ratio.when.method", "at least one value"),
    ({"pruning": {"method": {"choices": ["none"]}, "ratio": {"low": 0.1, "high": 0.5, "when": "method"}}},
     "pruning.ratio.when", "expected a mapping"),
    # YAML reads an unquoted off as false
    ({"training": {"amp": {"choices": [False, "bf16"]}}}, "training.amp.choices[0]", "quote it"),
])
def test_bad_spaces_name_the_field(raw, field, words):
    with pytest.raises(ConfigError) as err:
        load_space(raw, origin="space.yaml")
    assert err.value.field == field
    assert words in str(err.value)
    assert str(err.value).startswith("space.yaml: ")


def test_bad_space_files(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found"):
        load_space(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("pruning: {method: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_space(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_space(empty)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(ConfigError):
        load_space(binary)


def test_ranges_optuna_samples_as_written_load():
    """A step that divides the range, an integral float step for an int knob, and a range of one
    value (low == high, also on a log scale: decided to allow it; it samples that value)."""
    space = load_space({"pruning": {"ratio": {"low": 0.2, "high": 0.8, "step": 0.05}},
                        "training": {"batch_size": {"low": 8, "high": 64, "step": 8.0},
                                     "lr": {"low": 0.01, "high": 0.01, "log": True}}})
    d = space.distributions()
    assert d["pruning.ratio"] == FloatDistribution(0.2, 0.8, step=0.05)
    assert d["training.batch_size"] == IntDistribution(8, 64, step=8)
    assert d["training.lr"] == FloatDistribution(0.01, 0.01, log=True)
    study = optuna.create_study()
    assert space.sample(study.ask()).training.lr == 0.01


def test_when_may_name_a_fixed_knob_with_its_value():
    space = load_space({"pruning": {"method": "weight", "ratio": {"low": 0.1, "high": 0.5,
                                                                  "when": {"method": ["weight"]}}}})
    assert space.knobs[1].when == (("pruning.method", ("weight",)),)
