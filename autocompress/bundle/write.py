"""Writing an export bundle (``bundle.Bundle``) to a folder, with the TorchScript and ONNX files
where the model allows (each checked against the model's own outputs)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import yaml
from torch import nn

from autocompress.bundle.bundle import (BUNDLE_FILES, CARD_FILE, METRICS_FILE, ONNX_FILE, POLICY_FILE, Bundle,
                                        metrics_document, policy_document)
from autocompress.bundle.card import model_card
from autocompress.deploy.artifacts import MODEL_FILE, STRUCTURE_FILE, TORCHSCRIPT_FILE, example_inputs, save_model
from autocompress.deploy.agreement import compare_predictions
from autocompress.deploy.runtimes import deploy
from autocompress.utils import atomic_write_bytes, atomic_write_text, error_line


def write_bundle(b: Bundle, out: Path) -> dict[str, str]:
    """Write every bundle file to ``out``; returns {artifact: "ok ..." | why it is missing}.
    The artifact the trial measured is written byte for byte; the other runtimes' files are
    made by the same deployment function and checked against the model's outputs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in BUNDLE_FILES:  # no stale file of an earlier export may survive next to the new ones
        (out / name).unlink(missing_ok=True)
    header = (f"# Compression policy exported by autocompress from study '{b.study_name}'"
              + (f", trial {b.trial}" if b.trial is not None else "") + ".\n"
              f"# Re-train it at full budget: autocompress apply {out / POLICY_FILE} --epochs N\n")
    atomic_write_text(out / POLICY_FILE, header + yaml.safe_dump(policy_document(b), sort_keys=False))
    save_model(b.model, out, b.structure)
    artifacts = {MODEL_FILE: "ok", STRUCTURE_FILE: "ok"}
    if b.measured is not None:
        name, data = b.measured
        atomic_write_bytes(out / name, data)
        artifacts[name] = f"ok: the artifact the trial measured (sha256 {hashlib.sha256(data).hexdigest()[:16]}...)"
    # a random batch, not zeros: the other runtimes' files are compared with the model on it
    example = example_inputs(b.structure, 32)
    for runtime, name in (("torchscript", TORCHSCRIPT_FILE), ("onnxruntime", ONNX_FILE)):
        if name not in artifacts:
            artifacts[name] = _other_runtime(b.model, runtime, example, out / name)
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics_document(b), indent=2, default=str))
    atomic_write_text(out / CARD_FILE, model_card(b, artifacts, out))
    return artifacts


def _other_runtime(model: nn.Module, runtime: str, example: torch.Tensor, path: Path) -> str:
    """``model`` deployed for a runtime the trial did not measure, compared with the model on
    ``example``: written with what the comparison found (two runtimes' int8 kernels round
    differently, ``deploy.agreement``); not written where the runtime cannot run it."""
    try:
        shipped = deploy(model, runtime, example, threads=1)
        with torch.inference_mode():
            agreement = compare_predictions(model(example), shipped.module(example))
    except Exception as exc:   # TrialFailed or anything else: the bundle goes on without this file
        return f"not written: {getattr(exc, 'reason', None) or error_line(exc)}"
    atomic_write_bytes(path, shipped.artifact)
    return (f"ok (not measured by the trial; on {agreement.samples} random inputs its top-1 agrees with the "
            f"model's on {agreement.top1_agreement:.0%}, logits within {agreement.max_abs_diff:.2g})")
