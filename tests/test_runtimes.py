"""Runtimes: eager, TorchScript, torch.compile, ONNX Runtime agree; a conversion that changes
what the model computes fails the trial, rounding differences do not; int8 goes where it runs;
every deployment carries the bytes that ship; peak inference memory is recorded."""

from __future__ import annotations

import contextlib
import copy

import onnx
import pytest
import torch

from autocompress.deploy.agreement import MIN_KAPPA, check_predictions, cohen_kappa, compare_predictions
from autocompress.deploy.runtimes import OnnxRuntimeModule, deploy
from autocompress.errors import TrialFailed
from autocompress.metrics import METRICS
from autocompress.metrics.accuracy import predict
from autocompress.metrics.memory import track_peak_memory
from autocompress.metrics.registry import why_unavailable
from autocompress.spec.policy import Policy, QuantizationPolicy, RuntimePolicy
from autocompress.trial import measure
from autocompress.metrics.size import serialized_bytes
from autocompress.trial.measure import finish
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

    def spy(reference, candidate, labels=None):
        calls.append((reference.clone(), candidate.clone(), labels))
        return check_predictions(reference, candidate, labels)

    monkeypatch.setattr(measure, "check_predictions", spy)
    return calls


def _assert_recorded_agreement(rt: dict, calls: list, model, ctx) -> None:
    """The runtime proof holds what ``check_predictions`` computes on the predictions it was
    given: the eager model's and the runtime's logits on the whole validation split."""
    assert len(calls) == 1
    reference, candidate, labels = calls[0]
    assert rt["samples"] == len(ctx.data.val) == reference.shape[0]
    assert torch.equal(reference, predict(model, make_loader(ctx.data.val, 256, shuffle=False), "cpu"))
    assert {k: rt[k] for k in ("top1_agreement", "kappa", "max_abs_diff", "samples", "eager_accuracy",
                               "artifact_accuracy")} == compare_predictions(reference, candidate, labels).as_dict()
    assert torch.equal(labels, torch.cat([y for _, y in make_loader(ctx.data.val, 256, shuffle=False)]))
    assert rt["top1_agreement"] == (reference.argmax(1) == candidate.argmax(1)).float().mean().item()
    assert rt["max_abs_diff"] == (reference - candidate).abs().max().item()


@pytest.mark.parametrize("backend", ["eager", "torchscript", "onnxruntime"])
def test_runtimes_give_the_eager_predictions(cnn, images, backend):
    shipped = deploy(cnn, backend, images[:2])
    agree = compare_predictions(_logits(cnn, images), _logits(shipped.module, images))  # another batch size
    assert agree.top1_agreement == 1.0 and agree.kappa == 1.0
    assert agree.max_abs_diff < 1e-4
    assert shipped.file_name == {"eager": "model.pt", "torchscript": "model.torchscript.pt",
                                 "onnxruntime": "model.onnx"}[backend]
    if backend == "eager":   # the eager model ships as its state dict: those very bytes
        assert shipped.module is cnn and shipped.artifact == serialized_bytes(cnn)
    assert shipped.size_mb == len(shipped.artifact) / 1e6


def test_the_module_measured_is_loaded_from_the_bytes_that_ship(cnn, images):
    import io

    shipped = deploy(cnn, "torchscript", images[:2])
    loaded = torch.jit.load(io.BytesIO(shipped.artifact))
    assert torch.equal(_logits(loaded, images), _logits(shipped.module, images))
    ort = deploy(cnn, "onnxruntime", images[:2], threads=2)
    assert ort.threads == 2 and ort.module.session.get_session_options().intra_op_num_threads == 2


@pytest.fixture(scope="module")
def trained_ctx(digits_bundle):
    """A context whose teacher is trained (a few seconds): its predictions mean something."""
    from autocompress.spec.policy import TrainingPolicy
    from autocompress.training.loop import FitPlan, fine_tune
    from autocompress.trial.context import TargetSettings, TrialContext

    torch.manual_seed(0)
    teacher = create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=8)
    fine_tune(teacher, digits_bundle.train, digits_bundle.val, Policy(training=TrainingPolicy(lr=0.01)),
              FitPlan(epochs=4, device=torch.device("cpu"), seed=0))
    return TrialContext(data=digits_bundle, teacher=teacher.eval().requires_grad_(False),
                        baseline_metrics={"accuracy": 0.9}, target=TargetSettings(max_time_s=0.05), epochs=1)


