"""An export bundle: the files one chosen policy ships as.

A bundle (``runs/<name>/export/`` by default) holds:

- ``policy.yaml``: every knob, the seed, and the study it came from (model, data, target), so
  ``autocompress apply`` can re-train it;
- ``model.pt`` and ``structure.json`` (``deploy.artifacts``: what ``load_exported`` rebuilds
  the model from), plus ``model.torchscript.pt`` and ``model.onnx`` where the model allows (a
  failure is written in the card, never fatal);
- ``metrics.json`` (the measured metrics and where they were measured) and ``README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from autocompress.deploy.artifacts import FORMAT, MODEL_FILE, STRUCTURE_FILE, TORCHSCRIPT_FILE
from autocompress.metrics.registry import METRICS
from autocompress.spec.policy import Policy
from autocompress.version import __version__

ONNX_FILE = "model.onnx"
POLICY_FILE = "policy.yaml"
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
BUNDLE_FILES = (POLICY_FILE, MODEL_FILE, STRUCTURE_FILE, TORCHSCRIPT_FILE, ONNX_FILE, METRICS_FILE, CARD_FILE)


@dataclass(frozen=True)
class Bundle:
    """Everything written to an export folder."""
    model: nn.Module
    structure: dict[str, Any]
    policy: Policy
    seed: int
    epochs: int
    train_fraction: float
    study_name: str
    study_spec: dict[str, Any]              # the resolved study (model, data, target, ...)
    study_source: str | None                # the study file: relative paths resolve against it
    run_dir: str | None
    trial: int | None
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    measured_on: dict[str, Any]
    provenance: str                         # where the model and its metrics come from
    rule: str = ""                          # how it was chosen
    proof: dict[str, Any] | None = None
    history: list | None = None
    notes: tuple[str, ...] = ()
    # the artifact the trial measured, as (file name, bytes): written as it is, never re-exported
    measured: tuple[str, bytes] | None = None


def policy_document(b: Bundle) -> dict[str, Any]:
    return {
        "autocompress": {"version": __version__, "kind": "policy", "format": FORMAT},
        "study": {"name": b.study_name, "trial": b.trial, "run_dir": b.run_dir, "source": b.study_source,
                  "spec": b.study_spec},
        "seed": b.seed,
        "epochs": b.epochs,
        "train_fraction": b.train_fraction,
        "policy": b.policy.to_dict(),
    }


def metrics_document(b: Bundle) -> dict[str, Any]:
    return {"study": b.study_name, "trial": b.trial, "provenance": b.provenance, "rule": b.rule,
            "metrics": b.metrics, "baseline_metrics": b.baseline_metrics, "measured_on": b.measured_on,
            "units": {name: m.unit for name, m in METRICS.items()}, "proof": b.proof or {}, "history": b.history or [], "notes": list(b.notes)}
