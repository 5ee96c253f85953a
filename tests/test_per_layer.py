"""Per-layer policies: layer groups from the structure, the sensitivity pass, keep_float_top_k,
per-stage ratios, sensitivity and global allocation, the per-layer export, and bad input."""

from __future__ import annotations

import copy
import json

import optuna
import pytest
import torch
import torch.ao.nn.quantized as nnq
import torchvision
import yaml
from torch import nn
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

from autocompress import load_exported
from autocompress.cli import app
from autocompress.compress import pipeline
from autocompress.compress.groups import layer_groups, stages
from autocompress.compress.pruning import select as select_pruning
from autocompress.compress.pruning.allocation import global_counts
from autocompress.compress.pruning.plan import out_widths
from autocompress.compress.quantization import Quantization
from autocompress.compress.sensitivity import Delta, Sensitivity, sensitivity_ratios
from autocompress.metrics.accuracy import evaluate
from autocompress.search import record
from autocompress.spec.policy import Policy, PruningPolicy, QuantizationPolicy
from autocompress.trial.context import TrialContext
from autocompress.trial.sensitivity import measure
from autocompress.zoo.data import DataBundle, digits, make_loader
from per_layer_nets import build, loud, stages as stage_net

MLP_GROUPS = ["stem", "wide", "loud", "narrow", "head"]


def computes_in_float(m: nn.Module) -> bool:
    """fp32 weights as parameters (FX may fuse a float Linear with its ReLU); int8 layers hold packed ones."""
    params = list(m.parameters())
    return not isinstance(m, nnq.Linear) and bool(params) and all(p.dtype == torch.float32 for p in params)


