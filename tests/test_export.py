"""Export: choosing a point by rules, the bundle, load_exported round-trips; apply."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
import yaml
from crafted import crafted_run_dir, crafted_study
from torch import nn
from typer.testing import CliRunner

from autocompress import load_exported
from autocompress.cli import app
from autocompress.deploy.artifacts import model_structure, save_model
from autocompress.errors import AutocompressError, ConfigError
from autocompress.report.select import Rule, choose
from autocompress.search.record import TrialRecord
from autocompress.zoo.data import DataBundle


# -- choosing a point --------------------------------------------------------------------------

def test_default_rule_is_the_knee_of_the_feasible_front():
    study, n = crafted_study()
    choice = choose(study, Rule())
    assert isinstance(choice.trial, TrialRecord) and choice.trial.number == n["C"]
    assert choice.trial.policy_summary == "structured C" and choice.trial.metrics["latency_ms"] == 3.0
    assert "knee" in choice.rule and choice.front_size == 4


@pytest.mark.parametrize(("rule", "point"), [
    (Rule(max_accuracy_drop=0.015, minimize="latency_ms"), "C"),
    (Rule(max_accuracy_drop=0.012, minimize="latency_ms"), "B"),
    (Rule(min_accuracy=0.975, minimize="size_mb"), "B"),        # size_mb is not an objective
    (Rule(minimize="latency_ms"), "D"),                          # E is faster but infeasible
    (Rule(min_accuracy=0.97), "B"),                              # the knee of what is left
])
def test_rules_pick_from_the_feasible_front(rule, point):
    study, n = crafted_study()
    choice = choose(study, rule)
    assert choice.trial.number == n[point]
    assert "knee" not in choice.rule or rule.minimize is None


def test_no_point_fits_lists_the_closest():
    study, n = crafted_study()
    with pytest.raises(AutocompressError, match=rf"accuracy >= 0.999; closest: trial {n['A']} "):
        choose(study, Rule(min_accuracy=0.999))


def test_trial_rule():
    study, n = crafted_study()
    assert "breaks a constraint" in " ".join(choose(study, Rule(trial=n["E"])).notes)
    assert choose(study, Rule(trial=n["C"])).notes == ()
    for bad, message in ((0, "baseline"), (n["F"] + 1, "FAIL"), (99, "no trial 99")):
        with pytest.raises(AutocompressError, match=message):
            choose(study, Rule(trial=bad))
    with pytest.raises(ConfigError, match="did you mean 'latency_ms'"):
        choose(study, Rule(minimize="latncy_ms"))


def test_export_cli_without_a_feasible_point_exits_2(tmp_path):
    run, n = crafted_run_dir(tmp_path)
    result = CliRunner().invoke(app, ["export", str(run), "--min-accuracy", "0.999"])
    assert result.exit_code == 2
    assert "closest: trial" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["export", str(run), "--trial", "3", "--minimize", "size_mb"])
    assert result.exit_code == 2 and "not both" in result.output


# -- rebuilding compressed models from recorded widths ---------------------------------------

def _pruned_digits_cnn() -> nn.Module:
    """digits_cnn(width=8) with channels and features cut the way structured pruning leaves it."""
    from autocompress.zoo.models import create_model

    torch.manual_seed(0)
    m = create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=8)
    keep = [0, 2, 3, 5, 7]
    conv, nxt = m[3], m[7]
    m[3] = nn.Conv2d(8, len(keep), 3, padding=1, bias=False)
    m[3].weight.data = conv.weight.data[keep].clone()
    m[4] = nn.BatchNorm2d(len(keep))
    m[7] = nn.Conv2d(len(keep), 16, 3, padding=1, bias=False)
    m[7].weight.data = nxt.weight.data[:, keep].clone()
    fc1, fc2 = m[19], m[21]
    m[19], m[21] = nn.Linear(32, 20), nn.Linear(20, 10)
    m[19].weight.data, m[19].bias.data = fc1.weight.data[:20].clone(), fc1.bias.data[:20].clone()
    m[21].weight.data, m[21].bias.data = fc2.weight.data[:, :20].clone(), fc2.bias.data.clone()
    for mod in m.modules():  # BN statistics that matter, so a wrong load would show
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _quantize(model: nn.Module, mode: str, example: torch.Tensor) -> nn.Module:
    from autocompress.compress.quantization import quantized_skeleton
    from autocompress.compress.quantization.torch_ao import convert, prepare_static

    if mode == "static_int8":
        prepared = prepare_static(model, example, per_channel=True)
        with torch.no_grad():
            for _ in range(4):
                prepared(torch.randn(16, 1, 8, 8))
        return convert(prepared)
    return quantized_skeleton(model, mode, example)  # dynamic int8 and bf16 need no calibration


# what model_structure reads of the data: the class count and the shape of one input
DIGITS_SHAPE = DataBundle("digits", train=None, val=None, test=None, num_classes=10, input_shape=(1, 8, 8))


@pytest.mark.parametrize("mode", ["none", "static_int8", "dynamic_int8", "bf16"])
def test_load_exported_rebuilds_pruned_and_quantized_models(tmp_path, mode):
    example = torch.randn(4, 1, 8, 8)
    model = _quantize(_pruned_digits_cnn(), mode, example)
    structure = model_structure(model, model_spec={"builtin": "digits_cnn", "kwargs": {"width": 8}}, source=None,
                                data=DIGITS_SHAPE, quantization={"mode": mode, "per_channel": True})
    assert structure["num_classes"] == 10 and structure["input_shape"] == [1, 8, 8]
    assert structure["layers"]["3"]["out_channels"] == 5 and structure["layers"]["19"]["out_features"] == 20
    save_model(model, tmp_path, structure)
    loaded = load_exported(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(example), model(example))
    assert type(loaded).__name__ == type(model).__name__


def test_written_files_follow_the_umask(tmp_path):
    from autocompress.utils import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.html", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "report.html").stat().st_mode & 0o777 == 0o644


def test_load_exported_explains_what_is_missing(tmp_path):
    with pytest.raises(AutocompressError, match="not an exported model"):
        load_exported(tmp_path)
    # a truncated structure.json is one line naming the file
    (tmp_path / "structure.json").write_text('{"format": 1, "layers": [')
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(AutocompressError, match=r"structure.json: cannot rebuild the model from it \(JSONDecodeError"):
        load_exported(tmp_path)


# -- the whole path: search -> export -> load -> apply ----------------------------------------

@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A real two-trial search that structurally prunes and int8-quantizes digits_cnn."""
    from conftest import tiny_study

    root = tmp_path_factory.mktemp("search")
    space = {"pruning": {"method": "structured", "ratio": 0.25},
             "quantization": {"mode": "static_int8", "calibration_batches": 2},
             "training": {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "batch_size": 64}}
    study_file = root / "study.yaml"
    study_file.write_text(yaml.safe_dump(tiny_study(name="tiny-export", search_space=space,
                                                    constraints=["accuracy_drop <= 1.0"])))
    result = CliRunner().invoke(app, ["search", str(study_file), "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    return root / "run"


def _int8_weights(state: dict) -> dict[str, tuple[int, ...]]:
    """{layer name: weight shape} of the int8 weights in a quantized model's state dict (static
    int8 convs keep ``<layer>.weight``, int8 Linear layers ``<layer>._packed_params._packed_params``)."""
    out = {}
    for key, value in state.items():
        weight = value[0] if isinstance(value, tuple) else value
        if isinstance(weight, torch.Tensor) and weight.dtype == torch.qint8:
            out[key.removesuffix("._packed_params._packed_params").removesuffix(".weight")] = tuple(weight.shape)
    return out


@pytest.mark.slow
def test_export_bundle_and_load_round_trip(searched):
    import optuna

    from autocompress.compress.quantization import quantized_layers, weight_dtypes
    from autocompress.metrics.accuracy import evaluate, predict
    from autocompress.search.record import read
    from autocompress.zoo.data import digits, make_loader

    assert (searched / "trials").is_dir(), "the search saves feasible trials' models"
    result = CliRunner().invoke(app, ["export", str(searched)])
    assert result.exit_code == 0, result.output
    assert "knee" in result.output
    out = searched / "export"
    for name in ("policy.yaml", "model.pt", "structure.json", "metrics.json", "README.md"):
        assert (out / name).is_file(), name
    doc = yaml.safe_load((out / "policy.yaml").read_text())
    assert doc["policy"]["pruning"]["method"] == "structured" and doc["policy"]["quantization"]["mode"] == "static_int8"
    assert isinstance(doc["seed"], int) and doc["study"]["spec"]["model"]["builtin"] == "digits_cnn"
    assert doc["study"]["spec"]["data"]["builtin"] == "digits"
    card = (out / "README.md").read_text()
    assert "load_exported" in card and "baseline" in card and "| torch |" in card
    recorded = json.loads((out / "metrics.json").read_text())
    assert "during the search" in recorded["provenance"]

    # the bundle holds what the search recorded for the chosen trial, and that trial's saved model
    study = optuna.load_study(study_name="tiny-export", storage=f"sqlite:///{searched / 'study.db'}")
    trial = read(study.trials[recorded["trial"]])
    assert doc["study"]["trial"] == trial.number and not trial.baseline
    assert recorded["metrics"] == dict(trial.metrics) and recorded["proof"] == dict(trial.proof)
    saved = searched / (trial.model_dir or f"trials/{trial.number}")
    assert json.loads((out / "structure.json").read_text()) == json.loads((saved / "structure.json").read_text())
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)   # a plain state dict
    saved_state = torch.load(saved / "model.pt", map_location="cpu", weights_only=True)
    assert state.keys() == saved_state.keys()
    assert all(torch.equal(state[k], saved_state[k]) for k in state if isinstance(state[k], torch.Tensor))

    # the int8 layers the proof lists are in model.pt, with the widths the pruning proof kept
    proof_q, proof_p = recorded["proof"]["quantization"], recorded["proof"]["pruning"]
    int8 = _int8_weights(state)
    structure = json.loads((out / "structure.json").read_text())
    assert structure["quantization"]["mode"] == "static_int8"
    assert len(int8) == sum(proof_q["quantized_layers"].values()) > 0 and proof_q["float_layers_left"] == 0
    assert set(int8) == set(structure["layers"])                 # every compute layer is int8
    for name, (before, after) in proof_p["channels_kept"].items():
        assert after < before and int8[name][0] == after
        widths = structure["layers"][name]
        assert widths.get("out_channels", widths.get("out_features")) == after

    model = load_exported(out)
    assert quantized_layers(model) == proof_q["quantized_layers"]   # real int8 kernels, as recorded
    assert weight_dtypes(model) == proof_q["weight_dtypes"] == ["torch.qint8"]
    val = make_loader(digits().val, 256, shuffle=False)
    assert evaluate(model, val, "cpu") == recorded["metrics"]["accuracy"]      # same split, same accuracy
    assert torch.equal(predict(model, val, "cpu"), predict(load_exported(saved), val, "cpu"))
    for name in ("model.torchscript.pt", "model.onnx"):   # optional artifacts: present, or explained in the card
        assert (out / name).is_file() or re.search(rf"`{re.escape(name)}` \| not written", card)


@pytest.mark.slow
def test_apply_exported_policy_via_cli(searched, tmp_path):
    policy = searched / "export" / "policy.yaml"
    if not policy.is_file():
        assert CliRunner().invoke(app, ["export", str(searched)]).exit_code == 0
    out = tmp_path / "applied"
    result = CliRunner().invoke(app, ["apply", str(policy), "--epochs", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert "apply" in metrics["provenance"] and metrics["metrics"]["accuracy"] > 0.1
    assert yaml.safe_load((out / "policy.yaml").read_text())["train_fraction"] == 1.0
    model = load_exported(out)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_apply_plain_policy_needs_a_study(tmp_path, write_study):
    from autocompress.spec.policy import Policy

    plain = tmp_path / "plain.yaml"
    plain.write_text(Policy().to_yaml())
    result = CliRunner().invoke(app, ["apply", str(plain)])
    assert result.exit_code == 2 and "--study" in result.output
    result = CliRunner().invoke(app, ["apply", str(plain), "--study", str(write_study()), "--epochs", "1",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "model.pt").is_file() and (tmp_path / "out" / "baseline.pt").is_file()

    # a policy: section without the study it came from: --study names model, data and target
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump({"policy": Policy().to_dict(), "seed": 3, "study": "gone"}))
    result = CliRunner().invoke(app, ["apply", str(bare)])
    assert result.exit_code == 2 and "--study" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["apply", str(bare), "--study", str(write_study()), "--epochs", "0",
                                      "--out", str(tmp_path / "out2")])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((tmp_path / "out2" / "policy.yaml").read_text())["seed"] == 3


def test_apply_of_a_policy_that_breaks_ends_with_an_error_line(tmp_path, write_study, monkeypatch):
    import autocompress.bundle.apply
    from autocompress.spec.policy import Policy

    def breaks(policy, ctx, **kw):
        raise KeyError("layer4.0.conv1")   # e.g. a technique's library on a model it cannot handle

    monkeypatch.setattr(autocompress.bundle.apply, "run_trial", breaks)   # apply's own run_trial
    plain = tmp_path / "plain.yaml"
    plain.write_text(Policy().to_yaml())
    result = CliRunner().invoke(app, ["apply", str(plain), "--study", str(write_study()), "--epochs", "0",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]   # after the progress lines
    assert last.startswith("error: the policy cannot be applied: KeyError"), result.output
