"""torchao beside torch.ao: each mode gives its tensor subclass (or int8 graph), a smaller file,
predictions close to fp32, an export that reloads; what a mode cannot touch or a device cannot
run is said, before training."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from autocompress.compress.quantization import number_format
from autocompress.compress.quantization.torchao_modes import Exported, quantize_linear, static_pt2e
from autocompress.deploy.artifacts import load_exported, save_trial_model
from autocompress.errors import TrialFailed
from autocompress.metrics.accuracy import evaluate
from autocompress.metrics.size import serialized_bytes
from autocompress.spec.config import spec_from_dict
from autocompress.spec.policy import Policy
from autocompress.trial.context import TargetSettings, TrialContext
from autocompress.trial.plan import TrialPlan
from autocompress.trial.run import run_trial
from autocompress.zoo.data import make_loader
from autocompress.zoo.models import create_model

from conftest import tiny_study

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# (mode, tensor subclass of the weights, the smallest fp32/quantized size ratio of the weights)
MODES = [("int8_weight_only", "Int8Tensor", 3.0), ("int8_dynamic_activation", "Int8Tensor", 3.0),
         ("fp8_weight_only", "Float8Tensor", 3.0)]
# largest |logit| difference against fp32, relative to the largest |logit|: 8-bit weights round
# each to within half a step of 1/127 (int8) or 2^-3 relative (fp8 e4m3) of its row's range
TOLERANCE = {"int8_weight_only": 0.02, "int8_dynamic_activation": 0.05, "fp8_weight_only": 0.1}


def wide_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10)).eval()


@pytest.mark.parametrize("mode, subclass, ratio", MODES)
def test_each_mode_has_its_subclass_a_smaller_file_and_close_predictions(mode, subclass, ratio):
    fp32 = wide_mlp()
    x = torch.randn(64, 1, 8, 8)
    q, proof = quantize_linear(copy.deepcopy(fp32), mode)
    kinds = {n: type(m.weight).__name__ for n, m in q.named_modules() if isinstance(m, nn.Linear)}
    assert kinds == {"1": subclass, "3": subclass, "5": subclass} == proof["quantized_layers"]
    # the file: the big weights shrink by about 4x (a mode within 10% of fp32 would fail here)
    assert len(serialized_bytes(fp32)) / len(serialized_bytes(q)) > ratio
    with torch.no_grad():
        ref, out = fp32(x), q(x)
    assert float((out - ref).abs().max()) <= TOLERANCE[mode] * float(ref.abs().max())
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


def test_a_convolutional_model_lists_what_torchao_skips_and_nothing_changed_fails():
    torch.manual_seed(0)
    cnn = create_model("digits_cnn", num_classes=10, in_channels=1, input_shape=(1, 8, 8), width=8).eval()
    _, proof = quantize_linear(copy.deepcopy(cnn), "int8_weight_only")
    assert proof["quantized_layers"] == {"19": "Int8Tensor", "21": "Int8Tensor"}
    assert set(proof["skipped_layers"]) == {"0", "3", "7", "10", "14"}
    assert all("nn.Linear layers only" in why for why in proof["skipped_layers"].values())
    convs_only = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(TrialFailed, match="torchao quantized no layer"):
        quantize_linear(convs_only, "int8_weight_only")


def test_pt2e_static_int8_has_quantized_ops_and_a_quarter_of_the_bytes():
    fp32 = wide_mlp()
    x = torch.randn(64, 1, 8, 8)
    q, proof = static_pt2e(copy.deepcopy(fp32), x[:2], lambda forward: int(forward(x) is not None) * 64)
    ops = {str(n.target) for n in q.graph.graph.nodes}
    assert any("quantize_per_tensor" in o for o in ops) and any("dequantize_per_channel" in o for o in ops)
    assert proof["int8_tensors"] == 3 and proof["calibration_samples"] == 64
    # the artifact that ships is the exported program: compare it with fp32's, exported the same way
    fp32_program = Exported(torch.export.export(fp32, (x[:2],)).module()).to_bytes(x[:2])
    assert 3.0 < len(fp32_program) / len(q.to_bytes(x[:2])) < 4.5
    with torch.no_grad():
        ref, out = fp32(x), q(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    loaded = Exported.from_bytes(q.to_bytes(x[:2]))
    with torch.no_grad():
        assert torch.equal(loaded(x), out)


@pytest.fixture
def mlp_ctx(digits_bundle):
    torch.manual_seed(0)
    teacher = create_model("mlp", num_classes=10, in_channels=1, input_shape=(1, 8, 8), hidden=64).eval()
    return TrialContext(data=digits_bundle.subset_train(0.3, 0), teacher=teacher.requires_grad_(False),
                        baseline_metrics={"accuracy": 0.1, "size_mb": 0.04}, target=TargetSettings(max_time_s=0.05),
                        epochs=1)


@pytest.mark.parametrize("quantization", [{"mode": "int8_weight_only"}, {"mode": "int8_dynamic_activation"},
                                          {"mode": "fp8_weight_only"}, {"mode": "static_int8", "backend": "torchao"}])
def test_a_trial_exports_and_reloads_to_its_test_accuracy(mlp_ctx, tmp_path, quantization):
    policy = Policy.from_dict({"quantization": quantization})
    result = run_trial(policy, mlp_ctx)
    q = result.proof["quantization"]
    assert q["backend"] == "torchao" and q["size_after_mb"] < q["size_before_mb"] and q["fast_under"] == ["compile"]
    spec = spec_from_dict(tiny_study(model={"builtin": "mlp", "kwargs": {"hidden": 64}}), str(tmp_path / "s.yaml"))
    save_trial_model(result, tmp_path / "t", spec=spec, data=mlp_ctx.data)
    assert (tmp_path / "t" / result.deployment.file_name).read_bytes() == result.deployment.artifact
    reloaded = load_exported(tmp_path / "t")
    test = make_loader(mlp_ctx.data.test, 256, shuffle=False)
    assert evaluate(reloaded, test, "cpu") == result.metrics["test_accuracy"]


def test_torchao_formats_declare_their_runtimes_and_devices():
    fmt = number_format("int8_weight_only", True)
    assert fmt.backend == "torchao" and fmt.runtimes == {"eager", "compile"} and fmt.fast_under == {"compile"}
    assert fmt.unsupported_in("onnxruntime") and fmt.unsupported_in("compile") is None
    assert number_format("int4_weight_only", True).unsupported_on("cpu")
    assert number_format("fp8_dynamic", True).unsupported_on("cpu") and not number_format("fp8_dynamic", True).unsupported_on("cuda")
    assert number_format("static_int8", True, "torchao").key == "static_int8@torchao" != number_format("static_int8", True).key
    plan = TrialPlan(Policy.from_dict({"quantization": {"mode": "int8_weight_only"}, "runtime": {"backend": "torchscript"}}))
    assert "cannot carry" in plan.refusal("cpu")


def test_a_format_the_target_cannot_run_ends_the_trial_before_any_work(mlp_ctx, monkeypatch):
    from autocompress.trial import run as run_mod

    monkeypatch.setattr(run_mod, "_compress", lambda *a: pytest.fail("compressed"))
    with pytest.raises(TrialFailed, match="int4 weight-only .* run on cuda only") as err:
        run_trial(Policy.from_dict({"quantization": {"mode": "int4_weight_only"}}), mlp_ctx)
    assert err.value.known_as is not None   # remembered: the search does not propose it again


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("mode", ["int8_weight_only", "int8_dynamic_activation", "fp8_weight_only", "fp8_dynamic",
                                  "int4_weight_only"])
def test_torchao_modes_on_cuda(mode):
    if mode == "fp8_dynamic" and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9")
    fp32 = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 16)).cuda().to(torch.bfloat16).eval()
    q, proof = quantize_linear(copy.deepcopy(fp32), mode)
    x = torch.randn(8, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ref, out = fp32(x).float(), q(x).float()
    assert out.device.type == "cuda" and proof["quantized_layers"]
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.75
    buffer = io.BytesIO()
    torch.save(q.state_dict(), buffer)
    assert buffer.tell() < len(serialized_bytes(fp32))


@pytest.mark.parametrize("space, message", [
    ({"quantization": {"mode": "int4_weight_only"}}, "no choice can run: int4 weight-only (torchao) kernels run on cuda only"),
    ({"quantization": {"mode": {"choices": ["fp8_dynamic", "int4_weight_only"]}}}, "no choice can run"),
    ({"quantization": {"mode": "static_int8", "backend": "torchao"}}, "torchao is not installed"),
])
def test_formats_that_cannot_run_here_are_one_line_and_nothing_is_written(write_study, tmp_path, monkeypatch,
                                                                          space, message):
    from typer.testing import CliRunner

    from autocompress.cli import app
    from autocompress.compress.quantization import torchao_modes

    def not_installed():
        raise ImportError("torchao is not installed (No module named 'torchao'): pip install 'torchao==0.18.*'")

    if "not installed" in message:
        monkeypatch.setattr(torchao_modes, "load", not_installed)
    path = write_study(search_space={**space, "training": {"lr": 0.01}})
    result = CliRunner().invoke(app, ["search", str(path), "--out", str(tmp_path / "run")])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "search_space.quantization.mode" in lines[0] and message in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_choice_that_cannot_run_is_announced_and_never_proposed(write_study, tmp_path):
    from typer.testing import CliRunner

    from autocompress.cli import app
    from autocompress.search.record import read_all
    from autocompress.search.results import load_results

    space = {"quantization": {"mode": {"choices": ["int4_weight_only", "int8_weight_only"]}}, "training": {"lr": 0.01}}
    path = write_study(model={"builtin": "mlp", "kwargs": {"hidden": 32}}, search_space=space,
                       budget={"trials": 3, "epochs": 1, "train_fraction": 0.2})
    result = CliRunner().invoke(app, ["search", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "'int4_weight_only' cannot run here" in result.output
    modes = [r.policy.quantization.mode for r in read_all(load_results(str(tmp_path / "run")).study) if not r.baseline]
    assert modes == ["int8_weight_only"] * 3
