"""Fine-tuning knobs: LR schedules against their closed forms, optimizers, weight decay,
gradient clipping, label smoothing, dropout before the classifier (with pruning and int8),
mixed precision, and the training search space."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autocompress.errors import TrialFailed
from autocompress.spec.policy import AugmentationPolicy, Policy, TrainingPolicy
from autocompress.training.loop import Epoch, FitPlan, fine_tune
from autocompress.training.optim import build_optimizer, build_scheduler, param_groups

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
SPE = 5          # steps per epoch
EPOCHS = 4
TOTAL = SPE * EPOCHS
BASE = 0.1


def lr_curve(steps: int = TOTAL, **knobs) -> list[float]:
    """The LR each optimizer step uses, stepping the scheduler after every step (as the loop does)."""
    tp = TrainingPolicy(lr=BASE, **knobs)
    opt = build_optimizer(nn.Linear(2, 2).parameters(), tp)
    sched = build_scheduler(opt, tp, epochs=EPOCHS, steps_per_epoch=SPE)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


# -- schedules ------------------------------------------------------------------------------

def test_constant_schedule_keeps_the_lr():
    assert lr_curve(schedule="constant") == pytest.approx([BASE] * TOTAL)


def test_step_decay_drops_exactly_at_the_epoch_boundary():
    lr = lr_curve(schedule="step", step_size=2, gamma=0.3)
    for k in range(TOTAL):
        assert lr[k] == pytest.approx(BASE * 0.3 ** (k // (2 * SPE)))
    assert lr[2 * SPE - 1] == pytest.approx(BASE) and lr[2 * SPE] == pytest.approx(BASE * 0.3)


def test_exponential_decays_by_gamma_per_epoch_smoothly():
    lr = lr_curve(schedule="exponential", gamma=0.5)
    for k in (0, 1, 3, SPE, 2 * SPE + 2, TOTAL - 1):
        assert lr[k] == pytest.approx(BASE * 0.5 ** (k / SPE))


def test_linear_decays_to_a_hundredth():
    lr = lr_curve(schedule="linear")
    for k in (0, 4, 10, TOTAL - 1):
        assert lr[k] == pytest.approx(BASE * (1 - 0.99 * k / TOTAL))


def test_cosine_follows_the_closed_form():
    lr = lr_curve(schedule="cosine")
    for k in (0, 3, TOTAL // 2, 15, TOTAL - 1):
        assert lr[k] == pytest.approx(BASE * (1 + math.cos(math.pi * k / TOTAL)) / 2)
    assert lr[TOTAL // 2] == pytest.approx(BASE / 2)


def test_cosine_with_warmup_ramps_linearly_then_anneals():
    warm = SPE  # warmup_epochs=1
    lr = lr_curve(schedule="cosine", warmup_epochs=1.0)
    for k in range(warm):
        assert lr[k] == pytest.approx(BASE * (0.1 + 0.9 * k / warm))
    assert lr[0] == pytest.approx(BASE / 10)
    assert all(a < b for a, b in zip(lr[:warm], lr[1:warm + 1]))
    for k in range(warm, TOTAL):
        assert lr[k] == pytest.approx(BASE * (1 + math.cos(math.pi * (k - warm) / (TOTAL - warm))) / 2)


@pytest.mark.parametrize("schedule", ["constant", "step", "exponential", "linear"])
def test_warmup_precedes_every_decay_schedule(schedule):
    lr = lr_curve(schedule=schedule, warmup_epochs=0.4, step_size=1, gamma=0.5)   # 2 warm-up steps
    assert lr[0] == pytest.approx(BASE * 0.1) and lr[1] == pytest.approx(BASE * 0.55)
    assert lr[2] == pytest.approx(BASE)


def test_cyclic_is_a_triangle_between_a_tenth_and_the_lr():
    half = 3   # cycle_epochs=0.6 x 5 steps
    lr = lr_curve(schedule="cyclic", cycle_epochs=0.6)
    low = BASE / 10
    for k in range(TOTAL):
        cycle = math.floor(1 + k / (2 * half))
        x = abs(k / half - 2 * cycle + 1)
        assert lr[k] == pytest.approx(low + (BASE - low) * max(0.0, 1 - x))
    assert lr[0] == pytest.approx(low) and lr[half] == pytest.approx(BASE) and lr[2 * half] == pytest.approx(low)


def test_onecycle_peaks_at_the_lr_after_its_warmup_and_anneals_to_near_zero():
    lr = lr_curve(schedule="onecycle", warmup_epochs=1.0)
    peak = SPE - 1   # OneCycleLR: pct_start * total - 1
    assert lr[0] == pytest.approx(BASE / 25)
    assert lr[peak] == pytest.approx(BASE) and max(lr) == pytest.approx(BASE)
    down = TOTAL - 1 - peak
    for k in (peak + 3, peak + 8, TOTAL - 1):   # cosine from BASE to BASE / 25 / 1e4
        lo = BASE / 25 / 1e4
        assert lr[k] == pytest.approx(lo + (BASE - lo) * (1 + math.cos(math.pi * (k - peak) / down)) / 2)


def test_onecycle_can_be_stepped_for_the_whole_fine_tune():
    lr_curve(schedule="onecycle", steps=TOTAL)   # no "stepped too many times" error


def test_the_loop_steps_the_schedule_per_step():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
    policy = Policy(training=TrainingPolicy(optimizer="sgd", lr=BASE, schedule="cosine", batch_size=10))
    fit = fine_tune(nn.Linear(4, 3), data, data, policy, FitPlan(epochs=2, device=CPU, seed=0))
    assert fit.steps == 8
    assert [type(row) for row in fit.history] == [Epoch, Epoch] and [row.epoch for row in fit.history] == [1, 2]
    # the LR recorded after epoch 1 is the one step 4 of 8 uses: half way down the cosine
    assert fit.history[0].lr == pytest.approx(BASE / 2)


# -- optimizers, weight decay, clipping -------------------------------------------------------

@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_each_optimizer_gets_the_policy_hyperparameters(name, cls):
    tp = TrainingPolicy(optimizer=name, lr=0.02, weight_decay=1e-3, momentum=0.8, nesterov=True)
    opt = build_optimizer(nn.Linear(3, 2).parameters(), tp)
    assert type(opt) is cls
    assert all(g["lr"] == 0.02 for g in opt.param_groups)
    if name in ("sgd", "rmsprop"):
        assert opt.param_groups[0]["momentum"] == 0.8
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] is True


def test_nesterov_needs_momentum():
    opt = build_optimizer(nn.Linear(3, 2).parameters(), TrainingPolicy(optimizer="sgd", momentum=0.0, nesterov=True))
    assert opt.param_groups[0]["nesterov"] is False


def test_weight_decay_skips_biases_and_norm_scales():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    groups = param_groups(model.parameters(), 0.01)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_frozen_parameters_are_not_optimized():
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    opt = build_optimizer(model.parameters(), TrainingPolicy())
    assert [p for g in opt.param_groups for p in g["params"]] == [model.weight]


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4) * 100, torch.randint(0, 3, (16,)))

    def update_norm(clip: float) -> float:
        torch.manual_seed(1)
        model = nn.Linear(4, 3)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        policy = Policy(training=TrainingPolicy(optimizer="sgd", momentum=0.0, lr=1.0, grad_clip=clip,
                                                batch_size=16))
        fine_tune(model, data, data, policy, FitPlan(epochs=1, device=CPU, seed=0))
        return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())

    assert update_norm(0.0) > 1.0
    assert update_norm(0.01) == pytest.approx(0.01, rel=1e-3)


# -- label smoothing ------------------------------------------------------------------------

def test_label_smoothing_reaches_the_loss():
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randint(0, 4, (32,))
    data = TensorDataset(x, y)
    model = nn.Linear(6, 4)
    logp = torch.log_softmax(model(x), dim=1).detach()
    nll = -logp.gather(1, y[:, None]).squeeze(1)
    uniform = -logp.mean(dim=1)

    def train_loss(s: float) -> float:   # lr = 0: the model stays put, the loss is the closed form
        policy = Policy(training=TrainingPolicy(lr=0.0, label_smoothing=s, batch_size=8))
        return fine_tune(model, data, data, policy, FitPlan(epochs=1, device=CPU, seed=0)).history[0].train_loss

    assert train_loss(0.0) == pytest.approx(float(nll.mean()), rel=1e-5)
    assert train_loss(0.3) == pytest.approx(float((0.7 * nll + 0.3 * uniform).mean()), rel=1e-5)
    assert train_loss(0.3) != pytest.approx(train_loss(0.0), rel=1e-3)


def test_label_smoothing_applies_to_mixup_soft_targets(digits_bundle):
    from autocompress.training.augment import build_batch_transform

    aug = AugmentationPolicy(mix="mixup", mix_prob=1.0, mix_alpha=0.4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    mix, seen = build_batch_transform(aug, digits_bundle, seed=0), []

    def keep(x, y):
        x, target = mix(x, y)
        seen.append((x, target))
        return x, target

    # lr = 0: the model stays put, the loss is the closed form on the soft targets it trained on
    policy = Policy(training=TrainingPolicy(lr=0.0, label_smoothing=0.3, batch_size=64))
    fit = fine_tune(model, digits_bundle.train, digits_bundle.val, policy,
                    FitPlan(epochs=1, device=CPU, seed=0, batch_transform=keep))
    assert len(seen) == fit.steps and all(((t > 0).sum(dim=1) == 2).any() for _, t in seen)   # mixed targets
    with torch.no_grad():
        x, target = torch.cat([b[0] for b in seen]), torch.cat([b[1] for b in seen])
        logp = torch.log_softmax(model(x), dim=1)

    def cross_entropy(t: torch.Tensor) -> float:
        return float(-(t * logp).sum(dim=1).mean())

    assert fit.history[0].train_loss == pytest.approx(cross_entropy(0.7 * target + 0.3 / 10), rel=1e-5)
    assert fit.history[0].train_loss != pytest.approx(cross_entropy(target), rel=1e-4)   # not the unsmoothed loss


# -- dropout before the classifier ----------------------------------------------------------

def dropout_policy(p: float = 0.5, **parts) -> Policy:
    return Policy(training=TrainingPolicy(dropout=p, lr=3e-3), **parts)


def dropout_technique(p: float, ctx):
    """The classifier-dropout technique, built as run_trial builds it (the policy's only technique)."""
    from autocompress.compress import pipeline

    (tech,) = pipeline(dropout_policy(p)).build(ctx)
    return tech


def test_no_dropout_technique_at_rate_zero(digits_ctx):
    from autocompress.compress import pipeline, regularization

    assert regularization.select(Policy()) is None and pipeline(Policy()).build(digits_ctx) == []
    assert regularization.select(dropout_policy(0.2)) is regularization.ClassifierDropout
    assert type(dropout_technique(0.2, digits_ctx)) is regularization.ClassifierDropout


def test_dropout_reaches_the_model_and_is_removed_after(digits_ctx, digits_bundle):
    from autocompress.compress.regularization import DropoutBefore

    model = copy.deepcopy(digits_ctx.teacher).requires_grad_(True)
    keys = list(model.state_dict())
    tech = dropout_technique(0.5, digits_ctx)
    model = tech.before_finetune(model)
    wrapped = [m for m in model.modules() if isinstance(m, DropoutBefore)]
    assert len(wrapped) == 1 and wrapped[0].dropout.p == 0.5
    assert list(model.state_dict()) != keys   # classifier now under the wrapper

    calls: list[bool] = []
    wrapped[0].dropout.register_forward_hook(lambda m, i, o: calls.append(m.training))
    fit = fine_tune(model, digits_ctx.data.train, digits_ctx.data.val, dropout_policy(0.5),
                    FitPlan(epochs=1, device=CPU, seed=0, techniques=[tech]))
    assert calls.count(True) == fit.steps          # active at every training step
    assert set(calls) == {True, False}             # and off during validation

    x = digits_bundle.val[:8][0]
    model.train()
    feats = []
    wrapped[0].linear.register_forward_pre_hook(lambda m, a: feats.append(a[0].detach().clone()))
    model(x)
    assert (feats[-1] == 0).float().mean() > 0.3   # about half the classifier inputs dropped
    model.eval()
    assert torch.equal(model(x), model(x))

    model = tech.after_finetune(model)
    assert not any(isinstance(m, (DropoutBefore, nn.Dropout)) for m in model.modules())
    assert list(model.state_dict()) == keys
    assert tech.proof()["regularization"]["dropout"] == 0.5


def test_existing_dropout_before_the_classifier_gets_the_rate(digits_ctx):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 10))
    tech = dropout_technique(0.4, digits_ctx)
    model = tech.before_finetune(model)
    assert model[3].p == 0.4 and sum(isinstance(m, nn.Dropout) for m in model.modules()) == 1
    model = tech.after_finetune(model)
    assert model[3].p == 0.2


