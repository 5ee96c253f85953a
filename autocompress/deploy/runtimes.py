"""The deployed form of a model: run by eager PyTorch, TorchScript, torch.compile or ONNX
Runtime, with the bytes that ship (``deploy``, the one deployment function).

``deploy(model, runtime, example, device=..., threads=...)`` returns a ``Deployment``: the
module that is evaluated and timed (called like the eager model, tensors in, tensors out),
the artifact's bytes (TorchScript archive, ONNX model, or the state dict for eager and
torch.compile), their SHA-256, and the CPU threads the runtime was built to use. The preview
of an untrained model, the final measurement, the trial's saved files and ``export`` all take
the artifact from here, so what is measured is what ships.

Whether a runtime runs a model is decided by trying it, never by a list: the conversion and
one forward pass on ``example`` run here, and any error becomes ``TrialFailed`` with the
reason. What was found on torch 2.14.1 / onnxruntime 1.32 (CPU):

- int8 torch.ao FX models (static/QAT) run in TorchScript, and in ONNX Runtime (the legacy
  exporter writes QuantizeLinear/DequantizeLinear pairs, which ONNX Runtime fuses); logits
  differ by about one quantization step (``deploy.agreement``).
- torch.compile cannot trace the quantized ops ("quantized nyi in meta tensors") and would
  silently run such a model eagerly, so ``compile`` requires one whole graph
  (``fullgraph=True``) and fails the trial otherwise.
- The dynamo ONNX exporter needs ``onnxscript`` (not a dependency); the TorchScript-based
  exporter (``dynamo=False``) exports conv nets, int8 included.
- Inductor compiles C++ with the system compiler: tens of seconds per new input shape on a
  small CPU, which a trial pays once (recorded as ``build_s`` plus the check's recompiles).
- A TorchScript archive carries debug records (the Python call stack of the trace): they are
  left out of the artifact (``torch.jit.load`` does not need them), which makes it smaller
  and its size independent of who traced it.

onnxruntime is imported when an ONNX session is built (0.3 s; most trials never need one).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from autocompress.compress.quantization import quantized_layers
from autocompress.errors import TrialFailed
from autocompress.metrics.size import serialized_bytes
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
FILES = {"eager": "model.pt", "compile": "model.pt", "torchscript": "model.torchscript.pt", "onnxruntime": "model.onnx"}
KINDS = {"eager": "state dict", "compile": "state dict", "torchscript": "torchscript archive",
         "onnxruntime": "onnx model"}


@dataclass(frozen=True)
class Deployment:
    """A model in the form it ships: ``module`` is what is evaluated and timed, ``artifact``
    the bytes of the file that ships (``file_name``)."""
    runtime: str
    module: nn.Module
    artifact: bytes
    threads: int              # CPU threads the runtime was built to use (ONNX Runtime: its session's)
    build_s: float
    program: bool = False     # the artifact is an exported program (``model.pt2``), not a state dict

    @property
    def artifact_kind(self) -> str:
        return "exported program" if self.program else KINDS[self.runtime]

    @property
    def file_name(self) -> str:
        return "model.pt2" if self.program else FILES[self.runtime]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.artifact).hexdigest()

    @property
    def size_mb(self) -> float:
        return len(self.artifact) / 1e6

    @property
    def compressed_size_mb(self) -> float:
        return len(zlib.compress(self.artifact, 6)) / 1e6

    def proof(self) -> dict[str, Any]:
        return {"backend": self.runtime, "artifact": self.artifact_kind, "file": self.file_name,
                "artifact_size_mb": round(self.size_mb, 6), "artifact_sha256": self.sha256,
                "threads": self.threads, "build_s": round(self.build_s, 3)}


class OnnxRuntimeModule(nn.Module):
    """An ``onnxruntime.InferenceSession`` behind the module interface: tensors in, tensors out
    (copied through numpy on the host; on CUDA that copy is part of the measured latency)."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.threads = int(session.get_session_options().intra_op_num_threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def deploy(model: nn.Module, runtime: str, example: torch.Tensor, *, device: str = "cpu",
           threads: int = 1) -> Deployment:
    """``model`` (number format already applied) in its runtime, with the bytes that ship;
    raises ``TrialFailed`` where the runtime cannot run it.

    Example::

        shipped = deploy(int8_model, "onnxruntime", torch.randn(2, 1, 8, 8), threads=1)
        logits = shipped.module(batch); open(shipped.file_name, "wb").write(shipped.artifact)
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r} (choose from: {', '.join(RUNTIMES)})")
    model = model.to(device).eval()
    example = example.to(device)
    start = time.perf_counter()
    with _fails_trial(runtime, model):
        if runtime == "torchscript":
            module, artifact = _torchscript(model, example)
        elif runtime == "onnxruntime":
            artifact = export_onnx(model, example)
            module = OnnxRuntimeModule(_session(artifact, device, threads))
            threads = module.threads
        else:
            if runtime == "compile":
                # Dynamo keys its cache by the forward's code object, which every model of a class
                # shares: without a reset, a search's ninth compiled model of one class would hit
                # the recompile limit (fullgraph makes that an error)
                torch._dynamo.reset()
            module = torch.compile(model, fullgraph=True) if runtime == "compile" else model
            # a model that ships as an exported program says so (torchao's PT2E graphs)
            artifact = model.to_bytes(example) if hasattr(model, "to_bytes") else serialized_bytes(model)
        with torch.inference_mode():
            out = module(example)  # the first call compiles (torch.compile) or fails here
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"returns {type(out).__name__}, not a tensor of logits")
    return Deployment(runtime, module, artifact, threads, time.perf_counter() - start,
                      program=runtime in ("eager", "compile") and hasattr(model, "to_bytes"))


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """ONNX bytes with a dynamic batch dimension, and a dynamic sequence dimension for token ids
    (TorchScript-based exporter, see module doc)."""
    buf = io.BytesIO()
    axes = {0: "batch", 1: "sequence"} if example.dim() == 2 and not example.is_floating_point() else {0: "batch"}
    with warnings.catch_warnings(), _no_onnx_ir_dump():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation notice, tracer warnings
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["input"],
                          output_names=["logits"],
                          dynamic_axes={"input": axes, "logits": {0: "batch"}})
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
    """Traced, frozen (weights folded in as constants) and its archive's bytes without the
    debug records; the module returned is loaded from those bytes, so it is what ships."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript deprecation notices, tracer warnings
        frozen = torch.jit.freeze(torch.jit.trace(model, (example,)))
        torch.jit.save(frozen, buf)
        artifact = _without_debug_records(buf.getvalue())
        return torch.jit.load(io.BytesIO(artifact), map_location=example.device).eval(), artifact


def _without_debug_records(archive: bytes) -> bytes:
    src, out = zipfile.ZipFile(io.BytesIO(archive)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if not info.filename.endswith(".debug_pkl"):
                dst.writestr(info, src.read(info.filename))
    return out.getvalue()


def _session(model_bytes: bytes, device: str, threads: int) -> Any:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("onnxruntime has no CUDAExecutionProvider here "
                               "(install onnxruntime-gpu to run ONNX models on CUDA)")
        providers.insert(0, "CUDAExecutionProvider")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads   # the same thread budget as the PyTorch runtimes get
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
