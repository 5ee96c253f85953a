"""Quantization is real: int8 kernels present, about 4x smaller serialized, accurate."""

from __future__ import annotations

import copy
import dataclasses
import io

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autocompress.compress import pipeline
from autocompress.compress import quantization as Q
from autocompress.errors import TrialFailed
from autocompress.metrics.accuracy import evaluate
from autocompress.metrics.size import serialized_bytes, size_mb
from autocompress.spec.policy import Policy, QuantizationPolicy, TrainingPolicy
from autocompress.training.loop import FitPlan, fine_tune
from autocompress.trial.context import TargetSettings, TrialContext
from autocompress.trial.run import run_trial
from autocompress.zoo.data import DataBundle, make_loader
from autocompress.zoo.models import create_model, torchvision_model


def policy(mode: str, **knobs) -> Policy:
    return Policy(quantization=QuantizationPolicy(mode=mode, **knobs), training=TrainingPolicy(batch_size=32))


def build(policy: Policy, ctx: TrialContext) -> Q.Quantization:
    """The quantization technique of ``policy``, built for ``ctx``."""
    return Q.select(policy)(policy, ctx, pipeline(policy))


def context(data: DataBundle, teacher: nn.Module, **kw) -> TrialContext:
    kw.setdefault("epochs", 0)
    return TrialContext(data=data, teacher=teacher, baseline_metrics={"accuracy": 1.0},
                        target=TargetSettings(max_time_s=0.05), **kw)


