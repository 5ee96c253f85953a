"""Writing an export bundle (``bundle.Bundle``) to a folder, with the TorchScript and ONNX files
where the model allows (each checked against the model's own outputs)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import yaml
from torch import nn

from autocompress.bundle.bundle import (BUNDLE_FILES, CARD_FILE, METRICS_FILE, ONNX_FILE, POLICY_FILE, Bundle,
                                        metrics_document, policy_document)
from autocompress.bundle.card import model_card
from autocompress.deploy.artifacts import MODEL_FILE, STRUCTURE_FILE, TORCHSCRIPT_FILE, save_model
from autocompress.deploy.runtimes import export_onnx
from autocompress.utils import atomic_write_bytes, atomic_write_text, error_line


def write_bundle(b: Bundle, out: Path) -> dict[str, str]:
    """Write every bundle file to ``out``; returns {artifact: "ok" | why it is missing}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_FILES:  # no stale file of an earlier export may survive next to the new ones
        (out / name).unlink(missing_ok=True)
    header = (f"# Compression policy exported by autocompress from study '{b.study_name}'"
              + (f", trial {b.trial}" if b.trial is not None else "") + ".\n"
              f"# Re-train it at full budget: autocompress apply {out / POLICY_FILE} --epochs N\n")
    atomic_write_text(out / POLICY_FILE, header + yaml.safe_dump(policy_document(b), sort_keys=False))
    save_model(b.model, out, b.structure)
    # a random batch, not zeros: the TorchScript/ONNX checks compare outputs on it
    example = torch.randn(2, *b.structure["input_shape"], generator=torch.Generator().manual_seed(0))
    artifacts = {MODEL_FILE: "ok", STRUCTURE_FILE: "ok",
                 TORCHSCRIPT_FILE: _torchscript(b.model, example, out / TORCHSCRIPT_FILE),
                 ONNX_FILE: _onnx(b.model, example, out / ONNX_FILE)}
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics_document(b), indent=2, default=str))
    atomic_write_text(out / CARD_FILE, model_card(b, artifacts, out))
    return artifacts


def _torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model.eval(), (example,), check_trace=False)
            reference, got = model(example), traced(example)
        if not torch.allclose(reference.float(), got.float(), atol=1e-4, rtol=1e-3):
            return "not written: the traced model's outputs differ from the model's"
        tmp = path.with_suffix(".tmp")
        torch.jit.save(traced, str(tmp))
        tmp.replace(path)
        return "ok"
    except Exception as exc:
        path.unlink(missing_ok=True)
        return f"not written: {error_line(exc)}"


def _onnx(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    try:
        with torch.no_grad():
            onnx_bytes = export_onnx(model.eval(), example)
            reference = model(example).float().numpy()
    except Exception as exc:
        return f"not written: {error_line(exc)}"
    atomic_write_bytes(path, onnx_bytes)
    try:
        import onnxruntime as ort  # only a bundle with an ONNX file needs it (0.3 s to import)

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": example.numpy()})[0]
        diff = float(abs(got.astype("float32") - reference).max())
    except ImportError:
        return "ok (not checked: onnxruntime is not installed)"
    except Exception as exc:
        return f"written, but onnxruntime cannot run it: {error_line(exc)}"
    return f"ok (onnxruntime {ort.__version__} output within {diff:.2g} of PyTorch's)"
