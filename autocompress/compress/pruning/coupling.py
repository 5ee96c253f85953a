"""Channel coupling from Torch-Pruning's dependency graph, and a shrink that is verified.

Torch-Pruning (1.6) traces the model with forward hooks and follows every op that ties
channels together: residual adds (also inside a user's own block, with the activation after
the add), concatenations, channel shuffles and reshapes, depthwise and grouped convolutions,
BatchNorm/LayerNorm/GroupNorm, squeeze-excitation gates, permutes, attention projections. Each
*group* is the set of layers whose channels must go together; its root is a Conv or Linear
whose output channels lead it.

``plan_groups`` scores every group with the criterion (Torch-Pruning's group importances:
L1/L2 magnitude, FPGM, Taylor on training batches) and picks the channels to remove at the
root layer's ratio; a group that holds a protected layer's output channels (first conv,
classifier, ``pruning.protect``) is left whole. ``shrink_groups`` removes them for real, and
the removal is verified: the shrunk model's outputs must equal those of the same model with
those channels zeroed (``group_masks``) on a calibration batch. Where they differ, zeroing is
not removing (a LayerNorm normalises over the channels, so the others' statistics change):
those groups are left whole, with the reason, and the rest is pruned; only when no group at
all can be pruned does the trial fail.

The same planning, masks, cuts and verification serve the whole model and the blocks of it
traced alone (``graph.Scope``): a cut inside a block that would change what the block takes or
gives is left whole, with the reason. A transformer's hidden size (its residual stream) is never
cut here: ``hidden_width`` cuts it at ``pruning.hidden_ratio``, verified otherwise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from autocompress.compress.base import TechniqueContext
from autocompress.compress.pruning.graph import ROOTS, CannotTrace, Scope
from autocompress.compress.pruning.heads import attention_modules, sync_head_counts, whole_heads
from autocompress.compress.pruning.hidden_width import LEFT_WHOLE as HIDDEN_WHOLE, is_hidden_group
from autocompress.compress.pruning.allocation import global_counts, layer_ratios
from autocompress.compress.pruning.importance import group_importance, taylor_gradients
from autocompress.compress.pruning.plan import Masks, protected_layers
from autocompress.errors import TrialFailed
from autocompress.spec.policy import PruningPolicy
from autocompress.utils import error_line

VERIFY_RTOL = 1e-4          # of the largest |output|: float rounding of a smaller sum


@dataclass(frozen=True)
class GroupCut:
    """One group of coupled channels: its root layer, every layer it resizes, what goes. ``block``:
    the module whose own dependency graph holds the group ("" for the whole model)."""
    root: str
    layers: tuple[str, ...]
    width: int
    remove: tuple[int, ...]
    ratio: float
    block: str = ""
    heads: tuple[int, int] | None = None   # attention heads before and after, where the group is one


@dataclass
class Cuts:
    """The groups to cut, and the groups left whole with why."""
    groups: list[GroupCut] = field(default_factory=list)
    left_whole: dict[str, str] = field(default_factory=dict)
    protected: tuple[str, ...] = ()


def plan_groups(model: nn.Module, scope: Scope, p: PruningPolicy, ctx: TechniqueContext,
                fraction: float = 1.0) -> Cuts:
    """The channels to cut in each group, at ``fraction`` of each root layer's ratio."""
    names = {m: n for n, m in model.named_modules()}
    protected = set(protected_layers(model, p.protect))
    roots = [n for n, m in model.named_modules() if isinstance(m, ROOTS) and n not in protected]
    ratios = layer_ratios(roots, p, model, getattr(ctx, "sensitivity", None))
    imp = group_importance(p.criterion)
    if p.criterion == "taylor":
        taylor_gradients(model, ctx)
    cuts = Cuts(protected=tuple(n for n, _ in model.named_modules() if n in protected))
    heads = {proj: a for a in attention_modules(model) for proj in a.projections}
    scored = []   # (root, resized, width, ratio, scores, attention, block) of every group that may be cut
    for block, graph in scope.graphs(model).items():
        for group in graph.get_all_groups(ignored_layers=[], root_module_types=ROOTS):
            root = names.get(group[0].dep.target.module, "?")
            resized = tuple(dict.fromkeys(names[i.dep.target.module] for i in group if i.dep.target.module in names))
            if is_hidden_group(graph, group, names, heads):   # cut by hidden_ratio alone (hidden_width)
                if p.hidden_ratio <= 0:
                    cuts.left_whole[root] = HIDDEN_WHOLE
                continue
            tied = [n for i in group if graph.is_out_channel_pruning_fn(i.dep.handler)
                    and (n := names.get(i.dep.target.module)) in protected]
            if tied:
                if tied != [root]:   # a protected layer's own group is no news
                    cuts.left_whole[root] = f"its channels are tied to the protected layer {tied[0]}"
                continue
            width, ratio = len(group[0].idxs), ratios.get(root, p.ratio) * fraction
            attention = next((heads[n] for n in resized if n in heads), None)
            if attention is not None:   # whole heads at head_ratio, or nothing
                ratio = p.head_ratio * fraction
            if min(width - 1, int(width * ratio)) <= 0 and p.allocation != "global":
                continue
            try:
                with torch.no_grad():
                    scores, why = imp(group), "no importance could be computed for it"
            except Exception as exc:   # noqa: BLE001 - e.g. channel indices past a layer's width, where its
                # tracer mis-maps them (a concatenation split again after a shuffle): this group only
                scores, why = None, f"Torch-Pruning cannot score its channels ({error_line(exc)})"
            if scores is None:
                cuts.left_whole[root] = why
                continue
            scored.append((root, resized, width, ratio, scores.float().cpu(), attention, block))
    counts = global_counts(scored, p.ratio * fraction) if p.allocation == "global" else {}
    for root, resized, width, ratio, scores, attention, block in scored:
        if attention is not None:
            if ratio > 0 and (whole := whole_heads(width, scores, ratio, attention.head_size)) is not None:
                cuts.groups.append(GroupCut(root, resized, width, *whole[:1], ratio, block, heads=whole[1]))
            continue
        n_cut = counts.get(root, min(width - 1, int(width * ratio)))
        if n_cut <= 0:
            continue
        remove = tuple(sorted(int(i) for i in torch.argsort(scores)[:n_cut]))
        cut = GroupCut(root, resized, width, remove, n_cut / width, block)
        why = _changes_interface(model, scope, cut) if block else None
        if why:
            cuts.left_whole[root] = why
        else:
            cuts.groups.append(cut)
    model.zero_grad(set_to_none=True)
    return cuts