def test_dropout_without_a_linear_classifier_fails_the_trial(digits_ctx):
    model = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
    with pytest.raises(TrialFailed, match="no nn.Linear"):
        dropout_technique(0.3, digits_ctx).before_finetune(model)


def test_dropout_model_still_fx_traces_for_int8():
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_qat_fx

    from autocompress.compress.regularization import DropoutBefore

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    model[3] = DropoutBefore(0.3, model[3])
    example = torch.randn(2, 1, 8, 8)
    prepared = prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping("x86"), (example,))
    assert any(isinstance(m, nn.Dropout) for m in prepared.modules())
    prepared(example)
    out = convert_fx(prepared.eval())(example)
    assert out.shape == (2, 10)


@pytest.mark.parametrize("pruning,quant", [("structured", "none"), ("gradual", "none"), ("none", "qat_int8"),
                                           ("none", "static_int8")])
def test_dropout_with_pruning_and_int8_trials(digits_ctx, pruning, quant):
    from autocompress.compress.quantization import quantized_layers
    from autocompress.metrics.accuracy import evaluate
    from autocompress.spec.policy import PruningPolicy, QuantizationPolicy
    from autocompress.trial.run import run_trial
    from autocompress.zoo.data import make_loader

    policy = Policy(training=TrainingPolicy(dropout=0.3, lr=3e-3), pruning=PruningPolicy(method=pruning, ratio=0.5),
                    quantization=QuantizationPolicy(mode=quant))
    result = run_trial(policy, digits_ctx)
    facts = result.proof["regularization"]
    assert facts["dropout"] == 0.3 and facts["dropout_before"] == "21"   # the digits CNN's classifier
    # one epoch trained, and the recorded accuracies are those of the model the trial returns
    assert result.epochs_run == 1 and [row.epoch for row in result.history] == [1]
    assert result.metrics["accuracy"] == evaluate(result.model, make_loader(digits_ctx.data.val, 256, shuffle=False), CPU)
    assert result.metrics["test_accuracy"] == evaluate(result.model, make_loader(digits_ctx.data.test, 256, shuffle=False), CPU)
    if pruning != "none":
        assert result.proof["pruning"]["sparsity"] > 0   # channels really removed, dropout or not
        widths = {name: m.out_features if isinstance(m, nn.Linear) else m.out_channels
                  for name, m in result.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
        kept = result.proof["pruning"]["channels_kept"]
        assert kept and all(widths[name] == after < before for name, (before, after) in kept.items())
    if quant != "none":   # int8 kernels in the returned model, as the proof says
        layers = quantized_layers(result.model)
        assert layers == result.proof["quantization"]["quantized_layers"] and layers["int8 ConvReLU2d"] == 5
    else:
        assert quantized_layers(result.model) == {}
        # nothing changes the model after fine-tuning: the last epoch's accuracy is the final one
        assert result.history[-1].val_accuracy == pytest.approx(result.metrics["accuracy"])
    if quant == "qat_int8":
        from autocompress.compress.quantization import quantized_skeleton

        assert "FX graph" in facts["dropout_how"]
        # the int8 model's state dict loads into the same model quantized without dropout
        skeleton = quantized_skeleton(digits_ctx.teacher, "qat_int8", digits_ctx.example_batch())
        skeleton.load_state_dict(result.model.state_dict())
    else:
        assert facts.get("dropout_removed") is True
        assert not any(isinstance(m, nn.Dropout) for m in result.model.modules())


# -- mixed precision ------------------------------------------------------------------------

def _matmul_dtypes(amp: str, device: torch.device) -> set[torch.dtype]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 6), torch.randint(0, 3, (32,)))
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    seen: set[torch.dtype] = set()
    model[0].register_forward_hook(lambda m, i, o: seen.add(o.dtype) if m.training else None)
    policy = Policy(training=TrainingPolicy(amp=amp, batch_size=16, lr=1e-2))
    fit = fine_tune(model, data, data, policy, FitPlan(epochs=1, device=device, seed=0))
    assert math.isfinite(fit.history[0].train_loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())   # master weights stay fp32
    return seen