@pytest.fixture(scope="module")
def trained_digits(digits_bundle):
    """A digits CNN trained to about 97% in a few seconds, and its validation accuracy."""
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(5):
        for x, y in make_loader(digits_bundle.train, 32, shuffle=True, seed=epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval().requires_grad_(False)
    acc = evaluate(model, make_loader(digits_bundle.val, 256, shuffle=False), "cpu")
    assert acc > 0.93
    return model, acc


def image_bundle(n: int = 64, shape=(3, 32, 32)) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataBundle("random", ds, ds, ds, 10, shape)


def test_static_int8_digits_is_int8_smaller_and_accurate(digits_bundle, trained_digits):
    model, fp32_acc = trained_digits
    result = run_trial(policy("static_int8"), context(digits_bundle, model))
    proof = result.proof["quantization"]
    assert proof["quantized_layers"]["int8 ConvReLU2d"] == 5
    assert proof["float_layers_left"] == 0
    assert proof["weight_dtypes"] == ["torch.qint8"]
    assert proof["calibration_samples"] == 8 * 32
    assert result.metrics["size_mb"] < 0.4 * size_mb(model)
    assert result.metrics["accuracy"] > fp32_acc - 0.03
    assert Q.quantized_layers(result.model)  # the model that was measured is the int8 one


def test_static_int8_resnet18_quarter_size_with_int8_kernels():
    torch.manual_seed(0)
    data = image_bundle()
    model = torchvision_model("resnet18", num_classes=10, in_channels=3).eval()
    ctx = context(data, model)
    tech = build(policy("static_int8", calibration_batches=2), ctx)
    int8 = tech.post_training(copy.deepcopy(model))
    proof = tech.proof()["quantization"]
    assert proof["quantized_layers"]["int8 Conv2d"] + proof["quantized_layers"]["int8 ConvReLU2d"] == 20
    assert proof["quantized_layers"]["int8 Linear"] == 1
    assert proof["float_layers_left"] == 0 and Q.float_layers(int8) == 0
    assert proof["weight_dtypes"] == Q.weight_dtypes(int8) == ["torch.qint8"]
    # every conv holds packed int8 weights (the classifier too: weight_dtypes), so int8 kernels run them
    convs = [m for m in int8.modules() if isinstance(m, torch.ao.nn.quantized.Conv2d)]
    assert len(convs) == 20 and all(m.weight().dtype == torch.qint8 for m in convs)
    # the serialized model: about a quarter of the fp32 bytes, and the proof records both sizes
    fp32_bytes, int8_bytes = len(serialized_bytes(model)), len(serialized_bytes(int8))
    assert int8_bytes < 0.35 * fp32_bytes
    assert proof["size_after_mb"] == pytest.approx(int8_bytes / 1e6, abs=1e-6)
    assert proof["size_before_mb"] == pytest.approx(fp32_bytes / 1e6, abs=1e-6)
    with torch.inference_mode():
        out = int8(data.train.tensors[0][:4])
    assert out.shape == (4, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_dynamic_int8_mlp_quantizes_every_linear(digits_bundle):
    model = create_model("mlp", num_classes=10, in_channels=1, input_shape=(1, 8, 8))
    result = run_trial(policy("dynamic_int8"), context(digits_bundle, model))
    proof = result.proof["quantization"]
    assert proof["quantized_layers"] == {"dynamic int8 Linear": 3}
    assert proof["float_layers_left"] == 0
    assert result.metrics["size_mb"] < 0.35 * size_mb(model)


def test_dynamic_int8_without_linear_layers_fails_with_reason(digits_bundle):
    model = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
    with pytest.raises(TrialFailed, match="dynamic int8 changes nothing"):
        run_trial(policy("dynamic_int8"), context(digits_bundle, model))


def test_qat_trains_with_fake_quant_then_converts_to_int8(digits_ctx):
    ctx = digits_ctx
    tech = build(policy("qat_int8"), ctx)
    model = tech.compress(copy.deepcopy(ctx.teacher).requires_grad_(True))
    prepared = tech.before_finetune(model)
    fake = [m for m in prepared.modules() if isinstance(m, torch.ao.quantization.FakeQuantizeBase)]
    assert fake and all(float(m.scale.flatten()[0]) == 1.0 for m in fake)  # untouched before training
    fit = fine_tune(prepared, ctx.data.train, ctx.data.val, policy("qat_int8"),
                    FitPlan(epochs=1, device=ctx.device, seed=0, techniques=(tech,)))
    assert fit.steps > 0
    assert any(float(m.scale.flatten()[0]) != 1.0 for m in fake)  # observers saw training data
    prepared = tech.after_finetune(prepared).eval()
    int8 = tech.post_training(prepared)
    assert Q.quantized_layers(int8)["int8 ConvReLU2d"] == 5
    assert not any(isinstance(m, torch.ao.quantization.FakeQuantizeBase) for m in int8.modules())
    assert "calibration_samples" not in tech.proof()["quantization"]  # QAT observers were used
    evaluate(int8, make_loader(ctx.data.val, 256, shuffle=False), "cpu")


def test_qat_run_trial_end_to_end(digits_ctx):
    result = run_trial(policy("qat_int8"), digits_ctx)
    assert result.epochs_run == 1
    assert result.proof["quantization"]["quantized_layers"]["int8 ConvReLU2d"] == 5
    assert result.metrics["flops"] > 0  # counted on the fake-quant (float) model


@pytest.mark.parametrize("mode,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_casts_weights_and_inputs(digits_bundle, trained_digits, mode, dtype):
    model, fp32_acc = trained_digits
    result = run_trial(policy(mode), context(digits_bundle, model))
    assert isinstance(result.model, Q.CastInputs)
    assert {p.dtype for p in result.model.parameters()} == {dtype}
    assert result.proof["quantization"]["weight_dtypes"] == [str(dtype)]
    assert result.metrics["accuracy"] > fp32_acc - 0.02
    assert result.metrics["size_mb"] < 0.6 * size_mb(model)
    out = result.model(digits_bundle.val.tensors[0][:4])
    assert out.dtype == torch.float32


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.sum() > 0:  # data-dependent control flow: FX cannot trace it
            x = x * 2
        return self.fc(x)


@pytest.mark.parametrize("mode", ["static_int8", "qat_int8"])
def test_untraceable_model_fails_the_trial_with_the_reason(digits_bundle, mode):
    with pytest.raises(TrialFailed, match="FX .*cannot"):
        run_trial(policy(mode), context(digits_bundle, Untraceable(), epochs=1))


def test_int8_on_a_cuda_target_fails_before_training(digits_ctx):
    ctx = dataclasses.replace(digits_ctx, target=TargetSettings(device="cuda"))
    with pytest.raises(TrialFailed, match=r"int8 \(static\) kernels run on cpu only; the target device is cuda"):
        run_trial(policy("static_int8"), ctx)


def test_skipped_conversion_is_caught(digits_ctx, monkeypatch):
    """A trial that claims int8 but keeps fp32 kernels must not be recorded as int8."""
    from autocompress.compress.quantization import technique

    model = copy.deepcopy(digits_ctx.teacher)
    with pytest.raises(TrialFailed, match="no int8 layer"):
        Q.check_quantized(model, "static_int8")
    monkeypatch.setattr(technique, "convert", lambda prepared: prepared)  # "forget" convert_fx
    tech = build(policy("static_int8", calibration_batches=1), digits_ctx)
    with pytest.raises(TrialFailed, match="static_int8 claimed but .* no int8 layer"):
        tech.post_training(model)


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")  # torch.load of quantized tensors
@pytest.mark.parametrize("mode", ["static_int8", "qat_int8", "dynamic_int8", "fp16"])
def test_saved_state_dict_loads_into_skeleton_with_identical_outputs(digits_bundle, trained_digits, mode):
    model, _ = trained_digits
    x = digits_bundle.val.tensors[0][:16]
    ctx = context(digits_bundle, model)
    tech = build(policy(mode, calibration_batches=2), ctx)
    float_model = copy.deepcopy(model)
    if mode == "qat_int8":
        float_model = tech.before_finetune(float_model.requires_grad_(True))
        with torch.no_grad():
            float_model(digits_bundle.train.tensors[0][:64])  # observers see data, like training
        float_model = tech.after_finetune(float_model)
    quantized = tech.post_training(float_model)
    buf = io.BytesIO()
    torch.save(quantized.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    skeleton = Q.quantized_skeleton(model, mode, x[:2])
    skeleton.load_state_dict(state)
    with torch.inference_mode():
        assert torch.equal(skeleton(x), quantized(x))
    if mode in Q.INT8_MODES:
        assert Q.quantized_layers(skeleton) == Q.quantized_layers(quantized)


@pytest.mark.parametrize("per_channel,qscheme", [(True, torch.per_channel_affine),
                                                 (False, torch.per_tensor_affine)])
def test_per_channel_knob_sets_the_weight_scheme(digits_ctx, per_channel, qscheme):
    tech = build(policy("static_int8", per_channel=per_channel, calibration_batches=1), digits_ctx)
    int8 = tech.post_training(copy.deepcopy(digits_ctx.teacher))
    conv = next(m for m in int8.modules() if isinstance(m, torch.ao.nn.quantized.Conv2d))
    assert conv.weight().qscheme() == qscheme