@pytest.fixture(scope="module")
def trained():
    """The digits MLP of ``per_layer_nets`` trained 15 epochs (about 0.95 val accuracy), then made loud."""
    torch.manual_seed(0)
    data = digits()
    model = build()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for epoch in range(15):
        for x, y in make_loader(data.train, 64, shuffle=True, seed=epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model = loud(model.eval().requires_grad_(False))
    return model, data


@pytest.fixture(scope="module")
def sensitivity(trained):
    model, data = trained
    return measure(TrialContext(data=data, teacher=model, baseline_metrics={}), ["static_int8", "dynamic_int8"])


def test_groups_follow_the_structure():
    names = lambda m: [g.name for g in layer_groups(m)]  # noqa: E731
    assert names(torchvision.models.resnet18(num_classes=10)) == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    mobilenet = names(torchvision.models.mobilenet_v2(num_classes=10))
    assert mobilenet[:3] == ["features.0", "features.1", "features.2"] and mobilenet[-1] == "classifier"
    assert len(mobilenet) == 20
    assert names(build()) == MLP_GROUPS
    net = stage_net()
    convs = {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and n != "stem"}
    assert stages(layer_groups(net), convs) == {f"stages.{i}.{j}": i + 1 for i in range(4) for j in (0, 2)}


def test_the_sensitivity_pass_ranks_the_built_in_weak_spots_first(trained, sensitivity):
    """Static and dynamic int8 of the loud group alone cost more loss than any other group's;
    pruning the 6-wide bottleneck costs the most at every measured ratio."""
    assert sensitivity.accuracy > 0.9 and sensitivity.groups == tuple(MLP_GROUPS)
    for fmt in ("static_int8", "dynamic_int8"):
        ranking = sensitivity.ranking(fmt)
        assert ranking[0] == "loud", (fmt, ranking)
        table = sensitivity.quantization[fmt]
        assert table["loud"].loss > 10 * max(abs(table[g].loss) for g in MLP_GROUPS if g != "loud")
    assert sensitivity.ranking("qat_int8") == sensitivity.ranking("static_int8")   # the same int8 kernels
    scores = sensitivity.prune_scores()
    assert max(scores, key=scores.get) == "narrow" and scores["head"] == 0.0   # the classifier is protected
    again = Sensitivity.from_dict(json.loads(json.dumps(sensitivity.to_dict())))
    assert again.ranking("static_int8") == sensitivity.ranking("static_int8")


def _quantized(model, data, sensitivity, **knobs):
    policy = Policy(quantization=QuantizationPolicy(mode="static_int8", calibration_batches=2, **knobs))
    ctx = TrialContext(data=data, teacher=model, baseline_metrics={}, sensitivity=sensitivity)
    technique = Quantization(policy, ctx, pipeline(policy))
    student = technique.compress(copy.deepcopy(model))
    return technique.post_training(student), technique.proof()["quantization"]


def test_keep_float_top_k_keeps_exactly_the_most_sensitive_group_in_float(trained, sensitivity):
    model, data = trained
    out, proof = _quantized(model, data, sensitivity, keep_float_top_k=1)
    assert proof["per_layer"] == {"stem": "static_int8", "wide": "static_int8", "loud": "float",
                                  "narrow": "static_int8", "head": "static_int8"}
    modules = dict(out.named_modules())
    assert computes_in_float(modules["loud.0.fc"])
    assert all(isinstance(modules[n], nnq.Linear) for n in ("stem.0", "wide.0", "narrow.0", "head"))
    loader = make_loader(data.val, 256, shuffle=False)
    uniform, _ = _quantized(model, data, sensitivity)
    assert isinstance(dict(uniform.named_modules())["loud.0.fc"], nnq.Linear)
    # the float group was the one that cost accuracy
    assert evaluate(out, loader, "cpu") > evaluate(uniform, loader, "cpu") + 0.02


def test_keep_float_by_name_and_per_channel_for_the_top_group(trained, sensitivity):
    model, data = trained
    out, proof = _quantized(model, data, sensitivity, keep_float=("head",))
    modules = dict(out.named_modules())
    assert computes_in_float(modules["head"]) and isinstance(modules["loud.0.fc"], nnq.Linear)
    out, proof = _quantized(model, data, sensitivity, per_channel=False, keep_float_top_k=1,
                            top_k_format="per_channel")
    assert proof["per_layer"]["loud"] == "per_channel" and proof["per_layer"]["wide"] == "static_int8"
    modules = dict(out.named_modules())
    assert modules["loud.0.fc"].weight().qscheme() == torch.per_channel_affine
    assert modules["wide.0"].weight().qscheme() == torch.per_tensor_affine


def test_torchao_modes_take_per_layer_layouts_by_module_name(trained):
    """torchao's int8 with dynamic activations: the top group of its own ranking stays float, or
    takes int8 weight-only (the same Int8Tensor without activation quantization); the rest do not."""
    model, data = trained
    ctx = TrialContext(data=data, teacher=model, baseline_metrics={})
    sens = measure(ctx, ["int8_dynamic_activation"])
    top = sens.ranking("int8_dynamic_activation")[0]
    ctx = TrialContext(data=data, teacher=model, baseline_metrics={}, sensitivity=sens)
    for knobs, top_kind in (({}, "float"), ({"top_k_format": "int8_weight_only"}, "int8_weight_only")):
        policy = Policy(quantization=QuantizationPolicy(mode="int8_dynamic_activation", keep_float_top_k=1, **knobs))
        technique = Quantization(policy, ctx, pipeline(policy))
        out = technique.post_training(technique.compress(copy.deepcopy(model)))
        per_layer = technique.proof()["quantization"]["per_layer"]
        assert per_layer == {g: top_kind if g == top else "int8_dynamic_activation" for g in MLP_GROUPS}
        for name, m in out.named_modules():
            if isinstance(m, nn.Linear):
                in_top = name == top or name.startswith(top + ".")
                kind = type(m.weight).__name__
                if in_top and top_kind == "float":
                    assert kind == "Parameter" and m.weight.dtype == torch.float32, name
                else:
                    assert kind == "Int8Tensor", name
                    assert (m.weight.act_quant_kwargs is None) == in_top, name   # weight-only: no activation scales


def _pruned(model, sensitivity=None, **knobs):
    policy = Policy(pruning=PruningPolicy(method="structured", **knobs))
    ds = TensorDataset(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,)))
    ctx = TrialContext(data=DataBundle("random", ds, ds, ds, 10, (1, 8, 8)), teacher=model, baseline_metrics={},
                       sensitivity=sensitivity)
    technique = select_pruning(policy)(policy, ctx, pipeline(policy))
    return out_widths(technique.compress(copy.deepcopy(model))), technique


