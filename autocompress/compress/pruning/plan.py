"""Which layers structured and weight pruning touch, at which ratio, and which channels are
tied: the first conv, the last Linear (classifier) and the last prunable layer are protected,
plus ``pruning.protect``; layers whose output channels are tied (residual add, SE multiply, a
depthwise conv and its producer) share one mask, from NNI's channel dependency groups on a
``torch.fx`` graph whose tensor shapes ``ShapeProp`` recorded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from autocompress.compress.pruning.allocation import layer_ratios
from autocompress.compress.pruning.engine import load_nni, nni_quiet, trace
from autocompress.errors import TrialFailed
from autocompress.spec.policy import PruningPolicy

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
CONV = (nn.Conv1d, nn.Conv2d)

Masks = dict[str, dict[str, torch.Tensor]]   # {module name: {"weight" | "bias": 0/1 tensor}}

# -- which layers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """The layers pruned and the ratio of each; ``config`` is NNI's config list for them."""
    ratios: dict[str, float]                 # target layer -> ratio, module order
    protected: tuple[str, ...]
    coupled: tuple[str, ...] = ()            # skipped: channels tied to a protected layer
    config: tuple[dict[str, Any], ...] = ()  # structured: one entry per layer, with dependency groups
    norms: dict[str, str] = field(default_factory=dict)   # layer -> the BatchNorm right after it

    def scaled(self, fraction: float) -> list[dict[str, Any]]:
        """The config list at ``fraction`` of every layer's ratio (layers at 0 left out)."""
        out = []
        for entry in self.config:
            ratio = round(entry["sparse_ratio"] * fraction, 6)
            if ratio > 0:
                out.append({**entry, "sparse_ratio": min(ratio, 0.999)})
        return out


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def protected_layers(model: nn.Module, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """First conv, last Linear, last prunable layer, and everything under the names in ``extra``."""
    layers = prunable_layers(model)
    names = {n for n, _ in layers}
    missing = [p for p in extra if p not in dict(model.named_modules())]
    if missing:
        raise TrialFailed(f"pruning.protect names no module of this model: {missing}")
    out = [n for n, m in layers if isinstance(m, CONV)][:1]
    out += [n for n, m in layers if isinstance(m, nn.Linear)][-1:]
    out += [n for n, _ in layers][-1:]
    out += [n for n in names for p in extra if n == p or n.startswith(p + ".")]
    return tuple(n for n, _ in layers if n in set(out))


def plan_weight(model: nn.Module, p: PruningPolicy) -> Plan:
    protected = protected_layers(model, p.protect)
    targets = [n for n, _ in prunable_layers(model) if n not in protected]
    return Plan(layer_ratios(targets, p, model), protected)


def plan_structured(model: nn.Module, p: PruningPolicy, example: torch.Tensor, sensitivity: Any = None) -> Plan:
    """Target layers, their ratios and NNI dependency groups (tied channels share one mask)."""
    load_nni()
    from nni.compression.speedup.dependency import auto_set_denpendency_group_ids, build_channel_dependency

    graph = trace(model)
    with torch.no_grad():
        ShapeProp(graph).propagate(example)  # NNI's dependency analysis reads the tensor shapes
    protected = protected_layers(model, p.protect)
    called = {node.target for node in graph.graph.nodes if node.op == "call_module"}  # not e.g. aux heads
    candidates = [n for n, _ in prunable_layers(model) if n not in protected and n in called]
    coupled: set[str] = set()
    with nni_quiet():
        for group in build_channel_dependency(graph):
            names = {node.target for node in group}
            if names - set(candidates):
                coupled |= names & set(candidates)
    targets = [n for n in candidates if n not in coupled]
    ratios = layer_ratios(targets, p, model, sensitivity)
    config = [{"op_names": [n], "sparse_ratio": r} for n, r in ratios.items()]
    with nni_quiet():
        config = auto_set_denpendency_group_ids(graph, config) if config else []
    # NNI needs one ratio per dependency group: that of its earliest layer
    order = {n: i for i, n in enumerate(ratios)}
    group_ratio: dict[str, float] = {}
    for entry in sorted(config, key=lambda e: order[e["op_names"][0]]):
        gid = entry.get("dependency_group_id")
        if gid is not None:
            entry["sparse_ratio"] = group_ratio.setdefault(gid, entry["sparse_ratio"])
    ratios = {e["op_names"][0]: e["sparse_ratio"] for e in sorted(config, key=lambda e: order[e["op_names"][0]])}
    return Plan(ratios, protected, tuple(n for n in candidates if n in coupled), tuple(config),
                _norms_after(graph, set(ratios)))


def _norms_after(graph: torch.fx.GraphModule, layers: set[str]) -> dict[str, str]:
    """The BatchNorm that alone consumes each layer's output."""
    modules = dict(graph.named_modules())
    out = {}
    for node in graph.graph.nodes:
        if node.op == "call_module" and node.target in layers and len(node.users) == 1:
            user = next(iter(node.users))
            norm = modules.get(user.target) if user.op == "call_module" else None
            if isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.affine:
                out[node.target] = user.target
    return out


def with_norms(masks: Masks, norms: dict[str, str]) -> Masks:
    """Masks that also zero the BatchNorm scale and shift of pruned channels: the masked model
    then computes exactly what the shrunk one will (a zeroed conv alone still emits BN's shift)."""
    out = dict(masks)
    for layer, norm in norms.items():
        if layer in masks and "weight" in masks[layer]:
            alive = masks[layer]["weight"].flatten(1).any(dim=1).float()
            out[norm] = {"weight": alive, "bias": alive.clone()}
    return out


# -- measure ----------------------------------------------------------------------------------
def out_widths(model: nn.Module) -> dict[str, int]:
    """Output channels / features of every Conv and Linear layer."""
    return {n: (m.out_channels if isinstance(m, CONV) else m.out_features) for n, m in prunable_layers(model)}


def zero_fraction(model: nn.Module, names: list[str]) -> float:
    """Fraction of exact zeros in the weights of the layers ``names``."""
    modules = dict(model.named_modules())
    zeros = total = 0
    for n in names:
        w = modules[n].weight
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def channel_sparsity(masks: Masks, widths: dict[str, int]) -> float:
    """Fraction of the output channels of the layers in ``widths`` that ``masks`` zero."""
    pruned = 0
    for n in widths:
        mask = masks.get(n, {}).get("weight")
        if mask is not None:
            pruned += int((~mask.flatten(1).any(dim=1)).sum())
    total = sum(widths.values())
    return pruned / total if total else 0.0
