"""BatchNorm recalibration: the function (stale statistics re-estimated, momentum and modes restored,
dropout kept off, what it did), after structured pruning's shrink, and the searched knob in a trial."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from autocompress.compress import pipeline
from autocompress.compress.batchnorm import (BatchNormRecalibration, Recalibration, batch_statistics_accuracy,
                                             batchnorm_layers, recalibrate_batchnorm)
from autocompress.compress.pruning import StructuredPruning
from autocompress.errors import ConfigError
from autocompress.metrics.accuracy import evaluate
from autocompress.spec.policy import Policy
from autocompress.spec.space import load_space
from autocompress.trial.context import TargetSettings, TrialContext
from autocompress.trial.run import run_trial
from autocompress.zoo.data import make_loader
from autocompress.zoo.models import create_model

REPO = Path(__file__).resolve().parents[1]


def _small_bn_net(momentum: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16, momentum=momentum), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32, momentum=momentum), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(32, 10))


def _train(model: nn.Module, data, epochs: int, lr: float) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for epoch in range(epochs):
        for x, y in make_loader(data, 32, shuffle=True, seed=epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model


@pytest.fixture(scope="module")
def stale_net(digits_bundle):
    """Trained for 2 epochs with BatchNorm momentum 0.01 (torchvision's MobileNetV3): the weights have
    learned, the running statistics have not caught up."""
    torch.manual_seed(0)
    return _train(_small_bn_net(0.01), digits_bundle.train, epochs=2, lr=2e-2)


@pytest.fixture(scope="module")
def trained_digits_cnn(digits_bundle):
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=8)
    return _train(model, digits_bundle.train, epochs=2, lr=1e-2).eval().requires_grad_(False)


def _buffers(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for m in batchnorm_layers(model) for b in (m.running_mean, m.running_var)]


def test_recalibration_restores_eval_accuracy_of_stale_statistics(stale_net, digits_bundle):
    model = copy.deepcopy(stale_net)
    val = make_loader(digits_bundle.val, 256, shuffle=False)
    stale, batch = evaluate(model, val, "cpu"), batch_statistics_accuracy(model, val, "cpu")
    before = _buffers(model)
    assert batch is not None and batch > stale + 0.2          # the statistics, not the weights, are wrong
    assert all(torch.equal(a, b) for a, b in zip(before, _buffers(model)))   # measuring left them alone

    model.train()   # the caller's modes come back: train mode here, dropout on again afterwards
    done = recalibrate_batchnorm(model, make_loader(digits_bundle.train, 64, shuffle=True), max_batches=8)
    assert done == Recalibration(layers=2, batches=8, samples=512)
    assert evaluate(model, val, "cpu") >= batch - 0.03 and evaluate(model, val, "cpu") > stale + 0.2
    assert [m.momentum for m in batchnorm_layers(model)] == [0.01, 0.01]
    assert all(m.training for m in model.modules())
    assert all(int(m.num_batches_tracked) == 8 for m in batchnorm_layers(model))


def test_dropout_stays_off_and_bad_batches_are_skipped(stale_net, digits_bundle):
    model = copy.deepcopy(stale_net).eval()
    model[1].momentum = None       # a layer that already averaged cumulatively keeps doing so
    seen: list[bool] = []
    model[8].register_forward_pre_hook(lambda m, args: seen.append(m.training))
    x, y = next(iter(make_loader(digits_bundle.train, 64, shuffle=False)))
    batches = [(x[:1], y[:1]), (x[:32], y[:32]), (x[32:], y[32:]), (x, y)]   # a one-sample batch is skipped
    done = recalibrate_batchnorm(model, batches, max_batches=2)
    assert done == Recalibration(layers=2, batches=2, samples=64)
    assert seen == [False, False]                                            # dropout off while recalibrating
    assert not any(m.training for m in model.modules()) and model[1].momentum is None
    once = _buffers(model)
    recalibrate_batchnorm(model, batches, max_batches=2)                     # no dropout noise: same statistics
    assert all(torch.allclose(a, b) for a, b in zip(once, _buffers(model)))


def test_nothing_usable_leaves_the_statistics_as_they_were(stale_net):
    model = copy.deepcopy(stale_net)
    before = _buffers(model)
    assert recalibrate_batchnorm(model, [(torch.randn(1, 1, 8, 8), torch.zeros(1))], max_batches=4) == \
        Recalibration(layers=2, batches=0, samples=0)
    assert all(torch.equal(a, b) for a, b in zip(before, _buffers(model)))

    def broken():
        yield torch.randn(4, 1, 8, 8), None
        raise OSError("unreadable image")
    with pytest.raises(OSError):
        recalibrate_batchnorm(model, broken(), max_batches=4)
    assert all(torch.equal(a, b) for a, b in zip(before, _buffers(model)))
    assert [m.momentum for m in batchnorm_layers(model)] == [0.01, 0.01]
    no_bn = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    assert recalibrate_batchnorm(no_bn, [(torch.randn(4, 1, 8, 8), None)], max_batches=4).layers == 0
    assert batch_statistics_accuracy(no_bn, [(torch.randn(4, 1, 8, 8), torch.zeros(4))], "cpu") is None


def _ctx(teacher: nn.Module, data, epochs: int = 1) -> TrialContext:
    return TrialContext(data=data.subset_train(0.3, 0), teacher=teacher, baseline_metrics={"accuracy": 0.9},
                        target=TargetSettings(max_time_s=0.02), epochs=epochs, seed=0)


def test_which_policies_recalibrate_is_declared():
    on = lambda **flat: BatchNormRecalibration in pipeline(Policy.from_flat(flat)).classes  # noqa: E731
    assert not on() and not on(**{"quantization.mode": "static_int8"})
    assert on(**{"pruning.method": "structured"}) and on(**{"pruning.method": "gradual"})
    assert on(**{"pruning.method": "weight"}) and on(**{"training.bn_recalibration_batches": 8})
    assert pipeline(Policy.from_flat({"training.bn_recalibration_batches": 8})).summary() == \
        ["BN recalibrated (8 batches)"]
    assert pipeline(Policy.from_flat({"pruning.method": "structured"})).summary() == ["structured l1 50%"]


def test_structured_pruning_recalibrates_after_the_shrink(trained_digits_cnn, digits_bundle):
    ctx = _ctx(trained_digits_cnn, digits_bundle, epochs=0)
    policy = Policy.from_flat({"pruning.method": "structured", "pruning.ratio": 0.5})
    plain = StructuredPruning(policy, ctx, pipeline(policy)).compress(copy.deepcopy(trained_digits_cnn))
    techniques = pipeline(policy).build(ctx)
    model = copy.deepcopy(trained_digits_cnn)
    for t in techniques:
        model = t.compress(model)
    assert [m.num_features for m in batchnorm_layers(model)] == [m.num_features for m in batchnorm_layers(plain)]
    assert not all(torch.allclose(a, b) for a, b in zip(_buffers(plain), _buffers(model)))
    val = make_loader(digits_bundle.val, 256, shuffle=False)
    assert evaluate(model, val, "cpu") >= evaluate(plain, val, "cpu")
    facts = techniques[-1].proof()["batchnorm"]["after_compress"]
    assert facts["layers"] == 5 and facts["batches"] == 6 and facts["samples"] == len(ctx.data.train)
    assert facts["val_accuracy_after"] == evaluate(model, val, "cpu") >= facts["val_accuracy_before"]


def test_gradual_pruning_recalibrates_before_each_epoch_is_measured(trained_digits_cnn, digits_bundle):
    result = run_trial(Policy.from_flat({"pruning.method": "gradual", "pruning.ratio": 0.5}),
                       _ctx(trained_digits_cnn, digits_bundle))
    facts = result.proof["batchnorm"]
    assert set(facts) == {"after_each_epoch"} and facts["after_each_epoch"]["epochs"] == 1
    assert facts["after_each_epoch"]["batches"] == 6
    # the shrink after fine-tuning is exact, and nothing recalibrates after it: the history is final
    assert result.history[-1].val_accuracy == result.metrics["accuracy"]


def test_the_knob_reaches_the_proof_and_changes_only_the_statistics(trained_digits_cnn, digits_bundle):
    ctx = _ctx(trained_digits_cnn, digits_bundle)
    off = run_trial(Policy(), ctx)
    on = run_trial(Policy.from_flat({"training.bn_recalibration_batches": 4}), ctx)
    assert "batchnorm" not in off.proof
    facts = on.proof["batchnorm"]
    assert set(facts) == {"after_finetune"}
    assert facts["after_finetune"]["layers"] == 5 and facts["after_finetune"]["batches"] == 4
    assert facts["after_finetune"]["samples"] == 4 * 64
    assert facts["after_finetune"]["val_accuracy_before"] == off.metrics["accuracy"]
    assert facts["after_finetune"]["val_accuracy_after"] == on.metrics["accuracy"]
    assert not all(torch.allclose(a, b) for a, b in zip(_buffers(off.model), _buffers(on.model)))
    weights = lambda m: [p for n, p in m.state_dict().items() if n.endswith("weight")]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(weights(off.model), weights(on.model)))


def test_the_knob_is_in_the_default_space_and_validated():
    space = load_space(REPO / "search_spaces" / "cnn.yaml")
    assert list(space.distributions()["training.bn_recalibration_batches"].choices) == [0, 8]
    with pytest.raises(ConfigError, match="training.bn_recalibration_batches"):
        load_space({"training": {"bn_recalibration_batches": {"choices": [0, -4]}}}, origin="space.yaml")
