"""Pruning, made real and measured: ``weight`` (unstructured zeros), ``structured`` (channels
removed from the model) and ``gradual`` (channel sparsity raised epoch by epoch, then removed).

NNI 3.0 is the engine. Three separate nouns, as in Torch-Pruning:

* which layers (``plan``): Conv1d/Conv2d/Linear in module order. The first conv, the last Linear
  (classifier) and the last prunable layer are protected, plus ``protect`` (a name protects
  that module and everything under it). Layers whose output channels are tied (residual add,
  SE multiply, a depthwise conv and its producer) share one mask (NNI dependency groups, from
  a ShapeProp'd FX graph), with the ratio of the group's earliest layer; a group tied to a
  protected layer is skipped, since NNI would keep those channels anyway.
  Per-group ratios (AMC-style): ``ratio_early`` for the first half of the prunable layers (the
  middle one included), ``ratio_late`` for the rest; -1 means ``ratio``.
* which weights/channels are least useful (``criterion_masks``): NNI's LevelPruner (weight
  magnitude), L1NormPruner, L2NormPruner, FPGMPruner and TaylorPruner. Taylor runs NNI's
  TaylorPruner with a ``TorchEvaluator`` over ``TAYLOR_BATCHES`` training batches at lr=0
  (gradients only), on a copy of the model: importance of an output channel = the L1 norm of
  sum over batches of (w * dL/dw)^2 (NNI's formula). Global weight pruning ranks all |w| at once:
  we compute that one threshold (exact, vectorized) and give it to LevelPruner as
  ``sparse_threshold`` (NNI's own global ranking loops in Python over every weight).
* how much and when (``scheduled_ratio``): one shot, or AGP cubic / linear over the epochs.

NNI's pruners run on a copy of the model and only hand back masks; the model itself stays a
plain ``nn.Module`` (no NNI wrappers), so FX tracing (QAT, ModelSpeedup) and the optimizer's
parameter references keep working. Masks are multiplied into the weights after every optimizer
step. The physical shrink is NNI's ``ModelSpeedup`` given ``graph_module=torch.fx.symbolic_trace``
of the model in eval mode (NNI's own tracer fails on this torch); the shrunk model must still run
and give the same output shape, else the trial ends with ``TrialFailed`` and the reason.

``gradual``: with E fine-tuning epochs, masks are recomputed at the end of epochs 1..T with
T = E - 1 (E >= 2; the last epoch trains with the final masks) or T = 1, each layer at
``ratio_layer * f(t/T)``, f = 1 - (1 - t/T)^3 (agp) or t/T (linear); the masks also zero the
scale and shift of the BatchNorm right after a pruned layer, so the masked model computes
exactly what the shrunk one will (``shrink_output_max_diff`` in the proof measures it). The
validation accuracy of an epoch is measured just after that epoch's pruning step.
``after_finetune`` finishes the schedule if training stopped early, then removes the channels.

Weight pruning stores zeros densely: ``size_mb`` does not drop, ``size_compressed_mb`` (zlib of
the same file) shows what the zeros save.
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
from autocompress.metrics.size import count_params
from autocompress.techniques.base import Technique

if TYPE_CHECKING:
    from autocompress.policy import Policy, PruningPolicy
    from autocompress.trial import TrialContext

# ModelSpeedup's own messages (one per module, "cannot replace MaxPool1d", ...): silent unless a
# user raises this logger's level while debugging.
SPEEDUP_LOG = logging.getLogger(f"{__name__}.speedup")
SPEEDUP_LOG.setLevel(logging.CRITICAL)

TAYLOR_BATCHES = 8        # training batches whose gradients estimate Taylor importance
TAYLOR_BATCH_SIZE = 32

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
_CONV = (nn.Conv1d, nn.Conv2d)

Masks = dict[str, dict[str, torch.Tensor]]   # {module name: {"weight" | "bias": 0/1 tensor}}


def build(policy: "Policy", ctx: "TrialContext") -> Technique | None:
    p = policy.pruning
    if p.method == "none":
        return None
    if p.method == "gradual" and policy.quantization.mode == "qat_int8":
        raise TrialFailed("gradual pruning cannot be combined with qat_int8: its channels are removed "
                          "after fine-tuning, but QAT has by then turned the model into an FX graph of "
                          "fused fake-quant modules that NNI ModelSpeedup cannot shrink (use structured "
                          "pruning, which shrinks before QAT)")
    techniques = {"weight": WeightPruning, "structured": StructuredPruning, "gradual": GradualPruning}
    return techniques[p.method](policy, ctx)


# -- how much and when -------------------------------------------------------------------------
def scheduled_ratio(target: float, step: int, total: int, schedule: str = "agp") -> float:
    """Sparsity after ``step`` of ``total`` pruning steps: AGP cubic (Zhu & Gupta, 2017) or linear."""
    t = min(max(step, 0), total) / max(total, 1)
    return target * (1.0 - (1.0 - t) ** 3) if schedule == "agp" else target * t


def pruning_steps(epochs: int) -> int:
    """Epochs whose end raises the sparsity; the last one is left to recover when there are two or more."""
    return max(1, epochs - 1)


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
        raise TrialFailed(f"NNI ModelSpeedup cannot shrink this model ({type(exc).__name__}: "
                          f"{_first_line(exc)})") from None
    model.eval()  # modules NNI replaced come back in train mode
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:
        raise TrialFailed(f"the model no longer runs after NNI ModelSpeedup removed channels "
                          f"({type(exc).__name__}: {_first_line(exc)}); NNI cannot shrink this "
                          "architecture") from None
    if out.shape != reference.shape:
        raise TrialFailed(f"NNI ModelSpeedup changed the output shape from {tuple(reference.shape)} to "
                          f"{tuple(out.shape)}")
    try:   # fine-tuning runs it in train mode, where some models take other paths (auxiliary heads)
        copy.deepcopy(model).train()(example)
    except Exception as exc:
        raise TrialFailed(f"after NNI ModelSpeedup the model runs in eval mode but not in train mode "
                          f"({type(exc).__name__}: {_first_line(exc)}); layers used only in training "
                          "were not shrunk") from None
    model.train(was_training)
    return model


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:
        raise TrialFailed(f"structured pruning needs a torch.fx trace of the model, which failed "
                          f"({type(exc).__name__}: {_first_line(exc)})") from None


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


def _count(model: nn.Module) -> int:
    return count_params(model)[0]


# -- the techniques -----------------------------------------------------------------------------
class _Pruning(Technique):
    name = "pruning"

    def __init__(self, policy: "Policy", ctx: "TrialContext") -> None:
        super().__init__(policy, ctx)
        self.p = policy.pruning
        self.masked: MaskedWeights | None = None
        self.facts: dict[str, Any] = {"method": self.p.method, "target_ratio": self.p.ratio}
        if self.p.ratio_early >= 0 or self.p.ratio_late >= 0:
            self.facts["group_ratios"] = {"early": self.p.ratio_early, "late": self.p.ratio_late}

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if self.masked is not None:
            self.masked.apply(model)

    def proof(self) -> dict[str, Any]:
        return {"pruning": dict(self.facts)}


class WeightPruning(_Pruning):
    """Unstructured magnitude pruning: zeros in place, kept through fine-tuning."""

    def compress(self, model: nn.Module) -> nn.Module:
        self.plan = plan_weight(model, self.p)
        masks = magnitude_masks(model, self.plan, self.p.scope)
        self.masked = MaskedWeights(model, masks)
        self.masked.apply(model)
        self.facts.update(criterion="magnitude", scope=self.p.scope, protected=list(self.plan.protected),
                          layers_pruned=len(masks),
                          sparsity_after_prune=zero_fraction(model, list(self.plan.ratios)),
                          storage="dense tensors with zeros; size_compressed_mb (zlib) shows the saving")
        return model

    def after_finetune(self, model: nn.Module) -> nn.Module:
        if self.masked is not None:
            self.masked.apply(model)
        names = list(self.plan.ratios)
        self.facts["sparsity"] = round(zero_fraction(model, names), 6)
        self.facts["sparsity_per_layer"] = {n: round(zero_fraction(model, [n]), 4) for n in names}
        return model


class StructuredPruning(_Pruning):
    """One-shot channel pruning, then the channels are removed (NNI ModelSpeedup)."""

    def compress(self, model: nn.Module) -> nn.Module:
        example = self.ctx.example_batch(2)
        was_training = model.training
        model.eval()
        self.plan = plan_structured(model, self.p, example)
        masks = criterion_masks(model, self.plan.scaled(1.0), self.p.criterion, self.ctx)
        self._finish(model, masks, example)
        model.train(was_training)
        return model

    def _finish(self, model: nn.Module, masks: Masks, example: torch.Tensor) -> None:
        before, params_before = out_widths(model), _count(model)
        shrink(model, masks, example)
        after = out_widths(model)
        targets = list(self.plan.ratios)
        kept = sum(after[n] for n in targets)
        total = sum(before[n] for n in targets)
        if total and kept == total and max(self.plan.ratios.values(), default=0) > 0:
            raise TrialFailed(f"structured pruning at ratio {self.p.ratio} removed no channel "
                              f"(layers {targets[:6]}...)")
        self.facts.update(
            criterion=self.p.criterion, protected=list(self.plan.protected),
            coupled_to_protected=list(self.plan.coupled),
            layer_ratios={n: round(r, 4) for n, r in self.plan.ratios.items()},
            channels_kept={n: [before[n], after[n]] for n in before if after.get(n) != before[n]},
            sparsity=round(1 - kept / total, 6) if total else 0.0,
            params_before=params_before, params_after=_count(model),
            zero_fraction=round(zero_fraction(model, [n for n in after if n not in self.plan.protected]), 6))


class GradualPruning(StructuredPruning):
    """Channel sparsity raised at epoch ends on the AGP (or linear) schedule, removed at the end."""

    def compress(self, model: nn.Module) -> nn.Module:
        example = self.ctx.example_batch(2)
        was_training = model.training
        model.eval()
        self.plan = plan_structured(model, self.p, example)
        # fail before training, not after: shrink a copy at the target once
        probe = copy.deepcopy(model)
        shrink(probe, criterion_masks(probe, self.plan.scaled(1.0), "l1", self.ctx), example)
        model.train(was_training)
        self.total_steps = pruning_steps(self.ctx.epochs)
        self.widths = out_widths(model)
        self.steps_done = 0
        self.masks: Masks = {}
        self.facts.update(schedule=self.p.schedule, pruning_steps=self.total_steps, sparsity_per_epoch=[],
                          schedule_per_epoch=[])
        return model

    def _prune_to(self, model: nn.Module, step: int) -> None:
        fraction = scheduled_ratio(1.0, step, self.total_steps, self.p.schedule)
        self.masks = criterion_masks(model, self.plan.scaled(fraction), self.p.criterion, self.ctx)
        self.masked = MaskedWeights(model, with_norms(self.masks, self.plan.norms)) if self.masks else None
        if self.masked is not None:
            self.masked.apply(model)
        self.steps_done = step

    def _scheduled(self, step: int) -> float:
        """The channel sparsity the schedule asks for after ``step`` (over the pruned layers)."""
        fraction = scheduled_ratio(1.0, step, self.total_steps, self.p.schedule)
        total = sum(self.widths[n] for n in self.plan.ratios)
        return sum(self.widths[n] * r * fraction for n, r in self.plan.ratios.items()) / total if total else 0.0

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        step = epoch + 1
        if step <= self.total_steps:
            self._prune_to(model, step)
        self.facts["schedule_per_epoch"].append(round(self._scheduled(step), 6))
        targets = {n: self.widths[n] for n in self.plan.ratios}
        self.facts["sparsity_per_epoch"].append(round(channel_sparsity(self.masks, targets), 6))

    def after_finetune(self, model: nn.Module) -> nn.Module:
        was_training = model.training
        if self.steps_done < self.total_steps:   # stopped early (or no epochs): finish the schedule now
            self.facts["finished_after_finetune"] = True
            self._prune_to(model, self.total_steps)
        example = self.ctx.example_batch(2)
        with torch.no_grad():
            masked_out = model.to("cpu").eval()(example)
        self._finish(model, self.masks, example)
        with torch.no_grad():   # removing zeroed channels must not change what was fine-tuned
            self.facts["shrink_output_max_diff"] = float((model.eval()(example) - masked_out).abs().max())
        self.masked = None
        model.train(was_training)
        return model


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
