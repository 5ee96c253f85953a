"""The NNI 3.0 machinery under ``pruning.py``: which layers, their masks, and the shrink.

* which layers (``plan_weight``, ``plan_structured``): the prunable layers, the protected ones,
  the AMC-style ratio of each, and for structured pruning NNI's channel dependency groups,
  read from a ``torch.fx`` graph whose tensor shapes ``ShapeProp`` recorded;
* which weights or channels (``magnitude_masks``, ``criterion_masks``): masks from NNI's
  pruners, with the Taylor evaluator and the exact global magnitude threshold;
* masks kept on the weights (``MaskedWeights``, ``with_norms``) and channels removed
  (``shrink``: NNI ``ModelSpeedup`` on an FX trace, checked to still run);
* measures of the result (``out_widths``, ``zero_fraction``, ``channel_sparsity``).

NNI's pruners run on a copy of the model and only hand back masks; the model itself stays a
plain ``nn.Module`` (no NNI wrappers), so FX tracing (QAT, ModelSpeedup) and the optimizer's
parameter references keep working. Masks are multiplied into the weights after every optimizer
step. The physical shrink is NNI's ``ModelSpeedup`` given ``graph_module=torch.fx.symbolic_trace``
of the model in eval mode (NNI's own tracer fails on this torch); the shrunk model must still run
and give the same output shape, else the trial ends with ``TrialFailed`` and the reason.
NNI is imported once, lazily (``_nni``), and its prints and warnings are silenced (``_quiet``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn

from autocompress.errors import TrialFailed
from autocompress.utils import error_line

if TYPE_CHECKING:
    from autocompress.spec.policy import PruningPolicy
    from autocompress.trial.run import TrialContext

# ModelSpeedup's own messages (one per module, "cannot replace MaxPool1d", ...): silent unless a
# user raises this logger's level while debugging (named after the technique, not this module).
SPEEDUP_LOG = logging.getLogger("autocompress.compress.pruning.speedup")
SPEEDUP_LOG.setLevel(logging.CRITICAL)

TAYLOR_BATCHES = 8        # training batches whose gradients estimate Taylor importance
TAYLOR_BATCH_SIZE = 32

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
_CONV = (nn.Conv1d, nn.Conv2d)

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


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _PRUNABLE)]


def protected_layers(model: nn.Module, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """First conv, last Linear, last prunable layer, and everything under the names in ``extra``."""
    layers = _layers(model)
    names = {n for n, _ in layers}
    missing = [p for p in extra if p not in dict(model.named_modules())]
    if missing:
        raise TrialFailed(f"pruning.protect names no module of this model: {missing}")
    out = [n for n, m in layers if isinstance(m, _CONV)][:1]
    out += [n for n, m in layers if isinstance(m, nn.Linear)][-1:]
    out += [n for n, _ in layers][-1:]
    out += [n for n in names for p in extra if n == p or n.startswith(p + ".")]
    return tuple(n for n, _ in layers if n in set(out))


def layer_ratios(targets: list[str], p: "PruningPolicy") -> dict[str, float]:
    """AMC-style groups: ``ratio_early`` for the first half (middle included), ``ratio_late`` after."""
    early = p.ratio_early if p.ratio_early >= 0 else p.ratio
    late = p.ratio_late if p.ratio_late >= 0 else p.ratio
    split = (len(targets) + 1) // 2
    return {n: float(early if i < split else late) for i, n in enumerate(targets)}


def plan_weight(model: nn.Module, p: "PruningPolicy") -> Plan:
    protected = protected_layers(model, p.protect)
    targets = [n for n, _ in _layers(model) if n not in protected]
    return Plan(layer_ratios(targets, p), protected)


def plan_structured(model: nn.Module, p: "PruningPolicy", example: torch.Tensor) -> Plan:
    """Target layers, their ratios and NNI dependency groups (tied channels share one mask)."""
    _nni()
    from nni.compression.speedup.dependency import auto_set_denpendency_group_ids, build_channel_dependency
    from torch.fx.passes.shape_prop import ShapeProp

    graph = trace(model)
    with torch.no_grad():
        ShapeProp(graph).propagate(example)  # NNI's dependency analysis reads the tensor shapes
    protected = protected_layers(model, p.protect)
    called = {node.target for node in graph.graph.nodes if node.op == "call_module"}  # not e.g. aux heads
    candidates = [n for n, _ in _layers(model) if n not in protected and n in called]
    coupled: set[str] = set()
    with _quiet():
        for group in build_channel_dependency(graph):
            names = {node.target for node in group}
            if names - set(candidates):
                coupled |= names & set(candidates)
    targets = [n for n in candidates if n not in coupled]
    ratios = layer_ratios(targets, p)
    config = [{"op_names": [n], "sparse_ratio": r} for n, r in ratios.items()]
    with _quiet():
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


# -- which weights / channels (NNI) -------------------------------------------------------------
def magnitude_masks(model: nn.Module, plan: Plan, scope: str) -> Masks:
    """Unstructured masks from NNI's LevelPruner: ``ratio`` of each layer, or of all layers of a
    ratio group at one global threshold (``scope="global"``)."""
    _nni()
    from nni.compression.pruning import LevelPruner

    params = dict(model.named_parameters())
    config = []
    groups: dict[float, list[str]] = {}
    for name, ratio in plan.ratios.items():
        if ratio > 0:
            groups.setdefault(ratio, []).append(name)
    for ratio, names in groups.items():
        if scope == "layer":
            config += [{"op_names": [n], "target_names": ["weight"], "sparse_ratio": ratio} for n in names]
            continue
        values = torch.cat([params[f"{n}.weight"].detach().abs().flatten().cpu() for n in names]).sort().values
        k = int(values.numel() * ratio)
        if k == 0:
            continue
        # halfway between the k-th and (k+1)-th smallest |w|: exactly k weights fall below
        threshold = float((values[k - 1] + values[min(k, values.numel() - 1)]) / 2)
        config += [{"op_names": [n], "target_names": ["weight"], "sparse_threshold": threshold} for n in names]
    return _run_pruner(LevelPruner, model, config)


def criterion_masks(model: nn.Module, config: list[dict[str, Any]], criterion: str,
                    ctx: "TrialContext") -> Masks:
    """Channel masks (whole output channels) from NNI's pruner for ``criterion``."""
    _nni()
    from nni.compression.pruning import FPGMPruner, L1NormPruner, L2NormPruner, TaylorPruner

    if not config:
        return {}
    if criterion == "taylor":
        return _run_pruner(TaylorPruner, model, config, taylor_ctx=ctx)
    cls = {"l1": L1NormPruner, "l2": L2NormPruner, "fpgm": FPGMPruner}[criterion]
    return _run_pruner(cls, model, config)