def test_a_runtime_that_changes_what_the_model_computes_fails_the_trial(trained_ctx, monkeypatch):
    original = OnnxRuntimeModule.forward
    monkeypatch.setattr(OnnxRuntimeModule, "forward", lambda self, x: original(self, x) + 20 * torch.randn(x.shape[0], 10))
    plan = TrialPlan(Policy(runtime=RuntimePolicy(backend="onnxruntime")))
    with pytest.raises(TrialFailed, match=r"little more than chance .* validation accuracy is 0\.[0-3]\d* against") as err:
        finish(copy.deepcopy(trained_ctx.teacher), [], plan, trained_ctx)
    assert err.value.known_as is None   # these weights' predictions: says nothing of other trials


def test_rounding_differences_are_recorded_not_failed(trained_ctx):
    model, ctx = copy.deepcopy(trained_ctx.teacher), trained_ctx
    val = make_loader(ctx.data.val, 512, shuffle=False)
    ref, labels = predict(model, val, "cpu"), torch.cat([y for _, y in val])
    torch.manual_seed(0)
    rounded = ref + 0.05 * ref.abs().max() * torch.randn_like(ref)   # moves logits a little, flips near-ties
    agree = check_predictions(ref, rounded, labels)
    assert agree.top1_agreement < 1.0 and agree.kappa >= MIN_KAPPA
    assert agree.eager_accuracy == (ref.argmax(1) == labels).float().mean().item() > 0.8
    assert check_predictions(ref, ref.clone(), labels).max_abs_diff == 0.0
    with pytest.raises(TrialFailed, match="little more than chance"):
        check_predictions(ref, torch.randn_like(ref), labels)      # unrelated predictions
    with pytest.raises(TrialFailed, match="little more than chance"):
        check_predictions(ref, torch.zeros_like(ref) + torch.tensor([1.0] + [0.0] * 9), labels)   # one class only
    with pytest.raises(TrialFailed, match="non-finite"):
        check_predictions(ref, ref * float("nan"), labels)
    with pytest.raises(TrialFailed, match="shape"):
        check_predictions(ref, ref[:, :5], labels)


def test_a_barely_trained_model_is_not_failed_for_flipped_near_ties(digits_ctx):
    # the untrained teacher's predictions are near chance: flipping many of them costs no accuracy
    val = make_loader(digits_ctx.data.val, 512, shuffle=False)
    ref, labels = predict(digits_ctx.teacher, val, "cpu"), torch.cat([y for _, y in val])
    flipped = torch.randn_like(ref)
    agree = check_predictions(ref, flipped, labels)
    assert agree.kappa < MIN_KAPPA and agree.fault() is None
    assert abs(agree.eager_accuracy - agree.artifact_accuracy) < 0.1


def test_cohen_kappa():
    a = torch.tensor([0, 1, 2, 3] * 25)
    assert cohen_kappa(a, a, 4) == 1.0
    assert cohen_kappa(a, a.roll(1), 4) == pytest.approx(-1 / 3)   # never agreeing: below chance
    same = torch.zeros(10, dtype=torch.long)
    assert cohen_kappa(same, same, 3) == 1.0 and cohen_kappa(same, same + 1, 3) == 0.0