def test_mixed_precision_is_off_unless_asked():
    assert _matmul_dtypes("off", CPU) == {torch.float32}


def test_bf16_autocast_on_cpu_when_asked():
    assert _matmul_dtypes("bf16", CPU) == {torch.bfloat16}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_cuda_autocast_with_grad_scaler(amp, dtype):
    assert _matmul_dtypes(amp, torch.device("cuda")) == {dtype}


# -- the search space -----------------------------------------------------------------------

TRAINING_SPACE = REPO / "search_spaces" / "training_knobs.yaml"
CONDITIONS = {
    "training.momentum": ("training.optimizer", {"sgd", "rmsprop"}),
    "training.nesterov": ("training.optimizer", {"sgd"}),
    "training.step_size": ("training.schedule", {"step"}),
    "training.gamma": ("training.schedule", {"step", "exponential"}),
    "training.cycle_epochs": ("training.schedule", {"cyclic"}),
    "training.warmup_epochs": ("training.schedule", {"constant", "step", "exponential", "linear", "cosine",
                                                     "onecycle"}),
    "augmentation.mix_alpha": ("augmentation.mix", {"mixup", "cutmix"}),
    "augmentation.mix_prob": ("augmentation.mix", {"mixup", "cutmix"}),
}


def test_training_space_covers_every_fine_tuning_knob():
    from autocompress.spec.space import load_space

    space = load_space(TRAINING_SPACE)
    names = {k.name for k in space.knobs}
    flat = Policy().to_flat()
    assert {k for k in flat if k.startswith(("training.", "augmentation."))} == names


