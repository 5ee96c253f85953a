"""The sensitivity pass: per layer group, how much the task loss and accuracy change when only
that group is quantized to each candidate format, and when only that group is pruned at a few
ratios (``compress.sensitivity`` says what is measured and how per-layer policies use it).

It runs once per study, after the baseline, when the search space has a per-layer knob
(``needed``), and is cached next to the baseline (``sensitivity.json``). Every number is
measured on the trained baseline; nothing is a proxy. On a calibration subset of the validation
split (``SAMPLES``) one group costs one quantized copy of the model plus one evaluation per
format, and one masked copy per pruning ratio: for a MobileNetV2 at 32x32 a few seconds a group
on this machine's CPU.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import Subset

from autocompress.compress.groups import LayerGroup, layer_groups
from autocompress.compress.pruning.plan import protected_layers
from autocompress.compress.quantization import torch_ao
from autocompress.compress.quantization.torchao_modes import CONFIGS, quantize_linear, why_missing
from autocompress.compress.sensitivity import MEASURED_AS, PRUNE_RATIOS, Delta, Sensitivity, needs_pass
from autocompress.errors import TrialFailed
from autocompress.spec.policy import Policy
from autocompress.trial.context import TrialContext
from autocompress.utils import atomic_write_text, error_line
from autocompress.zoo.data import make_loader

FILE = "sensitivity.json"
SAMPLES = 512
CALIBRATION_BATCHES = 4
PER_GROUP = ("dynamic_int8", "static_int8", *CONFIGS)   # formats a single group can be measured in


def formats_for(policies: list[Policy]) -> list[str]:
    """The formats to measure: those the policies' keep_float_top_k ranks groups for."""
    out: list[str] = []
    for p in policies:
        q = p.quantization
        if q.mode != "none" and q.keep_float_top_k > 0:
            fmt = MEASURED_AS.get(q.mode, q.mode)
            if fmt not in out:
                out.append(fmt)
    return out


def needed(policies: list[Policy]) -> bool:
    return any(needs_pass(p.quantization, p.pruning) for p in policies)


@torch.inference_mode()
def _score(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    model.eval()
    loss = correct = total = 0.0
    for x, y in batches:
        logits = model(x).float()
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
        total += y.numel()
    return loss / total, correct / total


def _quantize_only(model: nn.Module, group: LayerGroup, fmt: str, ctx: TrialContext) -> nn.Module | None:
    """A copy of ``model`` with only ``group`` in ``fmt``; None when ``fmt`` changes nothing in it."""
    only = torch_ao.Layout(only=group.name)
    copied = copy.deepcopy(model).cpu().eval()
    if fmt == "dynamic_int8":
        out = torch_ao.quantize_dynamic(copied, per_channel=True, layout=only)
    elif fmt == "static_int8":
        prepared = torch_ao.prepare_static(copied, ctx.example_batch(), per_channel=True, layout=only)
        with torch.no_grad(), torch_ao.quiet():
            for i, (x, _) in enumerate(make_loader(ctx.data.train, 32, shuffle=True, seed=ctx.seed)):
                if i >= CALIBRATION_BATCHES:
                    break
                prepared(x)
        out = torch_ao.convert(prepared)
    else:
        try:
            out = quantize_linear(copied, fmt, only)[0]
        except TrialFailed:   # no Linear torchao takes in this group
            return None
    return out if torch_ao.quantized_layers(out) or fmt in CONFIGS else None


def _prune_only(model: nn.Module, group: LayerGroup, ratio: float, protected: set[str]) -> nn.Module | None:
    """A copy with ``ratio`` of each unprotected layer's output channels in ``group`` zeroed
    (smallest L1 norm first), with the BatchNorm that follows each; None when nothing is prunable."""
    copied = copy.deepcopy(model).cpu().eval()
    modules = list(copied.named_modules())
    touched = False
    with torch.no_grad():
        for i, (name, m) in enumerate(modules):
            if name not in group.layers or name in protected or not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                continue
            width = m.weight.shape[0]
            n_cut = int(width * ratio)
            if n_cut <= 0 or n_cut >= width:
                continue
            cut = torch.argsort(m.weight.detach().flatten(1).abs().sum(1))[:n_cut]
            m.weight[cut] = 0
            if m.bias is not None:
                m.bias[cut] = 0
            norm = next((b for _, b in modules[i + 1:i + 3] if isinstance(b, nn.modules.batchnorm._BatchNorm)
                         and b.num_features == width), None)
            if norm is not None and norm.affine:
                norm.weight[cut] = 0
                norm.bias[cut] = 0
            touched = True
    return copied if touched else None


def measure(ctx: TrialContext, formats: list[str], *, say: Callable[[str], None] = lambda m: None) -> Sensitivity:
    """The sensitivity of every layer group of ``ctx.teacher`` (see the module docstring)."""
    start = time.perf_counter()
    model = copy.deepcopy(ctx.teacher).cpu().eval()
    groups = layer_groups(model)
    val = ctx.data.val
    subset = Subset(val, list(range(min(SAMPLES, len(val)))))
    batches = list(make_loader(subset, 128, shuffle=False))
    loss, acc = _score(model, batches)
    quant: dict[str, dict[str, Delta]] = {}
    skipped: dict[str, str] = {}
    for fmt in formats:
        why = (None if fmt in PER_GROUP else "no per-group measurement for it") or (
            why_missing(fmt) if fmt in CONFIGS else None)
        if why:
            skipped[fmt] = why
            continue
        quant[fmt] = {}
        for g in groups:
            try:
                q = _quantize_only(model, g, fmt, ctx)
            except TrialFailed as exc:
                skipped[f"{fmt}@{g.name}"] = str(exc)
                continue
            if q is not None:
                quant[fmt][g.name] = _delta(q, batches, loss, acc)
        say(f"sensitivity: {fmt} measured on {len(quant[fmt])} of {len(groups)} layer groups")
    protected = set(protected_layers(model))
    prune: dict[str, dict[str, Delta]] = {}
    for ratio in PRUNE_RATIOS:
        prune[f"{ratio:g}"] = {g.name: _delta(m, batches, loss, acc) for g in groups
                               if (m := _prune_only(model, g, ratio, protected)) is not None}
    return Sensitivity(tuple(g.name for g in groups), len(subset), loss, acc, quant, prune,
                       time.perf_counter() - start, skipped)


def _delta(model: nn.Module, batches, loss: float, acc: float) -> Delta:
    new_loss, new_acc = _score(model, batches)
    return Delta(new_loss - loss, acc - new_acc)


def load_or_measure(ctx: TrialContext, run_dir: Path, formats: list[str], *,
                    say: Callable[[str], None] = lambda m: None) -> Sensitivity:
    """The pass cached under ``run_dir`` when it measured every format in ``formats``, else a
    fresh one (written there)."""
    path = Path(run_dir) / FILE
    if path.is_file():
        try:
            cached = Sensitivity.from_dict(json.loads(path.read_text(encoding="utf-8")))
            if all(f in cached.quantization or f in cached.skipped for f in formats):
                return cached
            formats = list(dict.fromkeys([*cached.quantization, *formats]))
        except (ValueError, KeyError, TypeError) as exc:
            say(f"warning: {path} unreadable ({error_line(exc)}); measuring again")
    say(f"sensitivity pass: {', '.join(formats) or 'pruning only'} per layer group")
    result = measure(ctx, formats, say=say)
    atomic_write_text(path, json.dumps(result.to_dict(), indent=1))
    say(f"sensitivity pass: {len(result.groups)} layer groups in {result.seconds:.1f} s")
    return result