@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_int8_runs_in_torchscript_and_onnxruntime(cnn, int8_cnn, images, backend):
    shipped = deploy(int8_cnn, backend, images[:2])
    eager, converted = _logits(int8_cnn, images), _logits(shipped.module, images)
    agree = check_predictions(eager, converted)
    assert agree.samples == len(images) and agree.kappa >= MIN_KAPPA
    assert agree.top1_agreement == (eager.argmax(1) == converted.argmax(1)).float().mean().item()
    assert agree.max_abs_diff == (eager - converted).abs().max().item()
    # the artifact holds int8 operators and int8 weights: about a quarter of the fp32 one
    if backend == "torchscript":
        kinds = {n.kind() for n in shipped.module.graph.nodes()}
        assert "quantized::conv2d_relu" in kinds and "quantized::linear" in kinds
    else:
        ops = {n.op_type for n in onnx.load_model_from_string(shipped.artifact).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert shipped.size_mb < 0.35 * deploy(cnn, backend, images[:2]).size_mb


def test_int8_fails_in_compile_and_dynamic_int8_in_onnxruntime_with_a_reason(cnn, int8_cnn, images):
    with pytest.raises(TrialFailed, match="runtime compile does not run int8 torch.ao models: .*one graph"):
        deploy(int8_cnn, "compile", images[:2])
    from autocompress.compress.quantization.torch_ao import quantize_dynamic

    dynamic = quantize_dynamic(copy.deepcopy(cnn), per_channel=True)
    with pytest.raises(TrialFailed, match="runtime onnxruntime does not run int8 torch.ao models: .*linear_dynamic"):
        deploy(dynamic, "onnxruntime", images[:2])


def test_unknown_backend_is_a_value_error(cnn, images):
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        deploy(cnn, "tensorrt", images[:2])


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
    assert rt["backend"] == "onnxruntime" and rt["artifact"] == "onnx model" and rt["file"] == "model.onnx"
    _assert_recorded_agreement(rt, recorded_checks, result.model, digits_ctx)
    assert result.metrics["top1_agreement"] == rt["top1_agreement"]
    assert result.metrics["size_mb"] == pytest.approx(rt["artifact_size_mb"], abs=1e-6) == result.deployment.size_mb
    assert rt["artifact_sha256"] == result.deployment.sha256 and rt["threads"] == result.measured_on.threads == 1
    # the recorded peak is the one tracked around the measurement, and it saw the allocation
    assert result.metrics["peak_memory_mb"] == tracked[0]
    if why_unavailable("peak_memory_mb", "cpu") is None:
        assert isinstance(tracked[0], float) and tracked[0] > 0.8 * BIG_MB
    else:
        assert tracked[0] is None
    assert "deploy_s" in result.timings
    assert "onnxruntime" in describe(policy)


def test_int8_trial_in_torchscript(digits_ctx, recorded_checks):
    policy = Policy(quantization=QuantizationPolicy(mode="static_int8"),
                    runtime=RuntimePolicy(backend="torchscript"))
    result = run_trial(policy, digits_ctx)
    rt = result.proof["runtime"]
    assert rt["artifact"] == "torchscript archive"
    assert result.metrics["size_mb"] == pytest.approx(rt["artifact_size_mb"], abs=1e-6)
    # the reference predictions are the int8 eager model's, and the record is their comparison
    assert result.proof["quantization"]["quantized_layers"]["int8 ConvReLU2d"] == 5
    _assert_recorded_agreement(rt, recorded_checks, result.model, digits_ctx)


def test_eager_trial_keeps_state_dict_size_and_records_peak_memory(digits_ctx):
    result = run_trial(Policy(), digits_ctx, keep_model=True)
    rt = result.proof["runtime"]
    assert (rt["backend"], rt["artifact"], rt["file"], rt["top1_agreement"]) == ("eager", "state dict", "model.pt", 1.0)
    assert result.deployment.artifact == serialized_bytes(result.model)
    assert result.metrics["size_mb"] == len(result.deployment.artifact) / 1e6
    assert "peak_memory_mb" in result.metrics and "peak_memory_mb" in METRICS


def test_threads_null_gives_every_runtime_every_usable_core(digits_ctx):
    from dataclasses import replace

    from autocompress.devices import usable_cpus

    ctx = replace(digits_ctx, target=replace(digits_ctx.target, threads=None))
    assert ctx.target.resolved_threads == usable_cpus()
    result = run_trial(Policy(runtime=RuntimePolicy(backend="onnxruntime")), ctx)
    session = result.deployment.module.session
    assert session.get_session_options().intra_op_num_threads == usable_cpus() == result.measured_on.threads


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
    shipped = deploy(small, "compile", images[:64])
    agree = check_predictions(_logits(small, images[:64]), _logits(shipped.module, images[:64]))
    assert agree.top1_agreement == 1.0 and shipped.artifact == serialized_bytes(small)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("backend", ["torchscript", "onnxruntime"])
def test_cuda_runtimes_and_peak_memory(cnn, images, backend):
    import onnxruntime

    if backend == "onnxruntime" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(TrialFailed, match="CUDAExecutionProvider"):
            deploy(copy.deepcopy(cnn), backend, images[:2], device="cuda")
        return
    model = copy.deepcopy(cnn).cuda()
    rt = deploy(model, backend, images[:2], device="cuda")
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