def _run_pruner(cls: type, model: nn.Module, config: list[dict[str, Any]],
                taylor_ctx: "TrialContext | None" = None) -> Masks:
    """Run an NNI pruner on a copy of ``model``; only its masks come back."""
    if not config:
        return {}
    shadow = copy.deepcopy(model)
    with _quiet():
        if taylor_ctx is None:
            pruner = cls(shadow, config)
        else:
            pruner = cls(shadow, config, _taylor_evaluator(shadow, taylor_ctx), training_steps=TAYLOR_BATCHES)
        _, masks = pruner.compress()
        pruner.unwrap_model()
    return {module: {t: m.detach().clone() for t, m in targets.items() if m is not None}
            for module, targets in masks.items()}


def _taylor_evaluator(model: nn.Module, ctx: "TrialContext"):
    import nni
    from nni.compression.utils import TorchEvaluator

    from autocompress.training.loop import make_loader

    loader = make_loader(ctx.data.train, TAYLOR_BATCH_SIZE, shuffle=True, seed=ctx.seed)
    if len(loader) == 0:
        raise TrialFailed("taylor pruning needs training data to estimate channel importance")
    device = next(model.parameters()).device

    def training_step(batch, model):
        x, y = batch
        return nn.functional.cross_entropy(model(x.to(device)), y.to(device))

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        steps, limit = 0, max_steps or TAYLOR_BATCHES
        while steps < limit:
            for batch in loader:
                optimizers.zero_grad()
                training_step(batch, model).backward()
                optimizers.step()
                steps += 1
                if steps >= limit:
                    return

    # lr=0: the batches only collect gradients, the copy's weights do not move
    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.0)
    return TorchEvaluator(training_func, optimizer, training_step)