def test_per_stage_ratios_give_each_stage_its_width():
    torch.manual_seed(0)
    widths, _ = _pruned(stage_net(), ratio=0.5, ratio_stage1=0.25, ratio_stage4=0.75)
    assert widths["stages.0.0"] == 12 and widths["stages.0.2"] == 12      # 16 at 0.25
    assert widths["stages.1.0"] == 8 and widths["stages.2.2"] == 8        # ratio 0.5
    assert widths["stages.3.0"] == 4                                      # 0.75
    assert widths["stem"] == 16                                           # protected


def test_sensitivity_allocation_spares_the_sensitive_layers():
    groups = layer_groups(stage_net())
    fake = Sensitivity(tuple(g.name for g in groups), 8, 0.1, 0.9, pruning={
        "0.5": {"stages.0": Delta(2.0, 0.3), "stages.1": Delta(0.02, 0.0), "stages.2": Delta(0.02, 0.0),
                "stages.3": Delta(0.02, 0.0)}})
    ratios = {f"stages.{i}.{j}": 0.5 for i in range(4) for j in (0, 2)}
    spread = sensitivity_ratios(ratios, {n: 100 for n in ratios}, groups, fake)
    assert spread["stages.0.0"] < 0.2 and spread["stages.3.0"] > 0.5
    assert sum(spread.values()) == pytest.approx(sum(ratios.values()), rel=1e-4)   # as many weights go
    torch.manual_seed(0)
    widths, technique = _pruned(stage_net(), ratio=0.5, allocation="sensitivity", sensitivity=fake)
    assert widths["stages.0.0"] > widths["stages.3.0"]
    with pytest.raises(Exception, match="sensitivity pass"):
        _pruned(stage_net(), ratio=0.5, allocation="sensitivity")


def test_global_allocation_cuts_at_one_threshold_across_groups():
    a = torch.tensor([0.1, 0.2, 0.3, 0.4, 9, 10, 11, 12, 13, 14])   # mean 7: four channels far below it
    b = torch.linspace(0.5, 1.5, 10)                                   # mean 1: the smallest at half of it
    counts = global_counts([("a", (), 10, 0.5, a, None, ""), ("b", (), 10, 0.5, b, None, "")], 0.25)
    assert counts == {"a": 4, "b": 1}   # the five smallest relative to their group's mean
    torch.manual_seed(0)
    widths, _ = _pruned(stage_net(), ratio=0.5, allocation="global")
    kept = [widths[f"stages.{i}.{j}"] for i in range(4) for j in (0, 2)]
    assert sum(16 - w for w in kept) == pytest.approx(0.5 * 16 * 8, abs=8) and len(set(kept)) > 1


# -- a study, its export, bad input ------------------------------------------------------------------
def _study(write_study, tmp_path, trained, **space):
    model, _ = trained
    ckpt = tmp_path / "loud.pt"
    torch.save(model.state_dict(), ckpt)
    return write_study(
        name="per-layer", model={"factory": "per_layer_nets:build", "checkpoint": str(ckpt)},
        search_space={"quantization": {"mode": "static_int8", "calibration_batches": 2, **space},
                      "training": {"lr": 1e-4, "batch_size": 64}},
        objectives=[{"metric": "accuracy", "direction": "maximize"}, {"metric": "size_mb", "direction": "minimize"}],
        constraints=[], budget={"trials": 1, "epochs": 1, "train_fraction": 0.2}, sampler="random")


