"""Distillation changes the loss for real: soft targets use T, feature maps are matched."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from autocompress.compress import distillation as D
from autocompress.compress import pipeline
from autocompress.compress.quantization import quantized_layers
from autocompress.errors import TrialFailed
from autocompress.metrics.accuracy import evaluate
from autocompress.spec.policy import (
    DistillationPolicy,
    Policy,
    QuantizationPolicy,
    TrainingPolicy,
)
from autocompress.trial.run import run_trial
from autocompress.zoo.data import make_loader
from autocompress.zoo.models import create_model, torchvision_model


def policy(quant: str = "none", method: str = "soft+feature", **knobs) -> Policy:
    return Policy(distillation=DistillationPolicy(method=method, **knobs), quantization=QuantizationPolicy(mode=quant),
                  training=TrainingPolicy(batch_size=64))


def technique(p: Policy, ctx) -> D.Distillation:
    """The distillation technique of ``p``, built as run_trial builds it."""
    (tech,) = [t for t in pipeline(p).build(ctx) if isinstance(t, D.Distillation)]
    return tech


def perturbed(model: nn.Module, seed: int = 1, scale: float = 0.3) -> nn.Module:
    """A trainable copy of ``model`` with Gaussian noise of std ``scale`` added to every weight."""
    student = copy.deepcopy(model).requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return student


def digits_student(width: int) -> nn.Module:
    torch.manual_seed(1)
    return create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=width)


def one_loss(tech: D.Distillation, student: nn.Module, ctx) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iter(torch.utils.data.DataLoader(ctx.data.train, batch_size=32)))
    student.train()
    logits = student(x)
    task = F.cross_entropy(logits, y)
    return task, tech.loss(task, inputs=x, logits=logits, targets=y)


def test_off_when_alpha_and_feature_weight_are_zero(digits_ctx):
    off = policy(alpha=0.0, feature_weight=0.0)
    assert D.select(off) is None and pipeline(off).build(digits_ctx) == []
    assert D.select(policy(alpha=0.0, feature_weight=0.1)) is D.Distillation
    assert D.select(policy(alpha=0.3, feature_weight=0.0)) is D.Distillation


def test_soft_target_loss_differs_from_task_loss_and_depends_on_temperature(digits_ctx):
    student = perturbed(digits_ctx.teacher)
    totals = {}
    for t in (2.0, 8.0):
        tech = technique(policy(alpha=0.5, temperature=t), digits_ctx)
        tech.before_finetune(student)
        torch.manual_seed(0)
        task, total = one_loss(tech, student, digits_ctx)
        assert not torch.allclose(total, task)
        x, _ = next(iter(torch.utils.data.DataLoader(digits_ctx.data.train, batch_size=32)))
        with torch.no_grad():
            s, te = student(x), digits_ctx.teacher(x)
        kl = F.kl_div(F.log_softmax(s / t, 1), F.log_softmax(te / t, 1), log_target=True, reduction="batchmean")
        assert torch.allclose(total, 0.5 * task + 0.5 * t * t * kl, rtol=1e-4)
        totals[t] = total.item()
        tech.after_finetune(student)
    assert totals[2.0] != pytest.approx(totals[8.0], rel=1e-3)


def test_feature_only_path_with_alpha_zero(digits_ctx):
    student = perturbed(digits_ctx.teacher)
    tech = technique(policy(alpha=0.0, feature_weight=2.0), digits_ctx)
    tech.before_finetune(student)
    assert [str(t) for t in tech.taps] == ["input of '17'"]  # the last map before global pooling
    assert tech.trainable_modules() == []  # same width: nothing to project
    task, total = one_loss(tech, student, digits_ctx)
    assert total.item() > task.item()  # task + 2 * MSE(student features, teacher features)
    tech.on_epoch_end(student, 0)
    proof = tech.proof()["distillation"]
    assert proof["temperature"] is None
    assert set(proof["last_epoch_mean"]) == {"task_loss", "feature_loss", "total_loss"}
    tech.after_finetune(student)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in student.modules())


def test_narrower_student_gets_a_trained_projection(digits_ctx):
    student = digits_student(width=4)  # as after structured pruning: 16 channels, teacher has 32
    tech = technique(policy(alpha=0.3, feature_weight=1.0), digits_ctx)
    tech.before_finetune(student)
    (proj,) = tech.trainable_modules()[0].values()
    assert isinstance(proj, nn.Conv2d) and (proj.in_channels, proj.out_channels) == (16, 32)
    _, total = one_loss(tech, student, digits_ctx)
    total.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert tech.proof()["distillation"]["projections"] == {"input of '17'": "Conv2d 16->32"}


def test_named_feature_layer_missing_from_student_fails(digits_ctx):
    tech = technique(policy(feature_weight=1.0, feature_layers=("no.such.layer",)), digits_ctx)
    with pytest.raises(TrialFailed, match="no module 'no.such.layer' in the student"):
        tech.before_finetune(perturbed(digits_ctx.teacher))


def test_default_feature_layer_of_torchvision_models():
    resnet = torchvision_model("resnet18", num_classes=10, in_channels=3)
    assert D.default_feature_tap(resnet) == D.FeatureTap("avgpool", "input")
    mobilenet = torchvision_model("mobilenet_v2", num_classes=10, in_channels=3)  # functional pooling
    assert D.default_feature_tap(mobilenet) == D.FeatureTap("classifier.1", "input")
    mlp = create_model("mlp", num_classes=10, in_channels=1, input_shape=(1, 8, 8))
    assert D.default_feature_tap(mlp) == D.FeatureTap("5", "input")


def test_run_trial_with_kd_and_feature_maps_for_one_epoch(digits_ctx):
    teacher_state = {k: v.clone() for k, v in digits_ctx.teacher.state_dict().items()}
    # 320 samples: five full batches of 64, so the loop's epoch loss is the plain mean over steps
    ctx = dataclasses.replace(digits_ctx, data=dataclasses.replace(digits_ctx.data,
                                                                  train=Subset(digits_ctx.data.train, range(320))))
    result = run_trial(policy(alpha=0.5, temperature=4.0, feature_weight=0.5), ctx)
    proof = result.proof["distillation"]
    last = proof["last_epoch_mean"]
    assert last["kd_loss"] > 0 and last["feature_loss"] > 0 and last["task_loss"] > 0
    assert last["total_loss"] == pytest.approx(0.5 * last["task_loss"] + 0.5 * last["kd_loss"]
                                               + 0.5 * last["feature_loss"], rel=1e-4)
    # the loss the loop trained on is the distillation loss, not the task loss
    assert result.epochs_run == 1 and [row.epoch for row in result.history] == [1]
    assert result.history[0].train_loss == pytest.approx(last["total_loss"], abs=2e-6)
    assert result.history[0].train_loss != pytest.approx(last["task_loss"], rel=1e-2)
    # the recorded accuracy is the returned model's, which is the student as the last epoch left it
    val = make_loader(ctx.data.val, 256, shuffle=False)
    assert result.metrics["accuracy"] == evaluate(result.model, val, "cpu") == result.history[0].val_accuracy
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in result.model.modules())
    # the shared teacher is untouched: no hooks, same weights
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in digits_ctx.teacher.modules())
    assert all(torch.equal(v, teacher_state[k]) for k, v in digits_ctx.teacher.state_dict().items())


def test_kd_with_qat_student_converts_to_int8(digits_ctx):
    result = run_trial(policy("qat_int8", alpha=0.5, feature_weight=0.5), digits_ctx)
    assert result.proof["distillation"]["last_epoch_mean"]["feature_loss"] > 0
    assert quantized_layers(result.model)["int8 ConvReLU2d"] == 5


def test_feature_layer_fused_away_by_qat_fails_with_reason(digits_ctx):
    # module '1' is the first BatchNorm: QAT preparation fuses it into the conv
    with pytest.raises(TrialFailed, match="no longer runs in the student"):
        run_trial(policy("qat_int8", feature_weight=1.0, feature_layers=("1",)), digits_ctx)
