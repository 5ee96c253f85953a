"""The hidden size of a transformer (its residual stream) as a pruning unit: ``pruning.hidden_ratio``.

Torch-Pruning couples the whole residual stream into one group: the embeddings' widths, every
LayerNorm, the inputs of the query/key/value projections, of the FFN and of the pooler, the
outputs of the attention-output and FFN-output projections. It is found as the group that resizes
an Embedding's outputs and an attention projection's inputs (``is_hidden_group``), scored with the
trial's criterion like every other group, and cut at ``hidden_ratio``, the kept width rounded to a
multiple of 8 (at least 8). Only the projections' *input* widths change: heads, head size and
the all-heads width stay as they are.

A LayerNorm normalises over these channels, so removing them is not zeroing them (the mean and
variance are taken over fewer channels): the verification of the other groups (removal equals
zeroing) cannot hold. This cut is verified otherwise (``check_hidden``): every layer of the group
has the new width in its attributes and its parameters, the attention modules stay coherent, the
configs that hold the hidden size say the new width, and the model runs in eval and train mode
with outputs of the shape it had. A policy this cannot honour ends the trial before training.
"""

from __future__ import annotations

from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autocompress.compress.base import TechniqueContext
from autocompress.compress.pruning.graph import ROOTS, CannotTrace, dependency_graph
from autocompress.compress.pruning.heads import Attention, attention_modules
from autocompress.compress.pruning.importance import group_importance, taylor_gradients
from autocompress.compress.pruning.plan import protected_layers
from autocompress.errors import TrialFailed
from autocompress.spec.policy import PruningPolicy
from autocompress.utils import error_line

MIN_WIDTH = 8
ALIGN = 8   # kept widths a multiple of 8 where possible: what matrix kernels tile by
NOT_ZEROING = ("not checked: every LayerNorm over the hidden size normalises over its channels, so removing "
               "channels changes the mean and variance the others are normalised by (removing is not zeroing)")
LEFT_WHOLE = ("the hidden size (the residual stream): cut only by pruning.hidden_ratio, here 0 (a LayerNorm over it "
              "makes removing differ from zeroing)")


def is_hidden_group(graph: tp.DependencyGraph, group: Any, names: dict[nn.Module, str],
                    projections: Any) -> bool:
    """Whether ``group`` is a transformer's residual stream: it resizes an Embedding's outputs and
    the inputs of an attention projection (named in ``projections``)."""
    embedding = projection = False
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        embedding |= isinstance(module, nn.Embedding) and graph.is_out_channel_pruning_fn(handler)
        projection |= names.get(module) in projections and graph.is_in_channel_pruning_fn(handler)
    return embedding and projection


def kept_width(width: int, ratio: float) -> int:
    """The hidden size kept at ``ratio`` of ``width``: a multiple of 8 where that removes something,
    never under 8; ``TrialFailed`` where that cannot be."""
    raw = width - int(width * ratio)
    if raw < MIN_WIDTH:
        raise TrialFailed(f"pruning.hidden_ratio {ratio:g} would keep {max(raw, 0)} of the hidden size {width}: "
                          f"fewer than {MIN_WIDTH}")
    aligned = max(MIN_WIDTH, round(raw / ALIGN) * ALIGN)
    kept = aligned if aligned < width else raw
    if kept >= width:
        raise TrialFailed(f"pruning.hidden_ratio {ratio:g} removes no channel of the hidden size {width}")
    return kept


def _hidden_group(model: nn.Module, graph: tp.DependencyGraph, p: PruningPolicy) -> Any:
    names = {m: n for n, m in model.named_modules()}
    projections = {proj for a in attention_modules(model) for proj in a.projections}
    group = next((g for g in graph.get_all_groups(ignored_layers=[], root_module_types=ROOTS)
                  if is_hidden_group(graph, g, names, projections)), None)
    if group is None:
        raise TrialFailed(f"pruning.hidden_ratio {p.hidden_ratio:g}: this model has no hidden-size group (the "
                          "residual stream of a transformer: embeddings, LayerNorms, attention projections' inputs)")
    protected = set(protected_layers(model, p.protect))
    tied = [n for i in group if graph.is_out_channel_pruning_fn(i.dep.handler)
            and (n := names.get(i.dep.target.module)) in protected]
    if tied:
        raise TrialFailed(f"pruning.hidden_ratio {p.hidden_ratio:g}: the hidden size is tied to the protected "
                          f"layer {tied[0]}")
    return group


def _layers(graph: tp.DependencyGraph, group: Any, names: dict[nn.Module, str]) -> dict[str, list[str]]:
    """{layer: ["in"] | ["out"] | ["in", "out"]}: which widths of each named layer of the group are the hidden size."""
    found: dict[str, list[str]] = {}
    for item in group:
        name = names.get(item.dep.target.module)
        if name is not None:
            side = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            found[name] = sorted({*found.get(name, []), side})
    return found