def _changes_interface(model: nn.Module, scope: Scope, cut: GroupCut) -> str | None:
    """Why cutting ``cut`` inside its block changes what the block takes or gives; None if it does not."""
    block = model.get_submodule(cut.block)
    x = scope.inputs[cut.block]
    with torch.no_grad():
        before = block.eval()(x)
    try:
        alone = _cut(copy.deepcopy(block), Scope.whole(x), [GroupCut(
            cut.root[len(cut.block) + 1:], cut.layers, cut.width, cut.remove, cut.ratio)])
        with torch.no_grad():
            after = alone.eval()(x)
    except TrialFailed:
        raise
    except Exception:   # noqa: BLE001 - it no longer takes the input it gets
        return f"its channels reach the input of block {cut.block}, which is traced alone"
    if not isinstance(after, torch.Tensor) or not isinstance(before, torch.Tensor) or after.shape != before.shape:
        return f"its channels are the output of block {cut.block}, which is traced alone"
    return None


def group_masks(model: nn.Module, scope: Scope, cuts: list[GroupCut]) -> Masks:
    """0/1 masks that zero the channels ``cuts`` remove, in every layer whose outputs carry them
    (weights, biases, norm scales and shifts): the model with the channels zeroed."""
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items()}
    graphs = scope.graphs(model)
    masks: Masks = {}
    for cut in cuts:
        graph = graphs[cut.block]
        group = graph.get_pruning_group(modules[cut.root], _root_fn(graph, modules[cut.root]), list(cut.remove))
        for item in group:
            if not graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            module, idxs = item.dep.target.module, list(item.idxs)
            name = names.get(module)
            if name is None:
                continue
            for pname, param in module.named_parameters(recurse=False):
                dim = _channel_dim(module, pname)
                if param.dim() <= dim or max(idxs, default=-1) >= param.shape[dim]:
                    raise CannotZero(f"its channels cannot be zeroed in {name}.{pname} (shape {tuple(param.shape)}, "
                                     f"channel {max(idxs)}): a layer whose channel layout is not known here")
                mask = masks.setdefault(name, {}).get(pname)
                mask = torch.ones_like(param, dtype=torch.bool) if mask is None else mask
                mask.index_fill_(dim, torch.tensor(idxs, dtype=torch.long), False)
                masks[name][pname] = mask
    return masks


