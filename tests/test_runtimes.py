"""Runtimes: eager, TorchScript, torch.compile, ONNX Runtime agree; a conversion that changes
predictions fails the trial; int8 goes where it runs; peak inference memory is recorded."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from autocompress.errors import TrialFailed
from autocompress.metrics import METRICS
from autocompress.metrics.memory import track_peak_memory
from autocompress.spec.policy import Policy, QuantizationPolicy, RuntimePolicy
from autocompress.deploy.runtimes import OnnxRuntimeModule, build_runtime, check_predictions, to_runtime
from autocompress.trial.run import deploy_runtime, run_trial
from autocompress.zoo.models import create_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8)).eval()


@pytest.fixture(scope="module")
def images(digits_bundle):
    return torch.stack([digits_bundle.val[i][0] for i in range(len(digits_bundle.val))])


@pytest.fixture(scope="module")
def int8_cnn(cnn, images):
    from autocompress.compress.quantization import convert, prepare_static

    prepared = prepare_static(copy.deepcopy(cnn), images[:2], per_channel=True)
    with torch.no_grad():
        prepared(images[:128])
    return convert(prepared)


def _logits(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize("backend", ["eager", "torchscript", "onnxruntime"])
def test_runtimes_give_the_eager_predictions(cnn, images, backend):
    rt = build_runtime(cnn, backend, images[:2])
    agree = check_predictions(_logits(cnn, images), _logits(rt.module, images))  # another batch size
    assert agree.top1_agreement == 1.0
    assert agree.max_abs_diff < 1e-4
    assert (rt.artifact is None) == (backend == "eager")
    if backend == "eager":
        assert to_runtime(cnn, backend, images[:2]) is cnn


def test_a_runtime_that_changes_predictions_fails_the_trial(digits_ctx, monkeypatch):
    original = OnnxRuntimeModule.forward
    monkeypatch.setattr(OnnxRuntimeModule, "forward", lambda self, x: original(self, x) + 5 * torch.randn(x.shape[0], 10))
    with pytest.raises(TrialFailed, match="runtime changes predictions: top-1 agreement") as err:
        deploy_runtime(digits_ctx.teacher, Policy(runtime=RuntimePolicy(backend="onnxruntime")), digits_ctx)
    assert err.value.known_as is None   # these weights' predictions: says nothing of other trials


def test_changed_logits_fail_even_when_the_top1_holds():
    ref = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    assert check_predictions(ref, ref.clone()).max_abs_diff == 0.0
    with pytest.raises(TrialFailed, match="changes logits"):
        check_predictions(ref, ref + torch.tensor([0.0, 0.5, 0.0]))
    with pytest.raises(TrialFailed, match="non-finite"):
        check_predictions(ref, ref * float("nan"))


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_int8_runs_in_torchscript_and_onnxruntime(int8_cnn, images, backend):
    rt = build_runtime(int8_cnn, backend, images[:2])
    agree = check_predictions(_logits(int8_cnn, images), _logits(rt.module, images))
    assert agree.top1_agreement >= 0.995
    assert rt.size_mb is not None and rt.size_mb > 0


def test_int8_fails_in_compile_and_dynamic_int8_in_onnxruntime_with_a_reason(cnn, int8_cnn, images):
    with pytest.raises(TrialFailed, match="runtime compile does not run int8 torch.ao models: .*one graph"):
        build_runtime(int8_cnn, "compile", images[:2])
    from autocompress.compress.quantization import quantize_dynamic

    dynamic = quantize_dynamic(copy.deepcopy(cnn), per_channel=True)
    with pytest.raises(TrialFailed, match="runtime onnxruntime does not run int8 torch.ao models: .*linear_dynamic"):
        build_runtime(dynamic, "onnxruntime", images[:2])


def test_unknown_backend_is_a_value_error(cnn, images):
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        to_runtime(cnn, "tensorrt", images[:2])


def test_run_trial_in_onnxruntime_records_the_runtime(digits_ctx):
    policy = Policy(runtime=RuntimePolicy(backend="onnxruntime"))
    result = run_trial(policy, digits_ctx, keep_model=False)
    rt = result.proof["runtime"]
    assert rt["backend"] == "onnxruntime" and rt["size_source"] == "onnx model"
    assert rt["top1_agreement"] >= 0.995 and rt["max_abs_diff"] <= rt["tolerance"]
    assert rt["samples"] == len(digits_ctx.data.val)
    assert result.metrics["size_mb"] == pytest.approx(rt["artifact_size_mb"], abs=1e-6)
    assert result.metrics["peak_memory_mb"] is not None and result.metrics["peak_memory_mb"] >= 0
    assert "runtime_s" in result.timings
    assert "onnxruntime" in policy.describe()


def test_int8_trial_in_torchscript(digits_ctx):
    policy = Policy(quantization=QuantizationPolicy(mode="static_int8"),
                    runtime=RuntimePolicy(backend="torchscript"))
    result = run_trial(policy, digits_ctx, keep_model=False)
    assert result.proof["runtime"]["size_source"] == "torchscript archive"
    assert result.proof["runtime"]["top1_agreement"] >= 0.995


def test_eager_trial_keeps_state_dict_size_and_records_peak_memory(digits_ctx):
    result = run_trial(Policy(), digits_ctx, keep_model=False)
    assert result.proof["runtime"] == {"backend": "eager", "artifact": "none", "artifact_size_mb": None,
                                       "build_s": 0.0, "size_source": "state dict"}
    assert "peak_memory_mb" in result.metrics and "peak_memory_mb" in METRICS


def test_runtime_knob_round_trips():
    policy = Policy(runtime=RuntimePolicy(backend="torchscript"))
    assert policy.to_flat()["runtime.backend"] == "torchscript"
    assert Policy.from_flat(policy.to_flat()) == policy
    assert Policy.from_yaml(policy.to_yaml()) == policy
    assert Policy().describe() == "no compression"


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS is measured on Linux only")
def test_peak_memory_sees_a_cpu_allocation():
    with track_peak_memory("cpu") as peak:
        block = torch.ones(25_000_000)  # 100 MB
        del block
    assert peak.mb is not None and peak.mb > 80


@pytest.mark.slow
def test_compile_gives_the_eager_predictions(images):
    torch.manual_seed(0)
    small = create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=8).eval()
    rt = build_runtime(small, "compile", images[:64])
    agree = check_predictions(_logits(small, images[:64]), _logits(rt.module, images[:64]))
    assert agree.top1_agreement == 1.0 and rt.artifact is None


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_cuda_runtimes_and_peak_memory(cnn, images, backend):
    import onnxruntime

    if backend == "onnxruntime" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(TrialFailed, match="CUDAExecutionProvider"):
            build_runtime(copy.deepcopy(cnn), backend, images[:2], device="cuda")
        return
    model = copy.deepcopy(cnn).cuda()
    rt = build_runtime(model, backend, images[:2], device="cuda")
    x = images.cuda()
    with track_peak_memory("cuda") as peak:
        out = _logits(rt.module, x)
    assert out.device.type == "cuda"
    assert check_predictions(_logits(model, x), out).top1_agreement >= 0.995
    assert peak.mb is not None and peak.mb > 0