def prune_hidden(model: nn.Module, example: torch.Tensor, p: PruningPolicy, ctx: TechniqueContext) -> dict[str, Any]:
    """Cut ``p.hidden_ratio`` of the hidden size from ``model`` in place, verified; the proof's facts."""
    try:
        graph = dependency_graph(model, example)
    except CannotTrace as exc:
        raise TrialFailed(f"pruning.hidden_ratio {p.hidden_ratio:g}: Torch-Pruning cannot trace the model "
                          f"({exc})") from None
    group = _hidden_group(model, graph, p)
    names = {m: n for n, m in model.named_modules()}
    width = len(group[0].idxs)
    kept = kept_width(width, p.hidden_ratio)
    if p.criterion == "taylor":
        taylor_gradients(model, ctx)
    try:
        with torch.no_grad():
            scores, why = group_importance(p.criterion)(group), "no importance could be computed for it"
    except Exception as exc:   # noqa: BLE001 - e.g. its tracer mis-maps a layer's channels
        scores, why = None, error_line(exc)
    model.zero_grad(set_to_none=True)
    if scores is None:
        raise TrialFailed(f"pruning.hidden_ratio {p.hidden_ratio:g}: Torch-Pruning cannot score the hidden size "
                          f"({why})")
    remove = sorted(int(i) for i in torch.argsort(scores.float().cpu())[:width - kept])
    layers, root = _layers(graph, group, names), group[0].dep.target.module
    attentions, out_shape = attention_modules(model), _outputs(model, example).shape
    heads = {a.name: _attention_widths(model, a) for a in attentions}
    cut = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, remove)
    if not graph.check_pruning_group(cut):
        raise TrialFailed(f"pruning.hidden_ratio {p.hidden_ratio:g}: Torch-Pruning refuses to cut the hidden size")
    cut.prune()
    configs = set_hidden_size(model, width, kept)
    check_hidden(model, example, layers, (width, kept), heads, out_shape)
    return {"hidden_size_before": width, "hidden_size_after": kept,
            "hidden": {"root": names[root], "layers": layers, "channels": [width, kept], "criterion": p.criterion,
                       "configs": configs, "verified": "every layer's width and parameters, the attention modules' "
                       "widths, the configs, a forward pass in eval and train mode with outputs of the same shape",
                       "removal_equals_zeroing": NOT_ZEROING}}


def set_hidden_size(model: nn.Module, before: int, after: int) -> list[str]:
    """Set ``hidden_size`` to ``after`` on every config of ``model``'s modules that says ``before``
    (a Hugging Face config; DistilBERT's maps it to ``dim``); the first module holding each one."""
    names = []
    for name, m in model.named_modules():
        config = getattr(m, "config", None)
        if isinstance(getattr(config, "hidden_size", None), int) and config.hidden_size == before:
            config.hidden_size = after
            names.append(name or "(the model)")
    return names


def _outputs(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    with torch.no_grad():
        out = model.eval()(example)
    model.train(was_training)
    return out


def _attention_widths(model: nn.Module, a: Attention) -> tuple[int, ...]:
    """(heads, all-heads width) of one attention module: hidden-size pruning leaves both as they are."""
    return a.heads(model), model.get_submodule(a.projections[0]).out_features


def _width(module: nn.Module, side: str) -> tuple[int, int] | None:
    """(the width ``module``'s attributes say, the width its weight has) on ``side``; None where unknown."""
    w = getattr(module, "weight", None)
    if isinstance(module, nn.Linear) and w is not None:
        return (module.out_features, w.shape[0]) if side == "out" else (module.in_features, w.shape[1])
    if isinstance(module, nn.Embedding):
        return module.embedding_dim, module.weight.shape[1]
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1], (w.shape[-1] if w is not None else module.normalized_shape[-1])
    return None


def check_hidden(model: nn.Module, example: torch.Tensor, layers: dict[str, list[str]], widths: tuple[int, int],
                 attention: dict[str, tuple[int, ...]], out_shape: torch.Size) -> None:
    """``TrialFailed`` with the first thing that does not hold after the hidden size was cut from
    ``widths[0]`` to ``widths[1]``: the layers' widths, the attention modules' (``attention``: as they
    were before), the configs, a forward pass in eval and train mode (``out_shape``: as it was)."""
    before, kept = widths

    def fail(what: str) -> None:
        raise TrialFailed(f"pruning.hidden_ratio: after cutting the hidden size to {kept}, {what}")

    for name, sides in layers.items():
        for side in sides:
            now = _width(model.get_submodule(name), side)
            if now is not None and now != (kept, kept):
                fail(f"{name} has {side} width {now[0]} (weight {now[1]})")
    for a in attention_modules(model):
        now = _attention_widths(model, a)
        ins = {model.get_submodule(proj).in_features for proj in a.projections}
        if ins != {kept} or now != attention.get(a.name, now) or now[0] * a.head_size != now[1]:
            fail(f"the attention {a.name} is not coherent (inputs {sorted(ins)}, heads and width {now})")
    for name, m in model.named_modules():
        size = getattr(getattr(m, "config", None), "hidden_size", None)
        if isinstance(size, int) and size == before:
            fail(f"the config of {name or 'the model'} says hidden_size {size}")
    was_training = model.training
    try:
        out = _outputs(model, example)
        with torch.no_grad():
            model.train()(example)
    except Exception as exc:   # noqa: BLE001 - the model no longer runs: the cut is refused, with why
        fail(f"the model no longer runs ({error_line(exc)})")
    finally:
        model.train(was_training)
    if out.shape != out_shape:
        fail(f"its output has shape {tuple(out.shape)} instead of {tuple(out_shape)}")
