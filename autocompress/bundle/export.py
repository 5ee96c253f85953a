"""Export one trial as a reproducible bundle.

A bundle (``runs/<name>/export/`` by default) holds:

- ``policy.yaml``: every knob, the seed, and the study it came from (model, data, target), so
  ``autocompress apply`` can re-train it;
- ``model.pt`` and ``structure.json`` (``autocompress.deploy.artifacts``: what ``load_exported`` rebuilds
  the model from), plus ``model.torchscript.pt`` and ``model.onnx`` where the model allows (a
  failure is written in the card, never fatal);
- ``metrics.json`` (the measured metrics and where they were measured) and ``README.md``.

Where the model comes from: the search saves every feasible trial's final model under
``runs/<name>/trials/<number>/`` (``rebuild.save_trial_model``); a trial without one (run by a
worker on another machine, or infeasible) is re-run from its policy and seed.
"""

from __future__ import annotations

import json
import math
import platform
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from torch import nn

from autocompress.errors import AutocompressError, TrialFailed
from autocompress.deploy.artifacts import (FORMAT, MODEL_FILE, STRUCTURE_FILE, TORCHSCRIPT_FILE, load_exported,
                                  save_model, structure_for)
from autocompress.utils import atomic_write_bytes, atomic_write_text, error_line

ONNX_FILE = "model.onnx"
POLICY_FILE = "policy.yaml"
METRICS_FILE = "metrics.json"
CARD_FILE = "README.md"
BUNDLE_FILES = (POLICY_FILE, MODEL_FILE, STRUCTURE_FILE, TORCHSCRIPT_FILE, ONNX_FILE, METRICS_FILE, CARD_FILE)


# -- the bundle --------------------------------------------------------------------------------

@dataclass
class Bundle:
    """Everything written to an export folder."""
    model: nn.Module
    structure: dict[str, Any]
    policy: Any                             # autocompress.spec.policy.Policy
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


def policy_document(b: Bundle) -> dict[str, Any]:
    from autocompress import __version__

    return {
        "autocompress": {"version": __version__, "kind": "policy", "format": FORMAT},
        "study": {"name": b.study_name, "trial": b.trial, "run_dir": b.run_dir, "source": b.study_source,
                  "spec": b.study_spec},
        "seed": b.seed,
        "epochs": b.epochs,
        "train_fraction": b.train_fraction,
        "policy": b.policy.to_dict(),
    }


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
    atomic_write_text(out / METRICS_FILE, json.dumps(_metrics_document(b), indent=2, default=str))
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
    from autocompress.deploy.runtimes import export_onnx

    try:
        with torch.no_grad():
            onnx_bytes = export_onnx(model.eval(), example)
            reference = model(example).float().numpy()
    except Exception as exc:
        return f"not written: {error_line(exc)}"
    atomic_write_bytes(path, onnx_bytes)
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": example.numpy()})[0]
        diff = float(abs(got.astype("float32") - reference).max())
    except ImportError:
        return "ok (not checked: onnxruntime is not installed)"
    except Exception as exc:
        return f"written, but onnxruntime cannot run it: {error_line(exc)}"
    return f"ok (onnxruntime {ort.__version__} output within {diff:.2g} of PyTorch's)"


def _metrics_document(b: Bundle) -> dict[str, Any]:
    from autocompress.report.data import UNITS

    return {"study": b.study_name, "trial": b.trial, "provenance": b.provenance, "rule": b.rule,
            "metrics": b.metrics, "baseline_metrics": b.baseline_metrics, "measured_on": b.measured_on,
            "units": UNITS, "proof": b.proof or {}, "history": b.history or [], "notes": list(b.notes)}


