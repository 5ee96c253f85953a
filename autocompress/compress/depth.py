"""Student depth: keep ``k`` of the teacher's ``L`` transformer layers (DistilBERT-style).

The layer stack is found generically: the ``nn.ModuleList`` or ``nn.Sequential`` with the most
children, all of one class, each holding at least one ``nn.Linear`` (BERT's
``bert.encoder.layer``, DistilBERT's ``distilbert.transformer.layer``, a torch
``nn.TransformerEncoder``'s ``layers``, torchvision ViT's ``encoder.layers``). Which layers stay:

* ``every_other``: evenly spaced, ``round((i + 1) * L / k) - 1`` for i < k (L/2 of L: 1, 3, 5, ...,
  as DistilBERT initialises its student from every other teacher layer);
* ``first`` / ``last``: the first or the last k;
* ``importance``: the k layers whose removal alone changes the logits most on a calibration batch
  (eval mode, one removal at a time); the others go.

The kept layers keep the teacher's weights and are renumbered 0..k-1 (a ``Sequential`` keeps the
names of its first k positions), so the state dict reads like that of a model built with k layers.
Configs' ``num_hidden_layers``, a ``TransformerEncoder``'s ``num_layers`` and per-layer
``layer_idx`` attributes follow. ``keep_layers`` is the one function that does it; ``fit_depth``
cuts a model built at the teacher's depth to the layers a saved student names (export's rebuild).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from autocompress.compress.base import Declaration, Technique
from autocompress.errors import TrialFailed
from autocompress.metrics.size import count_params
from autocompress.spec.policy import Policy
from autocompress.utils import device_of


# -- the layer stack -----------------------------------------------------------------------------
def layer_stack(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The name and module of the model's stack of transformer layers, or None."""
    best: tuple[str, nn.Module] | None = None
    for name, m in model.named_modules():
        if not isinstance(m, (nn.ModuleList, nn.Sequential)) or len(m) == 0:
            continue
        children = list(m.children())
        if len({type(c) for c in children}) != 1 or isinstance(children[0], nn.Linear):
            continue
        if not all(any(isinstance(s, nn.Linear) for s in c.modules()) for c in children):
            continue
        if best is None or len(m) > len(best[1]):
            best = (name, m)
    return best


def keep_layers(model: nn.Module, container: str, kept: Sequence[int]) -> None:
    """Keep only the layers ``kept`` (indices, in order) of the stack named ``container``."""
    stack = model.get_submodule(container)
    layers = [stack[i] for i in kept]
    if isinstance(stack, nn.Sequential):
        names = list(stack._modules)[:len(layers)]
        fresh: nn.Module = nn.Sequential(OrderedDict(zip(names, layers)))
    else:
        fresh = nn.ModuleList(layers)
    model.set_submodule(container, fresh)
    k = len(layers)
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None
               and hasattr(c, "num_hidden_layers")}
    for config in configs.values():
        config.num_hidden_layers = k
        types = getattr(config, "layer_types", None)
        if isinstance(types, list) and len(types) == len(stack):
            config.layer_types = [types[i] for i in kept]
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder):
            m.num_layers = len(m.layers)
    for i, layer in enumerate(layers):
        for m in layer.modules():
            if isinstance(getattr(m, "layer_idx", None), int):
                m.layer_idx = i


def fit_depth(model: nn.Module, layer_names: Iterable[str]) -> int | None:
    """Drop the stack's layers that none of ``layer_names`` (a saved model's module names) lies
    under: how a model built at the teacher's depth takes a shallower student's state dict.
    Returns the depth kept, or None when nothing was dropped."""
    found = layer_stack(model)
    if found is None:
        return None
    container, stack = found
    names = list(layer_names)
    kept = [i for i, child in enumerate(stack._modules)
            if any(n == f"{container}.{child}" or n.startswith(f"{container}.{child}.") for n in names)]
    if not kept or len(kept) == len(stack):
        return None
    keep_layers(model, container, kept)
    return len(kept)


