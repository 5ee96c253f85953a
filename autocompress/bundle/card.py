"""The model card (``README.md`` of a bundle): what was done, the trade-off against the
baseline, the files, how to load it, the environment. Metrics, their order, units and
formats come from the metric registry; what each technique did, from its declaration."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch

from autocompress.bundle.bundle import METRICS_FILE, ONNX_FILE, POLICY_FILE, Bundle
from autocompress.deploy.artifacts import TORCHSCRIPT_FILE
from autocompress.metrics.registry import METRICS, change, format_measured, format_value, metric_label
from autocompress.training.augment import describe_policy
from autocompress.trial.plan import TrialPlan
from autocompress.version import __version__


def _environment() -> dict[str, str]:
    env = {"autocompress": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "optuna": optuna.__version__, "platform": platform.platform(),
           "quantized engine": torch.backends.quantized.engine}
    for name in ("torchvision", "onnx", "onnxruntime", "nni"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional, and NNI's import may fail on its own
            pass
    return env


def what_was_done(b: Bundle) -> list[str]:
    """One line per technique (its declaration's card line), fine-tuning and augmentation."""
    t = b.policy.training
    lines = [d.card_line for d in TrialPlan(b.policy).pipeline.declarations if d.card_line]
    lines.append(f"fine-tuning: {b.epochs} epoch(s) on {b.train_fraction:.0%} of the training split, {t.optimizer} "
                 f"lr {t.lr:.3g}, {t.schedule} schedule, batch {t.batch_size}, seed {b.seed}")
    if (augmentation := describe_policy(b.policy.augmentation)) is not None:
        lines.append(augmentation)
    return lines


def tradeoff_rows(metrics: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Every registered metric either side measured, with its change against the baseline."""
    rows = []
    for m in METRICS:
        if m in metrics or m in baseline:
            v, base = metrics.get(m), baseline.get(m)
            compared = change(m, v, base, metrics)
            rows.append(f"| {metric_label(m)} | {format_measured(m, metrics)} | {format_value(m, base)} | "
                        f"{compared[0] if compared else ''} |")
    return rows


def model_card(b: Bundle, artifacts: dict[str, str], out: Path) -> str:
    title = f"{b.study_name}" + (f", trial {b.trial}" if b.trial is not None else "") + f": {TrialPlan(b.policy).describe()}"
    measured = ", ".join(f"{k} {v}" for k, v in b.measured_on.items()) if b.measured_on else "-"
    shape = ", ".join(str(s) for s in b.structure["input_shape"])
    notes = "".join(f"\n> note: {n}\n" for n in b.notes)
    return f"""# {title}

Exported by autocompress on {datetime.now(timezone.utc).isoformat(timespec="seconds")}.
Chosen by: {b.rule or "-"}.
Model and metrics: {b.provenance}.
{notes}
## What was done

Model `{_model_reference(b.structure["model"])}`, {b.structure["num_classes"]} classes, input shape ({shape}).

{chr(10).join("- " + line for line in what_was_done(b))}

Proof of compression (measured on the model):

```json
{json.dumps(b.proof or {}, indent=2, default=str)}
```

## Trade-off versus the baseline

| metric | this model | baseline | change |
|---|---:|---:|---:|
{chr(10).join(tradeoff_rows(b.metrics, b.baseline_metrics))}

Accuracy is on the validation split (`test_accuracy` on the held-out test split). Latency measured on: {measured}.
Latency is compared with the baseline by `speedup`: both models timed in turn in one process, over
several rounds (median and interquartile range of the per-round ratios); sizes and counts by their exact ratio.

{_files_and_loading(artifacts, out, shape, "text" in b.structure)}

## Environment

| package | version |
|---|---|
{chr(10).join(f"| {k} | {v} |" for k, v in _environment().items())}
"""


def _files_and_loading(artifacts: dict[str, str], out: Path, shape: str, text: bool = False) -> str:
    files = "\n".join(f"| `{name}` | {status} |" for name, status in artifacts.items())
    call = ('labels = model.predict(["a text to classify"])   # or logits = model(texts), or model(ids)\n'
            f"# ids: int64 token ids of shape (batch, {shape}); structure.json holds the tokenizer"
            if text else f"logits = model(x)   # x: float tensor of shape (batch, {shape})")
    axes = "dynamic batch and sequence length (int64 token ids)" if text else "dynamic batch"
    return f"""## Files

| file | status |
|---|---|
| `{POLICY_FILE}` | ok: every knob, the seed, the study (model, data, target) |
| `{METRICS_FILE}` | ok: measured metrics, baseline, where measured |
{files}

## How to load

```python
from autocompress import load_exported
model = load_exported("{out}")  # this folder
{call}
```

`model.pt` is a plain state dict (`torch.load(..., weights_only=True)`); `structure.json` lists the
layer widths after pruning and the quantization mode that rebuild its module tree.
TorchScript: `torch.jit.load("{TORCHSCRIPT_FILE}")`. ONNX: `onnxruntime.InferenceSession("{ONNX_FILE}")`,
input `input`, output `logits`, {axes}.

Re-train this policy at full budget: `autocompress apply {POLICY_FILE} --epochs 30`."""


def _model_reference(m: dict[str, Any]) -> str:
    kind = next((k for k in ("builtin", "torchvision", "factory", "transformers") if m.get(k)), None)
    if kind is None:
        return str(m)
    kwargs = ", ".join(f"{k}={v}" for k, v in (m.get("kwargs") or {}).items())
    return f"{kind}:{m[kind]}" + (f" ({kwargs})" if kwargs else "")