def test_sampled_trials_record_every_knob_and_respect_conditions(digits_bundle):
    from autocompress.spec.space import load_space
    from autocompress.training.augment import build_batch_transform

    space = load_space(TRAINING_SPACE)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    schedules, policies = set(), set()
    for _ in range(60):
        trial = study.ask()
        policy = space.sample(trial)
        flat, params = policy.to_flat(), trial.params
        for knob in space.knobs:
            assert knob.name in flat
            if knob.name in params:
                assert flat[knob.name] == pytest.approx(params[knob.name])
        for knob, (dep, allowed) in CONDITIONS.items():
            assert (knob in params) == (params[dep] in allowed), knob
        assert Policy.from_flat(flat) == policy
        # every sampled policy builds: optimizer, schedule, augmentation (digits: no color step)
        opt = build_optimizer(nn.Linear(2, 2).parameters(), policy.training)
        build_scheduler(opt, policy.training, epochs=2, steps_per_epoch=3)
        build_batch_transform(policy.augmentation, digits_bundle, seed=0)
        schedules.add(policy.training.schedule)
        policies.add(policy.augmentation.policy)
        study.tell(trial, 0.0)
    assert len(schedules) == 7 and len(policies) == 7


@pytest.mark.parametrize("schedule", ["constant", "step", "exponential", "linear", "cosine", "cyclic", "onecycle"])
def test_every_schedule_survives_tiny_fine_tunes(schedule):
    for epochs, spe in ((1, 1), (1, 2), (2, 3)):
        for warmup in (0.0, 0.5, 3.0):
            tp = TrainingPolicy(schedule=schedule, lr=BASE, warmup_epochs=warmup)
            opt = build_optimizer(nn.Linear(2, 2).parameters(), tp)
            sched = build_scheduler(opt, tp, epochs=epochs, steps_per_epoch=spe)
            for _ in range(epochs * spe):
                assert 0 < opt.param_groups[0]["lr"] <= BASE * (1 + 1e-9)
                opt.step()
                sched.step()
