"""Graph-optimized runtimes: the deployed model run by eager PyTorch, TorchScript,
torch.compile or ONNX Runtime, and the check that a conversion kept its predictions.

``to_runtime(model, backend, example, device=...)`` returns a module called like the eager
model (tensors in, tensors out). ``build_runtime`` returns the same module with what the
trial records: the serialized artifact (TorchScript archive, ONNX model; none for eager and
torch.compile) and how long the conversion took.

Whether a backend runs a model is decided by trying it, never by a list: the conversion and
one forward pass on ``example`` run here, and any error becomes ``TrialFailed`` with the
reason. What was found on torch 2.14.1 / onnxruntime 1.32 (CPU):

- int8 torch.ao FX models (static/QAT) run in TorchScript, and in ONNX Runtime (the legacy
  exporter writes QuantizeLinear/DequantizeLinear pairs, which ONNX Runtime fuses); predictions
  agree, logits differ by about one quantization step.
- torch.compile cannot trace the quantized ops ("quantized nyi in meta tensors") and would
  silently run such a model eagerly, so ``compile`` requires one whole graph
  (``fullgraph=True``) and fails the trial otherwise.
- The dynamo ONNX exporter needs ``onnxscript`` (not a dependency); the TorchScript-based
  exporter (``dynamo=False``) exports conv nets, int8 included.
- Inductor compiles C++ with the system compiler: tens of seconds per new input shape on a
  small CPU, which a trial pays once (recorded as ``build_s`` plus the check's recompiles).

onnxruntime is imported when an ONNX session is built (0.3 s; most trials never need one).
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from autocompress.compress.quantization import quantized_layers
from autocompress.errors import TrialFailed
from autocompress.utils import error_line



@dataclass(frozen=True)
class RuntimeInfo:
    """What a runtime is, declared for the callers that plan around it."""
    name: str
    converts: bool       # the model is converted, so its predictions are re-checked against eager
    previewable: bool    # cheap enough to convert for the untrained model's cost preview
    label: str           # for the policy's one-line summary ("" for the default)


RUNTIMES: dict[str, RuntimeInfo] = {
    "eager": RuntimeInfo("eager", converts=False, previewable=True, label=""),
    "torchscript": RuntimeInfo("torchscript", converts=True, previewable=True, label="torchscript"),
    # inductor compiles C++: tens of seconds per model on a small CPU, too much for a preview
    "compile": RuntimeInfo("compile", converts=True, previewable=False, label="compile"),
    "onnxruntime": RuntimeInfo("onnxruntime", converts=True, previewable=True, label="onnxruntime"),
}
BACKENDS = tuple(RUNTIMES)
MIN_AGREEMENT = 0.995      # top-1 agreement with the eager model on the validation split
# Max |logit difference| allowed, relative to the largest |logit|: float runtimes differ by
# ~1e-7 of it; an int8 model in ONNX Runtime by one or a few output quantization steps.
LOGIT_RTOL = 0.05


@dataclass
class Runtime:
    """A model converted for one backend; ``module`` is what is evaluated and timed."""
    backend: str
    module: nn.Module
    artifact: bytes | None   # what would be deployed; None where the runtime has no file
    artifact_kind: str       # "torchscript archive" | "onnx model" | "none"
    build_s: float

    @property
    def size_mb(self) -> float | None:
        return None if self.artifact is None else len(self.artifact) / 1e6

    @property
    def compressed_size_mb(self) -> float | None:
        return None if self.artifact is None else len(zlib.compress(self.artifact, 6)) / 1e6

    def proof(self) -> dict[str, Any]:
        return {"backend": self.backend, "artifact": self.artifact_kind,
                "artifact_size_mb": None if self.size_mb is None else round(self.size_mb, 6),
                "build_s": round(self.build_s, 3)}


@dataclass(frozen=True)
class Agreement:
    """How far a runtime's logits are from the eager model's on the same inputs."""
    top1_agreement: float
    max_abs_diff: float
    tolerance: float
    samples: int

    def as_dict(self) -> dict[str, float]:
        return {"top1_agreement": self.top1_agreement, "max_abs_diff": self.max_abs_diff,
                "tolerance": self.tolerance, "samples": self.samples}


class OnnxRuntimeModule(nn.Module):
    """An ``onnxruntime.InferenceSession`` behind the module interface: tensors in, tensors out
    (copied through numpy on the host; on CUDA that copy is part of the measured latency)."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def to_runtime(model: nn.Module, backend: str, example: torch.Tensor, *, device: str = "cpu",
               threads: int | None = None) -> nn.Module:
    """``model`` converted for ``backend``; raises ``TrialFailed`` where it cannot run.

    Example::

        fast = to_runtime(model, "onnxruntime", torch.randn(2, 1, 8, 8))
        logits = fast(batch)
    """
    return build_runtime(model, backend, example, device=device, threads=threads).module


