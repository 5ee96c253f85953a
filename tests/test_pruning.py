"""Pruning does what it claims, measured: channels really removed, zeros really there, the
schedule really followed, and models NNI cannot shrink end the trial with a reason."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autocompress.compress import pipeline
from autocompress.compress.pruning import scheduled_ratio, select
from autocompress.compress.pruning.plan import out_widths, zero_fraction
from autocompress.errors import TrialFailed
from autocompress.metrics.accuracy import evaluate
from autocompress.metrics.flops import count_flops
from autocompress.metrics.size import count_params
from autocompress.spec.policy import Policy, PruningPolicy, QuantizationPolicy
from autocompress.training.loop import FitPlan, fine_tune
from autocompress.trial.context import TrialContext
from autocompress.zoo.data import DataBundle, make_loader
from autocompress.zoo.models import create_model, torchvision_model

# digits_cnn(width=8): prunable layers in module order; "0" (first conv) and "21" (classifier)
# are protected by default.
DIGITS_TARGETS = ["3", "7", "10", "14", "19"]


def pruning(**knobs) -> Policy:
    return Policy(pruning=PruningPolicy(**knobs))


def build(policy: Policy, ctx: TrialContext):
    """The pruning technique ``policy`` turns on, built for ``ctx`` (None without pruning)."""
    cls = select(policy)
    return None if cls is None else cls(policy, ctx, pipeline(policy))


def student(ctx: TrialContext) -> nn.Module:
    return copy.deepcopy(ctx.teacher).requires_grad_(True)


def random_ctx(model: nn.Module, shape: tuple[int, ...], *, classes: int = 10, n: int = 8,
               epochs: int = 1) -> TrialContext:
    ds = TensorDataset(torch.randn(n, *shape), torch.randint(0, classes, (n,)))
    data = DataBundle("random", ds, ds, ds, classes, shape)
    return TrialContext(data=data, teacher=model, baseline_metrics={}, epochs=epochs)


def finetune(model: nn.Module, ctx: TrialContext, policy: Policy, technique) -> None:
    fine_tune(model, ctx.data.train, ctx.data.val, policy,
              FitPlan(epochs=ctx.epochs, device=ctx.device, seed=0, techniques=(technique,)))


# -- structured ---------------------------------------------------------------------------------
@pytest.mark.parametrize("criterion", ["l1", "l2", "fpgm", "taylor"])
def test_structured_half_removes_channels_flops_and_params(digits_ctx, criterion):
    model = student(digits_ctx)
    x = digits_ctx.example_batch(4)
    flops0, params0 = count_flops(model, x), count_params(model)[0]
    widths0 = out_widths(model)

    technique = build(pruning(method="structured", criterion=criterion, ratio=0.5), digits_ctx)
    model = technique.compress(model)

    flops1, params1 = count_flops(model, x), count_params(model)[0]
    assert flops1 < 0.5 * flops0 and params1 < 0.5 * params0
    widths1 = out_widths(model)
    for name in DIGITS_TARGETS:
        assert widths1[name] == widths0[name] // 2
    logits = model.eval()(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()

    proof = technique.proof()["pruning"]
    assert proof["criterion"] == criterion
    assert proof["sparsity"] == pytest.approx(0.5)
    assert proof["channels_kept"] == {n: [widths0[n], widths1[n]] for n in DIGITS_TARGETS}
    assert proof["params_after"] == params1


def test_structured_keeps_train_eval_mode_consistent(digits_ctx):
    model = student(digits_ctx).train()
    model = build(pruning(method="structured", ratio=0.5), digits_ctx).compress(model)
    assert all(m.training for m in model.modules())   # NNI hands replaced modules back in train mode


def test_per_group_ratios_and_protected_layers(digits_ctx):
    model = student(digits_ctx)
    first_conv = model[0].weight.detach().clone()
    technique = build(pruning(method="structured", ratio=0.5, ratio_early=0.25, ratio_late=0.75), digits_ctx)
    model = technique.compress(model)
    # early half (3, 7, 10) at 25%, late half (14, 19) at 75%; first conv and classifier intact
    assert {n: w for n, w in out_widths(model).items()} == {
        "0": 8, "3": 6, "7": 12, "10": 12, "14": 8, "19": 8, "21": 10}
    assert torch.equal(model[0].weight, first_conv)
    assert technique.proof()["pruning"]["protected"] == ["0", "21"]

    technique = build(pruning(method="structured", ratio=0.5, protect=("7", "14")), digits_ctx)
    model = technique.compress(student(digits_ctx))
    assert out_widths(model) == {"0": 8, "3": 4, "7": 16, "10": 8, "14": 32, "19": 16, "21": 10}


def test_unknown_protected_name_fails_the_trial(digits_ctx):
    with pytest.raises(TrialFailed, match="protect"):
        build(pruning(method="structured", protect=("features.99",)), digits_ctx).compress(student(digits_ctx))


def _model(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if name == "digits_cnn":
        return create_model(name, num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=8), (1, 8, 8)
    if name == "conv1d_net":
        return create_model(name, num_classes=10, in_channels=2, input_shape=(2, 32), width=16), (2, 32)
    if name == "mlp":
        return create_model(name, num_classes=10, in_channels=1, input_shape=(20,), hidden=64), (20,)
    return torchvision_model(name, num_classes=10, in_channels=3), (3, 16, 16)


@pytest.mark.parametrize("name", ["digits_cnn", "conv1d_net", "mlp", "resnet18", "mobilenet_v2",
                                  "mobilenet_v3_small", "efficientnet_b0"])
def test_structured_shrinks_every_supported_model(name):
    model, shape = _model(name)
    ctx = random_ctx(model, shape)
    x = ctx.example_batch(2)
    flops0, params0 = count_flops(model, x), count_params(model)[0]
    technique = build(pruning(method="structured", ratio=0.5), ctx)
    model = technique.compress(model)
    assert count_params(model)[0] < 0.8 * params0
    assert count_flops(model, x) < 0.8 * flops0
    assert model.eval()(x).shape == (2, 10)
    proof = technique.proof()["pruning"]
    assert proof["sparsity"] == pytest.approx(0.5, abs=0.03)
    assert proof["channels_kept"]
    if name == "mlp":   # fewer hidden units
        assert [m.out_features for m in model if isinstance(m, nn.Linear)] == [32, 32, 10]


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.a(x)
        if x.mean() > 0:   # control flow on data: torch.fx cannot trace it
            x = x * 2
        return self.fc(self.b(x).mean((2, 3)))


def test_a_model_fx_cannot_trace_is_shrunk_by_torch_pruning_and_nni_gives_the_reason(monkeypatch):
    model = DataDependent()
    technique = build(pruning(method="structured", ratio=0.5), random_ctx(model, (1, 8, 8)))
    technique.compress(model)   # Torch-Pruning traces with hooks: data-dependent control flow is fine
    assert technique.proof()["pruning"]["engine"] == "torch-pruning" and technique.proof()["pruning"]["channels_kept"]
    # where Torch-Pruning cannot trace either, NNI is tried, and its reason ends the trial
    from autocompress.compress.pruning import graph
    from autocompress.compress.pruning.graph import CannotTrace

    def cannot(*args, **kwargs):
        raise CannotTrace("no trace")

    monkeypatch.setattr(graph, "dependency_graph", cannot)
    model = DataDependent()
    with pytest.raises(TrialFailed, match="torch.fx trace.*Torch-Pruning could not either: no trace; nor block by "
                                          "block: no block of the model can be traced alone"):
        build(pruning(method="structured", ratio=0.5), random_ctx(model, (1, 8, 8))).compress(model)
    # weight pruning needs no trace
    technique = build(pruning(method="weight", ratio=0.5), random_ctx(model, (1, 8, 8)))
    technique.after_finetune(technique.compress(model))
    assert technique.proof()["pruning"]["sparsity"] == pytest.approx(0.5, abs=0.01)


class TrainOnlyHead(nn.Module):
    """Like googlenet's auxiliary heads: a branch only training runs, so the eval trace misses it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 16, 3), nn.Conv2d(16, 16, 3)
        self.aux = nn.Conv2d(16, 10, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.b(self.a(x))
        out = self.fc(self.c(x).mean((2, 3)))
        return out + self.aux(x).mean((2, 3)) if self.training else out


def test_channels_a_train_only_branch_uses_are_left_whole_with_the_reason():
    model = TrainOnlyHead()
    technique = build(pruning(method="structured", ratio=0.5), random_ctx(model, (1, 10, 10)))
    model = technique.compress(model)
    facts = technique.proof()["pruning"]
    # b feeds the auxiliary head, which only training runs (the eval trace misses it): left whole
    assert "train mode" in facts["left_whole"]["b"] and facts["channels_kept"] == {"c": [16, 8]}
    with torch.no_grad():
        assert model.train()(torch.randn(2, 1, 10, 10)).shape == (2, 10)


def test_nni_is_quiet(digits_ctx, capfd):
    build(pruning(method="structured", ratio=0.5), digits_ctx).compress(student(digits_ctx))
    out, err = capfd.readouterr()
    assert out == "" and "replace" not in err and "dim0" not in err


# -- weight -------------------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_weight_sixty_percent_zeros_survive_finetuning(digits_ctx, scope):
    model = student(digits_ctx)
    policy = pruning(method="weight", ratio=0.6, scope=scope)
    technique = build(policy, digits_ctx)
    model = technique.compress(model)
    assert zero_fraction(model, DIGITS_TARGETS) == pytest.approx(0.6, abs=0.002)

    finetune(model, digits_ctx, policy, technique)
    model = technique.after_finetune(model)
    assert type(model) is nn.Sequential and not any("nni" in n for n, _ in model.named_modules())
    assert zero_fraction(model, DIGITS_TARGETS) == pytest.approx(0.6, abs=0.002)
    assert zero_fraction(model, ["0", "21"]) == 0.0            # protected
    proof = technique.proof()["pruning"]
    assert proof["sparsity"] == pytest.approx(0.6, abs=0.002)
    if scope == "layer":
        assert all(s == pytest.approx(0.6, abs=0.01) for s in proof["sparsity_per_layer"].values())


@pytest.mark.filterwarnings("ignore:Please use quant_min:UserWarning")
def test_weight_masks_follow_the_model_through_qat_preparation(digits_ctx):
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    technique = build(pruning(method="weight", ratio=0.6), digits_ctx)
    model = technique.compress(student(digits_ctx)).train()
    prepared = prepare_qat_fx(model, get_default_qat_qconfig_mapping("x86"), (digits_ctx.example_batch(2),))
    with torch.no_grad():
        for p in prepared.parameters():
            p.add_(1.0)     # an optimizer step that would revive pruned weights
    technique.on_step_end(prepared, 1)
    weights = dict(prepared.named_parameters())
    zeros = sum(int((weights[f"{n}.weight"] == 0).sum()) for n in DIGITS_TARGETS)
    total = sum(weights[f"{n}.weight"].numel() for n in DIGITS_TARGETS)
    assert zeros / total == pytest.approx(0.6, abs=0.002)


# -- gradual ------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["agp", "linear"])
def test_gradual_follows_the_schedule_then_shrinks(digits_ctx, schedule):
    ctx = dataclasses.replace(digits_ctx, epochs=4)
    policy = pruning(method="gradual", ratio=0.5, schedule=schedule)
    model = student(ctx)
    widths0 = out_widths(model)
    technique = build(policy, ctx)
    model = technique.compress(model)
    assert out_widths(model) == widths0          # nothing removed before training

    finetune(model, ctx, policy, technique)
    proof = technique.proof()["pruning"]
    expected = [scheduled_ratio(0.5, t, 3, schedule) for t in (1, 2, 3, 3)]   # last epoch recovers
    assert proof["schedule_per_epoch"] == pytest.approx(expected, abs=1e-6)
    # measured channel sparsity per epoch: the schedule, up to whole channels (104 in 5 layers)
    assert proof["sparsity_per_epoch"] == pytest.approx(expected, abs=5 / 104)
    assert proof["sparsity_per_epoch"] == sorted(proof["sparsity_per_epoch"])
    if schedule == "agp":   # cubic: most of the sparsity comes early
        assert proof["sparsity_per_epoch"][0] > 0.5 * 0.6

    model = technique.after_finetune(model)
    widths1 = out_widths(model)
    assert all(widths1[n] == widths0[n] // 2 for n in DIGITS_TARGETS)
    assert model.eval()(ctx.example_batch(3)).shape == (3, 10)
    assert technique.proof()["pruning"]["sparsity"] == pytest.approx(0.5)
    # the masked, fine-tuned model and the shrunk one compute the same function
    assert technique.proof()["pruning"]["shrink_output_max_diff"] < 1e-4


def test_gradual_stopped_early_still_reaches_the_target(digits_ctx):
    model = student(digits_ctx)
    technique = build(pruning(method="gradual", ratio=0.5, criterion="l2"), digits_ctx)
    model = technique.after_finetune(technique.compress(model))   # no epoch ran
    assert technique.proof()["pruning"]["finished_after_finetune"] is True
    assert out_widths(model)["14"] == 16


def test_gradual_with_qat_is_refused_with_a_reason(digits_ctx, monkeypatch):
    from autocompress.trial import run

    policy = Policy(pruning=PruningPolicy(method="gradual"), quantization=QuantizationPolicy(mode="qat_int8"))
    assert "qat_int8" in pipeline(policy).conflict()   # declared: the structure changes after QAT's rewrite
    monkeypatch.setattr(run, "_compress", lambda *a, **k: pytest.fail("a refused trial must not compress"))
    with pytest.raises(TrialFailed, match="gradual pruning cannot be combined with qat_int8"):
        run.run_trial(policy, digits_ctx)


def test_no_pruning_builds_nothing(digits_ctx):
    assert select(Policy()) is None and pipeline(Policy()).build(digits_ctx) == []
    technique = build(pruning(method="structured", ratio=0.0), digits_ctx)
    model = technique.compress(student(digits_ctx))
    assert out_widths(model) == out_widths(digits_ctx.teacher) and technique.proof()["pruning"]["sparsity"] == 0.0


def test_agp_schedule():
    assert [round(scheduled_ratio(0.8, t, 4), 4) for t in range(5)] == [0.0, 0.4625, 0.7, 0.7875, 0.8]
    assert scheduled_ratio(0.8, 2, 4, "linear") == pytest.approx(0.4)


# -- end to end ---------------------------------------------------------------------------------
def test_run_trial_structured_on_digits(digits_ctx):
    from autocompress.trial.run import run_trial

    result = run_trial(pruning(method="structured", ratio=0.5), digits_ctx)
    json.dumps(result.proof["pruning"])   # stored as an Optuna user attribute
    teacher_params = count_params(digits_ctx.teacher)[0]
    assert result.metrics["params"] < 0.5 * teacher_params
    assert result.proof["pruning"]["channels_kept"]["14"] == [32, 16]
    assert result.model is not None and result.model(digits_ctx.example_batch(2)).shape == (2, 10)
    # the measured model is the shrunk one: its widths are the proof's, its counts the metrics'
    widths = out_widths(result.model)
    assert {n: widths[n] for n in DIGITS_TARGETS} == {
        n: kept[1] for n, kept in result.proof["pruning"]["channels_kept"].items()}
    assert result.metrics["params"] == count_params(result.model)[0] == result.proof["pruning"]["params_after"]
    x = digits_ctx.example_batch(2)
    assert result.metrics["flops"] == count_flops(result.model, x) < 0.5 * count_flops(digits_ctx.teacher, x)
    # accuracy is that of this model on the validation split
    val = make_loader(digits_ctx.data.val, 256, shuffle=False)
    assert result.metrics["accuracy"] == pytest.approx(evaluate(result.model, val, "cpu"))
    assert [row.epoch for row in result.history] == [1]