def _environment() -> dict[str, str]:
    import optuna

    from autocompress import __version__

    env = {"autocompress": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "optuna": optuna.__version__, "platform": platform.platform(),
           "quantized engine": torch.backends.quantized.engine}
    for name in ("torchvision", "onnx", "onnxruntime", "nni"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional, and NNI's import may fail on its own
            pass
    return env


def _what_was_done(b: Bundle) -> list[str]:
    p = b.policy
    lines = []
    pr, q, d, t = p.pruning, p.quantization, p.distillation, p.training
    if pr.method != "none":
        lines.append(f"pruning: {pr.method}, criterion {pr.criterion}, ratio {pr.ratio:g}"
                     + (f", schedule {pr.schedule}" if pr.method == "gradual" else "")
                     + (f", scope {pr.scope}" if pr.method == "weight" else ""))
    if q.mode != "none":
        lines.append(f"quantization: {q.mode}" + (f" ({'per-channel' if q.per_channel else 'per-tensor'} weights)"
                                                   if "int8" in q.mode else ""))
    if d.alpha > 0 or d.feature_weight > 0:
        lines.append(f"distillation from the baseline: alpha {d.alpha:g}, temperature {d.temperature:g}"
                     + (f", feature loss weight {d.feature_weight:g}" if d.feature_weight > 0 else ""))
    lines.append(f"fine-tuning: {b.epochs} epoch(s) on {b.train_fraction:.0%} of the training split, {t.optimizer} "
                 f"lr {t.lr:.3g}, {t.schedule} schedule, batch {t.batch_size}, seed {b.seed}")
    if p.augmentation.policy != "none" or p.augmentation.mix != "none":
        mix = f", {p.augmentation.mix}" if p.augmentation.mix != "none" else ""
        lines.append(f"augmentation: {p.augmentation.policy}{mix}")
    return lines


def model_card(b: Bundle, artifacts: dict[str, str], out: Path) -> str:
    from autocompress.report.data import UNITS
    from autocompress.report.figures import label
    from autocompress.report.html import fmt

    title = f"{b.study_name}" + (f", trial {b.trial}" if b.trial is not None else "") + f": {b.policy.describe()}"
    rows = []
    for m in UNITS:
        if m in b.metrics or m in b.baseline_metrics:
            v, base = b.metrics.get(m), b.baseline_metrics.get(m)
            rows.append(f"| {label(m)} | {fmt(m, v)} | {fmt(m, base)} | {_change(m, v, base)} |")
    where = b.measured_on
    measured = ", ".join(f"{k} {v}" for k, v in where.items()) if where else "-"
    files = "\n".join(f"| `{name}` | {status} |" for name, status in artifacts.items())
    proof = json.dumps(b.proof or {}, indent=2, default=str)
    env = "\n".join(f"| {k} | {v} |" for k, v in _environment().items())
    shape = ", ".join(str(s) for s in b.structure["input_shape"])
    notes = "".join(f"\n> note: {n}\n" for n in b.notes)
    return f"""# {title}

Exported by autocompress on {datetime.now(timezone.utc).isoformat(timespec="seconds")}.
Chosen by: {b.rule or "-"}.
Model and metrics: {b.provenance}.
{notes}
## What was done

Model `{_model_reference(b.structure["model"])}`, {b.structure["num_classes"]} classes, input shape ({shape}).

{chr(10).join("- " + line for line in _what_was_done(b))}

Proof of compression (measured on the model):

```json
{proof}
```

## Trade-off versus the baseline

| metric | this model | baseline | change |
|---|---:|---:|---:|
{chr(10).join(rows)}

Accuracy is on the validation split (`test_accuracy` on the held-out test split). Latency measured on: {measured}.

## Files

| file | status |
|---|---|
| `{POLICY_FILE}` | ok: every knob, the seed, the study (model, data, target) |
| `{METRICS_FILE}` | ok: measured metrics, baseline, where measured |
{files}

## How to load

```python
from autocompress import load_exported
model = load_exported("{out}")  # this folder
logits = model(x)   # x: float tensor of shape (batch, {shape})
```

`model.pt` is a plain state dict (`torch.load(..., weights_only=True)`); `structure.json` lists the
layer widths after pruning and the quantization mode that rebuild its module tree.
TorchScript: `torch.jit.load("{TORCHSCRIPT_FILE}")`. ONNX: `onnxruntime.InferenceSession("{ONNX_FILE}")`,
input `input`, output `logits`, dynamic batch.

Re-train this policy at full budget: `autocompress apply {POLICY_FILE} --epochs 30`.

## Environment

| package | version |
|---|---|
{env}
"""


def _model_reference(m: dict[str, Any]) -> str:
    kind = next((k for k in ("builtin", "torchvision", "factory") if m.get(k)), None)
    if kind is None:
        return str(m)
    kwargs = ", ".join(f"{k}={v}" for k, v in (m.get("kwargs") or {}).items())
    return f"{kind}:{m[kind]}" + (f" ({kwargs})" if kwargs else "")


def _change(metric: str, v: Any, base: Any) -> str:
    from autocompress.report.data import UNITS

    if not isinstance(v, (int, float)) or not isinstance(base, (int, float)):
        return ""
    if UNITS.get(metric) == "fraction":
        return f"{(v - base) * 100:+.2f} points"
    return f"x{v / base:.3g}" if base else ""


# -- export a study's trial --------------------------------------------------------------------

@dataclass(frozen=True)
class ExportResult:
    out: Path
    trial: int
    rule: str
    provenance: str
    artifacts: dict[str, str]
    notes: tuple[str, ...] = ()


def study_spec_of(results: Any) -> Any:
    """The StudySpec of a stored study: as stored with it (paths relative to the original study
    file), else the run folder's ``study.yaml``."""
    from autocompress.spec.config import spec_from_dict
    from autocompress.search.storage import STUDY_FILE

    attrs = results.study.user_attrs
    if attrs.get("study_yaml"):
        source = attrs.get("study_source") or (str(results.run_dir / STUDY_FILE) if results.run_dir else None)
        return spec_from_dict(yaml.safe_load(attrs["study_yaml"]), source)
    if results.spec:
        return spec_from_dict(results.spec, str(results.run_dir / STUDY_FILE) if results.run_dir else None)
    raise AutocompressError(f"study '{results.study.study_name}' carries no study definition: cannot export")


def export_study(results: Any, *, rule: Any, out: Path | None = None,
                 say: Callable[[str], None] = lambda m: None) -> ExportResult:
    """Choose a trial by ``rule`` (``autocompress.report.select.Rule``) and write its bundle.

    Example:
        >>> from autocompress.search.results import load_results
        >>> from autocompress.report.select import Rule
        >>> rule = Rule(max_accuracy_drop=0.01, minimize="latency_ms")
        >>> export_study(load_results("digits-cnn"), rule=rule)  # doctest: +SKIP
    """
    from autocompress.spec.policy import Policy
    from autocompress.report.select import choose

    choice = choose(results.study, rule)
    t = choice.trial
    spec = study_spec_of(results)
    run_dir = results.run_dir
    if out is None:
        if run_dir is None:
            raise AutocompressError("the study has no local run directory: pass --out DIR")
        out = run_dir / "export"
    say(f"chose trial {t.number} ({t.user_attrs.get('policy_summary', '')}) by: {choice.rule}")
    policy = Policy.from_dict(t.user_attrs["policy"])
    seed = spec.seed + t.number                       # as the search ran it (study._trial_context)
    saved = run_dir / t.user_attrs.get("model_dir", f"trials/{t.number}") if run_dir else None
    epochs = t.user_attrs.get("epochs_run", spec.budget.epochs)
    common = dict(policy=policy, seed=seed, epochs=epochs, train_fraction=spec.budget.train_fraction,
                  study_name=results.study.study_name, study_spec=_spec_document(spec),
                  study_source=source_of(spec),
                  run_dir=str(run_dir.resolve()) if run_dir else None, trial=t.number,
                  baseline_metrics=results.study.user_attrs.get("baseline_metrics") or {}, rule=choice.rule,
                  notes=choice.notes)
    if saved is not None and (saved / MODEL_FILE).is_file():
        model = load_exported(saved)
        structure = json.loads((saved / STRUCTURE_FILE).read_text())
        bundle = Bundle(model=model, structure=structure, metrics=t.user_attrs.get("metrics") or {},
                        measured_on=t.user_attrs.get("measured_on") or {}, proof=t.user_attrs.get("proof"),
                        history=t.user_attrs.get("history"),
                        provenance=f"the model trial {t.number} trained and measured during the search "
                                   f"(saved under {saved.name if run_dir is None else saved.relative_to(run_dir)})",
                        **common)
    else:
        say(f"trial {t.number}'s model was not saved by the search: re-running its policy (seed {seed})")
        from autocompress.bundle.apply import study_context
        from autocompress.trial.run import run_trial

        # as many epochs as the trial ran (early stopping may have ended it before the budget)
        ctx = study_context(spec, baseline_dir=run_dir or Path(out), epochs=epochs, say=say)
        try:
            res = run_trial(policy, replace(ctx, seed=seed), keep_model=True)
        except TrialFailed as exc:
            raise AutocompressError(f"re-running trial {t.number} failed: {exc.reason}") from None
        except Exception as exc:  # as in the search, where it fails the trial
            raise AutocompressError(f"re-running trial {t.number} failed: {error_line(exc)}") from None
        bundle = Bundle(model=res.model, structure=structure_for(res.model, spec, ctx.data, policy),
                        metrics=res.metrics, measured_on=res.measured_on, proof=res.proof, history=res.history,
                        provenance=f"re-run of trial {t.number}'s policy with its seed at export time "
                                   f"(the search recorded accuracy {_num(t, 'accuracy')}, this run "
                                   f"{res.metrics.get('accuracy', math.nan):.4f})", **common)
    artifacts = write_bundle(bundle, Path(out))
    return ExportResult(Path(out), t.number, choice.rule, bundle.provenance, artifacts, choice.notes)


def source_of(spec: Any) -> str | None:
    """The study file's absolute path (relative paths in the study resolve against it)."""
    if spec.source and Path(spec.source).exists():
        return str(Path(spec.source).resolve())
    return spec.source


def _num(t: Any, metric: str) -> str:
    v = (t.user_attrs.get("metrics") or {}).get(metric)
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def _spec_document(spec: Any) -> dict[str, Any]:
    """The study as a plain dict (search space inlined), for policy.yaml."""
    from autocompress.spec.config import spec_to_yaml

    return yaml.safe_load(spec_to_yaml(spec))