# -- which layers stay ---------------------------------------------------------------------------
def evenly_spaced(total: int, k: int) -> list[int]:
    return [max(0, round((i + 1) * total / k) - 1) for i in range(k)]


@torch.no_grad()
def removal_effects(model: nn.Module, container: str, example: torch.Tensor) -> list[float]:
    """For each layer of the stack: how far the logits move (mean absolute change) without it."""
    was_training, stack = model.training, model.get_submodule(container)
    total = len(stack)
    model.eval()
    try:
        full = model(example)
        effects = []
        for drop in range(total):
            trial = _without(stack, drop)
            model.set_submodule(container, trial)
            effects.append(float((model(example) - full).abs().mean()))
    finally:
        model.set_submodule(container, stack)
        model.train(was_training)
    return effects


def _without(stack: nn.Module, drop: int) -> nn.Module:
    items = [(n, c) for i, (n, c) in enumerate(stack._modules.items()) if i != drop]
    return nn.Sequential(OrderedDict(items)) if isinstance(stack, nn.Sequential) else nn.ModuleList(
        [c for _, c in items])


def chosen(selection: str, total: int, k: int, effects: list[float] | None = None) -> list[int]:
    """The indices of the k layers that stay, ascending."""
    if selection == "first":
        return list(range(k))
    if selection == "last":
        return list(range(total - k, total))
    if selection == "importance":
        assert effects is not None
        ranked = sorted(range(total), key=lambda i: (-effects[i], i))
        return sorted(ranked[:k])
    return evenly_spaced(total, k)


# -- the technique -------------------------------------------------------------------------------
def misfit(model: nn.Module, k: int) -> str | None:
    """Why ``depth.layers: k`` cannot apply to ``model`` (None: it can; 0 always can)."""
    if k <= 0:
        return None
    found = layer_stack(model)
    if found is None:
        return (f"depth.layers {k}: the model has no stack of transformer layers (an nn.ModuleList or "
                "nn.Sequential of blocks of one class with Linear layers)")
    container, stack = found
    if k >= len(stack):
        return f"depth.layers {k} keeps every layer: the model has {len(stack)} ({container})"
    return None


def select(policy: Policy) -> type[Technique] | None:
    """Layer dropping where ``depth.layers`` keeps fewer than all layers (0 = all)."""
    return LayerDropping if policy.depth.layers > 0 else None


class LayerDropping(Technique):
    """A shallower student: k of the teacher's transformer layers, teacher weights kept."""
    name = "depth"

    @classmethod
    def declare(cls, policy: Policy) -> Declaration:
        d = policy.depth
        return Declaration(label="layer dropping", summary=f"{d.layers} of layers ({d.selection})", structural=True,
                           structure_final_after_compress=True,
                           card_line=f"depth: {d.layers} transformer layers kept ({d.selection}), teacher weights")

    def __init__(self, policy, ctx, pipeline) -> None:
        super().__init__(policy, ctx, pipeline)
        self.d = policy.depth
        self.facts: dict[str, Any] = {}

    def compress(self, model: nn.Module) -> nn.Module:
        reason = misfit(model, self.d.layers)
        if reason is not None:
            raise TrialFailed(reason)
        container, stack = layer_stack(model)
        total, k = len(stack), self.d.layers
        effects = None
        if self.d.selection == "importance":
            effects = removal_effects(model, container, self.ctx.example_batch(8).to(device_of(model)))
        kept = chosen(self.d.selection, total, k, effects)
        params_before = count_params(model)[0]
        keep_layers(model, container, kept)
        self.facts = {"layers_before": total, "layers_after": k, "kept": kept, "selection": self.d.selection,
                      "container": container, "params_before": params_before,
                      "params_after": count_params(model)[0]}
        if effects is not None:
            self.facts["removal_effects"] = [float(f"{e:.4g}") for e in effects]
        return model

    def proof(self) -> dict[str, Any]:
        return {"depth": dict(self.facts)}