def build_runtime(model: nn.Module, backend: str, example: torch.Tensor, *, device: str = "cpu",
                  threads: int | None = None) -> Runtime:
    """Like ``to_runtime``, with the serialized artifact and the conversion time."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown runtime {backend!r} (choose from: {', '.join(BACKENDS)})")
    model = model.to(device).eval()
    example = example.to(device)
    if backend == "eager":
        return Runtime("eager", model, None, "none", 0.0)
    start = time.perf_counter()
    with _fails_trial(backend, model):
        if backend == "torchscript":
            (module, artifact), kind = _torchscript(model, example), "torchscript archive"
        elif backend == "compile":
            module, artifact, kind = torch.compile(model, fullgraph=True), None, "none"
        else:
            artifact = export_onnx(model, example)
            module, kind = OnnxRuntimeModule(_session(artifact, device, threads)), "onnx model"
        with torch.inference_mode():
            out = module(example)  # the first call compiles (torch.compile) or fails here
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"returns {type(out).__name__}, not a tensor of logits")
    return Runtime(backend, module, artifact, kind, time.perf_counter() - start)


def check_predictions(reference: torch.Tensor, candidate: torch.Tensor, *,
                      min_agreement: float = MIN_AGREEMENT, rtol: float = LOGIT_RTOL) -> Agreement:
    """Compare a runtime's logits with the eager model's on the same inputs (same order).

    Returns the agreement; raises ``TrialFailed`` when top-1 agreement is below
    ``min_agreement``, when a logit moved by more than ``rtol`` times the largest |logit|, or
    when the runtime produced non-finite values: such an export changes the model.
    """
    reference, candidate = reference.float().cpu(), candidate.float().cpu()
    if reference.shape != candidate.shape:
        raise TrialFailed(f"runtime output shape {tuple(candidate.shape)} differs from eager "
                          f"{tuple(reference.shape)}")
    if not torch.isfinite(candidate).all():
        raise TrialFailed("runtime produced non-finite logits")
    agreement = (reference.argmax(1) == candidate.argmax(1)).float().mean().item()
    diff = (reference - candidate).abs().max().item() if reference.numel() else 0.0
    tol = rtol * max(reference.abs().max().item() if reference.numel() else 0.0, 1e-6)
    result = Agreement(agreement, diff, tol, reference.shape[0])
    if agreement < min_agreement:
        raise TrialFailed(f"runtime changes predictions: top-1 agreement with eager {agreement:.2%} "
                          f"< {min_agreement:.1%} on {reference.shape[0]} samples")
    if diff > tol:
        raise TrialFailed(f"runtime changes logits: max |diff| {diff:.3g} > tolerance {tol:.3g} "
                          f"({rtol:.0%} of the largest logit)")
    return result


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """ONNX bytes with a dynamic batch dimension (TorchScript-based exporter, see module doc)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), _no_onnx_ir_dump():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation notice, tracer warnings
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["input"],
                          output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


@contextlib.contextmanager
def _no_onnx_ir_dump() -> Iterator[None]:
    """torch 2.14's legacy exporter switches its IR log on for every export (it tests the
    function ``_jit_is_onnx_log_enabled`` instead of calling it) and, when an operator has no
    ONNX equivalent, prints the whole TorchScript graph to stdout from C++."""
    log = torch._C._jit_onnx_log
    torch._C._jit_onnx_log = lambda *args: None
    try:
        yield
    finally:
        torch._C._jit_onnx_log = log
        torch._C._jit_set_onnx_log_enabled(False)


def is_int8_ao(model: nn.Module) -> bool:
    """True for a model holding torch.ao int8 layers (static, QAT-converted or dynamic)."""
    return bool(quantized_layers(model))


def _torchscript(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, bytes]:
    """Traced, frozen (weights folded in as constants) and its archive's bytes."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript deprecation notices, tracer warnings
        frozen = torch.jit.freeze(torch.jit.trace(model, (example,))).eval()
        torch.jit.save(frozen, buf)
    return frozen, buf.getvalue()


def _session(model_bytes: bytes, device: str, threads: int | None) -> Any:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("onnxruntime has no CUDAExecutionProvider here "
                               "(install onnxruntime-gpu to run ONNX models on CUDA)")
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:  # the same thread budget as the PyTorch runtimes get
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, sess_options=opts, providers=providers)


@contextlib.contextmanager
def _fails_trial(backend: str, model: nn.Module) -> Iterator[None]:
    try:
        yield
    except (TrialFailed, torch.OutOfMemoryError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        what = "int8 torch.ao models" if is_int8_ao(model) else "this model"
        hint = " (torch.compile must capture the whole model in one graph)" if backend == "compile" else ""
        raise TrialFailed(f"runtime {backend} does not run {what}: {error_line(exc)}{hint}") from None