# -- apply, shrink, measure ---------------------------------------------------------------------
class MaskedWeights:
    """Masks bound to parameters. Re-applied by name, so they follow the model through QAT
    preparation (same names, same Parameter objects) and device moves."""

    def __init__(self, model: nn.Module, masks: Masks) -> None:
        params = dict(model.named_parameters())
        self.entries: list[tuple[str, torch.Tensor, nn.Parameter]] = []
        for module, targets in masks.items():
            for target, mask in targets.items():
                name = f"{module}.{target}" if module else target
                self.entries.append((name, mask.bool(), params[name]))

    def apply(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for i, (name, mask, ref) in enumerate(self.entries):
                p = params.get(name)
                if p is None or p.shape != mask.shape:
                    p = ref
                    if p.shape != mask.shape:
                        raise TrialFailed(f"pruning lost track of parameter '{name}' (the model was rebuilt "
                                          "during fine-tuning)")
                if mask.device != p.device:
                    mask = mask.to(p.device)
                    self.entries[i] = (name, mask, ref)
                p.masked_fill_(~mask, 0.0)


def shrink(model: nn.Module, masks: Masks, example: torch.Tensor) -> nn.Module:
    """Remove the masked channels for real with NNI ModelSpeedup; the model keeps its mode."""
    _nni()
    from nni.compression.speedup import ModelSpeedup

    if not masks:
        return model
    was_training = model.training
    model.to("cpu").eval()
    example = example.to("cpu")
    with torch.no_grad():
        reference = model(example)
    graph = trace(model)
    masks = {m: {t: v.float().cpu() for t, v in targets.items()} for m, targets in masks.items()}
    try:
        with _quiet():
            ModelSpeedup(model, example, masks, graph_module=graph, logger=SPEEDUP_LOG).speedup_model()
    except Exception as exc:  # NNI raises anything from assertions to shape errors
        raise TrialFailed(f"NNI ModelSpeedup cannot shrink this model ("
                          f"{error_line(exc)})") from None
    model.eval()  # modules NNI replaced come back in train mode
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:
        raise TrialFailed(f"the model no longer runs after NNI ModelSpeedup removed channels "
                          f"({error_line(exc)}); NNI cannot shrink this "
                          "architecture") from None
    if out.shape != reference.shape:
        raise TrialFailed(f"NNI ModelSpeedup changed the output shape from {tuple(reference.shape)} to "
                          f"{tuple(out.shape)}")
    try:   # fine-tuning runs it in train mode, where some models take other paths (auxiliary heads)
        copy.deepcopy(model).train()(example)
    except Exception as exc:
        raise TrialFailed(f"after NNI ModelSpeedup the model runs in eval mode but not in train mode "
                          f"({error_line(exc)}); layers used only in training "
                          "were not shrunk") from None
    model.train(was_training)
    return model


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:
        raise TrialFailed(f"structured pruning needs a torch.fx trace of the model, which failed "
                          f"({error_line(exc)})") from None


# -- measure ----------------------------------------------------------------------------------
def out_widths(model: nn.Module) -> dict[str, int]:
    """Output channels / features of every Conv and Linear layer."""
    return {n: (m.out_channels if isinstance(m, _CONV) else m.out_features) for n, m in _layers(model)}


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


# -- NNI plumbing -------------------------------------------------------------------------------
_NNI_READY = False


def _nni() -> None:
    """Import NNI once, quietly, and keep its per-module logging down."""
    global _NNI_READY
    if _NNI_READY:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import nni.compression.pruning  # noqa: F401
        import nni.compression.speedup  # noqa: F401
    logging.getLogger("nni").setLevel(logging.ERROR)
    _NNI_READY = True


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNI prints (``print(prune_axis, prune_type)``) and warns while it works."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


