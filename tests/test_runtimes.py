"""Runtimes: eager, TorchScript, torch.compile, ONNX Runtime agree; a conversion that changes
predictions fails the trial; int8 goes where it runs; peak inference memory is recorded."""

from __future__ import annotations

import contextlib
import copy

import onnx
import pytest
import torch

from autocompress.deploy.runtimes import OnnxRuntimeModule, build_runtime, check_predictions, to_runtime
from autocompress.errors import TrialFailed
from autocompress.metrics import METRICS
from autocompress.metrics.accuracy import predict
from autocompress.metrics.memory import track_peak_memory
from autocompress.metrics.registry import why_unavailable
from autocompress.spec.policy import Policy, QuantizationPolicy, RuntimePolicy
from autocompress.trial import measure
from autocompress.trial.measure import deploy_runtime
from autocompress.trial.plan import TrialPlan, describe
from autocompress.trial.run import run_trial
from autocompress.zoo.data import make_loader
from autocompress.zoo.models import create_model

BIG_MB = 100   # a tensor this large, allocated inside a tracked block, must show in its peak

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
    from autocompress.compress.quantization.torch_ao import convert, prepare_static

    prepared = prepare_static(copy.deepcopy(cnn), images[:2], per_channel=True)
    with torch.no_grad():
        prepared(images[:128])
    return convert(prepared)


def _logits(model, x):
    with torch.inference_mode():
        return model(x)


def _allocate_big() -> None:
    block = torch.ones(BIG_MB * 250_000)  # float32: BIG_MB MB, every page written
    del block


@pytest.fixture
def recorded_checks(monkeypatch):
    """The (reference, candidate) logits of every ``check_predictions`` call ``run_trial`` makes."""
    calls = []

    def spy(reference, candidate, **kw):
        calls.append((reference.clone(), candidate.clone()))
        return check_predictions(reference, candidate, **kw)

    monkeypatch.setattr(measure, "check_predictions", spy)
    return calls


def _assert_recorded_agreement(rt: dict, calls: list, model, ctx) -> None:
    """The runtime proof holds what ``check_predictions`` computes on the predictions it was
    given: the eager model's and the runtime's logits on the whole validation split."""
    assert len(calls) == 1
    reference, candidate = calls[0]
    assert rt["samples"] == len(ctx.data.val) == reference.shape[0]
    assert torch.equal(reference, predict(model, make_loader(ctx.data.val, 256, shuffle=False), "cpu"))
    assert {k: rt[k] for k in ("top1_agreement", "max_abs_diff", "tolerance", "samples")} == \
        check_predictions(reference, candidate).as_dict()
    assert rt["top1_agreement"] == (reference.argmax(1) == candidate.argmax(1)).float().mean().item()
    assert rt["max_abs_diff"] == (reference - candidate).abs().max().item()


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
    plan = TrialPlan(Policy(runtime=RuntimePolicy(backend="onnxruntime")))
    with pytest.raises(TrialFailed, match="runtime changes predictions: top-1 agreement") as err:
        deploy_runtime(digits_ctx.teacher, plan, digits_ctx)
    assert err.value.known_as is None   # these weights' predictions: says nothing of other trials