def test_a_per_layer_study_exports_a_model_that_reloads_and_reproduces_its_accuracy(write_study, tmp_path, trained):
    study = _study(write_study, tmp_path, trained, keep_float_top_k=1)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "sensitivity.json").read_text())["groups"] == MLP_GROUPS
    storage = f"sqlite:///{run / 'study.db'}"
    trial = next(r for r in record.read_all(optuna.load_study(study_name="per-layer", storage=storage)) if not r.baseline)
    assert trial.state.name == "COMPLETE", trial.fail_reason
    assert trial.proof["quantization"]["per_layer"]["loud"] == "float"
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r.html").read_text()
    assert "Sensitivity per layer group" in page and "<tr><td>loud</td>" in page and "int8 static_int8" in page
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(run), "--trial", str(trial.number), "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = load_exported(out)
    assert computes_in_float(model.get_submodule("loud.0.fc")) and isinstance(model.get_submodule("wide.0"), nnq.Linear)
    test = digits().test
    assert evaluate(model, make_loader(test, 256, shuffle=False), "cpu") == pytest.approx(
        trial.metrics["test_accuracy"], abs=1e-9)


@pytest.mark.parametrize("space, field, words", [
    ({"keep_float": ["tail"]}, "search_space.quantization.keep_float", "'tail' names no layer group"),
    ({"keep_float_top_k": 6}, "search_space.quantization.keep_float_top_k", "more than the model's 5 layer groups"),
    ({"keep_float_top_k": 1, "top_k_format": "fp8_weight_only"}, "search_space.quantization.top_k_format",
     "'fp8_weight_only' pairs with no quantization.mode of the space"),
])
def test_bad_per_layer_knobs_are_refused_before_anything_is_written(write_study, tmp_path, trained, space, field, words):
    _refused(_study(write_study, tmp_path, trained, **space), tmp_path / "run", field, words)


def test_a_top_k_format_the_installed_torchao_lacks_is_refused(write_study, tmp_path, trained, monkeypatch):
    """A torchao without fp8 weight-only (as older releases): the whole model's int8 runs, the
    top group's fp8 cannot."""
    from types import SimpleNamespace

    from autocompress.compress.quantization import torchao_modes

    real, fp8 = torchao_modes.load(), torchao_modes.CONFIGS["fp8_weight_only"]
    older = SimpleNamespace(**{k: getattr(real, k) for k in dir(real) if k != fp8 and not k.startswith("__")})
    monkeypatch.setattr(torchao_modes, "load", lambda: older)
    study = _study(write_study, tmp_path, trained, mode="int8_weight_only", keep_float_top_k=1,
                   top_k_format="fp8_weight_only")
    _refused(study, tmp_path / "run", "search_space.quantization.top_k_format",
             f"'fp8_weight_only' cannot run on target cpu: the installed torchao has no {fp8}")


def _refused(study, run, field, words):
    result = CliRunner().invoke(app, ["search", str(study), "--out", str(run)])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert str(study) in line and field in line and words in line, result.output
    assert not run.exists()
    assert yaml.safe_load(study.read_text())   # the study file is untouched


def test_the_per_layer_warm_start_is_enqueued_only_where_the_space_has_the_knobs():
    from autocompress.search.warm_start import RECIPES, warm_start_params
    from autocompress.spec.space import parse_space

    recipe = RECIPES["structured-l1-50-by-sensitivity+static-int8-top1-float"]
    base = {"pruning": {"method": {"choices": ["none", "structured"]}, "ratio": {"low": 0.1, "high": 0.6}},
            "quantization": {"mode": {"choices": ["none", "static_int8"]}}}
    assert warm_start_params(parse_space(base, "s.yaml"), recipe) is None
    base["pruning"]["allocation"] = {"choices": ["uniform", "sensitivity"]}
    base["quantization"]["keep_float_top_k"] = {"choices": [0, 1]}
    params = warm_start_params(parse_space(base, "s.yaml"), recipe)
    assert params["pruning.allocation"] == "sensitivity" and params["quantization.keep_float_top_k"] == 1


def test_the_policy_summary_names_the_per_layer_knobs():
    from autocompress.trial.plan import describe

    policy = Policy.from_dict({"pruning": {"method": "structured", "ratio": 0.4, "allocation": "sensitivity",
                                           "ratio_stage4": 0.7},
                               "quantization": {"mode": "static_int8", "keep_float_top_k": 1}})
    assert describe(policy) == "structured l1 40% by sensitivity stages -/-/-/70% + static_int8 top1 float"