class CannotZero(Exception):
    """A layer of the group keeps its channels where this module does not look for them."""


def _channel_dim(module: nn.Module, pname: str) -> int:
    """The dimension of ``module.<pname>`` that holds its output channels."""
    if pname == "weight" and isinstance(module, (nn.modules.conv._ConvTransposeNd, nn.Embedding)):
        return 1
    return 0


def _root_fn(graph: tp.DependencyGraph, module: nn.Module):
    return graph.get_pruner_of_module(module).prune_out_channels


def apply_masks(model: nn.Module, masks: Masks) -> nn.Module:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, targets in masks.items():
            for pname, mask in targets.items():
                params[f"{name}.{pname}" if name else pname].masked_fill_(~mask, 0.0)
    return model


def _cut(model: nn.Module, scope: Scope, cuts: list[GroupCut]) -> nn.Module:
    """``cuts`` applied for real to ``model`` (fresh dependency graphs of it)."""
    graphs = scope.graphs(model)
    modules = dict(model.named_modules())
    for cut in cuts:
        root, graph = modules[cut.root], graphs[cut.block]
        group = graph.get_pruning_group(root, _root_fn(graph, root), list(cut.remove))
        if not graph.check_pruning_group(group):
            raise TrialFailed(f"Torch-Pruning refuses to cut the group of {cut.root}")
        group.prune()
    sync_head_counts(model, attention_modules(model))   # the head counts stay true
    return model


class CutBreaks(Exception):
    """The model with a cut removed no longer runs, in eval or in train mode (the message says how)."""


def verified(model: nn.Module, example: torch.Tensor, scope: Scope, cuts: list[GroupCut]) -> float:
    """Largest |difference| between the model with ``cuts`` zeroed and with them removed (on the
    whole model's ``example``), relative to the largest |output|; ``CutBreaks`` when the cut model
    does not run."""
    masked = copy.deepcopy(model).eval()
    apply_masks(masked, group_masks(masked, scope, cuts))   # CannotZero where a layer cannot be zeroed
    with torch.no_grad():
        reference = masked(example)
    try:
        cut = _cut(copy.deepcopy(model).eval(), scope, cuts)
        with torch.no_grad():
            out = cut(example)
            cut.train()(example)   # fine-tuning runs it in train mode: branches only training takes
    except TrialFailed:
        raise
    except Exception as exc:   # noqa: BLE001 - a model that no longer runs: not this cut
        raise CutBreaks(error_line(exc)) from None
    if out.shape != reference.shape:
        raise CutBreaks(f"output shape {tuple(out.shape)} instead of {tuple(reference.shape)}")
    return float((out - reference).abs().max()) / max(float(reference.abs().max()), 1e-12)


def _why_not(model: nn.Module, example: torch.Tensor, scope: Scope, cuts: list[GroupCut]) -> str | None:
    """Why removing ``cuts`` is not the same as zeroing them; None when it is."""
    try:
        diff = verified(model, example, scope, cuts)
    except CannotZero as exc:
        return str(exc)
    except CutBreaks as exc:   # the error itself, not a guess: a branch only one mode takes (not
        # traced), or a width a layer constrains (grouped convolution, attention heads)
        return f"the model no longer runs with its channels removed, in eval or in train mode ({exc})"
    if diff > VERIFY_RTOL:
        return (f"removing its channels does not give what zeroing them gives (outputs differ by {diff:.2g} of "
                "their range: a normalisation over them, or an op Torch-Pruning cannot follow)")
    return None


def shrink_groups(model: nn.Module, example: torch.Tensor, scope: Scope, cuts: Cuts) -> Cuts:
    """Remove ``cuts`` from ``model`` in place, verified; groups whose removal is not the same as
    zeroing them are left whole (moved to ``left_whole`` with the reason). Returns what was done."""
    was_training = model.training
    model.eval()
    done = Cuts(list(cuts.groups), dict(cuts.left_whole), cuts.protected)
    if done.groups and _why_not(model, example, scope, done.groups) is not None:
        kept = []
        for cut in done.groups:   # find the groups that cannot be removed as zeroed: check them one by one
            why = _why_not(model, example, scope, [cut])
            if why is None:
                kept.append(cut)
            else:
                done.left_whole[cut.root] = why
        done.groups = kept
        if kept and _why_not(model, example, scope, kept) is not None:   # each alone is fine, together they are not
            raise CannotTrace("the groups that can each be removed alone cannot be removed together")
    if done.groups:
        _cut(model, scope, done.groups)
    model.train(was_training)
    return done
