"""Pruning, made real and measured: ``weight`` (unstructured zeros), ``structured`` (channels
removed from the model) and ``gradual`` (channel sparsity raised epoch by epoch, then removed).

NNI 3.0 is the engine (``engine``, ``plan`` and ``masks``). Three separate nouns, as in Torch-Pruning:

* which layers (``plan_weight``, ``plan_structured``): Conv1d/Conv2d/Linear in module order.
  The first conv, the last Linear (classifier) and the last prunable layer are protected, plus
  ``protect`` (a name protects that module and everything under it). Layers whose output
  channels are tied (residual add, SE multiply, a depthwise conv and its producer) share one
  mask (NNI dependency groups, from a ShapeProp'd FX graph), with the ratio of the group's
  earliest layer; a group tied to a protected layer is skipped, since NNI would keep those
  channels anyway.
  Per-group ratios (AMC-style): ``ratio_early`` for the first half of the prunable layers (the
  middle one included), ``ratio_late`` for the rest; -1 means ``ratio``.
* which weights/channels are least useful (``criterion_masks``): NNI's LevelPruner (weight
  magnitude), L1NormPruner, L2NormPruner, FPGMPruner and TaylorPruner. Taylor runs NNI's
  TaylorPruner with a ``TorchEvaluator`` over ``TAYLOR_BATCHES`` training batches at lr=0
  (gradients only), on a copy of the model: importance of an output channel = the L1 norm of
  sum over batches of (w * dL/dw)^2 (NNI's formula). Global weight pruning ranks all |w| at once:
  we compute that one threshold (exact, vectorized) and give it to LevelPruner as
  ``sparse_threshold`` (NNI's own global ranking loops in Python over every weight).
* how much and when (``scheduled_ratio``, here): one shot, or AGP cubic / linear over the epochs.

This module holds the techniques and their schedule; the layer plans, the masks and the shrink
(NNI ``ModelSpeedup`` on an FX trace, checked to still run) are in ``engine``, ``plan`` and ``masks``.

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

import copy
from typing import Any

import torch
from torch import nn

from autocompress.compress.base import Declaration, Technique
from autocompress.compress.pruning.engine import shrink
from autocompress.compress.pruning.masks import MaskedWeights, criterion_masks, magnitude_masks
from autocompress.compress.pruning.plan import (Masks, channel_sparsity, out_widths, plan_structured, plan_weight,
                                                with_norms, zero_fraction)
from autocompress.errors import TrialFailed
from autocompress.metrics.size import count_params
from autocompress.spec.policy import Policy


def select(policy: Policy) -> type[Technique] | None:
    """The pruning technique ``policy`` turns on, or None."""
    return {"weight": WeightPruning, "structured": StructuredPruning, "gradual": GradualPruning}.get(
        policy.pruning.method)


# -- how much and when -------------------------------------------------------------------------
def scheduled_ratio(target: float, step: int, total: int, schedule: str = "agp") -> float:
    """Sparsity after ``step`` of ``total`` pruning steps: AGP cubic (Zhu & Gupta, 2017) or linear."""
    t = min(max(step, 0), total) / max(total, 1)
    return target * (1.0 - (1.0 - t) ** 3) if schedule == "agp" else target * t


def pruning_steps(epochs: int) -> int:
    """Epochs whose end raises the sparsity; the last one is left to recover when there are two or more."""
    return max(1, epochs - 1)


def _count(model: nn.Module) -> int:
    return count_params(model)[0]


# -- the techniques -----------------------------------------------------------------------------
class _Pruning(Technique):
    name = "pruning"

    @classmethod
    def declare(cls, policy: Policy) -> Declaration:
        p = policy.pruning
        what = f"weight {p.scope}" if p.method == "weight" else f"{p.method} {p.criterion}"
        line = (f"pruning: {p.method}, criterion {p.criterion}, ratio {p.ratio:g}"
                + (f", schedule {p.schedule}" if p.method == "gradual" else "")
                + (f", scope {p.scope}" if p.method == "weight" else ""))
        return Declaration(label=f"{p.method} pruning", summary=f"{what} {p.ratio:.0%}", structural=True,
                           structure_final_after_compress=cls.structure_final_after_compress,
                           card_line=line)

    structure_final_after_compress = True

    def __init__(self, policy, ctx, pipeline) -> None:
        super().__init__(policy, ctx, pipeline)
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
        example, was_training = self._plan(model)
        masks = criterion_masks(model, self.plan.scaled(1.0), self.p.criterion, self.ctx)
        self._finish(model, masks, example)
        model.train(was_training)
        return model

    def _plan(self, model: nn.Module) -> tuple[torch.Tensor, bool]:
        """Plan the layers with the model in eval mode (left so); returns the example and the mode to restore."""
        example = self.ctx.example_batch(2)
        was_training = model.training
        model.eval()
        self.plan = plan_structured(model, self.p, example)
        return example, was_training

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
    structure_final_after_compress = False   # channels are removed after fine-tuning

    def compress(self, model: nn.Module) -> nn.Module:
        example, was_training = self._plan(model)
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