def test_changed_logits_fail_even_when_the_top1_holds():
    ref = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    assert check_predictions(ref, ref.clone()).max_abs_diff == 0.0
    with pytest.raises(TrialFailed, match="changes logits"):
        check_predictions(ref, ref + torch.tensor([0.0, 0.5, 0.0]))
    with pytest.raises(TrialFailed, match="non-finite"):
        check_predictions(ref, ref * float("nan"))


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_int8_runs_in_torchscript_and_onnxruntime(cnn, int8_cnn, images, backend):
    rt = build_runtime(int8_cnn, backend, images[:2])
    eager, converted = _logits(int8_cnn, images), _logits(rt.module, images)
    agree = check_predictions(eager, converted)
    assert agree.samples == len(images)
    assert agree.top1_agreement == (eager.argmax(1) == converted.argmax(1)).float().mean().item()
    assert agree.max_abs_diff == (eager - converted).abs().max().item() <= agree.tolerance
    # the artifact holds int8 operators and int8 weights: about a quarter of the fp32 one
    if backend == "torchscript":
        kinds = {n.kind() for n in rt.module.graph.nodes()}
        assert "quantized::conv2d_relu" in kinds and "quantized::linear" in kinds
    else:
        ops = {n.op_type for n in onnx.load_model_from_string(rt.artifact).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert rt.size_mb < 0.35 * build_runtime(cnn, backend, images[:2]).size_mb


def test_int8_fails_in_compile_and_dynamic_int8_in_onnxruntime_with_a_reason(cnn, int8_cnn, images):
    with pytest.raises(TrialFailed, match="runtime compile does not run int8 torch.ao models: .*one graph"):
        build_runtime(int8_cnn, "compile", images[:2])
    from autocompress.compress.quantization.torch_ao import quantize_dynamic

    dynamic = quantize_dynamic(copy.deepcopy(cnn), per_channel=True)
    with pytest.raises(TrialFailed, match="runtime onnxruntime does not run int8 torch.ao models: .*linear_dynamic"):
        build_runtime(dynamic, "onnxruntime", images[:2])


def test_unknown_backend_is_a_value_error(cnn, images):
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        to_runtime(cnn, "tensorrt", images[:2])


def test_run_trial_in_onnxruntime_records_the_runtime(digits_ctx, recorded_checks, monkeypatch):
    tracked = []

    @contextlib.contextmanager
    def tracking(device):   # the latency run, plus a large allocation inside the same block
        with track_peak_memory(device) as peak:
            yield peak
            _allocate_big()
        tracked.append(peak.mb)

    monkeypatch.setattr(measure, "track_peak_memory", tracking)
    policy = Policy(runtime=RuntimePolicy(backend="onnxruntime"))
    result = run_trial(policy, digits_ctx)
    rt = result.proof["runtime"]
    assert rt["backend"] == "onnxruntime" and rt["size_source"] == "onnx model"
    _assert_recorded_agreement(rt, recorded_checks, result.model, digits_ctx)
    assert rt["max_abs_diff"] <= rt["tolerance"]
    assert result.metrics["size_mb"] == pytest.approx(rt["artifact_size_mb"], abs=1e-6)
    # the recorded peak is the one tracked around the measurement, and it saw the allocation
    assert result.metrics["peak_memory_mb"] == tracked[0]
    if why_unavailable("peak_memory_mb", "cpu") is None:
        assert isinstance(tracked[0], float) and tracked[0] > 0.8 * BIG_MB
    else:
        assert tracked[0] is None
    assert "runtime_s" in result.timings
    assert "onnxruntime" in describe(policy)


def test_int8_trial_in_torchscript(digits_ctx, recorded_checks):
    policy = Policy(quantization=QuantizationPolicy(mode="static_int8"),
                    runtime=RuntimePolicy(backend="torchscript"))
    result = run_trial(policy, digits_ctx)
    rt = result.proof["runtime"]
    assert rt["size_source"] == "torchscript archive"
    assert result.metrics["size_mb"] == pytest.approx(rt["artifact_size_mb"], abs=1e-6)
    # the reference predictions are the int8 eager model's, and the record is their comparison
    assert result.proof["quantization"]["quantized_layers"]["int8 ConvReLU2d"] == 5
    _assert_recorded_agreement(rt, recorded_checks, result.model, digits_ctx)


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
    assert describe(Policy()) == "no compression"


def test_peak_memory_sees_a_cpu_allocation():
    with track_peak_memory("cpu") as peak:
        _allocate_big()
    why = why_unavailable("peak_memory_mb", "cpu")
    if why is None:
        assert isinstance(peak.mb, float) and peak.mb > 0.8 * BIG_MB
    else:   # this machine cannot reset the peak RSS: no number, and the registry says why
        assert peak.mb is None and "clear_refs" in why


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
    reference = _logits(model, x)
    agree = check_predictions(reference, out)
    assert agree.samples == len(images)
    assert agree.top1_agreement == (reference.cpu().argmax(1) == out.cpu().argmax(1)).float().mean().item()
    # CUDA counts every live tensor: at least the input batch and the logits made inside the block
    live = x.numel() * x.element_size() + out.numel() * out.element_size()
    assert peak.mb is not None and peak.mb >= live / 1e6
